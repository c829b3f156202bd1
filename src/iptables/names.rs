//! Chain names, hashed exactly as upstream kube-proxy hashes them, so a node's
//! existing rules are taken over in place (same names, no gap).
//!
//! Upstream: base32(sha256(servicePortName + protocol [+ endpoint]))[..16], where
//! servicePortName is `ns/name[:port]`, protocol is lower case and endpoint is
//! `ip:port` (`[ip]:port` for IPv6). The fixed chain names are
//! [`crate::xtables::names`]'s, re-exported here.

use crate::model::{Endpoint, ServicePort};
use sha2::{Digest, Sha256};

pub use crate::xtables::names::*;

fn hash16(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut s = base32::encode(base32::Alphabet::Rfc4648 { padding: true }, &digest);
    s.truncate(16);
    s
}

fn port_proto_hash(sp: &ServicePort) -> String {
    hash16(&[&sp.name_string(), sp.key.protocol.lower()])
}

/// The per-service-port chains, all from one hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChains {
    pub svc: String,
    pub svl: String,
    pub ext: String,
    pub fw: String,
}

impl ServiceChains {
    pub fn of(sp: &ServicePort) -> Self {
        let h = port_proto_hash(sp);
        ServiceChains {
            svc: format!("KUBE-SVC-{h}"),
            svl: format!("KUBE-SVL-{h}"),
            ext: format!("KUBE-EXT-{h}"),
            fw: format!("KUBE-FW-{h}"),
        }
    }
}

/// KUBE-SEP-<hash> of one endpoint of a service port.
pub fn endpoint_chain(sp: &ServicePort, ep: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&[
            &sp.name_string(),
            sp.key.protocol.lower(),
            &ep.addr_string()
        ])
    )
}

/// A per-service chain name (one of [`SERVICE_CHAIN_PREFIXES`] and 16 base32
/// characters, as [`ServiceChains`] and [`endpoint_chain`] make them) in 11
/// bytes without a heap allocation: at 10,000 Services there are 60,000 such
/// names, and as `String`s they took several MB in the sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackedName([u8; 11]);

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl PackedName {
    /// Packs `name` if it has the exact shape of a per-service chain name.
    pub fn of(name: &str) -> Option<PackedName> {
        let (kind, hash) = SERVICE_CHAIN_PREFIXES
            .iter()
            .enumerate()
            .find_map(|(i, p)| Some((i, name.strip_prefix(p)?)))?;
        if hash.len() != 16 {
            return None;
        }
        let mut bits: u128 = 0;
        for c in hash.bytes() {
            let v = BASE32.iter().position(|&b| b == c)?;
            bits = bits << 5 | v as u128;
        }
        let mut out = [0u8; 11];
        out[0] = kind as u8;
        out[1..].copy_from_slice(&bits.to_be_bytes()[6..]);
        Some(PackedName(out))
    }

    /// The name it was packed from.
    pub fn unpack(&self) -> String {
        let mut be = [0u8; 16];
        be[6..].copy_from_slice(&self.0[1..]);
        let bits = u128::from_be_bytes(be);
        let mut s = String::with_capacity(25);
        s.push_str(SERVICE_CHAIN_PREFIXES[self.0[0] as usize]);
        for i in (0..16).rev() {
            s.push(BASE32[(bits >> (5 * i)) as usize & 31] as char);
        }
        s
    }
}

/// A chain name as kept in memory: a per-service chain packed (no heap
/// allocation), anything else as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChainName {
    Packed(PackedName),
    Text(Box<str>),
}

impl ChainName {
    pub fn new(name: &str) -> ChainName {
        match PackedName::of(name) {
            Some(p) => ChainName::Packed(p),
            None => ChainName::Text(name.into()),
        }
    }

    pub fn unpack(&self) -> String {
        match self {
            ChainName::Packed(p) => p.unpack(),
            ChainName::Text(s) => s.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_chain_names_pack_and_unpack_exactly() {
        for name in [
            "KUBE-SVC-ABCDEFGHIJKLMNOP",
            "KUBE-SVL-QRSTUVWXYZ234567",
            "KUBE-EXT-7777777777777777",
            "KUBE-FW-AAAAAAAAAAAAAAAA",
            "KUBE-SEP-2Z3Y4X5W6V7UA2B3",
        ] {
            let p = PackedName::of(name).unwrap();
            assert_eq!(p.unpack(), name);
        }
        assert_ne!(
            PackedName::of("KUBE-SVC-AAAAAAAAAAAAAAAA"),
            PackedName::of("KUBE-SVL-AAAAAAAAAAAAAAAA")
        );
        for other in [
            "KUBE-SERVICES",
            "KUBE-SVC-ABCDEFGHIJKLMNO",
            "KUBE-SVC-ABCDEFGHIJKLMNOPQ",
            "KUBE-SVC-abcdefghijklmnop",
            "KUBE-SVC-ABCDEFGHIJKLMNO1",
            "KUBE-MARK-MASQ",
        ] {
            assert_eq!(PackedName::of(other), None, "{other}");
        }
    }
}
