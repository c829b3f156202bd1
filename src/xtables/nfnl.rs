//! A netfilter netlink (NETLINK_NETFILTER) socket: send a request buffer,
//! read answers with a timeout, EINTR retried. And what every netlink codec
//! of the project shares (pure): attributes written and read, and a received
//! buffer split into messages. The messages themselves are the callers'
//! (ipset entries, nf_tables dumps, conntrack, IPVS).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How long to wait for the kernel's answers (it answers while handling
/// the send, so they are normally there at once).
const TIMEOUT_SECS: libc::time_t = 2;
/// `SOL_NETLINK` / `NETLINK_CAP_ACK` (linux/netlink.h): errors without the
/// echoed request.
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;

/// `NETLINK_NETFILTER` (linux/netlink.h).
pub const NETLINK_NETFILTER: i32 = 12;
/// `struct nlmsghdr`'s size.
pub const NLMSG_HDRLEN: usize = 16;
/// An attribute holding attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// An attribute's type without its flags.
pub const NLA_TYPE_MASK: u16 = 0x3fff;

pub fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

pub fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Appends one attribute, padded to 4 bytes.
pub fn put(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Appends a nested attribute whose contents `f` writes.
pub fn nest(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// One message of a received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// What follows the header.
    pub body: &'a [u8],
}

/// The messages in one received buffer; an error when one overruns it.
pub fn messages(buf: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, i) as usize;
        if len < NLMSG_HDRLEN || i + len > buf.len() {
            return Err(format!(
                "netlink message of {len} bytes at {i} overruns {}",
                buf.len()
            ));
        }
        out.push(Message {
            ty: u16_at(buf, i + 4),
            flags: u16_at(buf, i + 6),
            seq: u32_at(buf, i + 8),
            body: &buf[i + NLMSG_HDRLEN..i + len],
        });
        i += (len + 3) & !3;
    }
    Ok(out)
}

/// The attributes in `b`: (type without flags, payload).
pub fn attrs(b: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    let mut j = 0;
    while j + 4 <= b.len() {
        let len = u16_at(b, j) as usize;
        if len < 4 || j + len > b.len() {
            return Err(format!(
                "attribute of {len} bytes at {j} overruns its {} bytes",
                b.len()
            ));
        }
        out.push((u16_at(b, j + 2) & NLA_TYPE_MASK, &b[j + 4..j + len]));
        j += (len + 3) & !3;
    }
    Ok(out)
}

/// A NETLINK_NETFILTER socket.
pub struct NfnlSocket {
    fd: OwnedFd,
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

impl NfnlSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
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
        Ok(NfnlSocket { fd })
    }

    /// Asks for a receive buffer of `bytes` (the kernel doubles it for its
    /// bookkeeping): past `net.core.rmem_max` with CAP_NET_ADMIN
    /// (SO_RCVBUFFORCE), up to it otherwise.
    pub fn grow_rcvbuf(&self, bytes: usize) {
        let v = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
        if setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &v).is_err() {
            let _ = setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &v);
        }
    }

    /// The receive buffer's size as the kernel accounts it (SO_RCVBUF).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are live and of the sizes passed.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v.max(0) as usize)
    }

    /// A first sequence number that differs between runs.
    pub fn seed(&self) -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1)
    }

    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
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

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_and_messages_round_trip() {
        let mut body = vec![2u8, 0, 0, 0];
        put(&mut body, 1, b"abc\0");
        nest(&mut body, 2, |b| put(b, 3, &7u32.to_be_bytes()));
        assert_eq!(body.len(), 4 + 8 + 4 + 8);
        let got = attrs(&body[4..]).unwrap();
        assert_eq!(got[0], (1, &b"abc\0"[..]));
        assert_eq!(got[1].0, 2, "NLA_F_NESTED masked");
        assert_eq!(attrs(got[1].1).unwrap(), vec![(3, &7u32.to_be_bytes()[..])]);
        let mut buf = Vec::new();
        buf.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&0x0a06u16.to_ne_bytes());
        buf.extend_from_slice(&0x10u16.to_ne_bytes());
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&body);
        let m = messages(&buf).unwrap();
        assert_eq!(
            (m[0].ty, m[0].flags, m[0].seq, m[0].body),
            (0x0a06, 0x10, 9, &body[..])
        );
        assert!(messages(&buf[..buf.len() - 2]).is_err());
        assert!(
            attrs(&[9, 0, 1, 0]).is_err(),
            "an attribute longer than its buffer"
        );
    }
}
