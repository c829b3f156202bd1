//! Conntrack entries over netfilter netlink (subsystem CTNETLINK): the dump
//! request, the dumped entries, and delete requests for one entry each are
//! encoded and decoded here and nowhere else. Pure: the socket lives in
//! `socket.rs`.
//!
//! Layout from the uapi headers `linux/netfilter/nfnetlink.h` and
//! `linux/netfilter/nfnetlink_conntrack.h`, and from what the kernel's
//! `nf_conntrack_netlink.c` writes (`ctnetlink_fill_info`,
//! `ctnetlink_dump_tuples`) and reads (`ctnetlink_del_conntrack`,
//! `ctnetlink_parse_tuple_filter`, `ctnetlink_alloc_filter`): a `struct
//! nlmsghdr` of type `NFNL_SUBSYS_CTNETLINK << 8 | msg`, a `struct nfgenmsg
//! {family, NFNETLINK_V0, res_id 0}`, then attributes. A tuple is
//! CTA_TUPLE_ORIG/REPLY (nested) holding CTA_TUPLE_IP (nested: CTA_IP_V4_SRC
//! and _DST, 4 bytes, or CTA_IP_V6_SRC and _DST, 16 bytes) and
//! CTA_TUPLE_PROTO (nested: CTA_PROTO_NUM u8, CTA_PROTO_SRC_PORT and
//! _DST_PORT big-endian u16). Addresses and ports are in network byte order
//! without NLA_F_NET_BYTEORDER; the kernel marks nests NLA_F_NESTED, which
//! the parser masks off.
//!
//! A delete always carries CTA_TUPLE_ORIG: a CT_DELETE without a tuple
//! flushes the whole table (`ctnetlink_flush_conntrack`). It also carries
//! the entry's CTA_ID, so the kernel deletes exactly the entry that was
//! dumped and answers ENOENT when that entry is gone, even if a new one with
//! the same tuple took its place.

use crate::model::Family;
use crate::xtables::nfnl::{attrs, messages, nest, put};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `NFNL_SUBSYS_CTNETLINK` (linux/netfilter/nfnetlink.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNETLINK_V0: u8 = 0;
/// `enum cntl_msg_types`.
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
pub const IPCTNL_MSG_CT_GET: u16 = 1;
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// `enum ctattr_type`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
/// `enum ctattr_tuple`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
/// `enum ctattr_ip`.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
/// `enum ctattr_l4proto`.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `enum ctattr_filter`.
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// `CTA_FILTER_FLAG(CTA_PROTO_NUM)` (nf_conntrack_netlink.c): filter on the
/// original tuple's protocol only.
const CTA_FILTER_FLAG_PROTO_NUM: u32 = 1 << 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFGENMSG_LEN: usize = 4;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `IPPROTO_UDP`.
pub const UDP: u8 = 17;

/// `IPS_DST_NAT` (linux/netfilter/nf_conntrack_common.h).
pub const IPS_DST_NAT: u32 = 1 << 5;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry as dumped: what the cleanup matches on, and what a
/// delete names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    /// CTA_ZONE (0: the default zone, which the kernel does not dump).
    pub zone: u16,
    /// CTA_ID, the kernel's handle for this very entry.
    pub id: Option<u32>,
    /// CTA_STATUS (`IPS_*` bits).
    pub status: u32,
}

impl Entry {
    pub fn family(&self) -> Family {
        Family::of(&self.orig.src)
    }
}

fn af(f: Family) -> u8 {
    match f {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    }
}

/// nlmsghdr + nfgenmsg; the length is set by [`finish`].
fn header(buf: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, family: Family) {
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    buf.extend_from_slice(&[af(family), NFNETLINK_V0]);
    buf.extend_from_slice(&0u16.to_be_bytes()); // res_id
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// A dump of the UDP entries of one family. The original tuple's protocol
/// is also given to the kernel as a filter (CTA_FILTER, Linux 5.8+), so a
/// node with many TCP entries sends only its UDP ones; older kernels ignore
/// the attribute and dump everything, which the caller filters.
pub fn dump_request(family: Family, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    header(
        &mut b,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
    );
    nest(&mut b, CTA_TUPLE_ORIG, |b| {
        nest(b, CTA_TUPLE_PROTO, |b| put(b, CTA_PROTO_NUM, &[UDP]));
    });
    nest(&mut b, CTA_FILTER, |b| {
        put(
            b,
            CTA_FILTER_ORIG_FLAGS,
            &CTA_FILTER_FLAG_PROTO_NUM.to_ne_bytes(),
        );
    });
    finish(&mut b, 0);
    b
}

fn put_tuple(buf: &mut Vec<u8>, ty: u16, t: &Tuple) {
    nest(buf, ty, |b| {
        nest(b, CTA_TUPLE_IP, |b| match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                put(b, CTA_IP_V4_SRC, &s.octets());
                put(b, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                put(b, CTA_IP_V6_SRC, &v6(s).octets());
                put(b, CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        nest(b, CTA_TUPLE_PROTO, |b| {
            put(b, CTA_PROTO_NUM, &[t.proto]);
            put(b, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            put(b, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        });
    });
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// A request (NLM_F_REQUEST|NLM_F_ACK) deleting `e`, named by its original
/// tuple, zone and id.
pub fn delete_request(e: &Entry, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(96);
    append_delete(&mut b, e, seq);
    b
}

fn append_delete(b: &mut Vec<u8>, e: &Entry, seq: u32) {
    let start = b.len();
    header(
        b,
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        e.family(),
    );
    put_tuple(b, CTA_TUPLE_ORIG, &e.orig);
    if e.zone != 0 {
        put(b, CTA_ZONE, &e.zone.to_be_bytes());
    }
    if let Some(id) = e.id {
        put(b, CTA_ID, &id.to_be_bytes());
    }
    finish(b, start);
}

/// Deletes for `entries` back to back in one buffer, sequence numbers
/// `first_seq`, `first_seq + 1`, ... (the kernel answers each in turn).
pub fn delete_batch(entries: &[Entry], first_seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(entries.len() * 96);
    for (i, e) in entries.iter().enumerate() {
        append_delete(&mut b, e, first_seq.wrapping_add(i as u32));
    }
    b
}

/// One message of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A dumped entry; `None` when it is not one this codec reads (no
    /// address or protocol: never a UDP entry).
    Entry { seq: u32, entry: Option<Entry> },
    /// The end of a dump (`errno` > 0: it ended with that error).
    Done { seq: u32, errno: i32 },
    /// An error (errno > 0) or an ACK (0).
    Error { seq: u32, errno: i32 },
}

fn find<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn addr(v: Option<&[u8]>, len: usize) -> Option<IpAddr> {
    let v = v?.get(..len)?;
    Some(match len {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?)),
        _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?)),
    })
}

/// A CTA_TUPLE_* payload; `Ok(None)` when it lacks addresses or protocol.
fn tuple(b: &[u8]) -> Result<Option<Tuple>, String> {
    let a = attrs(b)?;
    let (Some(ip), Some(proto)) = (find(&a, CTA_TUPLE_IP), find(&a, CTA_TUPLE_PROTO)) else {
        return Ok(None);
    };
    let ip = attrs(ip)?;
    let (src, dst) = match (
        addr(find(&ip, CTA_IP_V4_SRC), 4),
        addr(find(&ip, CTA_IP_V4_DST), 4),
    ) {
        (Some(s), Some(d)) => (s, d),
        _ => match (
            addr(find(&ip, CTA_IP_V6_SRC), 16),
            addr(find(&ip, CTA_IP_V6_DST), 16),
        ) {
            (Some(s), Some(d)) => (s, d),
            _ => return Ok(None),
        },
    };
    let p = attrs(proto)?;
    let Some(&num) = find(&p, CTA_PROTO_NUM).and_then(|v| v.first()) else {
        return Ok(None);
    };
    let port = |ty| find(&p, ty).and_then(be16).unwrap_or(0);
    Ok(Some(Tuple {
        src,
        dst,
        proto: num,
        sport: port(CTA_PROTO_SRC_PORT),
        dport: port(CTA_PROTO_DST_PORT),
    }))
}

/// A dumped entry's attributes (after the nfgenmsg).
fn entry(b: &[u8]) -> Result<Option<Entry>, String> {
    let a = attrs(b)?;
    let (Some(o), Some(r)) = (find(&a, CTA_TUPLE_ORIG), find(&a, CTA_TUPLE_REPLY)) else {
        return Ok(None);
    };
    let (Some(orig), Some(reply)) = (tuple(o)?, tuple(r)?) else {
        return Ok(None);
    };
    Ok(Some(Entry {
        orig,
        reply,
        zone: find(&a, CTA_ZONE).and_then(be16).unwrap_or(0),
        id: find(&a, CTA_ID).and_then(be32),
        status: find(&a, CTA_STATUS).and_then(be32).unwrap_or(0),
    }))
}

/// The messages in one received buffer. Messages of other subsystems are
/// skipped.
pub fn parse(buf: &[u8]) -> Result<Vec<Answer>, String> {
    let mut out = Vec::new();
    for m in messages(buf)? {
        let (seq, body) = (m.seq, m.body);
        let errno = || -> Result<i32, String> {
            let e = body.get(..4).ok_or("short netlink error or done message")?;
            Ok(i32::from_ne_bytes([e[0], e[1], e[2], e[3]]).saturating_neg())
        };
        match m.ty {
            NLMSG_DONE => out.push(Answer::Done {
                seq,
                // The kernel writes a status (0) after a dump; tolerate none.
                errno: if body.len() >= 4 { errno()? } else { 0 },
            }),
            NLMSG_ERROR => out.push(Answer::Error {
                seq,
                errno: errno()?,
            }),
            t if t >> 8 == NFNL_SUBSYS_CTNETLINK && body.len() >= NFGENMSG_LEN => {
                out.push(Answer::Entry {
                    seq,
                    entry: entry(&body[NFGENMSG_LEN..])?,
                })
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
