//! The IPVS applier: generic netlink (family "IPVS") over a neli socket. Only
//! the socket lives here; every attribute is encoded/decoded by [`super::wire`].

use super::desired::{Current, Op};
use super::wire::{self, cmd, cmd_attr, DestStats, Destination, ServiceId, VirtualServer};
use anyhow::{anyhow, bail, Result};
use neli::{
    consts::{
        genl::{CtrlAttr, CtrlCmd},
        nl::{GenlId, NlmF, Nlmsg},
        socket::NlFamily,
    },
    err::SocketError,
    genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, NlattrBuilder},
    nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder},
    socket::synchronous::NlSocketHandle,
    types::{Buffer, GenlBuffer},
    utils::Groups,
};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;

/// The kernel side of IPVS; faked in tests.
pub trait IpvsKernel: Send {
    /// Every virtual server (IP:port services only) with its real servers.
    fn list(&mut self) -> Result<BTreeMap<ServiceId, Current>>;
    /// The real servers of one virtual server, with connection counters.
    fn dests(&mut self, vs: &ServiceId) -> Result<Vec<(Destination, DestStats)>>;
    /// Applies one change.
    fn apply(&mut self, op: &Op) -> Result<()>;
}

type Msg = Genlmsghdr<u8, u16>;

/// A generic netlink socket bound to the IPVS family. Each request is sent
/// and its answers read in the caller's thread, until the ACK or the end of
/// the dump. A change is answered while the kernel handles the send, and a
/// dump's later parts while we read. No helper thread is woken on the way
/// (neli's router used one: two thread wake-ups per call, about 0.10 of the
/// 0.13 ms an added real server took in the QEMU guest).
pub struct IpvsSocket {
    sock: NlSocketHandle,
    family: u16,
    seq: u32,
}

/// Why IPVS is unusable, in words an operator can act on.
pub fn unavailable_hint() -> &'static str {
    "the kernel has no IPVS (load the ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh and nf_conntrack modules, or use --proxy-mode iptables)"
}

/// How long one answer may take before the call fails (the kernel answers
/// at once; this only bounds a wedged socket).
const RECV_TIMEOUT_S: libc::time_t = 10;

/// What one message of the kernel's answer means for request `seq`.
#[derive(Debug, PartialEq)]
enum Step<'a, P> {
    /// An answer to another (earlier, timed-out) request.
    Skip,
    Payload(&'a P),
    /// The ACK of a change, or the end of a dump.
    Done,
    /// The request failed with this errno.
    Failed(i32),
}

fn step<T: neli::consts::nl::NlType, P>(m: &Nlmsghdr<T, P>, seq: u32) -> Step<'_, P> {
    if *m.nl_seq() != seq {
        return Step::Skip;
    }
    let ty: u16 = (*m.nl_type()).into();
    let done = ty == u16::from(Nlmsg::Done);
    match m.nl_payload() {
        NlPayload::Err(e) => Step::Failed(-*e.error()),
        NlPayload::DumpExtAck(e) if *e.error() != 0 => Step::Failed(-*e.error()),
        NlPayload::Ack(_) | NlPayload::DumpExtAck(_) => Step::Done,
        _ if done => Step::Done,
        NlPayload::Payload(p) => Step::Payload(p),
        NlPayload::Empty => Step::Skip,
    }
}

impl IpvsSocket {
    pub fn connect() -> Result<Self> {
        let sock = NlSocketHandle::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(|e| anyhow!("opening a generic netlink socket: {e}"))?;
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT_S,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads a timeval we own, of the size we pass.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!(
                "setting a receive timeout on the IPVS socket: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut s = IpvsSocket {
            sock,
            family: 0,
            seq: 0,
        };
        s.family = s.resolve_family().map_err(|e| {
            anyhow!(
                "resolving the IPVS netlink family: {e}; {}",
                unavailable_hint()
            )
        })?;
        Ok(s)
    }

    /// Asks the generic netlink controller for the IPVS family's id.
    fn resolve_family(&mut self) -> Result<u16> {
        let name = NlattrBuilder::default()
            .nla_type(
                AttrTypeBuilder::default()
                    .nla_type(CtrlAttr::FamilyName)
                    .build()
                    .map_err(|e| anyhow!("{e}"))?,
            )
            .nla_payload(wire::GENL_NAME)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let msg = GenlmsghdrBuilder::<CtrlCmd, CtrlAttr>::default()
            .cmd(CtrlCmd::Getfamily)
            .version(2)
            .attrs(std::iter::once(name).collect::<GenlBuffer<_, _>>())
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let mut id = None;
        self.exchange(
            GenlId::Ctrl,
            NlmF::ACK,
            msg,
            |p: &Genlmsghdr<CtrlCmd, CtrlAttr>| {
                if let Ok(v) = p
                    .attrs()
                    .get_attr_handle()
                    .get_attr_payload_as::<u16>(CtrlAttr::FamilyId)
                {
                    id = Some(v);
                }
            },
        )?;
        id.ok_or_else(|| anyhow!("no family named {}", wire::GENL_NAME))
    }

    /// Sends one request and hands every answer's payload to `each` until
    /// the ACK (changes) or the end of the dump; answers to earlier requests
    /// (a call that timed out) are skipped by their sequence number.
    fn exchange<T, C, A>(
        &mut self,
        ty: T,
        flags: NlmF,
        payload: Genlmsghdr<C, A>,
        mut each: impl FnMut(&Genlmsghdr<C, A>),
    ) -> Result<()>
    where
        T: neli::consts::nl::NlType + Copy + std::fmt::Debug,
        C: neli::consts::genl::Cmd + std::fmt::Debug,
        A: neli::consts::genl::NlAttrType + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = NlmsghdrBuilder::default()
            .nl_type(ty)
            .nl_flags(flags | NlmF::REQUEST)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(payload))
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        self.sock.send(&msg).map_err(|e| anyhow!("{e}"))?;
        loop {
            let answers = match self.sock.recv::<T, Genlmsghdr<C, A>>() {
                Ok((answers, _)) => answers,
                // A signal arrived while we waited (with a receive timeout
                // set, the kernel does not restart the read): read again.
                Err(SocketError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("reading the kernel's answer: {e}"),
            };
            for m in answers {
                let m: Nlmsghdr<T, Genlmsghdr<C, A>> =
                    m.map_err(|e| anyhow!("decoding the kernel's answer: {e}"))?;
                match step(&m, seq) {
                    Step::Skip => {}
                    Step::Payload(p) => each(p),
                    Step::Done => return Ok(()),
                    Step::Failed(errno) => {
                        return Err(std::io::Error::from_raw_os_error(errno).into())
                    }
                }
            }
        }
    }

    fn attr(ty: u16, payload: Vec<u8>) -> Result<neli::genl::Nlattr<u16, Buffer>> {
        NlattrBuilder::default()
            .nla_type(
                AttrTypeBuilder::default()
                    .nla_nested(true)
                    .nla_type(ty)
                    .build()
                    .map_err(|e| anyhow!("{e}"))?,
            )
            .nla_payload(Buffer::from(payload))
            .build()
            .map_err(|e| anyhow!("{e}"))
    }

    /// Sends one command; returns the payloads of the `want` attribute of
    /// every reply (dumps), or nothing for acknowledged changes.
    fn call(
        &mut self,
        command: u8,
        attrs: Vec<(u16, Vec<u8>)>,
        dump: bool,
        want: u16,
    ) -> Result<Vec<Vec<u8>>> {
        let mut buf = GenlBuffer::new();
        for (ty, payload) in attrs {
            buf.push(Self::attr(ty, payload)?);
        }
        let msg: Msg = GenlmsghdrBuilder::default()
            .cmd(command)
            .version(wire::GENL_VERSION)
            .attrs(buf)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let flags = if dump { NlmF::DUMP } else { NlmF::ACK };
        let mut out = Vec::new();
        let family = self.family;
        self.exchange(family, flags, msg, |p: &Msg| {
            for a in p.attrs().iter() {
                if *a.nla_type().nla_type() == want {
                    out.push(a.nla_payload().as_ref().to_vec());
                }
            }
        })
        .map_err(|e| anyhow!("IPVS command {command}: {e}"))?;
        Ok(out)
    }
}

fn service_attr(vs: &VirtualServer, full: bool) -> (u16, Vec<u8>) {
    (cmd_attr::SERVICE, wire::encode_service(vs, full))
}

impl IpvsKernel for IpvsSocket {
    fn list(&mut self) -> Result<BTreeMap<ServiceId, Current>> {
        let mut out = BTreeMap::new();
        for raw in self.call(cmd::GET_SERVICE, vec![], true, cmd_attr::SERVICE)? {
            let Some(vs) =
                wire::decode_service(&raw).map_err(|e| anyhow!("decoding an IPVS service: {e}"))?
            else {
                continue;
            };
            let dests = self.dests(&vs.id)?;
            out.insert(vs.id.clone(), Current { vs, dests });
        }
        Ok(out)
    }

    fn dests(&mut self, id: &ServiceId) -> Result<Vec<(Destination, DestStats)>> {
        let raw = self.call(
            cmd::GET_DEST,
            vec![(cmd_attr::SERVICE, wire::encode_service_id(id))],
            true,
            cmd_attr::DEST,
        )?;
        raw.iter()
            .map(|r| {
                wire::decode_dest(r, id.family())
                    .map_err(|e| anyhow!("decoding an IPVS destination: {e}"))
            })
            .collect()
    }

    fn apply(&mut self, op: &Op) -> Result<()> {
        let (command, attrs) = match op {
            Op::AddService(vs) => (cmd::NEW_SERVICE, vec![service_attr(vs, true)]),
            Op::UpdateService(vs) => (cmd::SET_SERVICE, vec![service_attr(vs, true)]),
            Op::DelService(id) => (
                cmd::DEL_SERVICE,
                vec![(cmd_attr::SERVICE, wire::encode_service_id(id))],
            ),
            Op::AddDest(id, d) | Op::UpdateDest(id, d) | Op::DelDest(id, d) => {
                let (c, full) = match op {
                    Op::AddDest(..) => (cmd::NEW_DEST, true),
                    Op::UpdateDest(..) => (cmd::SET_DEST, true),
                    _ => (cmd::DEL_DEST, false),
                };
                (
                    c,
                    vec![
                        (cmd_attr::SERVICE, wire::encode_service_id(id)),
                        (cmd_attr::DEST, wire::encode_dest(d, full)),
                    ],
                )
            }
        };
        let r = self.call(command, attrs, false, 0);
        match (r, op) {
            (Ok(_), _) => Ok(()),
            // Gone already: the goal of a delete is met.
            (Err(e), Op::DelService(_) | Op::DelDest(..)) if e.to_string().contains("No such") => {
                Ok(())
            }
            (Err(e), _) => bail!("{e} ({op:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neli::FromBytes;
    use std::io::Cursor;

    /// One netlink message: header (length, type, flags, seq, port id) and body.
    fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    fn parse(bytes: &[u8]) -> Nlmsghdr<u16, Msg> {
        Nlmsghdr::from_bytes(&mut Cursor::new(bytes)).expect("a well-formed message")
    }

    /// An NLMSG_ERROR body: the errno (negative) and, for a failure, the
    /// request echoed back (header and generic netlink header; the socket
    /// does not ask for capped errors), for an ACK only its header.
    fn error_body(errno: i32, seq: u32) -> Vec<u8> {
        let mut b = (-errno).to_ne_bytes().to_vec();
        if errno == 0 {
            b.extend_from_slice(&message(FAMILY, 0x5, seq, &[])[..16]);
        } else {
            b.extend(message(FAMILY, 0x5, seq, &[5, 1, 0, 0]));
        }
        b
    }

    const FAMILY: u16 = 0x20;
    const MULTI: u16 = 0x2;
    const CAPPED: u16 = 0x100;

    #[test]
    fn an_ack_ends_a_change() {
        let m = parse(&message(2, CAPPED, 7, &error_body(0, 7)));
        assert_eq!(step(&m, 7), Step::Done);
    }

    #[test]
    fn an_error_names_its_errno() {
        let m = parse(&message(2, 0, 7, &error_body(libc::EEXIST, 7)));
        assert_eq!(step(&m, 7), Step::Failed(libc::EEXIST));
    }

    #[test]
    fn answers_to_another_request_are_skipped() {
        let m = parse(&message(2, 0, 6, &error_body(libc::ENOENT, 6)));
        assert_eq!(step(&m, 7), Step::Skip);
    }

    #[test]
    fn dump_parts_then_done() {
        // cmd 1 (a service), version 1, then one attribute: type 1, 4 bytes.
        let body = [1u8, 1, 0, 0, 8, 0, 1, 0, 10, 96, 0, 10];
        let m = parse(&message(FAMILY, MULTI, 7, &body));
        match step(&m, 7) {
            Step::Payload(p) => {
                assert_eq!(*p.cmd(), 1);
                let a = p.attrs().iter().next().expect("one attribute");
                assert_eq!(*a.nla_type().nla_type(), 1);
                assert_eq!(a.nla_payload().as_ref(), &[10, 96, 0, 10]);
            }
            other => panic!("a payload, not {other:?}"),
        }
        let done = parse(&message(3, MULTI, 7, &0i32.to_ne_bytes()));
        assert_eq!(step(&done, 7), Step::Done);
    }

    #[test]
    fn a_dump_that_fails_at_its_end_is_an_error() {
        let done = parse(&message(3, MULTI, 7, &(-libc::EINVAL).to_ne_bytes()));
        assert_eq!(step(&done, 7), Step::Failed(libc::EINVAL));
    }
}
