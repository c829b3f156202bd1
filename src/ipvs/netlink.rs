//! The IPVS applier: generic netlink (family "IPVS") over a neli socket. Only
//! the socket lives here; every attribute is encoded/decoded by [`super::wire`].

use super::desired::{Current, Op};
use super::wire::{self, cmd, cmd_attr, DestStats, Destination, ServiceId, VirtualServer};
use anyhow::{anyhow, bail, Result};
use neli::{
    consts::{nl::NlmF, socket::NlFamily},
    genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, NlattrBuilder},
    nl::NlPayload,
    router::synchronous::NlRouter,
    types::{Buffer, GenlBuffer},
    utils::Groups,
};
use std::collections::BTreeMap;

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

/// A generic netlink socket bound to the IPVS family.
pub struct IpvsSocket {
    router: NlRouter,
    family: u16,
}

/// Why IPVS is unusable, in words an operator can act on.
pub fn unavailable_hint() -> &'static str {
    "the kernel has no IPVS (load the ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh and nf_conntrack modules, or use --proxy-mode iptables)"
}

impl IpvsSocket {
    pub fn connect() -> Result<Self> {
        let (router, _multicast) = NlRouter::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(|e| anyhow!("opening a generic netlink socket: {e}"))?;
        let family = router.resolve_genl_family(wire::GENL_NAME).map_err(|e| {
            anyhow!(
                "resolving the IPVS netlink family: {e}; {}",
                unavailable_hint()
            )
        })?;
        Ok(IpvsSocket { router, family })
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
        &self,
        command: u8,
        attrs: Vec<(u16, Vec<u8>)>,
        dump: bool,
        want: u16,
    ) -> Result<Vec<Vec<u8>>> {
        let mut buf = GenlBuffer::new();
        for (ty, payload) in attrs {
            buf.push(Self::attr(ty, payload)?);
        }
        let msg = GenlmsghdrBuilder::default()
            .cmd(command)
            .version(wire::GENL_VERSION)
            .attrs(buf)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let flags = if dump { NlmF::DUMP } else { NlmF::ACK };
        let recv = self
            .router
            .send::<u16, Msg, u16, Msg>(self.family, flags, NlPayload::Payload(msg))
            .map_err(|e| anyhow!("sending IPVS command {command}: {e}"))?;
        let mut out = Vec::new();
        for reply in recv {
            let reply = reply.map_err(|e| match &e {
                neli::err::RouterError::Nlmsgerr(m) => anyhow!(
                    "IPVS command {command}: {}",
                    std::io::Error::from_raw_os_error(-*m.error())
                ),
                _ => anyhow!("IPVS command {command}: {e}"),
            })?;
            let Some(p) = reply.get_payload() else {
                continue;
            };
            for a in p.attrs().iter() {
                if *a.nla_type().nla_type() == want {
                    out.push(a.nla_payload().as_ref().to_vec());
                }
            }
        }
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
