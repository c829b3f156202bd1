//! ipset entry changes over a netfilter netlink socket: batches of ADD/DEL
//! requests (encoded by [`super::wire`]) in one send, every ACK read
//! back. Only the socket lives here.

use super::wire::{self, EntryOp};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
/// How long to wait for the kernel's answers (it answers while handling
/// the send, so they are normally there at once).
const TIMEOUT_SECS: libc::time_t = 2;
/// `SOL_NETLINK` / `NETLINK_CAP_ACK` (linux/netlink.h): errors without the
/// echoed request.
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;

/// A NETLINK_NETFILTER socket for ipset entry changes.
pub struct IpsetSocket {
    fd: OwnedFd,
    seq: u32,
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live T of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl IpsetSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                wire::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid (port id 0: the kernel
        // picks one).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: TIMEOUT_SECS,
            tv_usec: 0,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
        // Kernels before 4.3 lack it; errors then echo the request, which
        // still fits.
        let _ = setsockopt(&fd, SOL_NETLINK, NETLINK_CAP_ACK, &(1 as libc::c_int));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(IpsetSocket { fd, seq: seed })
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: `buf` is valid for its length; an unconnected netlink
        // socket sends to the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::other(format!("sent {n} of {} bytes", buf.len())));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel within {TIMEOUT_SECS}s"),
                    ))
                }
                _ => return Err(e),
            }
        }
    }

    /// Applies `ops` in order; every request is answered before this
    /// returns. On failure the error names each failed set and entry.
    pub fn change(&mut self, ops: &[EntryOp]) -> Result<(), ChangeError> {
        let mut rbuf = vec![0u8; 64 * 1024];
        for chunk in ops.chunks(CHUNK) {
            let first = self.seq;
            self.seq = self.seq.wrapping_add(chunk.len() as u32);
            let req = wire::encode_batch(chunk, first).map_err(ChangeError::unusable)?;
            self.send(&req).map_err(|e| {
                ChangeError::unusable(format!("sending ipset changes over netlink: {e}"))
            })?;
            let mut answered = vec![false; chunk.len()];
            let mut left = chunk.len();
            let mut failed = Vec::new();
            while left > 0 {
                let n = self.recv(&mut rbuf).map_err(|e| {
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
