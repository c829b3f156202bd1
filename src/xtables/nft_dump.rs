//! Reading one nf_tables table back over netlink: whether it exists, its
//! chains with their rule counts, its named sets and maps. No set element
//! is read, so the cost does not grow with the Services (`nft list` of any
//! part of a table fetches every element first: 1.1 s at 10,000 Services,
//! 5 to 8 s at 30,000, measured by bench/nft_layout.py). The codec is pure
//! and byte-tested; [`dump_table`] does the I/O.

use super::nfnl::{attrs, messages, NfnlSocket, NLMSG_HDRLEN};
#[cfg(test)]
use super::nfnl::{u16_at, u32_at};
use crate::model::Family;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// A table's chains (with how many rules each holds) and named sets/maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableListing {
    pub chains: BTreeMap<String, usize>,
    pub sets: BTreeSet<String>,
}

// linux/netfilter/nfnetlink.h, nf_tables.h, netlink.h.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// Set on a dump's messages when the ruleset changed while it ran.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFGENMSG_LEN: usize = 4;
/// NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE.
const ATTR_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_NAME: u16 = 2;

fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => 2,  // NFPROTO_IPV4
        Family::V6 => 10, // NFPROTO_IPV6
    }
}

/// A GET request for `table`: a dump of its objects, or the table itself.
pub fn request(msg: u16, family: Family, table: &str, seq: u32, dump: bool) -> Vec<u8> {
    let name_len = table.len() + 1;
    let attr_len = 4 + name_len;
    let padded = (attr_len + 3) & !3;
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + padded;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, NFNETLINK_V0, res_id (big endian) 0.
    b.extend_from_slice(&[nfproto(family), 0, 0, 0]);
    b.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    b.extend_from_slice(&ATTR_TABLE.to_ne_bytes());
    b.extend_from_slice(table.as_bytes());
    b.push(0);
    b.resize(len, 0);
    b
}

/// One message of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An object, with its attributes (type, payload); `interrupted` when
    /// the ruleset changed while the dump ran (its answers may be wrong).
    Object {
        seq: u32,
        attrs: Vec<(u16, Vec<u8>)>,
        interrupted: bool,
    },
    /// The end of a dump, with the error that ended it (0: none).
    Done { seq: u32, errno: i32 },
    /// An error (errno > 0) or an ACK (0).
    Error { seq: u32, errno: i32 },
}

/// The messages in one received buffer.
pub fn parse(buf: &[u8]) -> Result<Vec<Answer>, String> {
    let errno = |body: &[u8]| match body.get(..4) {
        Some(b) => -(i32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        None => 0,
    };
    let mut out = Vec::new();
    for m in messages(buf)? {
        let seq = m.seq;
        match m.ty {
            NLMSG_DONE => out.push(Answer::Done {
                seq,
                errno: errno(m.body),
            }),
            NLMSG_ERROR if m.body.len() < 4 => return Err("short netlink error".into()),
            NLMSG_ERROR => out.push(Answer::Error {
                seq,
                errno: errno(m.body),
            }),
            _ => out.push(Answer::Object {
                seq,
                attrs: attrs(&m.body[NFGENMSG_LEN.min(m.body.len())..])?
                    .into_iter()
                    .map(|(t, v)| (t, v.to_vec()))
                    .collect(),
                interrupted: m.flags & NLM_F_DUMP_INTR != 0,
            }),
        }
    }
    Ok(out)
}

/// A NUL-terminated string attribute.
fn string(attrs: &[(u16, Vec<u8>)], ty: u16) -> Option<String> {
    let (_, v) = attrs.iter().find(|(t, _)| *t == ty)?;
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8(v[..end].to_vec()).ok()
}

/// An object's attributes: (type, payload).
type Attrs = Vec<(u16, Vec<u8>)>;

/// Sends one request and collects its objects (until the dump's end, or the
/// one answer of a plain GET). `Ok(None)`: the kernel answered ENOENT.
fn ask(nl: &NfnlSocket, req: &[u8], seq: u32, dump: bool) -> Result<Option<Vec<Attrs>>> {
    nl.send(req).context("sending an nf_tables request")?;
    let mut objects = Vec::new();
    let mut interrupted = false;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = nl.recv(&mut buf).context("reading nf_tables answers")?;
        for a in parse(&buf[..n]).map_err(anyhow::Error::msg)? {
            match a {
                Answer::Object {
                    seq: s,
                    attrs,
                    interrupted: i,
                } if s == seq => {
                    interrupted |= i;
                    objects.push(attrs);
                    if !dump {
                        return Ok(Some(objects));
                    }
                }
                Answer::Done { seq: s, errno } if s == seq => {
                    if errno != 0 {
                        bail!(
                            "nf_tables dump failed: {}",
                            std::io::Error::from_raw_os_error(errno)
                        );
                    }
                    if interrupted {
                        bail!(Interrupted);
                    }
                    return Ok(Some(objects));
                }
                Answer::Error { seq: s, errno } if s == seq => {
                    if errno == libc::ENOENT {
                        return Ok(None);
                    }
                    if errno != 0 {
                        bail!(
                            "nf_tables request failed: {}",
                            std::io::Error::from_raw_os_error(errno)
                        );
                    }
                    if !dump {
                        return Ok(Some(objects));
                    }
                }
                // Not ours (a late answer to an abandoned request).
                _ => {}
            }
        }
    }
}

/// A dump the ruleset changed under (read again).
#[derive(Debug, thiserror::Error)]
#[error("the nf_tables ruleset changed during the dump")]
struct Interrupted;

/// The table's chains (with rule counts) and named sets; `None` when the
/// kernel has no such table. A dump the ruleset changed under (another
/// program's commit, even in another table) is read again, a few times.
pub fn dump_table(family: Family, table: &str) -> Result<Option<TableListing>> {
    let mut tries = 0;
    loop {
        match dump_table_once(family, table) {
            Err(e) if e.is::<Interrupted>() && tries < 4 => tries += 1,
            r => return r,
        }
    }
}

fn dump_table_once(family: Family, table: &str) -> Result<Option<TableListing>> {
    let nl = NfnlSocket::open().context("opening a netfilter netlink socket")?;
    let mut seq = nl.seed();
    let mut next = |msg: u16, dump: bool| {
        seq = seq.wrapping_add(1);
        (request(msg, family, table, seq, dump), seq)
    };
    let (req, s) = next(NFT_MSG_GETTABLE, false);
    if ask(&nl, &req, s, false)?.is_none() {
        return Ok(None);
    }
    let ours = |attrs: &[(u16, Vec<u8>)]| string(attrs, ATTR_TABLE).as_deref() == Some(table);
    let mut l = TableListing::default();
    let (req, s) = next(NFT_MSG_GETCHAIN, true);
    for attrs in ask(&nl, &req, s, true)?.unwrap_or_default() {
        if let (true, Some(name)) = (ours(&attrs), string(&attrs, NFTA_CHAIN_NAME)) {
            l.chains.insert(name, 0);
        }
    }
    let (req, s) = next(NFT_MSG_GETRULE, true);
    for attrs in ask(&nl, &req, s, true)?.unwrap_or_default() {
        if let (true, Some(chain)) = (ours(&attrs), string(&attrs, NFTA_RULE_CHAIN)) {
            *l.chains.entry(chain).or_default() += 1;
        }
    }
    let (req, s) = next(NFT_MSG_GETSET, true);
    for attrs in ask(&nl, &req, s, true)?.unwrap_or_default() {
        if let (true, Some(name)) = (ours(&attrs), string(&attrs, NFTA_SET_NAME)) {
            // Anonymous sets (`{ 0 : goto x }` in a rule) are the rule's.
            if !name.starts_with("__") {
                l.sets.insert(name);
            }
        }
    }
    Ok(Some(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_request_is_laid_out_as_the_kernel_reads_it() {
        let b = request(NFT_MSG_GETRULE, Family::V6, "kube-proxy-rs", 7, true);
        assert_eq!(b.len(), 16 + 4 + 20, "13 name bytes + NUL, padded to 16");
        assert_eq!(u32_at(&b, 0) as usize, b.len());
        assert_eq!(u16_at(&b, 4), 10 << 8 | 7);
        assert_eq!(u16_at(&b, 6), 1 | 0x300);
        assert_eq!(u32_at(&b, 8), 7);
        assert_eq!(&b[16..20], &[10, 0, 0, 0], "NFPROTO_IPV6, V0, res_id 0");
        assert_eq!(u16_at(&b, 20), 4 + 14);
        assert_eq!(u16_at(&b, 22), 1);
        assert_eq!(&b[24..38], b"kube-proxy-rs\0");
        assert_eq!(&b[38..], &[0, 0]);
        let get = request(NFT_MSG_GETTABLE, Family::V4, "t", 1, false);
        assert_eq!(u16_at(&get, 6), 1, "a plain GET");
        assert_eq!(get[16], 2);
    }

    fn message(ty: u16, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![2u8, 0, 0, 0];
        for (t, v) in attrs {
            let alen = 4 + v.len();
            body.extend_from_slice(&(alen as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            body.resize((body.len() + 3) & !3, 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn answers_are_read_object_by_object() {
        let mut buf = message(
            NFNL_SUBSYS_NFTABLES << 8 | 6,
            9,
            &[(1, b"kube-proxy-rs\0"), (2 | 0x8000, b"services\0")],
        );
        let done = |seq: u32, errno: i32| {
            let mut d = Vec::new();
            d.extend_from_slice(&20u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
            d.extend_from_slice(&2u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&(-errno).to_ne_bytes());
            d
        };
        buf.extend(done(9, 0));
        let mut err = Vec::new();
        err.extend_from_slice(&20u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&0u16.to_ne_bytes());
        err.extend_from_slice(&5u32.to_ne_bytes());
        err.extend_from_slice(&0u32.to_ne_bytes());
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        buf.extend(err);
        let got = parse(&buf).unwrap();
        assert_eq!(got.len(), 3);
        let Answer::Object {
            seq: 9,
            attrs,
            interrupted: false,
        } = &got[0]
        else {
            panic!("{got:?}")
        };
        assert_eq!(string(attrs, 1).as_deref(), Some("kube-proxy-rs"));
        assert_eq!(
            string(attrs, 2).as_deref(),
            Some("services"),
            "NLA_F_NESTED masked"
        );
        assert_eq!(got[1], Answer::Done { seq: 9, errno: 0 });
        assert_eq!(
            got[2],
            Answer::Error {
                seq: 5,
                errno: libc::ENOENT
            }
        );
        assert!(parse(&buf[..buf.len() - 3]).is_err(), "a cut message");
        // NLM_F_DUMP_INTR on an object; a DONE carrying an error.
        let mut m = message(NFNL_SUBSYS_NFTABLES << 8 | 6, 3, &[]);
        m[6] |= 0x10;
        m.extend(done(3, libc::EINTR));
        let got = parse(&m).unwrap();
        assert!(matches!(
            got[0],
            Answer::Object {
                interrupted: true,
                ..
            }
        ));
        assert_eq!(
            got[1],
            Answer::Done {
                seq: 3,
                errno: libc::EINTR
            }
        );
    }
}
