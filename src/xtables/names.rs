//! Every `KUBE-*` chain name either mode writes, once (pure). The names are
//! upstream kube-proxy's, so a node's rules are taken over in place.

// Chains of iptables mode (some shared with ipvs mode).
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

// Chains only ipvs mode writes.
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

// Chains of kubelet (or older kubelets) that kube-proxy's rules may meet
// but never owns.
pub const KUBE_MARK_DROP: &str = "KUBE-MARK-DROP";
pub const KUBE_KUBELET_CANARY: &str = "KUBE-KUBELET-CANARY";

/// Prefixes of the per-service chains of iptables mode (deleted when stale).
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// The nat chains of ipvs mode, in the order its payload declares them.
pub const IPVS_NAT_CHAINS: [&str; 5] = [
    KUBE_SERVICES,
    KUBE_POSTROUTING,
    KUBE_NODE_PORT,
    KUBE_LOAD_BALANCER,
    KUBE_MARK_MASQ,
];

/// The filter chains of ipvs mode, in the order its payload declares them.
pub const IPVS_FILTER_CHAINS: [&str; 6] = [
    KUBE_FORWARD,
    KUBE_NODE_PORT,
    KUBE_PROXY_FIREWALL,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
];

/// The fixed chains iptables mode owns outright (never kubelet's
/// KUBE-KUBELET-CANARY etc.).
const IPTABLES_FIXED_CHAINS: [&str; 9] = [
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_MARK_MASQ,
    KUBE_FORWARD,
    KUBE_PROXY_FIREWALL,
    KUBE_FIREWALL,
    KUBE_PROXY_CANARY,
];

/// A chain iptables mode creates per service or endpoint.
pub fn is_service_chain(name: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A chain iptables mode owns (in either table).
pub fn iptables_mode_chain(name: &str) -> bool {
    is_service_chain(name) || IPTABLES_FIXED_CHAINS.contains(&name)
}

/// A chain ipvs mode owns in `table`.
pub fn ipvs_mode_chain(table: super::Table, name: &str) -> bool {
    match table {
        super::Table::Nat => IPVS_NAT_CHAINS.contains(&name),
        super::Table::Filter => IPVS_FILTER_CHAINS.contains(&name),
    }
}

/// Chains other software also writes (kubelet, older kubelets, the host
/// firewall): their rule counts are not ours to check.
pub const WRITTEN_BY_OTHERS: [&str; 5] = [
    KUBE_FIREWALL,
    KUBE_POSTROUTING,
    KUBE_MARK_MASQ,
    KUBE_MARK_DROP,
    KUBE_KUBELET_CANARY,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xtables::Table;

    #[test]
    fn ownership_by_mode() {
        assert!(iptables_mode_chain("KUBE-SEP-ABCDEFGHIJKLMNOP"));
        assert!(iptables_mode_chain(KUBE_PROXY_CANARY));
        assert!(!iptables_mode_chain(KUBE_KUBELET_CANARY));
        assert!(!iptables_mode_chain(KUBE_IPVS_FILTER));
        assert!(ipvs_mode_chain(Table::Filter, KUBE_NODE_PORT));
        assert!(ipvs_mode_chain(Table::Nat, KUBE_NODE_PORT));
        assert!(!ipvs_mode_chain(Table::Nat, KUBE_IPVS_FILTER));
        assert!(!ipvs_mode_chain(Table::Filter, KUBE_MARK_DROP));
    }
}
