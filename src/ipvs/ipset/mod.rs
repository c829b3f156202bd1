//! The ipsets IPVS mode matches in its few iptables rules: names, types and
//! entries as upstream writes them (pure), and the `ipset restore` text that
//! brings the kernel from one set of entries to another. Entry changes as
//! netlink messages: [`wire`] (pure, byte-tested); the socket: [`socket`];
//! the applier (`ipset restore`, or a netlink batch): [`apply`].

pub mod apply;
pub mod socket;
pub mod wire;

use crate::model::Family;
use std::collections::{BTreeMap, BTreeSet};
use wire::{EntryOp, SetType};

/// One of the sets upstream's IPVS mode keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    LoopBack,
    ClusterIp,
    ExternalIp,
    ExternalIpLocal,
    LoadBalancer,
    LoadBalancerLocal,
    LoadBalancerFw,
    LoadBalancerSourceIp,
    LoadBalancerSourceCidr,
    NodePortTcp,
    NodePortLocalTcp,
    NodePortUdp,
    NodePortLocalUdp,
    NodePortSctp,
    NodePortLocalSctp,
    HealthCheckNodePort,
    IpvsIps,
}

/// (kind, IPv4 name, type, comment used by the rules that match it)
const SETS: [(SetKind, &str, &str, &str); 17] = [
    (
        SetKind::LoopBack,
        "KUBE-LOOP-BACK",
        "hash:ip,port,ip",
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    (
        SetKind::ClusterIp,
        "KUBE-CLUSTER-IP",
        "hash:ip,port",
        "Kubernetes service cluster ip + port for masquerade purpose",
    ),
    (
        SetKind::ExternalIp,
        "KUBE-EXTERNAL-IP",
        "hash:ip,port",
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    (
        SetKind::ExternalIpLocal,
        "KUBE-EXTERNAL-IP-LOCAL",
        "hash:ip,port",
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    (
        SetKind::LoadBalancer,
        "KUBE-LOAD-BALANCER",
        "hash:ip,port",
        "Kubernetes service lb portal",
    ),
    (
        SetKind::LoadBalancerLocal,
        "KUBE-LOAD-BALANCER-LOCAL",
        "hash:ip,port",
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    (
        SetKind::LoadBalancerFw,
        "KUBE-LOAD-BALANCER-FW",
        "hash:ip,port",
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    (
        SetKind::LoadBalancerSourceIp,
        "KUBE-LOAD-BALANCER-SOURCE-IP",
        "hash:ip,port,ip",
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    (
        SetKind::LoadBalancerSourceCidr,
        "KUBE-LOAD-BALANCER-SOURCE-CIDR",
        "hash:ip,port,net",
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    (
        SetKind::NodePortTcp,
        "KUBE-NODE-PORT-TCP",
        "bitmap:port",
        "Kubernetes nodeport TCP port for masquerade purpose",
    ),
    (
        SetKind::NodePortLocalTcp,
        "KUBE-NODE-PORT-LOCAL-TCP",
        "bitmap:port",
        "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    ),
    (
        SetKind::NodePortUdp,
        "KUBE-NODE-PORT-UDP",
        "bitmap:port",
        "Kubernetes nodeport UDP port for masquerade purpose",
    ),
    (
        SetKind::NodePortLocalUdp,
        "KUBE-NODE-PORT-LOCAL-UDP",
        "bitmap:port",
        "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    ),
    (
        SetKind::NodePortSctp,
        "KUBE-NODE-PORT-SCTP-HASH",
        "hash:ip,port",
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    (
        SetKind::NodePortLocalSctp,
        "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
        "hash:ip,port",
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    (
        SetKind::HealthCheckNodePort,
        "KUBE-HEALTH-CHECK-NODE-PORT",
        "bitmap:port",
        "Kubernetes health check node port",
    ),
    (
        SetKind::IpvsIps,
        "KUBE-IPVS-IPS",
        "hash:ip",
        "Addresses on the ipvs interface",
    ),
];

/// Longest set name the kernel takes.
pub const MAX_NAME: usize = 31;

impl SetKind {
    pub fn all() -> impl Iterator<Item = SetKind> {
        SETS.iter().map(|s| s.0)
    }

    fn row(self) -> &'static (SetKind, &'static str, &'static str, &'static str) {
        SETS.iter()
            .find(|s| s.0 == self)
            .expect("every kind has a row")
    }

    /// The set's name for a family: IPv6 sets start `KUBE-6-` and are cut to
    /// 31 characters, as upstream names them.
    pub fn name(self, family: Family) -> String {
        let base = self.row().1;
        match family {
            Family::V4 => base.to_string(),
            Family::V6 => {
                let mut n = format!("KUBE-6-{}", &base["KUBE-".len()..]);
                n.truncate(MAX_NAME);
                n
            }
        }
    }

    pub fn set_type(self) -> &'static str {
        self.row().2
    }

    pub fn comment(self) -> &'static str {
        self.row().3
    }

    /// The `ipset restore` line that creates the set (if missing).
    pub fn create_line(self, family: Family) -> String {
        let name = self.name(family);
        if self.set_type() == "bitmap:port" {
            format!("create {name} bitmap:port range 0-65535")
        } else {
            let fam = match family {
                Family::V4 => "inet",
                Family::V6 => "inet6",
            };
            format!(
                "create {name} {} family {fam} hashsize 1024 maxelem 65536",
                self.set_type()
            )
        }
    }
}

/// Entries by set (only sets with entries need appear).
pub type SetEntries = BTreeMap<SetKind, BTreeSet<String>>;

/// The `ipset restore -exist` text that creates every set of `family` and
/// turns `from` into `to` (only the difference is written).
pub fn restore_text(family: Family, from: &SetEntries, to: &SetEntries) -> String {
    let empty = BTreeSet::new();
    let mut out = String::new();
    for kind in SetKind::all() {
        out.push_str(&kind.create_line(family));
        out.push('\n');
    }
    for kind in SetKind::all() {
        let (old, new) = (
            from.get(&kind).unwrap_or(&empty),
            to.get(&kind).unwrap_or(&empty),
        );
        let name = kind.name(family);
        for e in old.difference(new) {
            out.push_str(&format!("del {name} {e}\n"));
        }
        for e in new.difference(old) {
            out.push_str(&format!("add {name} {e}\n"));
        }
    }
    out
}

/// The entry changes (no creates) that turn `from` into `to`, in the order
/// [`restore_text`] writes them: per set, deletions then additions.
pub fn entry_ops(family: Family, from: &SetEntries, to: &SetEntries) -> Vec<EntryOp> {
    let empty = BTreeSet::new();
    let mut out = Vec::new();
    for kind in SetKind::all() {
        let (old, new) = (
            from.get(&kind).unwrap_or(&empty),
            to.get(&kind).unwrap_or(&empty),
        );
        if old.is_empty() && new.is_empty() {
            continue;
        }
        let set_type = SetType::from_name(kind.set_type()).expect("our set types are known");
        let op = |add: bool, e: &String| EntryOp {
            add,
            set: kind.name(family),
            set_type,
            family,
            entry: e.clone(),
        };
        out.extend(old.difference(new).map(|e| op(false, e)));
        out.extend(new.difference(old).map(|e| op(true, e)));
    }
    out
}

/// Parses `ipset save` output into the entries of our sets of `family`.
pub fn parse_save(family: Family, text: &str) -> SetEntries {
    let names: BTreeMap<String, SetKind> = SetKind::all().map(|k| (k.name(family), k)).collect();
    let mut out = SetEntries::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("add") {
            continue;
        }
        let (Some(set), Some(entry)) = (it.next(), it.next()) else {
            continue;
        };
        if let Some(kind) = names.get(set) {
            out.entry(*kind).or_default().insert(entry.to_string());
        }
    }
    out
}

/// Whether the names we would destroy on cleanup belong to us.
pub fn owned_names(family: Family) -> Vec<String> {
    SetKind::all().map(|k| k.name(family)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert_eq!(SetKind::ClusterIp.name(Family::V4), "KUBE-CLUSTER-IP");
        assert_eq!(SetKind::ClusterIp.name(Family::V6), "KUBE-6-CLUSTER-IP");
        assert_eq!(
            SetKind::LoadBalancerSourceCidr.name(Family::V6),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        assert_eq!(
            SetKind::NodePortLocalSctp.name(Family::V6),
            "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"
        );
        for k in SetKind::all() {
            for f in [Family::V4, Family::V6] {
                assert!(k.name(f).len() <= MAX_NAME, "{}", k.name(f));
            }
        }
        assert_eq!(SetKind::all().count(), 17);
        assert_eq!(
            SetKind::NodePortTcp.create_line(Family::V4),
            "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535"
        );
        assert_eq!(
            SetKind::LoopBack.create_line(Family::V6),
            "create KUBE-6-LOOP-BACK hash:ip,port,ip family inet6 hashsize 1024 maxelem 65536"
        );
    }

    #[test]
    fn restore_writes_only_the_difference() {
        let mut a = SetEntries::new();
        a.entry(SetKind::ClusterIp).or_default().extend([
            "10.96.0.1,tcp:443".to_string(),
            "10.96.0.10,udp:53".to_string(),
        ]);
        let mut b = a.clone();
        b.get_mut(&SetKind::ClusterIp)
            .unwrap()
            .remove("10.96.0.10,udp:53");
        b.entry(SetKind::NodePortTcp)
            .or_default()
            .insert("30080".to_string());
        let text = restore_text(Family::V4, &a, &b);
        let changes: Vec<_> = text.lines().filter(|l| !l.starts_with("create ")).collect();
        assert_eq!(
            changes,
            vec![
                "del KUBE-CLUSTER-IP 10.96.0.10,udp:53",
                "add KUBE-NODE-PORT-TCP 30080"
            ]
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("create ")).count(),
            17
        );
        let ops: Vec<String> = entry_ops(Family::V4, &a, &b)
            .iter()
            .map(|o| o.line())
            .collect();
        assert_eq!(ops, changes, "the same changes in the same order");
        let ops = entry_ops(Family::V6, &b, &a);
        assert_eq!(
            (ops[0].set.as_str(), ops[0].set_type, ops[0].family),
            ("KUBE-6-CLUSTER-IP", SetType::HashIpPort, Family::V6)
        );
    }

    #[test]
    fn parses_ipset_save() {
        let save = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1\n\
                    add KUBE-CLUSTER-IP 10.96.0.10,udp:53\n\
                    add KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n\
                    add SOMEONE-ELSE 1.2.3.4\n\
                    add KUBE-6-CLUSTER-IP fd00::1,tcp:443\n\
                    add KUBE-NODE-PORT-TCP 30080\n";
        let got = parse_save(Family::V4, save);
        assert_eq!(got[&SetKind::ClusterIp].len(), 2);
        assert_eq!(got[&SetKind::NodePortTcp].len(), 1);
        assert_eq!(got.len(), 2, "other sets and the other family are not ours");
        assert_eq!(parse_save(Family::V6, save)[&SetKind::ClusterIp].len(), 1);
    }
}
