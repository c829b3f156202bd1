//! The fixed part of the nftables ruleset (pure): one table per family, a
//! few dozen chains whose rules never depend on a Service, and the sets and
//! maps every Service is programmed into. Services, endpoints and policies
//! are map elements ([`super::elements`]); the only chains that come and go
//! are one dispatch chain per endpoint count in use (`c3`: "pick one of 3")
//! and the chains of Services with session affinity.
//!
//! ```text
//!  nat prerouting/output ─> services: (daddr . proto . port) vmap @vips ─┬─> cluster-ip[-local]
//!                           fib daddr local ─> nodeports: vmap @nodeports │   external[-local]
//!                                                                         │   firewall[-local]
//!     each of those: masquerade marks, then (key) vmap @cluster-groups / @local-groups
//!        ─> cN / lN: dnat to (key . numgen random mod N) map @cluster-eps-<proto> / ...
//!  nat postrouting ─> masquerading: hairpin pairs and the mark -> masquerade
//!  filter input/forward/output ─> no-endpoint REJECT/DROP maps, firewall drops,
//!                                 conntrack INVALID drop (forward)
//! ```

use crate::model::{Family, Protocol};
use crate::xtables::Masquerade;
use ipnet::IpNet;
use std::fmt::Write;
use std::net::IpAddr;

/// Our table's name in both families (upstream's is `kube-proxy`, removed
/// once ours is programmed).
pub use crate::xtables::nft::{OUR_TABLE as TABLE, UPSTREAM_TABLE};

/// Knobs of one family's ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    pub masq: Masquerade,
    /// `--nodeport-addresses` of this family; empty: every local address.
    pub nodeport_addresses: Vec<IpNet>,
    /// This node's addresses of this family (for `--nodeport-addresses`).
    pub node_ips: Vec<IpAddr>,
    /// Drop packets conntrack sees as INVALID in forward (upstream does,
    /// unless `conntrack.tcpBeLiberal`).
    pub drop_invalid: bool,
}

impl NftConfig {
    pub fn new(family: Family) -> Self {
        NftConfig {
            masq: Masquerade::new(family),
            nodeport_addresses: vec![],
            node_ips: vec![],
            drop_invalid: true,
        }
    }

    pub fn family(&self) -> Family {
        self.masq.family
    }

    /// `ip` or `ip6`: the table family and the address match keyword.
    pub fn nf(&self) -> &'static str {
        nf_family(self.family())
    }

    fn addr_type(&self) -> &'static str {
        match self.family() {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// The node addresses NodePorts answer on; `None`: every local one.
    pub fn nodeport_ips(&self) -> Option<Vec<IpAddr>> {
        crate::node::nodeport_ips(&self.nodeport_addresses, &self.node_ips)
    }
}

pub use crate::xtables::nft::nf_family;

/// A set or map of the fixed layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapId {
    /// Pod ranges (`--cluster-cidr`): "local" traffic.
    PodCidrs,
    /// Node addresses that accept NodePorts (only with `--nodeport-addresses`).
    NodePortIps,
    /// (endpoint . endpoint): a pod reaching itself through a Service.
    Hairpin,
    /// VIP tuples of load balancers with source ranges.
    FirewallVips,
    /// (VIP tuple . allowed source range).
    FirewallAllow,
    /// VIP tuple -> the chain of its kind.
    Vips,
    /// (proto . port) -> the chain of its kind.
    NodePorts,
    /// VIP tuple -> dispatch over cluster-policy endpoints.
    ClusterGroups,
    /// VIP tuple -> dispatch over node-local endpoints.
    LocalGroups,
    NodePortClusterGroups,
    NodePortLocalGroups,
    /// (VIP . port . bucket) -> endpoint . port, or (NodePort . bucket) ->
    /// endpoint . port, one map per pick and protocol: the port is typed
    /// as that protocol's (`udp dport`), which makes nft match the protocol
    /// too; a `th dport` value cannot be read back by nft 1.0.6, and a
    /// `tcp dport` one for every protocol makes nft match TCP only.
    Eps(Pick, Protocol),
    /// ClusterIP tuples with no usable endpoint -> reject or drop.
    NoEndpointInternal,
    /// External VIP tuples with no usable endpoint -> reject or drop.
    NoEndpointExternal,
    NoEndpointNodePorts,
}

impl MapId {
    /// Every set and map of the layout.
    pub fn all() -> Vec<MapId> {
        let mut v = vec![
            MapId::PodCidrs,
            MapId::NodePortIps,
            MapId::Hairpin,
            MapId::FirewallVips,
            MapId::FirewallAllow,
            MapId::Vips,
            MapId::NodePorts,
            MapId::ClusterGroups,
            MapId::LocalGroups,
            MapId::NodePortClusterGroups,
            MapId::NodePortLocalGroups,
        ];
        for pick in Pick::ALL {
            for proto in PROTOCOLS {
                v.push(MapId::Eps(pick, proto));
            }
        }
        v.extend([
            MapId::NoEndpointInternal,
            MapId::NoEndpointExternal,
            MapId::NoEndpointNodePorts,
        ]);
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            MapId::PodCidrs => "pod-cidrs",
            MapId::NodePortIps => "nodeport-ips",
            MapId::Hairpin => "hairpin",
            MapId::FirewallVips => "firewall-vips",
            MapId::FirewallAllow => "firewall-allow",
            MapId::Vips => "vips",
            MapId::NodePorts => "nodeports",
            MapId::ClusterGroups => "cluster-groups",
            MapId::LocalGroups => "local-groups",
            MapId::NodePortClusterGroups => "nodeport-cluster-groups",
            MapId::NodePortLocalGroups => "nodeport-local-groups",
            MapId::Eps(pick, proto) => eps_name(pick, proto),
            MapId::NoEndpointInternal => "no-endpoint-internal",
            MapId::NoEndpointExternal => "no-endpoint-external",
            MapId::NoEndpointNodePorts => "no-endpoint-nodeports",
        }
    }

    /// Sets hold keys only; maps hold key : value.
    pub fn is_map(self) -> bool {
        !matches!(
            self,
            MapId::PodCidrs
                | MapId::NodePortIps
                | MapId::Hairpin
                | MapId::FirewallVips
                | MapId::FirewallAllow
        )
    }

    /// The set's or map's definition, as `add set|map` takes it.
    fn definition(self, cfg: &NftConfig) -> String {
        let a = cfg.addr_type();
        let nf = cfg.nf();
        let vip = format!("{a} . inet_proto . inet_service");
        let port = "inet_proto . inet_service";
        match self {
            MapId::PodCidrs => format!("type {a}; flags interval;"),
            MapId::NodePortIps => format!("type {a};"),
            MapId::Hairpin => format!("type {a} . {a};"),
            MapId::FirewallVips => format!("type {vip};"),
            MapId::FirewallAllow => format!("type {vip} . {a}; flags interval;"),
            MapId::Vips
            | MapId::ClusterGroups
            | MapId::LocalGroups
            | MapId::NoEndpointInternal
            | MapId::NoEndpointExternal => format!("type {vip} : verdict;"),
            MapId::NodePorts
            | MapId::NodePortClusterGroups
            | MapId::NodePortLocalGroups
            | MapId::NoEndpointNodePorts => format!("type {port} : verdict;"),
            MapId::Eps(pick, proto) => {
                let p = proto.lower();
                format!(
                    "typeof {} . numgen random mod 1 : {nf} daddr . {p} dport;",
                    pick.key(nf, proto)
                )
            }
        }
    }
}

/// Which endpoints a dispatch picks from, and how it is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pick {
    /// Cluster-policy endpoints of a VIP tuple.
    Cluster,
    /// Node-local endpoints of a VIP tuple.
    Local,
    /// Cluster-policy endpoints of a NodePort.
    NodePortCluster,
    /// Node-local endpoints of a NodePort.
    NodePortLocal,
}

impl Pick {
    pub const ALL: [Pick; 4] = [
        Pick::Cluster,
        Pick::Local,
        Pick::NodePortCluster,
        Pick::NodePortLocal,
    ];

    /// The map of (key . bucket) -> endpoint it reads for `proto`.
    pub fn eps(self, proto: Protocol) -> MapId {
        MapId::Eps(self, proto)
    }

    /// The packet's key into its endpoint maps: VIP and port, or NodePort.
    fn key(self, nf: &str, proto: Protocol) -> String {
        let p = proto.lower();
        match self {
            Pick::Cluster | Pick::Local => format!("{nf} daddr . {p} dport"),
            Pick::NodePortCluster | Pick::NodePortLocal => format!("{p} dport"),
        }
    }

    /// The map of key -> dispatch chain that leads to it.
    pub fn groups(self) -> MapId {
        match self {
            Pick::Cluster => MapId::ClusterGroups,
            Pick::Local => MapId::LocalGroups,
            Pick::NodePortCluster => MapId::NodePortClusterGroups,
            Pick::NodePortLocal => MapId::NodePortLocalGroups,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Pick::Cluster => "c",
            Pick::Local => "l",
            Pick::NodePortCluster => "nc",
            Pick::NodePortLocal => "nl",
        }
    }

    /// The shared chain that picks one of `n` endpoints: `c3`, `nl1`, ...
    pub fn chain(self, n: usize) -> String {
        format!("{}{n}", self.prefix())
    }

    /// The `(pick, n)` a dispatch chain name stands for.
    pub fn parse_chain(name: &str) -> Option<(Pick, usize)> {
        // Longest prefixes first: "nc" before "c".
        for p in [
            Pick::NodePortCluster,
            Pick::NodePortLocal,
            Pick::Cluster,
            Pick::Local,
        ] {
            if let Some(n) = name.strip_prefix(p.prefix()) {
                if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0') {
                    return n.parse().ok().map(|n| (p, n));
                }
            }
        }
        None
    }

    /// The rules of the dispatch chain for `n` endpoints, one per protocol.
    pub fn rules(self, nf: &str, n: usize) -> Vec<String> {
        PROTOCOLS
            .iter()
            .map(|&proto| {
                format!(
                    "dnat {nf} to {} . numgen random mod {n} map @{}",
                    self.key(nf, proto),
                    self.eps(proto).name()
                )
            })
            .collect()
    }
}

/// The chain a VIP tuple or NodePort enters first (its kind and policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// A ClusterIP, internalTrafficPolicy Cluster.
    ClusterIp,
    /// A ClusterIP, internalTrafficPolicy Local.
    ClusterIpLocal,
    /// An externalIP or LB IP, externalTrafficPolicy Cluster.
    External,
    /// The same, externalTrafficPolicy Local.
    ExternalLocal,
    /// An LB IP with source ranges, then [`Entry::External`].
    Firewall,
    /// An LB IP with source ranges, then [`Entry::ExternalLocal`].
    FirewallLocal,
    /// A NodePort, externalTrafficPolicy Cluster.
    NodePort,
    /// A NodePort, externalTrafficPolicy Local.
    NodePortLocal,
}

impl Entry {
    pub fn chain(self) -> &'static str {
        match self {
            Entry::ClusterIp => "cluster-ip",
            Entry::ClusterIpLocal => "cluster-ip-local",
            Entry::External => "external",
            Entry::ExternalLocal => "external-local",
            Entry::Firewall => "firewall",
            Entry::FirewallLocal => "firewall-local",
            Entry::NodePort => "nodeport",
            Entry::NodePortLocal => "nodeport-local",
        }
    }
}

/// The protocols a Service port may have.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn eps_name(pick: Pick, proto: Protocol) -> &'static str {
    use Pick::*;
    use Protocol::*;
    match (pick, proto) {
        (Cluster, Tcp) => "cluster-eps-tcp",
        (Cluster, Udp) => "cluster-eps-udp",
        (Cluster, Sctp) => "cluster-eps-sctp",
        (Local, Tcp) => "local-eps-tcp",
        (Local, Udp) => "local-eps-udp",
        (Local, Sctp) => "local-eps-sctp",
        (NodePortCluster, Tcp) => "nodeport-cluster-eps-tcp",
        (NodePortCluster, Udp) => "nodeport-cluster-eps-udp",
        (NodePortCluster, Sctp) => "nodeport-cluster-eps-sctp",
        (NodePortLocal, Tcp) => "nodeport-local-eps-tcp",
        (NodePortLocal, Udp) => "nodeport-local-eps-udp",
        (NodePortLocal, Sctp) => "nodeport-local-eps-sctp",
    }
}

/// What a Service port with no usable endpoint gets (as upstream).
pub const REJECT: &str = "goto reject-chain";
pub const DROP: &str = "drop";

/// A chain of the fixed layout: its name, base-chain spec, rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedChain {
    pub name: &'static str,
    /// `type ... hook ... priority ...; policy accept;` for base chains.
    pub base: Option<String>,
    pub rules: Vec<String>,
}

fn chain(name: &'static str, rules: Vec<String>) -> FixedChain {
    FixedChain {
        name,
        base: None,
        rules,
    }
}

fn base(name: &'static str, spec: &str, rules: Vec<String>) -> FixedChain {
    FixedChain {
        name,
        base: Some(format!("{spec} policy accept;")),
        rules,
    }
}

/// The fixed chains of one family, in the order they are written.
pub fn fixed_chains(cfg: &NftConfig) -> Vec<FixedChain> {
    let nf = cfg.nf();
    let vip = format!("{nf} daddr . meta l4proto . th dport");
    let port = "meta l4proto . th dport";
    let mark = cfg.masq.mark();
    let masq = "jump mark-for-masquerade";
    let loopback = match cfg.family() {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1",
    };
    let has_pod_cidrs = !cfg.masq.cluster_cidrs.is_empty();
    let vmap = |m: MapId, key: &str| format!("{key} vmap @{}", m.name());

    // ClusterIP traffic is masqueraded unless it comes from a pod
    // (masqueradeAll: always; no --cluster-cidr: never), as iptables mode.
    let cluster_masq: Vec<String> = if cfg.masq.masquerade_all {
        vec![masq.to_string()]
    } else if has_pod_cidrs {
        vec![format!("{nf} saddr != @{} {masq}", MapId::PodCidrs.name())]
    } else {
        vec![]
    };
    // externalTrafficPolicy Local: pods and the node itself use every
    // endpoint (the node's own traffic masqueraded); the rest stays local.
    let external_local = |key: &str, cluster: MapId, local: MapId| {
        let mut r = Vec::new();
        if has_pod_cidrs {
            r.push(format!(
                "{nf} saddr @{} {}",
                MapId::PodCidrs.name(),
                vmap(cluster, key)
            ));
        }
        r.push(format!("fib saddr type local {masq}"));
        r.push(format!("fib saddr type local {}", vmap(cluster, key)));
        r.push(vmap(local, key));
        r
    };
    let nodeports_jump = if cfg.nodeport_ips().is_none() {
        format!("fib daddr type local {nf} daddr != {loopback} jump nodeports-check")
    } else {
        format!(
            "{nf} daddr @{} jump nodeports-check",
            MapId::NodePortIps.name()
        )
    };
    let random = if cfg.masq.random_fully {
        " fully-random"
    } else {
        ""
    };
    let mut forward = vec![
        "ct state new jump service-checks".to_string(),
        "ct state new jump external-checks".to_string(),
        "ct state new jump firewall-check".to_string(),
    ];
    if cfg.drop_invalid {
        forward.insert(0, "ct state invalid drop".to_string());
    }
    vec![
        base(
            "nat-prerouting",
            "type nat hook prerouting priority dstnat;",
            vec!["jump services".into()],
        ),
        base(
            "nat-output",
            "type nat hook output priority -100;",
            vec!["jump services".into()],
        ),
        base(
            "nat-postrouting",
            "type nat hook postrouting priority srcnat;",
            vec!["jump masquerading".into()],
        ),
        base(
            "filter-input",
            "type filter hook input priority filter - 10;",
            vec![
                "ct state new jump external-checks".into(),
                "ct state new jump firewall-check".into(),
            ],
        ),
        base(
            "filter-forward",
            "type filter hook forward priority filter - 10;",
            forward,
        ),
        base(
            "filter-output",
            "type filter hook output priority filter - 10;",
            vec![
                "ct state new jump service-checks".into(),
                "ct state new jump firewall-check".into(),
            ],
        ),
        chain("services", vec![vmap(MapId::Vips, &vip), nodeports_jump]),
        chain("nodeports-check", vec![vmap(MapId::NodePorts, port)]),
        chain(
            "mark-for-masquerade",
            vec![format!("meta mark set meta mark | {mark}")],
        ),
        chain(
            "masquerading",
            vec![
                format!(
                    "ct status dnat {nf} saddr . {nf} daddr @{} {masq}",
                    MapId::Hairpin.name()
                ),
                format!("meta mark & {mark} == 0 return"),
                format!("meta mark set meta mark ^ {mark}"),
                format!("masquerade{random}"),
            ],
        ),
        chain(
            "cluster-ip",
            cluster_masq
                .iter()
                .cloned()
                .chain([vmap(MapId::ClusterGroups, &vip)])
                .collect(),
        ),
        chain(
            "cluster-ip-local",
            cluster_masq
                .iter()
                .cloned()
                .chain([vmap(MapId::LocalGroups, &vip)])
                .collect(),
        ),
        chain(
            "external",
            vec![masq.to_string(), vmap(MapId::ClusterGroups, &vip)],
        ),
        chain(
            "external-local",
            external_local(&vip, MapId::ClusterGroups, MapId::LocalGroups),
        ),
        chain(
            "firewall",
            vec![format!(
                "{vip} . {nf} saddr @{} goto external",
                MapId::FirewallAllow.name()
            )],
        ),
        chain(
            "firewall-local",
            vec![format!(
                "{vip} . {nf} saddr @{} goto external-local",
                MapId::FirewallAllow.name()
            )],
        ),
        chain(
            "nodeport",
            vec![masq.to_string(), vmap(MapId::NodePortClusterGroups, port)],
        ),
        chain(
            "nodeport-local",
            external_local(
                port,
                MapId::NodePortClusterGroups,
                MapId::NodePortLocalGroups,
            ),
        ),
        chain(
            "service-checks",
            vec![vmap(MapId::NoEndpointInternal, &vip)],
        ),
        chain(
            "external-checks",
            vec![
                vmap(MapId::NoEndpointExternal, &vip),
                format!(
                    "fib daddr type local {}",
                    vmap(MapId::NoEndpointNodePorts, port)
                ),
            ],
        ),
        chain(
            "firewall-check",
            vec![format!("{vip} @{} drop", MapId::FirewallVips.name())],
        ),
        chain("reject-chain", vec!["reject".into()]),
    ]
}

/// The names of the fixed chains.
pub fn fixed_chain_names() -> Vec<&'static str> {
    fixed_chains(&NftConfig::new(Family::V4))
        .into_iter()
        .map(|c| c.name)
        .collect()
}

/// The commands that create (or keep) the table, its sets, maps and fixed
/// chains, and write the fixed chains' rules. With `flush`, every set and
/// map is emptied and every fixed chain rewritten in the same transaction
/// (a full sync), so the kernel holds either the old or the new state.
pub fn fixed_commands(cfg: &NftConfig, out: &mut String) {
    let t = format!("{} {TABLE}", cfg.nf());
    let _ = writeln!(out, "add table {t}");
    for m in MapId::all() {
        let kind = if m.is_map() { "map" } else { "set" };
        let _ = writeln!(
            out,
            "add {kind} {t} {} {{ {} }}",
            m.name(),
            m.definition(cfg)
        );
        let _ = writeln!(out, "flush {kind} {t} {}", m.name());
    }
    let chains = fixed_chains(cfg);
    for c in &chains {
        match &c.base {
            Some(spec) => {
                let _ = writeln!(out, "add chain {t} {} {{ {spec} }}", c.name);
            }
            None => {
                let _ = writeln!(out, "add chain {t} {}", c.name);
            }
        }
        let _ = writeln!(out, "flush chain {t} {}", c.name);
    }
    for c in &chains {
        for r in &c.rules {
            let _ = writeln!(out, "add rule {t} {} {r}", c.name);
        }
    }
}

/// Elements of the sets the configuration fills (pod ranges, NodePort addresses).
pub fn config_elements(cfg: &NftConfig) -> Vec<(MapId, String)> {
    // An interval set refuses overlapping elements: ranges held by another
    // (10.244.0.0/16 next to 10.0.0.0/8) are left out.
    let mut out: Vec<(MapId, String)> = crate::node::widest(&cfg.masq.cluster_cidrs)
        .into_iter()
        .map(|n| (MapId::PodCidrs, n.to_string()))
        .collect();
    out.extend(
        cfg.nodeport_ips()
            .unwrap_or_default()
            .into_iter()
            .map(|ip| (MapId::NodePortIps, ip.to_string())),
    );
    out
}

/// `tcp`, `udp` or `sctp`, as `inet_proto` and `meta l4proto` take it.
pub fn proto(p: Protocol) -> &'static str {
    p.lower()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_chain_names_round_trip() {
        for p in Pick::ALL {
            for n in [1, 3, 12, 1000] {
                assert_eq!(Pick::parse_chain(&p.chain(n)), Some((p, n)));
            }
        }
        for other in [
            "c",
            "c0",
            "c01",
            "cluster-ip",
            "nodeport",
            "nc",
            "l-1",
            "x3",
        ] {
            assert_eq!(Pick::parse_chain(other), None, "{other}");
        }
    }

    #[test]
    fn masquerade_rules_follow_the_config() {
        let mut cfg = NftConfig::new(Family::V4);
        let rules = |cfg: &NftConfig| {
            fixed_chains(cfg)
                .into_iter()
                .find(|c| c.name == "cluster-ip")
                .unwrap()
                .rules
        };
        assert_eq!(rules(&cfg).len(), 1, "no --cluster-cidr: no masquerade");
        cfg.masq.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        assert_eq!(
            rules(&cfg)[0],
            "ip saddr != @pod-cidrs jump mark-for-masquerade"
        );
        cfg.masq.masquerade_all = true;
        assert_eq!(rules(&cfg)[0], "jump mark-for-masquerade");
    }

    #[test]
    fn nodeport_addresses_restrict_the_nodeport_jump() {
        let mut cfg = NftConfig::new(Family::V6);
        let services = |cfg: &NftConfig| {
            fixed_chains(cfg)
                .into_iter()
                .find(|c| c.name == "services")
                .unwrap()
                .rules[1]
                .clone()
        };
        assert_eq!(
            services(&cfg),
            "fib daddr type local ip6 daddr != ::1 jump nodeports-check"
        );
        cfg.nodeport_addresses = vec!["fd00:10::/64".parse().unwrap()];
        cfg.node_ips = vec!["fd00:10::5".parse().unwrap(), "fd00:99::1".parse().unwrap()];
        assert_eq!(
            services(&cfg),
            "ip6 daddr @nodeport-ips jump nodeports-check"
        );
        assert_eq!(
            config_elements(&cfg),
            vec![(MapId::NodePortIps, "fd00:10::5".to_string())]
        );
    }
}
