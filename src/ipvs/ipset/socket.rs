//! ipset entry changes over a netfilter netlink socket: batches of ADD/DEL
//! requests (encoded by [`super::wire`]) in one send, every ACK read
//! back. Only the socket lives here.

use super::wire::{self, EntryOp};
use crate::xtables::nfnl::NfnlSocket;
use std::io;

/// Why an entry change failed, and whether `ipset restore` may still make
/// it (the sets are missing, or netlink is unusable here).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct ChangeError {
    pub msg: String,
    pub fallback: bool,
}

impl ChangeError {
    fn unusable(msg: String) -> Self {
        ChangeError {
            msg,
            fallback: true,
        }
    }
}

/// Requests per send: their ACKs must fit the receive buffer.
const CHUNK: usize = 64;

/// A NETLINK_NETFILTER socket for ipset entry changes.
pub struct IpsetSocket {
    nl: NfnlSocket,
    seq: u32,
}

impl IpsetSocket {
    pub fn open() -> io::Result<Self> {
        let nl = NfnlSocket::open()?;
        let seq = nl.seed();
        Ok(IpsetSocket { nl, seq })
    }

    /// Applies `ops` in order; every request is answered before this
    /// returns. On failure the error names each failed set and entry.
    pub fn change(&mut self, ops: &[EntryOp]) -> Result<(), ChangeError> {
        let mut rbuf = vec![0u8; 64 * 1024];
        for chunk in ops.chunks(CHUNK) {
            let first = self.seq;
            self.seq = self.seq.wrapping_add(chunk.len() as u32);
            let req = wire::encode_batch(chunk, first).map_err(ChangeError::unusable)?;
            self.nl.send(&req).map_err(|e| {
                ChangeError::unusable(format!("sending ipset changes over netlink: {e}"))
            })?;
            let mut answered = vec![false; chunk.len()];
            let mut left = chunk.len();
            let mut failed = Vec::new();
            while left > 0 {
                let n = self.nl.recv(&mut rbuf).map_err(|e| {
                    ChangeError::unusable(format!("reading the kernel's ipset answers: {e}"))
                })?;
                let replies = wire::parse_replies(&rbuf[..n]).map_err(|e| {
                    ChangeError::unusable(format!("reading the kernel's ipset answers: {e}"))
                })?;
                for r in replies {
                    let i = r.seq.wrapping_sub(first) as usize;
                    // Not ours (a late answer to an abandoned request).
                    if i >= chunk.len() || answered[i] {
                        continue;
                    }
                    answered[i] = true;
                    left -= 1;
                    if r.errno != 0 {
                        failed.push((i, r.errno));
                    }
                }
            }
            if !failed.is_empty() {
                return Err(describe(chunk, &failed));
            }
        }
        Ok(())
    }
}

/// One message for every failed request of a batch.
fn describe(chunk: &[EntryOp], failed: &[(usize, i32)]) -> ChangeError {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = failed
        .iter()
        .take(SHOWN)
        .map(|(i, errno)| {
            let op = &chunk[*i];
            format!(
                "`ipset {}` ({}): {}",
                op.line(),
                op.set_type.name(),
                wire::error_text(*errno, op.set_type)
            )
        })
        .collect();
    if failed.len() > SHOWN {
        parts.push(format!("and {} more", failed.len() - SHOWN));
    }
    ChangeError {
        msg: format!("ipset netlink change failed: {}", parts.join("; ")),
        fallback: failed.iter().any(|(_, e)| wire::suggests_fallback(*e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::ipset::wire::SetType;
    use crate::model::Family;

    #[test]
    fn errors_name_set_and_entry_and_say_whether_restore_may_help() {
        let op = |set: &str, ty, entry: &str| EntryOp {
            add: true,
            set: set.into(),
            set_type: ty,
            family: Family::V4,
            entry: entry.into(),
        };
        let chunk = vec![
            op("KUBE-NODE-PORT-TCP", SetType::BitmapPort, "30080"),
            op("KUBE-CLUSTER-IP", SetType::HashIpPort, "10.96.0.1,tcp:80"),
        ];
        let e = describe(&chunk, &[(0, 4352)]);
        assert_eq!(
            e.msg,
            "ipset netlink change failed: `ipset add KUBE-NODE-PORT-TCP 30080` (bitmap:port): \
             port outside the set's range (IPSET_ERR_BITMAP_RANGE)"
        );
        assert!(!e.fallback);
        let e = describe(&chunk, &[(0, 4352), (1, libc::ENOENT)]);
        assert!(
            e.msg.contains("KUBE-CLUSTER-IP 10.96.0.1,tcp:80"),
            "{}",
            e.msg
        );
        assert!(e.fallback, "a missing set: restore creates it");
        let many: Vec<_> = (0..7).map(|_| (1, 4352)).collect();
        assert!(describe(&chunk, &many).msg.ends_with("; and 2 more"));
    }
}
