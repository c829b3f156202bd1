//! Conntrack entries over a netfilter netlink socket: a dump of one
//! family's UDP entries, and batches of deletes (encoded by
//! [`super::wire`]) with every answer read back. Only the socket lives here.

use super::wire::{self, Answer, Entry};
use crate::model::Family;
use crate::xtables::nfnl::NfnlSocket;
use anyhow::{bail, Context, Result};

/// Deletes per send, at most: a larger batch saves nothing measurable
/// (10,000 deletes took 15.8 ms in sends of 50, 16.6 ms in sends of 200,
/// 19.8 ms in sends of 1,000 on Linux 6.18).
const MAX_CHUNK: usize = 200;
/// Receive buffer taken by one ACK: 36 bytes with NETLINK_CAP_ACK, but
/// about 770 bytes of socket accounting (the default 208 KiB overflowed
/// between 250 and 300 unread ACKs); twice that, to be safe.
const ACK_COST: usize = 1536;
/// The receive buffer asked for (where CAP_NET_ADMIN allows more than
/// `net.core.rmem_max`).
const RCVBUF: usize = 1 << 20;

/// Deletes per send whose ACKs fit a receive buffer of `rcvbuf` bytes.
fn chunk_for(rcvbuf: usize) -> usize {
    (rcvbuf / ACK_COST).clamp(8, MAX_CHUNK)
}

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
    /// Deletes per send.
    chunk: usize,
}

impl CtSocket {
    pub fn open() -> Result<Self> {
        let nl = NfnlSocket::open().context("opening a netfilter netlink socket")?;
        nl.grow_rcvbuf(RCVBUF);
        let chunk = chunk_for(nl.rcvbuf().unwrap_or(0));
        let seq = nl.seed();
        Ok(CtSocket { nl, seq, chunk })
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
        for chunk in entries.chunks(self.chunk) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fit_the_receive_buffer() {
        // The default 208 KiB held 250 ACKs, not 300: 138 per send.
        assert_eq!(chunk_for(212_992), 138);
        assert_eq!(chunk_for(2 * RCVBUF), MAX_CHUNK);
        assert_eq!(chunk_for(0), 8);
    }
}
