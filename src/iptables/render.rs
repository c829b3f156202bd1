//! Renders service ports into iptables rules (pure; golden-tested).
//!
//! The layout follows upstream kube-proxy's iptables mode rule for rule, so
//! `iptables-save` reads the same and a node's rules can be taken over in place.

pub use super::fixed::{render_fixed, shared_tail};
use super::large::endpoint_comment;
use super::names::*;
use crate::model::{categorize, Endpoint, Family, ServicePort};
use crate::xtables::Masquerade;
pub use crate::xtables::Table;
use ipnet::IpNet;
use std::net::IpAddr;

/// Knobs that shape the rules of one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// The family, and what masquerading shares with ipvs mode.
    pub masq: Masquerade,
    /// `--nodeport-addresses` of this family; empty means every local address.
    pub nodeport_addresses: Vec<IpNet>,
    /// This node's addresses of this family (for `--nodeport-addresses`).
    pub node_ips: Vec<IpAddr>,
    /// `iptables.localhostNodePorts` (IPv4 only): NodePorts answer on 127.0.0.1.
    pub localhost_nodeports: bool,
    /// Large cluster mode: per-endpoint rules go without comments. Not a
    /// flag: derived from the model on every sync (see [`super::large`]).
    pub large_cluster: bool,
}

impl RenderConfig {
    pub fn new(family: Family) -> Self {
        RenderConfig {
            masq: Masquerade::new(family),
            nodeport_addresses: vec![],
            node_ips: vec![],
            localhost_nodeports: false,
            large_cluster: false,
        }
    }

    pub fn family(&self) -> Family {
        self.masq.family
    }
}

/// One chain with its full rule list (each line starts with `-A <name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub table: Table,
    pub name: String,
    pub rules: Vec<String>,
}

/// Chains every service port adds rules to; rewritten whole when they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shared {
    FilterServices,
    FilterExternalServices,
    FilterNodePorts,
    FilterProxyFirewall,
    NatServices,
    NatNodePorts,
}

impl Shared {
    pub const ALL: [Shared; 6] = [
        Shared::FilterServices,
        Shared::FilterExternalServices,
        Shared::FilterNodePorts,
        Shared::FilterProxyFirewall,
        Shared::NatServices,
        Shared::NatNodePorts,
    ];

    pub fn table(self) -> Table {
        match self {
            Shared::NatServices | Shared::NatNodePorts => Table::Nat,
            _ => Table::Filter,
        }
    }

    pub fn chain(self) -> &'static str {
        match self {
            Shared::FilterServices | Shared::NatServices => KUBE_SERVICES,
            Shared::FilterExternalServices => KUBE_EXTERNAL_SERVICES,
            Shared::FilterNodePorts | Shared::NatNodePorts => KUBE_NODEPORTS,
            Shared::FilterProxyFirewall => KUBE_PROXY_FIREWALL,
        }
    }
}

/// Everything one service port contributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fragment {
    /// Chains owned by this service port (nat): SVC, SVL, EXT, FW, then SEPs.
    pub chains: Vec<Chain>,
    /// Rules for the shared chains, in order.
    pub shared: Vec<(Shared, String)>,
}

fn q(s: String) -> String {
    format!("\"{s}\"")
}

/// Renders the rules of one service port.
pub fn render_service_port(sp: &ServicePort, cfg: &RenderConfig) -> Fragment {
    let mut f = Fragment::default();
    let Some(cluster_ip) = sp.cluster_ip else {
        return f;
    };
    let names = ServiceChains::of(sp);
    let name = sp.name_string();
    let proto = sp.key.protocol.lower();
    let mproto = format!("-m {proto} -p {proto}");
    let port = sp.port;
    let cat = categorize(sp);
    let has_endpoints = cat.has_any;
    let cluster_chain = &names.svc;
    let local_chain = &names.svl;

    let (internal_chain, has_internal) = if sp.internal_policy_local {
        (local_chain, has_endpoints && !cat.local.is_empty())
    } else {
        (cluster_chain, has_endpoints)
    };
    let (external_policy_chain, has_external) = if sp.external_policy_local {
        (local_chain, has_endpoints && !cat.local.is_empty())
    } else {
        (cluster_chain, has_endpoints)
    };
    let uses_fw = has_endpoints
        && !sp.load_balancer_ips.is_empty()
        && !sp.load_balancer_source_ranges.is_empty();
    let lb_chain = if uses_fw { &names.fw } else { &names.ext };

    let (internal_filter, external_filter) = if !has_endpoints {
        let c = q(format!("{name} has no endpoints"));
        (("REJECT", c.clone()), ("REJECT", c))
    } else {
        let c = q(format!("{name} has no local endpoints"));
        (("DROP", c.clone()), ("DROP", c))
    };

    let mut shared = |s: Shared, rule: String| f.shared.push((s, rule));
    let dst_rule = |chain: &str, comment: &str, ip: &IpAddr, target: &str| {
        format!(
            "-A {chain} -m comment --comment {comment} {mproto} -d {ip} --dport {port} -j {target}"
        )
    };

    // ClusterIP.
    if has_internal {
        let c = q(format!("{name} cluster IP"));
        shared(
            Shared::NatServices,
            dst_rule(KUBE_SERVICES, &c, &cluster_ip, internal_chain),
        );
    } else {
        let (target, c) = &internal_filter;
        shared(
            Shared::FilterServices,
            dst_rule(KUBE_SERVICES, c, &cluster_ip, target),
        );
    }
    // externalIPs.
    for ip in &sp.external_ips {
        if has_endpoints {
            let c = q(format!("{name} external IP"));
            shared(
                Shared::NatServices,
                dst_rule(KUBE_SERVICES, &c, ip, &names.ext),
            );
        }
        if !has_external {
            let (target, c) = &external_filter;
            shared(
                Shared::FilterExternalServices,
                dst_rule(KUBE_EXTERNAL_SERVICES, c, ip, target),
            );
        }
    }
    // Load balancer ingress IPs.
    for ip in &sp.load_balancer_ips {
        if has_endpoints {
            let c = q(format!("{name} loadbalancer IP"));
            shared(
                Shared::NatServices,
                dst_rule(KUBE_SERVICES, &c, ip, lb_chain),
            );
        }
        if uses_fw {
            let c = q(format!("{name} traffic not accepted by {}", names.fw));
            shared(
                Shared::FilterProxyFirewall,
                dst_rule(KUBE_PROXY_FIREWALL, &c, ip, "DROP"),
            );
        }
    }
    if !has_external {
        for ip in &sp.load_balancer_ips {
            let (target, c) = &external_filter;
            shared(
                Shared::FilterExternalServices,
                dst_rule(KUBE_EXTERNAL_SERVICES, c, ip, target),
            );
        }
    }
    // NodePort.
    if let Some(np) = sp.node_port {
        if has_endpoints {
            shared(
                Shared::NatNodePorts,
                format!(
                    "-A {KUBE_NODEPORTS} -m comment --comment {name} {mproto} --dport {np} -j {}",
                    names.ext
                ),
            );
        }
        if !has_external {
            let (target, c) = &external_filter;
            shared(
                Shared::FilterExternalServices,
                format!(
                    "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {c} -m addrtype --dst-type LOCAL {mproto} --dport {np} -j {target}"
                ),
            );
        }
    }
    // healthCheckNodePort: always accepted.
    if let Some(hc) = sp.health_check_node_port {
        let c = q(format!("{name} health check node port"));
        shared(
            Shared::FilterNodePorts,
            format!(
                "-A {KUBE_NODEPORTS} -m comment --comment {c} -m tcp -p tcp --dport {hc} -j ACCEPT"
            ),
        );
    }

    let local_match = |negate: bool| -> Option<String> {
        if cfg.masq.cluster_cidrs.is_empty() {
            return None;
        }
        let bang = if negate { "! " } else { "" };
        Some(
            cfg.masq
                .cluster_cidrs
                .iter()
                .map(|c| format!("{bang}-s {c}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
    };

    // Owned chains, in upstream's order: EXT, FW, SVC, SVL, SEPs. We collect
    // them into the policy chains first, since the masquerade rule lands in
    // whichever chain ClusterIP traffic enters.
    let uses_cluster_chain =
        !cat.cluster.is_empty() && crate::model::categorize::uses_cluster_endpoints(sp);
    let uses_local_chain =
        !cat.local.is_empty() && crate::model::categorize::uses_local_endpoints(sp);
    let mut svc_rules = Vec::new();
    let mut svl_rules = Vec::new();
    if has_internal {
        let args = format!(
            "-m comment --comment {} {mproto} -d {cluster_ip} --dport {port}",
            q(format!("{name} cluster IP"))
        );
        let rule = if cfg.masq.masquerade_all {
            Some(format!("-A {internal_chain} {args} -j {KUBE_MARK_MASQ}"))
        } else {
            local_match(true).map(|m| format!("-A {internal_chain} {args} {m} -j {KUBE_MARK_MASQ}"))
        };
        if let Some(rule) = rule {
            if sp.internal_policy_local {
                svl_rules.push(rule);
            } else {
                svc_rules.push(rule);
            }
        }
    }

    if has_endpoints && sp.has_external() {
        let ext = &names.ext;
        let mut rules = Vec::new();
        if !sp.external_policy_local {
            rules.push(format!(
                "-A {ext} -m comment --comment {} -j {KUBE_MARK_MASQ}",
                q(format!(
                    "masquerade traffic for {name} external destinations"
                ))
            ));
        } else {
            if let Some(m) = local_match(false) {
                rules.push(format!(
                    "-A {ext} -m comment --comment {} {m} -j {cluster_chain}",
                    q(format!("pod traffic for {name} external destinations"))
                ));
            }
            rules.push(format!(
                "-A {ext} -m comment --comment {} -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}",
                q(format!(
                    "masquerade LOCAL traffic for {name} external destinations"
                ))
            ));
            rules.push(format!(
                "-A {ext} -m comment --comment {} -m addrtype --src-type LOCAL -j {cluster_chain}",
                q(format!(
                    "route LOCAL traffic for {name} external destinations"
                ))
            ));
        }
        if has_external {
            rules.push(format!("-A {ext} -j {external_policy_chain}"));
        }
        f.chains.push(nat_chain(ext, rules));
    }

    if uses_fw {
        let fw = &names.fw;
        let c = q(format!("{name} loadbalancer IP"));
        let mut rules = Vec::new();
        let mut allow_from_node = false;
        for cidr in &sp.load_balancer_source_ranges {
            rules.push(format!(
                "-A {fw} -m comment --comment {c} -s {cidr} -j {}",
                names.ext
            ));
            allow_from_node |= cfg.node_ips.iter().any(|ip| cidr.contains(ip));
        }
        if allow_from_node {
            for ip in &sp.load_balancer_ips {
                rules.push(format!(
                    "-A {fw} -m comment --comment {c} -s {ip} -j {}",
                    names.ext
                ));
            }
        }
        rules.push(format!(
            "-A {fw} -m comment --comment {}",
            q(format!(
                "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
            ))
        ));
        f.chains.push(nat_chain(fw, rules));
    }

    if uses_cluster_chain {
        endpoint_dispatch(sp, cfg, cluster_chain, &cat.cluster, &mut svc_rules);
        f.chains.push(nat_chain(cluster_chain, svc_rules));
    }
    if uses_local_chain {
        endpoint_dispatch(sp, cfg, local_chain, &cat.local, &mut svl_rules);
        f.chains.push(nat_chain(local_chain, svl_rules));
    }

    let sep_comment = endpoint_comment(cfg, || name.to_string());
    for ep in &cat.all_reachable {
        let sep = endpoint_chain(sp, ep);
        let mut rules = vec![format!(
            "-A {sep} {sep_comment}-s {} -j {KUBE_MARK_MASQ}",
            ep.ip
        )];
        let affinity = if sp.affinity_timeout.is_some() {
            format!("-m recent --name {sep} --set ")
        } else {
            String::new()
        };
        rules.push(format!(
            "-A {sep} {sep_comment}{affinity}{mproto} -j DNAT --to-destination {}",
            ep.addr_string()
        ));
        f.chains.push(nat_chain(&sep, rules));
    }
    f
}

fn nat_chain(name: &str, rules: Vec<String>) -> Chain {
    Chain {
        table: Table::Nat,
        name: name.to_string(),
        rules,
    }
}

/// Upstream's probability for the i-th of n rules: 1/(n-i), 10 decimals.
pub fn probability(remaining: usize) -> String {
    format!("{:.10}", 1.0 / remaining as f64)
}

/// Session-affinity checks, then the cascading random split over endpoints.
fn endpoint_dispatch(
    sp: &ServicePort,
    cfg: &RenderConfig,
    chain: &str,
    eps: &[&Endpoint],
    rules: &mut Vec<String>,
) {
    let name = sp.name_string();
    let comment =
        |ep: &Endpoint| endpoint_comment(cfg, || q(format!("{name} -> {}", ep.addr_string())));
    if let Some(timeout) = sp.affinity_timeout {
        for ep in eps {
            let sep = endpoint_chain(sp, ep);
            rules.push(format!(
                "-A {chain} {}-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                comment(ep)
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = endpoint_chain(sp, ep);
        let c = comment(ep);
        if i + 1 < n {
            rules.push(format!(
                "-A {chain} {c}-m statistic --mode random --probability {} -j {sep}",
                probability(n - i)
            ));
        } else {
            rules.push(format!("-A {chain} {c}-j {sep}"));
        }
    }
}
