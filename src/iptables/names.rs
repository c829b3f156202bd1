//! Chain names, hashed exactly as upstream kube-proxy hashes them, so a node's
//! existing rules are taken over in place (same names, no gap).
//!
//! Upstream: base32(sha256(servicePortName + protocol [+ endpoint]))[..16], where
//! servicePortName is `ns/name[:port]`, protocol is lower case and endpoint is
//! `ip:port` (`[ip]:port` for IPv6).

use crate::model::{Endpoint, ServicePort};
use sha2::{Digest, Sha256};

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

/// Prefixes of the per-service chains this proxy owns (and may delete when stale).
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

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

/// A chain this proxy creates per service or endpoint.
pub fn is_service_chain(name: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}
