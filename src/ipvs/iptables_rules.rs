//! The iptables rules IPVS mode needs around the virtual servers (pure): the
//! masquerade marks, NodePort and load-balancer handling, hairpin, and the
//! filter that stops kube-ipvs0 addresses answering on non-service ports.
//! Everything matches ipsets, so the payload stays a few dozen lines at any
//! cluster size and changes only when a set becomes (non-)empty. Chain
//! names and jumps are [`crate::xtables`]'s.

use super::ipset::SetKind;
use crate::model::Family;
use crate::xtables::names::*;
use crate::xtables::Masquerade;
use std::collections::BTreeSet;

/// `-s <lb> -m ipvs --vaddr <lb> --vproto <p> --vport <port>` parts of
/// load-balancer IPs whose source ranges leave the node itself out.
pub type OutFilter = BTreeSet<(std::net::IpAddr, &'static str, u16)>;

/// The full `iptables-restore --noflush` payload of one family. `nonempty`
/// names the sets that hold at least one entry.
pub fn render(cfg: &Masquerade, nonempty: &BTreeSet<SetKind>, out_filter: &OutFilter) -> String {
    let f = cfg.family;
    let set = |k: SetKind| k.name(f);
    let has = |k: SetKind| nonempty.contains(&k);
    let mark = cfg.mark();
    let mut nat: Vec<String> = Vec::new();
    let mut filter: Vec<String> = Vec::new();
    let loopback = match f {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    nat.push(format!("-A {KUBE_SERVICES} -s {loopback} -j RETURN"));
    // Set-driven jumps, each only when its set has entries.
    let set_rules: [(bool, SetKind, &str, &str, &str, &str); 12] = [
        (
            true,
            SetKind::LoopBack,
            KUBE_POSTROUTING,
            "",
            "dst,dst,src",
            "MASQUERADE",
        ),
        (
            true,
            SetKind::LoadBalancer,
            KUBE_SERVICES,
            "",
            "dst,dst",
            KUBE_LOAD_BALANCER,
        ),
        (
            true,
            SetKind::LoadBalancerLocal,
            KUBE_LOAD_BALANCER,
            "",
            "dst,dst",
            "RETURN",
        ),
        (
            true,
            SetKind::NodePortLocalTcp,
            KUBE_NODE_PORT,
            "tcp",
            "dst",
            "RETURN",
        ),
        (
            true,
            SetKind::NodePortTcp,
            KUBE_NODE_PORT,
            "tcp",
            "dst",
            KUBE_MARK_MASQ,
        ),
        (
            true,
            SetKind::NodePortLocalUdp,
            KUBE_NODE_PORT,
            "udp",
            "dst",
            "RETURN",
        ),
        (
            true,
            SetKind::NodePortUdp,
            KUBE_NODE_PORT,
            "udp",
            "dst",
            KUBE_MARK_MASQ,
        ),
        (
            true,
            SetKind::NodePortLocalSctp,
            KUBE_NODE_PORT,
            "sctp",
            "dst,dst",
            "RETURN",
        ),
        (
            true,
            SetKind::NodePortSctp,
            KUBE_NODE_PORT,
            "sctp",
            "dst,dst",
            KUBE_MARK_MASQ,
        ),
        (
            false,
            SetKind::LoadBalancerFw,
            KUBE_PROXY_FIREWALL,
            "",
            "dst,dst",
            KUBE_SOURCE_RANGES_FIREWALL,
        ),
        (
            false,
            SetKind::LoadBalancerSourceCidr,
            KUBE_SOURCE_RANGES_FIREWALL,
            "",
            "dst,dst,src",
            "RETURN",
        ),
        (
            false,
            SetKind::LoadBalancerSourceIp,
            KUBE_SOURCE_RANGES_FIREWALL,
            "",
            "dst,dst,src",
            "RETURN",
        ),
    ];
    for (is_nat, kind, from, proto, m, to) in set_rules {
        if !has(kind) {
            continue;
        }
        let p = if proto.is_empty() {
            String::new()
        } else {
            format!(" -p {proto}")
        };
        let rule = format!(
            "-A {from}{p} -m comment --comment \"{}\" -m set --match-set {} {m} -j {to}",
            kind.comment(),
            set(kind)
        );
        if is_nat { &mut nat } else { &mut filter }.push(rule);
    }
    if has(SetKind::ClusterIp) {
        let prefix = format!(
            "-A {KUBE_SERVICES} -m comment --comment \"{}\" -m set --match-set {}",
            SetKind::ClusterIp.comment(),
            set(SetKind::ClusterIp)
        );
        // Pod traffic is "local": the first `--cluster-cidr` of the family.
        nat.push(match (cfg.cluster_cidrs.first(), cfg.masquerade_all) {
            (_, true) => format!("{prefix} dst,dst -j {KUBE_MARK_MASQ}"),
            (Some(cidr), false) => format!("{prefix} dst,dst ! -s {cidr} -j {KUBE_MARK_MASQ}"),
            // No way to tell pod traffic: masquerade what the node itself
            // sends from a VIP.
            (None, false) => format!("{prefix} src,dst -j {KUBE_MARK_MASQ}"),
        });
    }
    for (kind, masq) in [
        (SetKind::ExternalIp, true),
        (SetKind::ExternalIpLocal, false),
    ] {
        if !has(kind) {
            continue;
        }
        let prefix = format!(
            "-A {KUBE_SERVICES} -m comment --comment \"{}\" -m set --match-set {} dst,dst",
            kind.comment(),
            set(kind)
        );
        if masq {
            nat.push(format!("{prefix} -j {KUBE_MARK_MASQ}"));
        }
        nat.push(format!(
            "{prefix} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        ));
        nat.push(format!("{prefix} -m addrtype --dst-type LOCAL -j ACCEPT"));
    }
    nat.push(format!(
        "-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}"
    ));
    nat.push(format!("-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}"));
    filter.push(format!("-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP"));
    for (ip, proto, port) in out_filter {
        filter.push(format!(
            "-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {proto} --vport {port} -j DROP"
        ));
    }
    for kind in [SetKind::ClusterIp, SetKind::LoadBalancer] {
        if has(kind) {
            nat.push(format!(
                "-A {KUBE_SERVICES} -m set --match-set {} dst,dst -j ACCEPT",
                set(kind)
            ));
        }
    }
    filter.push(format!(
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    ));
    filter.push(format!("-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
    filter.push(format!(
        "-A {KUBE_NODE_PORT} -m comment --comment \"{}\" -m set --match-set {} dst -j ACCEPT",
        SetKind::HealthCheckNodePort.comment(),
        set(SetKind::HealthCheckNodePort)
    ));
    for kind in [
        SetKind::LoadBalancer,
        SetKind::ClusterIp,
        SetKind::ExternalIp,
        SetKind::ExternalIpLocal,
    ] {
        filter.push(format!(
            "-A {KUBE_IPVS_FILTER} -m set --match-set {} dst,dst -j RETURN",
            set(kind)
        ));
    }
    filter.push(format!(
        "-A {KUBE_IPVS_FILTER} -m set --match-set {} dst -j RETURN",
        set(SetKind::HealthCheckNodePort)
    ));
    filter.push(format!(
        "-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT",
        set(SetKind::IpvsIps)
    ));
    let random = if cfg.random_fully {
        " --random-fully"
    } else {
        ""
    };
    nat.push(format!(
        "-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN"
    ));
    nat.push(format!("-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}"));
    nat.push(format!("-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE{random}"));
    nat.push(format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}"));

    let mut out = String::from("*nat\n");
    for c in IPVS_NAT_CHAINS {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in nat {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str("COMMIT\n*filter\n");
    for c in IPVS_FILTER_CHAINS {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in filter {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Masquerade {
        Masquerade {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Masquerade::new(Family::V4)
        }
    }

    #[test]
    fn empty_sets_leave_out_their_rules() {
        let text = render(&cfg(), &BTreeSet::new(), &OutFilter::new());
        assert!(!text.contains("KUBE-CLUSTER-IP dst,dst ! -s"));
        assert!(!text.contains("KUBE-LOOP-BACK"));
        assert!(text.contains("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"));
        assert!(text.contains("--match-set KUBE-IPVS-IPS dst -j REJECT"));
        assert!(text.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn cluster_ip_masquerade_follows_config() {
        let sets: BTreeSet<_> = [SetKind::ClusterIp, SetKind::LoopBack].into();
        let t = render(&cfg(), &sets, &OutFilter::new());
        assert!(
            t.contains("--match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ")
        );
        assert!(t.contains("-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE"));
        // The ACCEPT that ends KUBE-SERVICES comes after the NodePort jump.
        let np = t.find("-j KUBE-NODE-PORT\n").unwrap();
        let acc = t.find("KUBE-CLUSTER-IP dst,dst -j ACCEPT").unwrap();
        assert!(np < acc);
        let all = render(
            &Masquerade {
                masquerade_all: true,
                ..cfg()
            },
            &sets,
            &OutFilter::new(),
        );
        assert!(all.contains("KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"));
        let none = render(
            &Masquerade {
                cluster_cidrs: vec![],
                ..cfg()
            },
            &sets,
            &OutFilter::new(),
        );
        assert!(none.contains("KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ"));
    }

    #[test]
    fn ipv6_names_and_loopback() {
        let c = Masquerade::new(Family::V6);
        let t = render(&c, &[SetKind::ClusterIp].into(), &OutFilter::new());
        assert!(t.contains("-A KUBE-SERVICES -s ::1/128 -j RETURN"));
        assert!(t.contains("KUBE-6-CLUSTER-IP"));
        assert!(!t.contains(" KUBE-CLUSTER-IP"));
    }
}
