//! Conntrack entries over a netfilter netlink socket: a dump of one
//! family's UDP entries, and batches of deletes (encoded by
//! [`super::wire`]) with every answer read back. Only the socket lives here.

use super::wire::{self, Answer, Entry};
use crate::model::Family;
use crate::xtables::nfnl::NfnlSocket;
use anyhow::{bail, Context, Result};

/// Deletes per send: their answers (one ACK each, 36 bytes with
/// NETLINK_CAP_ACK, but about 700 bytes of receive buffer apiece) must fit
/// the socket's default receive buffer (208 KiB).
const CHUNK: usize = 200;

/// What a batch of deletes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: usize,
    /// Already gone (expired, or deleted by someone else): ENOENT.
    pub gone: usize,
}

/// A NETLINK_NETFILTER socket for conntrack entries.
pub struct CtSocket {
    nl: NfnlSocket,
    seq: u32,
}

impl CtSocket {
    pub fn open() -> Result<Self> {
        let nl = NfnlSocket::open().context("opening a netfilter netlink socket")?;
        let seq = nl.seed();
        Ok(CtSocket { nl, seq })
    }

    /// Dumps the UDP entries of `family`, handing each to `f`; returns how
    /// many there were.
    pub fn dump_udp(&mut self, family: Family, f: &mut dyn FnMut(Entry)) -> Result<usize> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.nl
            .send(&wire::dump_request(family, seq))
            .context("asking for the conntrack table")?;
        let mut buf = vec![0u8; 128 * 1024];
        let mut n_entries = 0;
        loop {
            let n = self
                .nl
                .recv(&mut buf)
                .context("reading the conntrack table")?;
            for a in wire::parse(&buf[..n]).map_err(anyhow::Error::msg)? {
                match a {
                    // Kernels before 5.8 ignore the protocol filter: the
                    // other entries fall through to the last arm.
                    Answer::Entry {
                        seq: s,
                        entry: Some(e),
                    } if s == seq && e.orig.proto == wire::UDP && e.family() == family => {
                        n_entries += 1;
                        f(e);
                    }
                    Answer::Done { seq: s, errno } if s == seq => {
                        if errno != 0 {
                            bail!(
                                "conntrack dump failed: {}",
                                std::io::Error::from_raw_os_error(errno)
                            );
                        }
                        return Ok(n_entries);
                    }
                    Answer::Error { seq: s, errno } if s == seq && errno != 0 => {
                        bail!(
                            "conntrack dump refused: {}",
                            std::io::Error::from_raw_os_error(errno)
                        );
                    }
                    // Not ours (a late answer to an abandoned request), or
                    // not UDP.
                    _ => {}
                }
            }
        }
    }

    /// Deletes `entries` in batches; every request is answered before this
    /// returns. An entry already gone is counted, not an error.
    pub fn delete(&mut self, entries: &[Entry]) -> Result<Deleted> {
        let mut out = Deleted::default();
        let mut buf = vec![0u8; 64 * 1024];
        for chunk in entries.chunks(CHUNK) {
            let first = self.seq.wrapping_add(1);
            self.seq = self.seq.wrapping_add(chunk.len() as u32);
            self.nl
                .send(&wire::delete_batch(chunk, first))
                .context("sending conntrack deletes")?;
            let mut answered = vec![false; chunk.len()];
            let mut left = chunk.len();
            let mut failed: Vec<(usize, i32)> = Vec::new();
            while left > 0 {
                let n = self
                    .nl
                    .recv(&mut buf)
                    .context("reading the answers to conntrack deletes")?;
                for a in wire::parse(&buf[..n]).map_err(anyhow::Error::msg)? {
                    let Answer::Error { seq, errno } = a else {
                        continue;
                    };
                    let i = seq.wrapping_sub(first) as usize;
                    if i >= chunk.len() || answered[i] {
                        continue;
                    }
                    answered[i] = true;
                    left -= 1;
                    match errno {
                        0 => out.deleted += 1,
                        libc::ENOENT => out.gone += 1,
                        e => failed.push((i, e)),
                    }
                }
            }
            if let Some((i, errno)) = failed.first() {
                bail!(
                    "deleting {} conntrack entries failed, the first ({:?}): {}",
                    failed.len(),
                    chunk[*i].orig,
                    std::io::Error::from_raw_os_error(*errno)
                );
            }
        }
        Ok(out)
    }
}
