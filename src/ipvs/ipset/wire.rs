//! ipset entry changes over netfilter netlink (subsystem IPSET): the
//! `ipset restore` entry strings parsed into typed values and encoded as
//! IPSET_CMD_ADD/IPSET_CMD_DEL messages here and nowhere else. Pure: the
//! socket lives in `socket.rs`.
//!
//! Layout from the uapi headers `linux/netfilter/nfnetlink.h` and
//! `linux/netfilter/ipset/ip_set.h`, and from what the kernel's
//! `ip_set_core.c` (`ip_set_ad`, `ip_set_get_ipaddr4/6`) and the `uadt`
//! functions of `ip_set_hash_{ip,ipport,ipportip,ipportnet}.c` and
//! `ip_set_bitmap_port.c` read: a `struct nlmsghdr` of type
//! `NFNL_SUBSYS_IPSET << 8 | cmd`, a `struct nfgenmsg {family, version
//! NFNETLINK_V0, res_id 0}`, then IPSET_ATTR_PROTOCOL (u8), IPSET_ATTR_SETNAME
//! (NUL-terminated) and IPSET_ATTR_DATA (NLA_F_NESTED) holding the element:
//! addresses as nested IPSET_ATTR_IP/IP2 around an IPSET_ATTR_IPADDR_IPV4/6
//! marked NLA_F_NET_BYTEORDER, the port as a big-endian u16 marked
//! NLA_F_NET_BYTEORDER, the protocol and prefix lengths as u8. Without
//! NLM_F_EXCL the kernel sets IPSET_FLAG_EXIST (`flag_exist`), so adding an
//! entry twice or deleting a missing one succeeds, as `ipset restore -exist`.

use crate::model::Family;
use crate::xtables::nfnl::{messages, nest, put, NLMSG_HDRLEN};
use std::net::IpAddr;

/// `NFNL_SUBSYS_IPSET` (linux/netfilter/nfnetlink.h).
const NFNL_SUBSYS_IPSET: u16 = 6;
const NFNETLINK_V0: u8 = 0;
/// Sent as IPSET_ATTR_PROTOCOL. ADD/DEL take any version from
/// IPSET_PROTOCOL_MIN (6) on kernels that know protocol 7, and exactly 6 on
/// older ones (`protocol_failed`), so 6 works on both.
pub const PROTOCOL: u8 = 6;
/// `IPSET_MAXNAMELEN` includes the NUL.
const MAX_NAME: usize = 31;

const CMD_ADD: u16 = 9;
const CMD_DEL: u16 = 10;

const ATTR_PROTOCOL: u16 = 1;
const ATTR_SETNAME: u16 = 2;
const ATTR_DATA: u16 = 7;

const ADT_IP: u16 = 1;
const ADT_PORT: u16 = 4;
const ADT_PROTO: u16 = 7;
const ADT_IP2: u16 = 20;
const ADT_CIDR2: u16 = 21;

const IPADDR_IPV4: u16 = 1;
const IPADDR_IPV6: u16 = 2;

const NLA_F_NET_BYTEORDER: u16 = 1 << 14;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `IPSET_ERR_PRIVATE` + 1 and on (linux/netfilter/ipset/ip_set.h).
pub const ERR_PROTOCOL: i32 = 4097;
const ERR_NAMES: [&str; 18] = [
    "protocol error (IPSET_ERR_PROTOCOL)",
    "set type not supported (IPSET_ERR_FIND_TYPE)",
    "maximal number of sets reached (IPSET_ERR_MAX_SETS)",
    "set is in use (IPSET_ERR_BUSY)",
    "second set does not exist (IPSET_ERR_EXIST_SETNAME2)",
    "set type mismatch (IPSET_ERR_TYPE_MISMATCH)",
    "element already added or missing (IPSET_ERR_EXIST)",
    "invalid CIDR (IPSET_ERR_INVALID_CIDR)",
    "invalid netmask (IPSET_ERR_INVALID_NETMASK)",
    "invalid family (IPSET_ERR_INVALID_FAMILY)",
    "timeout not supported by the set (IPSET_ERR_TIMEOUT)",
    "set is referenced (IPSET_ERR_REFERENCED)",
    "an IPv4 address is needed (IPSET_ERR_IPADDR_IPV4)",
    "an IPv6 address is needed (IPSET_ERR_IPADDR_IPV6)",
    "counters not supported by the set (IPSET_ERR_COUNTER)",
    "comments not supported by the set (IPSET_ERR_COMMENT)",
    "invalid markmask (IPSET_ERR_INVALID_MARKMASK)",
    "skbinfo not supported by the set (IPSET_ERR_SKBINFO)",
];
/// `IPSET_ERR_TYPE_SPECIFIC`: codes from here on mean one thing per type
/// (ip_set_hash.h, ip_set_bitmap.h).
const ERR_TYPE_SPECIFIC: i32 = 4352;
const ERR_HASH: [&str; 6] = [
    "the set is full (IPSET_ERR_HASH_FULL)",
    "null-valued element (IPSET_ERR_HASH_ELEM)",
    "invalid protocol (IPSET_ERR_INVALID_PROTO)",
    "protocol missing (IPSET_ERR_MISSING_PROTO)",
    "range not supported (IPSET_ERR_HASH_RANGE_UNSUPPORTED)",
    "invalid range (IPSET_ERR_HASH_RANGE)",
];
const ERR_BITMAP: [&str; 2] = [
    "port outside the set's range (IPSET_ERR_BITMAP_RANGE)",
    "range too big (IPSET_ERR_BITMAP_RANGE_SIZE)",
];

/// The set types this proxy creates (`SETS` in `ipset.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetType {
    HashIp,
    HashIpPort,
    HashIpPortIp,
    HashIpPortNet,
    BitmapPort,
}

impl SetType {
    pub fn from_name(name: &str) -> Option<SetType> {
        Some(match name {
            "hash:ip" => SetType::HashIp,
            "hash:ip,port" => SetType::HashIpPort,
            "hash:ip,port,ip" => SetType::HashIpPortIp,
            "hash:ip,port,net" => SetType::HashIpPortNet,
            "bitmap:port" => SetType::BitmapPort,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::BitmapPort => "bitmap:port",
        }
    }
}

/// One entry added to or deleted from one set, the entry written as in
/// `ipset restore` (`add NAME ENTRY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOp {
    pub add: bool,
    pub set: String,
    pub set_type: SetType,
    /// The set's family (bitmap:port sets have none; any will do).
    pub family: Family,
    pub entry: String,
}

impl EntryOp {
    /// The op as an `ipset restore` line.
    pub fn line(&self) -> String {
        let verb = if self.add { "add" } else { "del" };
        format!("{verb} {} {}", self.set, self.entry)
    }

    /// The entry as the kernel reads it; the error names the set and entry.
    pub fn parse(&self) -> Result<Entry, String> {
        parse_entry(self.set_type, self.family, &self.entry).map_err(|why| {
            format!(
                "ipset entry {:?} of set {} ({}): {why}",
                self.entry,
                self.set,
                self.set_type.name()
            )
        })
    }
}

/// An element of one of our set types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Ip(IpAddr),
    IpPort {
        ip: IpAddr,
        proto: u8,
        port: u16,
    },
    IpPortIp {
        ip: IpAddr,
        proto: u8,
        port: u16,
        ip2: IpAddr,
    },
    /// `cidr` None: a host (the kernel's default prefix, as ipset prints it).
    IpPortNet {
        ip: IpAddr,
        proto: u8,
        port: u16,
        net: IpAddr,
        cidr: Option<u8>,
    },
    Port(u16),
}

fn ip_of(s: &str, family: Family) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|_| format!("bad address {s:?}"))?;
    if Family::of(&ip) != family {
        return Err(format!("{ip} is not of the set's family {family:?}"));
    }
    Ok(ip)
}

fn port_of(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port {s:?}"));
    }
    s.parse().map_err(|_| format!("bad port {s:?}"))
}

/// `proto:port` as ipset writes it (the protocols Services use).
fn proto_port(s: &str) -> Result<(u8, u16), String> {
    let (proto, port) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not proto:port"))?;
    let proto = match proto {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        p => return Err(format!("unsupported protocol {p:?}")),
    };
    Ok((proto, port_of(port)?))
}

/// Parses an entry of a set of `ty` and `family`.
pub fn parse_entry(ty: SetType, family: Family, entry: &str) -> Result<Entry, String> {
    let parts: Vec<&str> = entry.split(',').collect();
    let want = match ty {
        SetType::HashIp | SetType::BitmapPort => 1,
        SetType::HashIpPort => 2,
        SetType::HashIpPortIp | SetType::HashIpPortNet => 3,
    };
    if parts.len() != want {
        return Err(format!("expected {want} comma-separated part(s)"));
    }
    Ok(match ty {
        SetType::BitmapPort => Entry::Port(port_of(parts[0])?),
        SetType::HashIp => Entry::Ip(ip_of(parts[0], family)?),
        SetType::HashIpPort => {
            let (proto, port) = proto_port(parts[1])?;
            Entry::IpPort {
                ip: ip_of(parts[0], family)?,
                proto,
                port,
            }
        }
        SetType::HashIpPortIp => {
            let (proto, port) = proto_port(parts[1])?;
            Entry::IpPortIp {
                ip: ip_of(parts[0], family)?,
                proto,
                port,
                ip2: ip_of(parts[2], family)?,
            }
        }
        SetType::HashIpPortNet => {
            let (proto, port) = proto_port(parts[1])?;
            let (net, cidr) = match parts[2].split_once('/') {
                Some((a, len)) => {
                    let net = ip_of(a, family)?;
                    let max = if net.is_ipv4() { 32 } else { 128 };
                    let len: u8 = port_of(len)
                        .ok()
                        .and_then(|l| u8::try_from(l).ok())
                        .filter(|l| *l <= max)
                        .ok_or_else(|| format!("bad prefix length in {:?}", parts[2]))?;
                    (net, Some(len))
                }
                None => (ip_of(parts[2], family)?, None),
            };
            Entry::IpPortNet {
                ip: ip_of(parts[0], family)?,
                proto,
                port,
                net,
                cidr,
            }
        }
    })
}

fn put_addr(buf: &mut Vec<u8>, ty: u16, ip: &IpAddr) {
    nest(buf, ty, |b| match ip {
        IpAddr::V4(a) => put(b, IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &a.octets()),
        IpAddr::V6(a) => put(b, IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &a.octets()),
    });
}

fn put_ip_port(buf: &mut Vec<u8>, ip: &IpAddr, proto: u8, port: u16) {
    put_addr(buf, ADT_IP, ip);
    put(buf, ADT_PORT | NLA_F_NET_BYTEORDER, &port.to_be_bytes());
    put(buf, ADT_PROTO, &[proto]);
}

/// The IPSET_ATTR_DATA contents of an element.
pub fn encode_data(e: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(48);
    match e {
        Entry::Ip(ip) => put_addr(&mut b, ADT_IP, ip),
        Entry::Port(port) => put(&mut b, ADT_PORT | NLA_F_NET_BYTEORDER, &port.to_be_bytes()),
        Entry::IpPort { ip, proto, port } => put_ip_port(&mut b, ip, *proto, *port),
        Entry::IpPortIp {
            ip,
            proto,
            port,
            ip2,
        } => {
            put_ip_port(&mut b, ip, *proto, *port);
            put_addr(&mut b, ADT_IP2, ip2);
        }
        Entry::IpPortNet {
            ip,
            proto,
            port,
            net,
            cidr,
        } => {
            put_ip_port(&mut b, ip, *proto, *port);
            put_addr(&mut b, ADT_IP2, net);
            if let Some(c) = cidr {
                put(&mut b, ADT_CIDR2, &[*c]);
            }
        }
    }
    b
}

/// One complete request (NLM_F_REQUEST|NLM_F_ACK, no NLM_F_EXCL) for `op`.
pub fn encode(op: &EntryOp, seq: u32) -> Result<Vec<u8>, String> {
    if op.set.is_empty() || op.set.len() > MAX_NAME || op.set.contains('\0') {
        return Err(format!("bad ipset name {:?}", op.set));
    }
    let data = encode_data(&op.parse()?);
    let cmd = if op.add { CMD_ADD } else { CMD_DEL };
    let family = match op.family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    };
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + 4 + 8 + 36 + 4 + data.len());
    b.extend_from_slice(&[0; 4]); // length, set below
    b.extend_from_slice(&((NFNL_SUBSYS_IPSET << 8) | cmd).to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    b.extend_from_slice(&[family, NFNETLINK_V0]);
    b.extend_from_slice(&0u16.to_be_bytes()); // res_id
    put(&mut b, ATTR_PROTOCOL, &[PROTOCOL]);
    let mut name = op.set.as_bytes().to_vec();
    name.push(0);
    put(&mut b, ATTR_SETNAME, &name);
    nest(&mut b, ATTR_DATA, |x| x.extend_from_slice(&data));
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    Ok(b)
}

/// Requests for `ops` back to back in one buffer, sequence numbers
/// `first_seq`, `first_seq + 1`, ... (the kernel answers each in turn).
pub fn encode_batch(ops: &[EntryOp], first_seq: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(ops.len() * 96);
    for (i, op) in ops.iter().enumerate() {
        out.extend_from_slice(&encode(op, first_seq.wrapping_add(i as u32))?);
    }
    Ok(out)
}

/// A kernel answer: `errno` 0 acknowledges the request with sequence `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub seq: u32,
    pub errno: i32,
}

/// The NLMSG_ERROR answers (ACKs and errors) in a received buffer; other
/// message types are skipped.
pub fn parse_replies(buf: &[u8]) -> Result<Vec<Reply>, String> {
    let mut out = Vec::new();
    for m in messages(buf)? {
        if m.ty == NLMSG_ERROR {
            let e = m.body.get(..4).ok_or("short netlink error message")?;
            let error = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
            out.push(Reply {
                seq: m.seq,
                errno: error.saturating_neg(),
            });
        }
    }
    Ok(out)
}

/// What an error code from the kernel means for a set of type `ty`.
pub fn error_text(errno: i32, ty: SetType) -> String {
    let table: &[&str] = match ty {
        SetType::BitmapPort => &ERR_BITMAP,
        _ => &ERR_HASH,
    };
    let known = if errno >= ERR_TYPE_SPECIFIC {
        table.get((errno - ERR_TYPE_SPECIFIC) as usize)
    } else if errno >= ERR_PROTOCOL {
        ERR_NAMES.get((errno - ERR_PROTOCOL) as usize)
    } else {
        None
    };
    match known {
        Some(t) => t.to_string(),
        None if errno > 0 && errno < ERR_PROTOCOL => {
            std::io::Error::from_raw_os_error(errno).to_string()
        }
        None => format!("ipset error {errno}"),
    }
}

/// Whether an error code suggests `ipset restore` may do what netlink could
/// not: the set is missing (restore creates it), or the kernel did not
/// understand the request (no ipset subsystem, another protocol).
pub fn suggests_fallback(errno: i32) -> bool {
    errno == ERR_PROTOCOL
        || [
            libc::ENOENT,
            libc::EINVAL,
            libc::EOPNOTSUPP,
            libc::EPROTONOSUPPORT,
            libc::EAFNOSUPPORT,
        ]
        .contains(&errno)
}

#[cfg(test)]
mod tests;
