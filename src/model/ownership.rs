//! Who owns a VIP tuple (IP, port, protocol): the rules that keep one
//! Service from taking another's traffic. Pure; shared by every backend,
//! since it only filters the `external_ips` and `load_balancer_ips` of the
//! service ports they render.
//!
//! - A ClusterIP (allocated by the API server) always owns its tuple: an
//!   externalIP or LoadBalancer ingress IP claim on it is refused.
//! - An externalIP claim on one of this node's own addresses is refused
//!   unless `--allow-node-ip-external-ips` allows it. (LoadBalancer ingress
//!   IPs are written by a load-balancer controller, not by whoever may create
//!   a Service, and some of them are node addresses on purpose.)
//! - Of the remaining claimants of a tuple, the earliest Service wins
//!   ([`Rank`]: older `creationTimestamp`, then lower UID, then
//!   namespace/name); the others are refused.
//!
//! Only the exact tuple conflicts: Services sharing an IP on different ports
//! or protocols (MetalLB's `allow-shared-ip`) all keep their claims.
//!
//! [`Ownership`] keeps an index of every ClusterIP tuple and every claim, so
//! a change decides only the tuples it touches: [`Ownership::set`] records a
//! service port's new claims and notes the tuples touched (with what decided
//! them before), [`Ownership::claimants`] names the service ports to decide
//! again (claimants of the touched tuples whose holder, node-address status
//! or winner changed), and [`Ownership::resolve`] decides one service port's
//! claims.

use super::types::{Protocol, ServicePort, ServicePortKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// One destination tuple. Ordered by IP first, so the tuples of one IP are
/// adjacent (node addresses come and go by IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{}", self.port, self.protocol.upper()),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{}", self.port, self.protocol.upper()),
        }
    }
}

/// Which field of the Service a claim comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClaimKind {
    /// `spec.externalIPs`
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`
    LoadBalancerIp,
}

impl fmt::Display for ClaimKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClaimKind::ExternalIp => "externalIP",
            ClaimKind::LoadBalancerIp => "LoadBalancer ingress IP",
        })
    }
}

/// How early a Service was created: its `creationTimestamp` (seconds, as the
/// API stores it), then its UID. A Service without a timestamp (the `dir:`
/// source's objects may have none) ranks after every Service with one, and
/// one without a UID after those with one; the claim's namespace/name breaks
/// the remaining ties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rank {
    pub created: Option<i64>,
    pub uid: Option<String>,
}

impl Rank {
    pub fn of(meta: &ObjectMeta) -> Rank {
        Rank {
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            uid: meta.uid.clone().filter(|u| !u.is_empty()),
        }
    }

    /// The creation time as the API prints it.
    fn created_string(&self) -> Option<String> {
        let s = self.created?;
        Some(
            k8s_openapi::jiff::Timestamp::from_second(s)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| s.to_string()),
        )
    }
}

/// `Some` before `None`, then by value.
fn present_first<T: Ord>(a: &Option<T>, b: &Option<T>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        present_first(&self.created, &other.created)
            .then_with(|| present_first(&self.uid, &other.uid))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One claim on a tuple, in the order claims win.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    rank: Rank,
    key: ServicePortKey,
    kind: ClaimKind,
}

/// Why a claim is not programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The tuple is this service port's ClusterIP tuple.
    ClusterIp(ServicePortKey),
    /// The IP is one of this node's addresses.
    NodeAddress,
    /// An earlier Service claims the tuple.
    Claimed { by: ServicePortKey, rank: Rank },
}

impl Reason {
    /// The metric label of this reason.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::ClusterIp(_) => "cluster_ip",
            Reason::NodeAddress => "node_address",
            Reason::Claimed { .. } => "earlier_claim",
        }
    }
}

/// A claim that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub vip: Vip,
    pub kind: ClaimKind,
    pub reason: Reason,
}

/// A refused claim to report: the service port that lost, and to what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub loser: ServicePortKey,
    pub rank: Rank,
    pub refusal: Refusal,
}

fn same_service(a: &ServicePortKey, b: &ServicePortKey) -> bool {
    a.name.namespace == b.name.namespace && a.name.name == b.name.name
}

impl Conflict {
    /// One line naming both Services (or the node address).
    pub fn message(&self) -> String {
        let r = &self.refusal;
        let loser = &self.loser.name;
        let port = if loser.port.is_empty() {
            String::new()
        } else {
            format!(" (port {})", loser.port)
        };
        let head = format!(
            "Service {}/{}{port}: {} {} not programmed",
            loser.namespace, loser.name, r.kind, r.vip
        );
        match &r.reason {
            Reason::ClusterIp(holder) if same_service(holder, &self.loser) => {
                format!("{head}: it is this Service's own ClusterIP")
            }
            Reason::ClusterIp(holder) => format!(
                "{head}: it is the ClusterIP of Service {}/{}, which always owns it",
                holder.name.namespace, holder.name.name
            ),
            Reason::NodeAddress => format!(
                "{head}: {} is an address of this node (--allow-node-ip-external-ips allows it)",
                r.vip.ip
            ),
            Reason::Claimed { by, rank } => {
                let why = match (rank.created_string(), self.rank.created_string()) {
                    (Some(w), Some(l)) if w != l => format!("created {w}, this one {l}"),
                    (Some(_), Some(_)) if rank.uid.is_some() && self.rank.uid.is_some() => {
                        "created in the same second, lower UID".to_string()
                    }
                    (Some(w), None) => format!("created {w}, this one has no creationTimestamp"),
                    _ => "no creationTimestamp/UID to tell: namespace/name order".to_string(),
                };
                format!(
                    "{head}: Service {}/{} claimed it earlier ({why})",
                    by.name.namespace, by.name.name
                )
            }
        }
    }
}

/// The claims of one service port as its Service asks for them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    rank: Rank,
    port: u16,
    external: Vec<IpAddr>,
    load_balancer: Vec<IpAddr>,
}

impl Raw {
    fn of(p: &ServicePort, rank: &Rank) -> Option<Raw> {
        if p.external_ips.is_empty() && p.load_balancer_ips.is_empty() {
            return None;
        }
        Some(Raw {
            rank: rank.clone(),
            port: p.port,
            external: p.external_ips.clone(),
            load_balancer: p.load_balancer_ips.clone(),
        })
    }

    fn claims<'a>(
        &'a self,
        key: &'a ServicePortKey,
    ) -> impl Iterator<Item = (Vip, ClaimKind)> + 'a {
        let vip = move |ip: &IpAddr| Vip {
            ip: *ip,
            port: self.port,
            protocol: key.protocol,
        };
        self.external
            .iter()
            .map(move |ip| (vip(ip), ClaimKind::ExternalIp))
            .chain(
                self.load_balancer
                    .iter()
                    .map(move |ip| (vip(ip), ClaimKind::LoadBalancerIp)),
            )
    }
}

fn cluster_vip(p: &ServicePort) -> Option<Vip> {
    Some(Vip {
        ip: p.cluster_ip?,
        port: p.port,
        protocol: p.key.protocol,
    })
}

/// Current refused claims per reason (the conflicts metric).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusedCounts {
    pub cluster_ip: usize,
    pub node_address: usize,
    pub earlier_claim: usize,
}

impl RefusedCounts {
    fn add(&mut self, r: &Reason, up: bool) {
        let n = match r {
            Reason::ClusterIp(_) => &mut self.cluster_ip,
            Reason::NodeAddress => &mut self.node_address,
            Reason::Claimed { .. } => &mut self.earlier_claim,
        };
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    pub fn by_label(&self) -> [(&'static str, usize); 3] {
        [
            ("cluster_ip", self.cluster_ip),
            ("node_address", self.node_address),
            ("earlier_claim", self.earlier_claim),
        ]
    }

    pub fn total(&self) -> usize {
        self.cluster_ip + self.node_address + self.earlier_claim
    }
}

/// What decides the claims on one tuple ([`Ownership::outcome`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    holder: Option<ServicePortKey>,
    node_ip: bool,
    winner: Option<(Rank, ServicePortKey)>,
}

/// The tuples a round of changes touched, with their outcome before it.
pub type Touched = BTreeMap<Vip, Outcome>;

/// What deciding one service port's claims changed in what is reported.
#[derive(Debug, Default)]
pub struct Decided {
    /// Refusals that are new (or whose reason changed).
    pub conflicts: Vec<Conflict>,
    /// Claims refused before and programmed now.
    pub resolved: Vec<(ServicePortKey, Refusal)>,
}

/// The index of ClusterIP tuples and claims, and the refusals in force.
#[derive(Debug, Default)]
pub struct Ownership {
    /// `--allow-node-ip-external-ips`.
    pub allow_node_ips: bool,
    node_ips: BTreeSet<IpAddr>,
    /// ClusterIP tuple -> the service ports holding it (one, unless objects
    /// from the `dir:` source share a ClusterIP).
    cluster: BTreeMap<Vip, Vec<ServicePortKey>>,
    /// Tuple -> its claims, earliest first.
    claims: BTreeMap<Vip, BTreeSet<Claim>>,
    /// Service port -> what it claims (only ports with claims).
    raw: BTreeMap<ServicePortKey, Raw>,
    /// Service port -> its claims not programmed now.
    refused: BTreeMap<ServicePortKey, Vec<Refusal>>,
    counts: RefusedCounts,
}

impl Ownership {
    pub fn new(allow_node_ips: bool) -> Self {
        Ownership {
            allow_node_ips,
            ..Default::default()
        }
    }

    pub fn node_ips(&self) -> &BTreeSet<IpAddr> {
        &self.node_ips
    }

    pub fn counts(&self) -> RefusedCounts {
        self.counts
    }

    /// The refusals in force for one service port.
    pub fn refused(&self, key: &ServicePortKey) -> &[Refusal] {
        self.refused.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// What decides every claim on `vip`: its ClusterIP holder, whether it
    /// is a refused node address, and its winning claim. A claim's verdict
    /// (and the reason of a refusal) depends on nothing else.
    fn outcome(&self, vip: &Vip) -> Outcome {
        let node_ip = !self.allow_node_ips && self.node_ips.contains(&vip.ip);
        Outcome {
            holder: self.cluster.get(vip).and_then(|h| h.first()).cloned(),
            node_ip,
            winner: self
                .claims
                .get(vip)
                .into_iter()
                .flatten()
                .find(|c| !(node_ip && c.kind == ClaimKind::ExternalIp))
                .map(|c| (c.rank.clone(), c.key.clone())),
        }
    }

    /// Notes `vip`'s outcome before its first change in this round.
    fn touch(&self, vip: Vip, touched: &mut Touched) {
        touched.entry(vip).or_insert_with(|| self.outcome(&vip));
    }

    /// Records that service port `key` now is `new` (with its Service's
    /// rank), or is gone (`None`); `old` is what it was (its ClusterIP tuple
    /// is taken from it). Notes in `touched` the tuples whose holders or
    /// claimants change. Unchanged claims touch nothing (an endpoint change
    /// of a Service costs no ownership work).
    pub fn set(
        &mut self,
        key: &ServicePortKey,
        old: Option<&ServicePort>,
        new: Option<(&ServicePort, &Rank)>,
        touched: &mut Touched,
    ) {
        let old_cluster = old.and_then(cluster_vip);
        let new_cluster = new.and_then(|(p, _)| cluster_vip(p));
        if old_cluster != new_cluster {
            if let Some(v) = old_cluster {
                self.touch(v, touched);
                if let Some(holders) = self.cluster.get_mut(&v) {
                    holders.retain(|k| k != key);
                    if holders.is_empty() {
                        self.cluster.remove(&v);
                    }
                }
            }
            if let Some(v) = new_cluster {
                self.touch(v, touched);
                let holders = self.cluster.entry(v).or_default();
                // Sorted: the least key names the holder in reports.
                if let Err(at) = holders.binary_search(key) {
                    holders.insert(at, key.clone());
                }
            }
        }
        let new_raw = new.and_then(|(p, rank)| Raw::of(p, rank));
        if self.raw.get(key) == new_raw.as_ref() {
            return;
        }
        if let Some(raw) = self.raw.remove(key) {
            for (vip, kind) in raw.claims(key) {
                self.touch(vip, touched);
                if let Some(set) = self.claims.get_mut(&vip) {
                    set.remove(&Claim {
                        rank: raw.rank.clone(),
                        key: key.clone(),
                        kind,
                    });
                    if set.is_empty() {
                        self.claims.remove(&vip);
                    }
                }
            }
        }
        if let Some(raw) = new_raw {
            for (vip, kind) in raw.claims(key) {
                self.touch(vip, touched);
                self.claims.entry(vip).or_default().insert(Claim {
                    rank: raw.rank.clone(),
                    key: key.clone(),
                    kind,
                });
            }
            self.raw.insert(key.clone(), raw);
        }
    }

    /// Replaces this node's addresses; notes in `touched` the claimed tuples
    /// on addresses that came or went.
    pub fn set_node_ips(&mut self, ips: BTreeSet<IpAddr>, touched: &mut Touched) {
        let moved: Vec<IpAddr> = self.node_ips.symmetric_difference(&ips).copied().collect();
        for ip in moved {
            let first = Vip {
                ip,
                port: 0,
                protocol: Protocol::Tcp,
            };
            let vips: Vec<Vip> = self
                .claims
                .range(first..)
                .take_while(|(v, _)| v.ip == ip)
                .map(|(v, _)| *v)
                .collect();
            for v in vips {
                self.touch(v, touched);
            }
        }
        self.node_ips = ips;
    }

    /// The service ports whose claims must be decided again: those claiming
    /// a touched tuple whose outcome changed. (A claim added or removed
    /// behind the winner changes nothing for the others: a hundred Services
    /// piling onto one tuple cost one decision each, not one per claimant.)
    pub fn claimants(&self, touched: &Touched) -> BTreeSet<ServicePortKey> {
        touched
            .iter()
            .filter(|(v, before)| self.outcome(v) != **before)
            .filter_map(|(v, _)| self.claims.get(v))
            .flatten()
            .map(|c| c.key.clone())
            .collect()
    }

    /// Whether `key`'s `kind` claim on `vip` is programmed; why not if not.
    fn verdict(&self, vip: &Vip, key: &ServicePortKey, kind: ClaimKind) -> Result<(), Reason> {
        let o = self.outcome(vip);
        if let Some(holder) = o.holder {
            return Err(Reason::ClusterIp(holder));
        }
        if o.node_ip && kind == ClaimKind::ExternalIp {
            return Err(Reason::NodeAddress);
        }
        match o.winner {
            Some((rank, by)) if by != *key => Err(Reason::Claimed { by, rank }),
            _ => Ok(()),
        }
    }

    /// The claims of service port `key` that are programmed (externalIPs,
    /// LoadBalancer IPs, in the Service's order); records its refusals and
    /// adds what changed in them to `out`.
    pub fn resolve(
        &mut self,
        key: &ServicePortKey,
        out: &mut Decided,
    ) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let mut external = Vec::new();
        let mut load_balancer = Vec::new();
        let mut refusals = Vec::new();
        let mut rank = Rank::default();
        if let Some(raw) = self.raw.get(key) {
            rank = raw.rank.clone();
            for (vip, kind) in raw.claims(key) {
                match self.verdict(&vip, key, kind) {
                    Ok(()) => match kind {
                        ClaimKind::ExternalIp => external.push(vip.ip),
                        ClaimKind::LoadBalancerIp => load_balancer.push(vip.ip),
                    },
                    Err(reason) => refusals.push(Refusal { vip, kind, reason }),
                }
            }
        }
        let before = self.refused.remove(key).unwrap_or_default();
        for r in &before {
            if !refusals.contains(r) {
                self.counts.add(&r.reason, false);
                if !refusals.iter().any(|n| n.vip == r.vip && n.kind == r.kind) {
                    out.resolved.push((key.clone(), r.clone()));
                }
            }
        }
        for r in &refusals {
            if !before.contains(r) {
                self.counts.add(&r.reason, true);
                out.conflicts.push(Conflict {
                    loser: key.clone(),
                    rank: rank.clone(),
                    refusal: r.clone(),
                });
            }
        }
        if !refusals.is_empty() {
            self.refused.insert(key.clone(), refusals);
        }
        (external, load_balancer)
    }

    /// Forgets the refusals of a service port that is gone (nothing to
    /// report: its Service no longer asks for anything).
    pub fn forget(&mut self, key: &ServicePortKey) {
        for r in self.refused.remove(key).unwrap_or_default() {
            self.counts.add(&r.reason, false);
        }
    }

    /// Decides every claim of `ports` at once (all Services known, as the
    /// `render` command has them): filters their externalIPs and LoadBalancer
    /// IPs in place and returns the refused claims.
    pub fn settle_all(&mut self, ports: &mut [(ServicePort, Rank)]) -> Vec<Conflict> {
        let mut touched = Touched::new();
        for (p, rank) in ports.iter() {
            self.set(&p.key, None, Some((p, rank)), &mut touched);
        }
        let mut out = Decided::default();
        for (p, _) in ports.iter_mut() {
            let (external, load_balancer) = self.resolve(&p.key, &mut out);
            p.external_ips = external;
            p.load_balancer_ips = load_balancer;
        }
        out.conflicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::service_port;

    fn port(ns: &str, name: &str, proto: Protocol, cip: &str, port: u16) -> ServicePort {
        service_port(ns, name, "", proto, cip, port, vec![])
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn rank(created: Option<i64>, uid: Option<&str>) -> Rank {
        Rank {
            created,
            uid: uid.map(String::from),
        }
    }

    #[test]
    fn ranks_order_by_time_then_uid_with_missing_values_last() {
        let mut v = vec![
            rank(None, None),
            rank(None, Some("a")),
            rank(Some(20), Some("a")),
            rank(Some(10), Some("b")),
            rank(Some(10), Some("a")),
            rank(Some(10), None),
        ];
        v.sort();
        assert_eq!(
            v,
            [
                rank(Some(10), Some("a")),
                rank(Some(10), Some("b")),
                rank(Some(10), None),
                rank(Some(20), Some("a")),
                rank(None, Some("a")),
                rank(None, None),
            ]
        );
    }

    #[test]
    fn a_cluster_ip_tuple_is_never_taken_and_only_the_exact_tuple_conflicts() {
        let dns = port("kube-system", "kube-dns", Protocol::Udp, "10.96.0.10", 53);
        let mut evil = port("a-tenant", "evil", Protocol::Udp, "10.96.5.5", 53);
        evil.external_ips = ips(&["10.96.0.10"]);
        // Same IP, another port, and another protocol: no conflict.
        let mut other_port = port("a-tenant", "p", Protocol::Udp, "10.96.5.6", 54);
        other_port.external_ips = ips(&["10.96.0.10"]);
        let mut other_proto = port("a-tenant", "q", Protocol::Tcp, "10.96.5.7", 53);
        other_proto.load_balancer_ips = ips(&["10.96.0.10"]);
        let old = rank(Some(1), Some("x"));
        // The tenant's Service is even older than kube-dns: still refused.
        let mut all = vec![
            (evil, old.clone()),
            (dns, rank(Some(5), Some("y"))),
            (other_port, old.clone()),
            (other_proto, old),
        ];
        let mut own = Ownership::new(false);
        let conflicts = own.settle_all(&mut all);
        assert!(all[0].0.external_ips.is_empty());
        assert_eq!(all[2].0.external_ips, ips(&["10.96.0.10"]));
        assert_eq!(all[3].0.load_balancer_ips, ips(&["10.96.0.10"]));
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            conflicts[0].message(),
            "Service a-tenant/evil: externalIP 10.96.0.10:53/UDP not programmed: \
             it is the ClusterIP of Service kube-system/kube-dns, which always owns it"
        );
        assert_eq!(own.counts().cluster_ip, 1);
    }

    #[test]
    fn the_earliest_claim_wins_by_time_then_uid_then_name() {
        let claim = |name: &str| {
            let mut p = port("ns", name, Protocol::Tcp, "10.96.0.1", 80);
            p.external_ips = ips(&["192.0.2.1"]);
            p.load_balancer_ips = ips(&["198.51.100.1"]);
            p
        };
        let winner = |ranks: Vec<(&str, Rank)>| {
            let mut all: Vec<_> = ranks.into_iter().map(|(n, r)| (claim(n), r)).collect();
            let mut own = Ownership::new(false);
            let conflicts = own.settle_all(&mut all);
            assert_eq!(conflicts.len(), 2 * (all.len() - 1), "{conflicts:?}");
            let won: Vec<_> = all
                .iter()
                .filter(|(p, _)| !p.external_ips.is_empty())
                .map(|(p, _)| p.key.name.name.clone())
                .collect();
            assert_eq!(won.len(), 1);
            won[0].clone()
        };
        assert_eq!(
            winner(vec![
                ("a", rank(Some(20), Some("1"))),
                ("b", rank(Some(10), Some("9"))),
            ]),
            "b"
        );
        assert_eq!(
            winner(vec![
                ("a", rank(Some(10), Some("9"))),
                ("b", rank(Some(10), Some("1"))),
            ]),
            "b"
        );
        assert_eq!(
            winner(vec![("b", rank(None, None)), ("a", rank(None, None))]),
            "a"
        );
        assert_eq!(
            winner(vec![("a", rank(None, None)), ("b", rank(Some(99), None))]),
            "b"
        );
    }

    #[test]
    fn node_addresses_refuse_external_ips_unless_allowed() {
        let mut p = port("ns", "grab", Protocol::Tcp, "10.96.0.1", 22);
        p.external_ips = ips(&["192.168.10.5", "192.0.2.1"]);
        p.load_balancer_ips = ips(&["192.168.10.5"]);
        let mut own = Ownership::new(false);
        let mut touched = Touched::new();
        own.set(&p.key, None, Some((&p, &Rank::default())), &mut touched);
        let mut out = Decided::default();
        // Not a node address yet: everything is programmed.
        assert_eq!(
            own.resolve(&p.key, &mut out),
            (ips(&["192.168.10.5", "192.0.2.1"]), ips(&["192.168.10.5"]))
        );
        let mut touched = Touched::new();
        own.set_node_ips(ips(&["192.168.10.5"]).into_iter().collect(), &mut touched);
        assert_eq!(own.claimants(&touched), [p.key.clone()].into());
        // The externalIP on it goes; the LoadBalancer IP stays.
        assert_eq!(
            own.resolve(&p.key, &mut out),
            (ips(&["192.0.2.1"]), ips(&["192.168.10.5"]))
        );
        assert_eq!(out.conflicts.len(), 1);
        assert!(out.conflicts[0].message().ends_with(
            "192.168.10.5 is an address of this node (--allow-node-ip-external-ips allows it)"
        ));
        assert_eq!(own.counts().node_address, 1);
        // Allowed by the flag.
        let mut allowed = Ownership::new(true);
        allowed.set_node_ips(ips(&["192.168.10.5"]).into_iter().collect(), &mut touched);
        allowed.set(&p.key, None, Some((&p, &Rank::default())), &mut touched);
        assert_eq!(
            allowed.resolve(&p.key, &mut out),
            (ips(&["192.168.10.5", "192.0.2.1"]), ips(&["192.168.10.5"]))
        );
        // The address goes away: the claim is programmed again, reported resolved.
        let mut out = Decided::default();
        own.set_node_ips(BTreeSet::new(), &mut touched);
        own.resolve(&p.key, &mut out);
        assert_eq!(out.resolved.len(), 1);
        assert_eq!(own.counts().total(), 0);
    }

    #[test]
    fn a_claim_behind_the_winner_decides_nobody_else_again() {
        let claim = |name: &str| {
            let mut p = port("ns", name, Protocol::Tcp, "10.96.0.1", 80);
            p.external_ips = ips(&["192.0.2.1"]);
            p
        };
        let mut own = Ownership::new(false);
        let mut touched = Touched::new();
        let first = claim("first");
        own.set(
            &first.key,
            None,
            Some((&first, &rank(Some(1), None))),
            &mut touched,
        );
        assert_eq!(own.claimants(&touched), [first.key.clone()].into());
        own.resolve(&first.key, &mut Decided::default());
        // Later claimants pile up: only each newcomer is decided.
        for i in 0..5 {
            let p = claim(&format!("late-{i}"));
            let mut touched = Touched::new();
            own.set(&p.key, None, Some((&p, &rank(Some(9), None))), &mut touched);
            assert!(own.claimants(&touched).is_empty());
            own.resolve(&p.key, &mut Decided::default());
        }
        assert_eq!(own.counts().earlier_claim, 5);
        // An even earlier one takes over: every claimant is decided again.
        let early = claim("early");
        let mut touched = Touched::new();
        own.set(
            &early.key,
            None,
            Some((&early, &rank(Some(0), None))),
            &mut touched,
        );
        assert_eq!(own.claimants(&touched).len(), 7);
    }

    #[test]
    fn unchanged_claims_touch_nothing() {
        let mut p = port("ns", "a", Protocol::Tcp, "10.96.0.1", 80);
        p.external_ips = ips(&["192.0.2.1"]);
        let mut own = Ownership::new(false);
        let mut touched = Touched::new();
        own.set(&p.key, None, Some((&p, &Rank::default())), &mut touched);
        assert_eq!(touched.len(), 2);
        let mut q = p.clone();
        q.endpoints
            .push(crate::model::fixtures::endpoint("10.244.0.1", 80));
        let mut touched = Touched::new();
        own.set(&p.key, Some(&p), Some((&q, &Rank::default())), &mut touched);
        assert!(touched.is_empty());
        own.set(&p.key, Some(&q), None, &mut touched);
        assert_eq!(touched.len(), 2);
        assert!(own.cluster.is_empty() && own.claims.is_empty() && own.raw.is_empty());
    }
}
