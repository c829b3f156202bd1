//! A netfilter netlink (NETLINK_NETFILTER) socket: send a request buffer,
//! read answers with a timeout, EINTR retried. Messages are encoded and
//! decoded by the callers' pure codecs (ipset entries, nf_tables dumps).

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
