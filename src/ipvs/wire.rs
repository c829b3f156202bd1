//! IPVS generic netlink attributes (family "IPVS", version 1), encoded and
//! decoded here and nowhere else. Pure: the socket lives in `netlink.rs`.
//!
//! Layout from the kernel's uapi header `linux/ip_vs.h`: a command carries a
//! nested IPVS_CMD_ATTR_SERVICE and/or IPVS_CMD_ATTR_DEST; inside them,
//! attributes are `struct nlattr` (u16 length incl. the 4-byte header, u16
//! type, native endian) padded to 4 bytes. Ports are big endian; addresses
//! are a 16-byte `union nf_inet_addr` (IPv4 in the first 4 bytes).

use crate::model::{Family, Protocol};
use crate::xtables::nfnl::put;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const GENL_NAME: &str = "IPVS";
pub const GENL_VERSION: u8 = 1;

/// Commands (`IPVS_CMD_*`).
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const FLUSH: u8 = 17;
}

/// Top-level attributes (`IPVS_CMD_ATTR_*`).
pub mod cmd_attr {
    pub const SERVICE: u16 = 1;
    pub const DEST: u16 = 2;
}

mod svc_attr {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
}

mod dest_attr {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const PERSIST_CONNS: u16 = 9;
    pub const ADDR_FAMILY: u16 = 11;
}

/// `IP_VS_SVC_F_PERSISTENT`: session affinity.
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_SCHED2` (`IP_VS_SVC_F_SCHED_MH_PORT` for the mh scheduler).
pub const SVC_F_SCHED_MH_PORT: u32 = 0x10;
/// `IP_VS_CONN_F_MASQ`: NAT forwarding.
pub const CONN_F_MASQ: u32 = 0x0;
/// Longest scheduler name the kernel takes (`IP_VS_SCHEDNAME_MAXLEN` - 1).
pub const SCHED_NAME_MAX: usize = 15;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn af(f: Family) -> u16 {
    match f {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    }
}

fn ipproto(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Identity of a virtual server: one per (VIP, port, protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl ServiceId {
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }
}

/// A virtual server as programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    pub id: ServiceId,
    pub scheduler: String,
    /// Persistence timeout in seconds (session affinity), if persistent.
    pub persistence: Option<u32>,
}

/// A real server behind a virtual server (always NAT mode here).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// Connection counters the kernel reports for a destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestStats {
    pub active: u32,
    pub inactive: u32,
    pub persistent: u32,
}

fn addr16(ip: &IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
    }
    a
}

/// The nested attributes naming a service (enough for DEL and GET of one).
fn service_id_attrs(buf: &mut Vec<u8>, id: &ServiceId) {
    put(buf, svc_attr::AF, &af(id.family()).to_ne_bytes());
    put(buf, svc_attr::PROTOCOL, &ipproto(id.protocol).to_ne_bytes());
    put(buf, svc_attr::ADDR, &addr16(&id.addr));
    put(buf, svc_attr::PORT, &id.port.to_be_bytes());
}

/// Payload of IPVS_CMD_ATTR_SERVICE. `full` adds what NEW/SET need.
pub fn encode_service(vs: &VirtualServer, full: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(80);
    service_id_attrs(&mut buf, &vs.id);
    if full {
        let mut name = vs.scheduler.as_bytes().to_vec();
        name.truncate(SCHED_NAME_MAX);
        name.push(0);
        put(&mut buf, svc_attr::SCHED_NAME, &name);
        let mut flags = if vs.persistence.is_some() {
            SVC_F_PERSISTENT
        } else {
            0
        };
        // As upstream: the Maglev scheduler hashes the source port too.
        if vs.scheduler == "mh" {
            flags |= SVC_F_SCHED_MH_PORT;
        }
        let mut f = flags.to_ne_bytes().to_vec();
        f.extend_from_slice(&u32::MAX.to_ne_bytes());
        put(&mut buf, svc_attr::FLAGS, &f);
        put(
            &mut buf,
            svc_attr::TIMEOUT,
            &vs.persistence.unwrap_or(0).to_ne_bytes(),
        );
        let netmask: u32 = match vs.id.family() {
            Family::V4 => u32::MAX,
            Family::V6 => 128,
        };
        put(&mut buf, svc_attr::NETMASK, &netmask.to_ne_bytes());
    }
    buf
}

/// Payload of IPVS_CMD_ATTR_SERVICE naming only the service.
pub fn encode_service_id(id: &ServiceId) -> Vec<u8> {
    let mut buf = Vec::with_capacity(48);
    service_id_attrs(&mut buf, id);
    buf
}

/// Payload of IPVS_CMD_ATTR_DEST. `full` adds what NEW/SET need.
pub fn encode_dest(d: &Destination, full: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(72);
    put(&mut buf, dest_attr::ADDR, &addr16(&d.addr));
    put(&mut buf, dest_attr::PORT, &d.port.to_be_bytes());
    if full {
        put(&mut buf, dest_attr::FWD_METHOD, &CONN_F_MASQ.to_ne_bytes());
        put(&mut buf, dest_attr::WEIGHT, &d.weight.to_ne_bytes());
        put(&mut buf, dest_attr::U_THRESH, &0u32.to_ne_bytes());
        put(&mut buf, dest_attr::L_THRESH, &0u32.to_ne_bytes());
        put(
            &mut buf,
            dest_attr::ADDR_FAMILY,
            &af(Family::of(&d.addr)).to_ne_bytes(),
        );
    }
    buf
}

/// Iterates the attributes in `buf` as (type without flags, payload).
pub fn attrs(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[i], buf[i + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[i + 2], buf[i + 3]]) & 0x3fff;
        if len < 4 || i + len > buf.len() {
            return Err(format!("bad netlink attribute length {len} at offset {i}"));
        }
        out.push((ty, &buf[i + 4..i + len]));
        i += (len + 3) & !3;
    }
    Ok(out)
}

fn u16_of(p: &[u8]) -> Result<u16, String> {
    p.get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| "short u16".into())
}

fn u32_of(p: &[u8]) -> Result<u32, String> {
    p.get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "short u32".into())
}

fn be16_of(p: &[u8]) -> Result<u16, String> {
    p.get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| "short port".into())
}

fn ip_of(p: &[u8], family: u16) -> Result<IpAddr, String> {
    match family {
        AF_INET => p
            .get(..4)
            .map(|b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            .ok_or_else(|| "short IPv4 address".into()),
        AF_INET6 => {
            let b: [u8; 16] = p
                .get(..16)
                .and_then(|b| b.try_into().ok())
                .ok_or("short IPv6 address")?;
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        f => Err(format!("unknown address family {f}")),
    }
}

/// Decodes a service from the kernel. `None` for services this proxy never
/// creates (firewall-mark services, unknown protocols).
pub fn decode_service(buf: &[u8]) -> Result<Option<VirtualServer>, String> {
    let (mut family, mut proto, mut addr, mut port) = (None, None, None, None);
    let (mut sched, mut flags, mut timeout) = (String::new(), 0u32, 0u32);
    for (ty, p) in attrs(buf)? {
        match ty {
            svc_attr::AF => family = Some(u16_of(p)?),
            svc_attr::PROTOCOL => proto = Some(u16_of(p)?),
            svc_attr::ADDR => addr = Some(p),
            svc_attr::PORT => port = Some(be16_of(p)?),
            svc_attr::SCHED_NAME => {
                sched = String::from_utf8_lossy(p)
                    .trim_end_matches('\0')
                    .to_string()
            }
            svc_attr::FLAGS => flags = u32_of(p)?,
            svc_attr::TIMEOUT => timeout = u32_of(p)?,
            _ => {}
        }
    }
    let (Some(family), Some(proto), Some(addr), Some(port)) = (family, proto, addr, port) else {
        return Ok(None);
    };
    let protocol = match proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return Ok(None),
    };
    Ok(Some(VirtualServer {
        id: ServiceId {
            addr: ip_of(addr, family)?,
            protocol,
            port,
        },
        scheduler: sched,
        persistence: (flags & SVC_F_PERSISTENT != 0).then_some(timeout),
    }))
}

/// Decodes a destination; `family` is the service's when the kernel omits it.
pub fn decode_dest(buf: &[u8], family: Family) -> Result<(Destination, DestStats), String> {
    let (mut addr, mut port, mut weight, mut af_attr) = (None, None, 0u32, None);
    let mut stats = DestStats::default();
    for (ty, p) in attrs(buf)? {
        match ty {
            dest_attr::ADDR => addr = Some(p),
            dest_attr::PORT => port = Some(be16_of(p)?),
            dest_attr::WEIGHT => weight = u32_of(p)?,
            dest_attr::ACTIVE_CONNS => stats.active = u32_of(p)?,
            dest_attr::INACT_CONNS => stats.inactive = u32_of(p)?,
            dest_attr::PERSIST_CONNS => stats.persistent = u32_of(p)?,
            dest_attr::ADDR_FAMILY => af_attr = Some(u16_of(p)?),
            _ => {}
        }
    }
    let fam = af_attr.unwrap_or(af(family));
    let addr = ip_of(addr.ok_or("destination without address")?, fam)?;
    let port = port.ok_or("destination without port")?;
    Ok((Destination { addr, port, weight }, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(addr: &str, port: u16, persistence: Option<u32>) -> VirtualServer {
        VirtualServer {
            id: ServiceId {
                addr: addr.parse().unwrap(),
                protocol: Protocol::Tcp,
                port,
            },
            scheduler: "rr".into(),
            persistence,
        }
    }

    // Byte vectors written out by hand from the uapi definitions (x86_64: little
    // endian lengths/types/u32s, big endian ports).
    #[test]
    fn new_service_ipv4_bytes() {
        let got = encode_service(&vs("10.96.0.10", 80, None), true);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            6, 0, 1, 0, 2, 0, 0, 0,                         // AF = AF_INET
            6, 0, 2, 0, 6, 0, 0, 0,                         // PROTOCOL = TCP
            20, 0, 3, 0, 10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR
            6, 0, 4, 0, 0, 80, 0, 0,                        // PORT = 80 (big endian)
            7, 0, 6, 0, b'r', b'r', 0, 0,                   // SCHED_NAME = "rr\0"
            12, 0, 7, 0, 0, 0, 0, 0, 255, 255, 255, 255,    // FLAGS {flags 0, mask ~0}
            8, 0, 8, 0, 0, 0, 0, 0,                         // TIMEOUT = 0
            8, 0, 9, 0, 255, 255, 255, 255,                 // NETMASK = /32
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn persistent_ipv6_service_bytes() {
        let got = encode_service(&vs("fd00::a", 443, Some(10800)), true);
        assert_eq!(&got[..8], &[6, 0, 1, 0, 10, 0, 0, 0], "AF_INET6");
        let addr = &got[16..36];
        assert_eq!(&addr[..4], &[20, 0, 3, 0]);
        assert_eq!(&addr[4..], &"fd00::a".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(&got[36..44], &[6, 0, 4, 0, 1, 187, 0, 0], "443 big endian");
        let flags = &got[52..64];
        assert_eq!(
            flags,
            &[12, 0, 7, 0, 1, 0, 0, 0, 255, 255, 255, 255],
            "PERSISTENT"
        );
        assert_eq!(
            &got[64..72],
            &[8, 0, 8, 0, 0x30, 0x2a, 0, 0],
            "timeout 10800"
        );
        assert_eq!(&got[72..80], &[8, 0, 9, 0, 128, 0, 0, 0], "netmask 128");
    }

    #[test]
    fn dest_bytes() {
        let d = Destination {
            addr: "10.244.1.10".parse().unwrap(),
            port: 8080,
            weight: 1,
        };
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            20, 0, 1, 0, 10, 244, 1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR
            6, 0, 2, 0, 0x1f, 0x90, 0, 0,                   // PORT = 8080
            8, 0, 3, 0, 0, 0, 0, 0,                         // FWD_METHOD = MASQ
            8, 0, 4, 0, 1, 0, 0, 0,                         // WEIGHT = 1
            8, 0, 5, 0, 0, 0, 0, 0,                         // U_THRESH
            8, 0, 6, 0, 0, 0, 0, 0,                         // L_THRESH
            6, 0, 11, 0, 2, 0, 0, 0,                        // ADDR_FAMILY = AF_INET
        ];
        assert_eq!(encode_dest(&d, true), want);
        assert_eq!(
            encode_dest(&d, false),
            want[..28].to_vec(),
            "DEL needs only addr+port"
        );
    }

    #[test]
    fn round_trips() {
        for v in [vs("10.96.0.10", 80, None), vs("fd00::1", 53, Some(600))] {
            assert_eq!(decode_service(&encode_service(&v, true)).unwrap(), Some(v));
        }
        let d = Destination {
            addr: "fd00::9".parse().unwrap(),
            port: 9090,
            weight: 0,
        };
        let (back, stats) = decode_dest(&encode_dest(&d, true), Family::V6).unwrap();
        assert_eq!(back, d);
        assert_eq!(stats, DestStats::default());
    }

    #[test]
    fn decodes_kernel_counters_and_rejects_garbage() {
        let d = Destination {
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
            weight: 1,
        };
        let mut buf = encode_dest(&d, true);
        put(&mut buf, dest_attr::ACTIVE_CONNS, &3u32.to_ne_bytes());
        put(&mut buf, dest_attr::INACT_CONNS, &5u32.to_ne_bytes());
        let mut mh = vs("10.0.0.9", 80, None);
        mh.scheduler = "mh".into();
        let enc = encode_service(&mh, true);
        assert_eq!(
            &enc[52..64],
            &[12, 0, 7, 0, 0x10, 0, 0, 0, 255, 255, 255, 255],
            "mh hashes ports"
        );
        let (_, s) = decode_dest(&buf, Family::V4).unwrap();
        assert_eq!((s.active, s.inactive), (3, 5));
        assert!(attrs(&[200, 0, 1, 0, 0]).is_err(), "length past the end");
        assert!(attrs(&[2, 0, 1, 0]).is_err(), "length below the header");
        // A firewall-mark service (no address/port) is not ours.
        let mut fw = Vec::new();
        put(&mut fw, svc_attr::AF, &AF_INET.to_ne_bytes());
        assert_eq!(decode_service(&fw).unwrap(), None);
    }
}
