//! Keeps the desired service ports up to date as Services change. Pure.
//!
//! Which externalIP and LoadBalancer IP claims are programmed depends on the
//! other Services ([`crate::model::ownership`]), so a rebuild also decides
//! again the claims of the service ports on each tuple whose holder, winner
//! or node-address status the change moved (and only those): deleting the
//! Service that held a tuple hands it to the next claimant in the same
//! rebuild, while a claim added behind the winner decides nobody else.

use crate::backend::Ports;
use crate::model::ownership::{
    Conflict, Decided, Ownership, Rank, Refusal, RefusedCounts, Touched,
};
use crate::model::{
    build_service, Built, Family, NodeContext, Protocol, ServiceKey, ServicePort, ServicePortKey,
    ServicePortName,
};
use crate::source::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Borrows each slice, as `build_service` takes them.
pub fn refs<T>(v: &[T]) -> Vec<&T> {
    v.iter().collect()
}

/// A service port before and after a rebuild (for conntrack cleanup).
pub type PortChange = (Option<ServicePort>, Option<ServicePort>);

/// Desired state, rebuilt per changed Service.
#[derive(Default)]
pub struct ModelCache {
    pub node: NodeContext,
    /// By key, so the ports of one Service are adjacent (keys order by
    /// namespace and name first).
    pub ports: Ports,
    /// Last error per Service, so each problem is logged once.
    errors: BTreeMap<ServiceKey, String>,
    /// Who owns which VIP tuple.
    owners: Ownership,
}

/// What a rebuild changed, and what to log about it.
#[derive(Debug, Default)]
pub struct Rebuild {
    pub changed: BTreeSet<ServicePortKey>,
    /// UDP service ports before and after (only UDP needs conntrack cleanup).
    pub changes: Vec<PortChange>,
    /// New problems (each names its object); repeats are not reported twice.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Claims newly refused (each reported once, while it lasts).
    pub conflicts: Vec<Conflict>,
    /// Claims refused before and programmed now.
    pub resolved: Vec<(ServicePortKey, Refusal)>,
}

impl ModelCache {
    pub fn new(node: NodeContext) -> Self {
        ModelCache {
            node,
            ..Default::default()
        }
    }

    /// `--allow-node-ip-external-ips`: externalIPs on this node's addresses
    /// are programmed (set before the first rebuild).
    pub fn allow_node_ip_external_ips(&mut self, allow: bool) {
        self.owners.allow_node_ips = allow;
    }

    /// Claims refused now, per reason.
    pub fn refused_counts(&self) -> RefusedCounts {
        self.owners.counts()
    }

    pub fn node_addresses(&self) -> &BTreeSet<IpAddr> {
        self.owners.node_ips()
    }

    /// This node's own addresses changed: claims on the addresses that came
    /// or went are decided again.
    pub fn set_node_addresses(&mut self, ips: BTreeSet<IpAddr>) -> Rebuild {
        let mut out = Rebuild::default();
        if ips == *self.owners.node_ips() {
            return out;
        }
        let mut touched = Touched::new();
        self.owners.set_node_ips(ips, &mut touched);
        self.settle(BTreeMap::new(), &touched, &mut out);
        out
    }

    /// Rebuilds the given Services from the store.
    pub fn rebuild(&mut self, store: &Store, dirty: &BTreeSet<ServiceKey>) -> Rebuild {
        let mut out = Rebuild::default();
        // The new service ports of the dirty Services (None: gone), with
        // their claims as asked; decided once every Service is in the index.
        let mut staged: BTreeMap<ServicePortKey, Option<ServicePort>> = BTreeMap::new();
        let mut touched = Touched::new();
        for key in dirty {
            let built = store.service(key).map(|svc| {
                svc.and_then(|svc| {
                    let slices = store.slices_of(key)?;
                    let b = build_service(&svc, &refs(&slices), &self.node)?;
                    Ok((b, Rank::of(&svc.metadata)))
                })
            });
            let (new_ports, rank): (Vec<ServicePort>, Rank) = match built {
                None => {
                    self.errors.remove(key);
                    (vec![], Rank::default())
                }
                Some(Ok((b, rank))) => {
                    if self.errors.remove(key).is_some() {
                        tracing::info!(service = %key, "service is valid again");
                    }
                    out.warnings.extend(b.warnings);
                    match b.built {
                        Built::Ports(p) => (p, rank),
                        Built::Ignored(_) => (vec![], rank),
                    }
                }
                Some(Err(e)) => {
                    // Keep whatever was programmed for it before.
                    if self.errors.get(key) != Some(&e) {
                        out.errors.push(e.clone());
                        self.errors.insert(key.clone(), e);
                    }
                    continue;
                }
            };
            let gone: Vec<ServicePortKey> = self
                .ports_of(key)
                .filter(|k| !new_ports.iter().any(|p| p.key == **k))
                .cloned()
                .collect();
            for k in gone {
                self.owners.set(&k, self.ports.get(&k), None, &mut touched);
                staged.insert(k, None);
            }
            for p in new_ports {
                self.owners.set(
                    &p.key,
                    self.ports.get(&p.key),
                    Some((&p, &rank)),
                    &mut touched,
                );
                staged.insert(p.key.clone(), Some(p));
            }
        }
        self.settle(staged, &touched, &mut out);
        out
    }

    /// Decides the claims of the staged service ports and of every other
    /// one claiming a touched tuple, and stores the results.
    fn settle(
        &mut self,
        staged: BTreeMap<ServicePortKey, Option<ServicePort>>,
        touched: &Touched,
        out: &mut Rebuild,
    ) {
        let mut decided = Decided::default();
        // Others first: they are only read, not moved out of `staged`.
        for k in self.owners.claimants(touched) {
            if staged.contains_key(&k) {
                continue;
            }
            let (external, lb) = self.owners.resolve(&k, &mut decided);
            let Some(p) = self.ports.get_mut(&k) else {
                continue;
            };
            if p.external_ips != external || p.load_balancer_ips != lb {
                let old = (k.protocol == Protocol::Udp).then(|| p.clone());
                p.external_ips = external;
                p.load_balancer_ips = lb;
                if let Some(old) = old {
                    out.changes.push((Some(old), Some(p.clone())));
                }
                out.changed.insert(k);
            }
        }
        for (k, new) in staged {
            match new {
                None => {
                    self.owners.forget(&k);
                    if let Some(old) = self.ports.remove(&k) {
                        if k.protocol == Protocol::Udp {
                            out.changes.push((Some(old), None));
                        }
                        out.changed.insert(k);
                    }
                }
                Some(mut p) => {
                    let (external, lb) = self.owners.resolve(&k, &mut decided);
                    p.external_ips = external;
                    p.load_balancer_ips = lb;
                    let old = self.ports.get(&k);
                    if old != Some(&p) {
                        out.changed.insert(k.clone());
                        // Only UDP changes lead to conntrack cleanup: recording
                        // the others would copy every port at a full rebuild.
                        if k.protocol == Protocol::Udp {
                            out.changes.push((old.cloned(), Some(p.clone())));
                        }
                        self.ports.insert(k, p);
                    }
                }
            }
        }
        out.conflicts.extend(decided.conflicts);
        out.resolved.extend(decided.resolved);
    }

    /// The keys of the programmed ports of one Service.
    fn ports_of<'a>(&'a self, key: &'a ServiceKey) -> impl Iterator<Item = &'a ServicePortKey> {
        // The least key of this Service: empty port name, then the least
        // protocol and family.
        let first = ServicePortKey {
            name: ServicePortName {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                port: String::new(),
            },
            protocol: Protocol::Tcp,
            family: Family::V4,
        };
        self.ports
            .range(first..)
            .map(|(k, _)| k)
            .take_while(move |k| k.name.namespace == key.namespace && k.name.name == key.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Update;
    use k8s_openapi::api::core::v1::Service;

    fn svc(name: &str, ip: &str, ports: serde_json::Value) -> Update {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap();
        Update::Service(Box::new(s))
    }

    fn names(m: &ModelCache) -> Vec<String> {
        m.ports
            .keys()
            .map(|k| format!("{}/{}", k.name, k.protocol.lower()))
            .collect()
    }

    #[test]
    fn a_rebuild_replaces_exactly_the_ports_of_its_service() {
        let mut store = Store::default();
        let mut m = ModelCache::new(NodeContext::default());
        let two = serde_json::json!([
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"}
        ]);
        let one = serde_json::json!([{"name": "http", "port": 80, "protocol": "TCP"}]);
        let mut dirty = BTreeSet::new();
        dirty.extend(store.apply(svc("a", "10.0.0.1", two.clone())));
        dirty.extend(store.apply(svc("a-b", "10.0.0.2", two)));
        dirty.extend(store.apply(svc("ab", "10.0.0.3", serde_json::json!([{"port": 80}]))));
        assert_eq!(m.rebuild(&store, &dirty).changed.len(), 5);
        assert_eq!(
            names(&m),
            [
                "ns/a:dns/udp",
                "ns/a:http/tcp",
                "ns/a-b:dns/udp",
                "ns/a-b:http/tcp",
                "ns/ab/tcp"
            ]
        );
        // a loses its UDP port: only that one changes (and needs conntrack).
        let dirty = store.apply(svc("a", "10.0.0.1", one));
        let r = m.rebuild(&store, &dirty);
        assert_eq!(r.changed.len(), 1);
        assert_eq!(r.changes.len(), 1);
        assert!(r.changes[0].0.is_some() && r.changes[0].1.is_none());
        assert_eq!(
            names(&m),
            [
                "ns/a:http/tcp",
                "ns/a-b:dns/udp",
                "ns/a-b:http/tcp",
                "ns/ab/tcp"
            ]
        );
        // a-b goes away: its ports, and only those.
        let dirty = store.apply(Update::ServiceDeleted(ServiceKey {
            namespace: "ns".into(),
            name: "a-b".into(),
        }));
        assert_eq!(m.rebuild(&store, &dirty).changed.len(), 2);
        assert_eq!(names(&m), ["ns/a:http/tcp", "ns/ab/tcp"]);
    }

    // ---- VIP ownership ----

    /// A Service in namespace `ns` with one port and the given claims.
    fn claimer(
        ns: &str,
        name: &str,
        cip: &str,
        port: serde_json::Value,
        ext: &[&str],
        lb: &[&str],
        age: (Option<&str>, Option<&str>),
    ) -> Update {
        let (created, uid) = age;
        let ingress: Vec<_> = lb.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
        let mut meta = serde_json::json!({"name": name, "namespace": ns});
        if let Some(c) = created {
            meta["creationTimestamp"] = c.into();
        }
        if let Some(u) = uid {
            meta["uid"] = u.into();
        }
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": meta,
            "spec": {"clusterIP": cip, "externalIPs": ext, "ports": [port]},
            "status": {"loadBalancer": {"ingress": ingress}}
        }))
        .unwrap();
        Update::Service(Box::new(s))
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    /// (externalIPs, LB IPs) programmed for the one port of ns/name (none
    /// when it is gone).
    fn claims(m: &ModelCache, ns: &str, name: &str) -> (Vec<String>, Vec<String>) {
        let s = |v: &[IpAddr]| v.iter().map(|i| i.to_string()).collect();
        m.ports
            .values()
            .find(|p| p.key.name.namespace == ns && p.key.name.name == name)
            .map(|p| (s(&p.external_ips), s(&p.load_balancer_ips)))
            .unwrap_or_default()
    }

    fn names_of(keys: &BTreeSet<ServicePortKey>) -> Vec<String> {
        keys.iter()
            .map(|k| format!("{}/{}", k.name.namespace, k.name.name))
            .collect()
    }

    #[test]
    fn an_external_ip_never_takes_a_cluster_ip_tuple_whatever_the_order() {
        let dns_port = serde_json::json!({"name": "dns", "port": 53, "protocol": "UDP"});
        for dns_first in [true, false] {
            let mut store = Store::default();
            let mut m = ModelCache::new(NodeContext::default());
            let dns = claimer(
                "kube-system",
                "kube-dns",
                "10.96.0.10",
                dns_port.clone(),
                &[],
                &[],
                (Some("2024-01-01T00:00:00Z"), Some("d")),
            );
            // Older than kube-dns, and sorting before it: still refused.
            let evil = claimer(
                "a-tenant",
                "evil",
                "10.96.7.7",
                dns_port.clone(),
                &["10.96.0.10"],
                &[],
                (Some("2020-01-01T00:00:00Z"), Some("e")),
            );
            let (first, second) = if dns_first { (dns, evil) } else { (evil, dns) };
            let d = store.apply(first);
            let r1 = m.rebuild(&store, &d);
            let d = store.apply(second);
            let r2 = m.rebuild(&store, &d);
            assert_eq!(claims(&m, "a-tenant", "evil"), (vec![], vec![]));
            let conflicts: Vec<_> = r1.conflicts.iter().chain(&r2.conflicts).collect();
            assert_eq!(conflicts.len(), 1, "{conflicts:?}");
            assert!(conflicts[0]
                .message()
                .contains("ClusterIP of Service kube-system/kube-dns"));
            // When kube-dns came second, evil's port changed without evil changing.
            if !dns_first {
                assert_eq!(
                    names_of(&r2.changed),
                    ["a-tenant/evil", "kube-system/kube-dns"]
                );
                assert_eq!(r2.changes.len(), 2, "both UDP ports, for conntrack");
            }
            assert_eq!(m.refused_counts().cluster_ip, 1);
        }
    }

    #[test]
    fn deleting_the_winner_moves_the_claim_to_the_next_claimant() {
        let mut store = Store::default();
        let mut m = ModelCache::new(NodeContext::default());
        let web = serde_json::json!({"port": 80});
        let mut dirty = BTreeSet::new();
        // "new" sorts first by name but is younger; "mid" ties with "old"
        // in time and loses on UID.
        for (name, cip, created, uid) in [
            ("new", "10.96.0.1", "2024-01-01T00:00:00Z", "a"),
            ("old", "10.96.0.2", "2020-01-01T00:00:00Z", "b"),
            ("mid", "10.96.0.3", "2020-01-01T00:00:00Z", "c"),
        ] {
            dirty.extend(store.apply(claimer(
                "t",
                name,
                cip,
                web.clone(),
                &["192.0.2.10"],
                &[],
                (Some(created), Some(uid)),
            )));
        }
        // Shares the IP on another port (MetalLB allow-shared-ip): no conflict.
        dirty.extend(store.apply(claimer(
            "t",
            "shared",
            "10.96.0.4",
            serde_json::json!({"port": 81}),
            &[],
            &["192.0.2.10"],
            (None, None),
        )));
        let r = m.rebuild(&store, &dirty);
        let won = |m: &ModelCache| -> Vec<&str> {
            ["new", "old", "mid"]
                .into_iter()
                .filter(|n| !claims(m, "t", n).0.is_empty())
                .collect()
        };
        assert_eq!(won(&m), ["old"]);
        assert_eq!(claims(&m, "t", "shared").1, ["192.0.2.10"]);
        assert_eq!(r.conflicts.len(), 2);
        let mid = r
            .conflicts
            .iter()
            .find(|c| c.loser.name.name == "mid")
            .unwrap();
        assert!(
            mid.message().ends_with(
                "Service t/old claimed it earlier (created in the same second, lower UID)"
            ),
            "{}",
            mid.message()
        );
        // The winner goes: the next claimant takes over in the same rebuild.
        let d = store.apply(Update::ServiceDeleted(key("t", "old")));
        let r = m.rebuild(&store, &d);
        assert_eq!(won(&m), ["mid"]);
        assert_eq!(names_of(&r.changed), ["t/mid", "t/old"]);
        assert_eq!(r.resolved.len(), 1);
        // The loser that is left now loses to mid (a new reason: reported).
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.conflicts[0].loser.name.name, "new");
        assert_eq!(m.refused_counts().earlier_claim, 1);
        // An endpoint-only change of the winner decides nothing else.
        let r = m.rebuild(&store, &[key("t", "mid")].into());
        assert!(r.changed.is_empty() && r.conflicts.is_empty());
    }

    // ---- incremental == from scratch, against a naive oracle ----

    use crate::model::ownership::{ClaimKind, Rank, Reason, Vip};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(Vec<Service>),
        Delete(usize),
        Node(Vec<bool>),
    }

    const NAMES: [(&str, &str); 5] = [("x", "a"), ("x", "b"), ("y", "a"), ("y", "c"), ("z", "d")];
    const CLUSTER: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    const OTHER: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
    const NODE: [&str; 2] = ["192.0.2.1", "10.0.0.2"];

    fn any_service() -> impl Strategy<Value = Service> {
        let pool: Vec<&str> = CLUSTER.iter().chain(&OTHER).copied().collect();
        let ips = proptest::sample::subsequence(pool.clone(), 0..3);
        let ports =
            proptest::sample::subsequence(vec![(53, "UDP"), (80, "TCP"), (53, "TCP")], 1..3);
        (
            0..NAMES.len(),
            proptest::sample::select(CLUSTER.to_vec()),
            ips,
            proptest::sample::subsequence(pool, 0..2),
            ports,
            proptest::option::of(proptest::sample::select(vec![
                "2020-01-01T00:00:00Z",
                "2021-01-01T00:00:00Z",
            ])),
            proptest::option::of(proptest::sample::select(vec!["u1", "u2"])),
        )
            .prop_map(|(n, cip, ext, lb, ports, created, uid)| {
                let (ns, name) = NAMES[n];
                let ports: Vec<_> = ports
                    .iter()
                    .enumerate()
                    .map(|(i, (p, proto))| serde_json::json!({"name": format!("p{i}"), "port": p, "protocol": proto}))
                    .collect();
                let ingress: Vec<_> = lb.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": ns, "creationTimestamp": created, "uid": uid},
                    "spec": {"clusterIP": cip, "externalIPs": ext, "ports": ports},
                    "status": {"loadBalancer": {"ingress": ingress}}
                }))
                .unwrap()
            })
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => prop::collection::vec(any_service(), 1..4).prop_map(Op::Put),
            2 => (0..NAMES.len()).prop_map(Op::Delete),
            1 => prop::collection::vec(any::<bool>(), NODE.len()).prop_map(Op::Node),
        ]
    }

    /// What every service port should program, decided from scratch and
    /// naively: every claim against every other.
    type Refusals = BTreeMap<ServicePortKey, Vec<Refusal>>;

    fn oracle(store: &Store, node_ips: &BTreeSet<IpAddr>, allow: bool) -> (Ports, Refusals) {
        let mut raw: Vec<(ServicePort, Rank)> = vec![];
        for key in store.service_keys() {
            let svc = store.service(key).unwrap().unwrap();
            let b = build_service(&svc, &[], &NodeContext::default()).unwrap();
            if let Built::Ports(ps) = b.built {
                raw.extend(ps.into_iter().map(|p| (p, Rank::of(&svc.metadata))));
            }
        }
        let claims_of = |p: &ServicePort| -> Vec<(ClaimKind, IpAddr)> {
            p.external_ips
                .iter()
                .map(|ip| (ClaimKind::ExternalIp, *ip))
                .chain(
                    p.load_balancer_ips
                        .iter()
                        .map(|ip| (ClaimKind::LoadBalancerIp, *ip)),
                )
                .collect()
        };
        let mut out = Ports::new();
        let mut refusals = Refusals::new();
        for (p, _) in &raw {
            let mut q = p.clone();
            q.external_ips.clear();
            q.load_balancer_ips.clear();
            for (kind, ip) in claims_of(p) {
                let same = |o: &ServicePort| o.port == p.port && o.key.protocol == p.key.protocol;
                let node = !allow && node_ips.contains(&ip);
                let holder = raw
                    .iter()
                    .filter(|(o, _)| same(o) && o.cluster_ip == Some(ip))
                    .map(|(o, _)| o.key.clone())
                    .min();
                let winner = raw
                    .iter()
                    .filter(|(o, _)| same(o))
                    .flat_map(|(o, r)| {
                        claims_of(o)
                            .into_iter()
                            .filter(|(k, i)| *i == ip && !(node && *k == ClaimKind::ExternalIp))
                            .map(move |(k, _)| (r.clone(), o.key.clone(), k))
                    })
                    .min();
                let reason = match (holder, winner) {
                    (Some(h), _) => Some(Reason::ClusterIp(h)),
                    _ if node && kind == ClaimKind::ExternalIp => Some(Reason::NodeAddress),
                    (_, Some((rank, by, _))) if by != p.key => Some(Reason::Claimed { by, rank }),
                    _ => None,
                };
                match (reason, kind) {
                    (None, ClaimKind::ExternalIp) => q.external_ips.push(ip),
                    (None, ClaimKind::LoadBalancerIp) => q.load_balancer_ips.push(ip),
                    (Some(reason), _) => {
                        let vip = Vip {
                            ip,
                            port: p.port,
                            protocol: p.key.protocol,
                        };
                        refusals.entry(p.key.clone()).or_default().push(Refusal {
                            vip,
                            kind,
                            reason,
                        });
                    }
                }
            }
            out.insert(q.key.clone(), q);
        }
        (out, refusals)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn incremental_ownership_matches_a_naive_decision_from_scratch(
            ops in prop::collection::vec(any_op(), 1..12),
            allow in any::<bool>(),
        ) {
            let mut store = Store::default();
            let mut m = ModelCache::new(NodeContext::default());
            m.allow_node_ip_external_ips(allow);
            let mut node_ips = BTreeSet::new();
            for op in ops {
                let before = m.ports.clone();
                let r = match op {
                    Op::Put(svcs) => {
                        let mut dirty = BTreeSet::new();
                        for s in svcs {
                            dirty.extend(store.apply(Update::Service(Box::new(s))));
                        }
                        m.rebuild(&store, &dirty)
                    }
                    Op::Delete(i) => {
                        let (ns, name) = NAMES[i];
                        let d = store.apply(Update::ServiceDeleted(key(ns, name)));
                        m.rebuild(&store, &d)
                    }
                    Op::Node(pick) => {
                        node_ips = NODE
                            .iter()
                            .zip(pick)
                            .filter(|(_, p)| *p)
                            .map(|(ip, _)| ip.parse().unwrap())
                            .collect();
                        m.set_node_addresses(node_ips.clone())
                    }
                };
                let (want, refusals) = oracle(&store, &node_ips, allow);
                prop_assert_eq!(&m.ports, &want);
                // Every refusal in force has the reason a decision from
                // scratch gives (no stale winner or holder named).
                for k in want.keys() {
                    let none = vec![];
                    prop_assert_eq!(m.owners.refused(k), refusals.get(k).unwrap_or(&none).as_slice(), "{}", k.name);
                }
                // `changed` names exactly the ports that differ.
                let differ: BTreeSet<ServicePortKey> = before
                    .keys()
                    .chain(want.keys())
                    .filter(|k| before.get(*k) != want.get(*k))
                    .cloned()
                    .collect();
                prop_assert_eq!(r.changed, differ);
                // The refusals counted are the claims left out.
                let asked: usize = store
                    .service_keys()
                    .map(|k| {
                        let s = store.service(k).unwrap().unwrap();
                        let n = s.spec.as_ref().unwrap().ports.as_ref().map_or(0, Vec::len);
                        let ext = s.spec.as_ref().unwrap().external_ips.as_ref().map_or(0, Vec::len);
                        let lb = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref()).map_or(0, Vec::len);
                        n * (ext + lb)
                    })
                    .sum();
                let programmed: usize = want.values().map(|p| p.external_ips.len() + p.load_balancer_ips.len()).sum();
                prop_assert_eq!(m.refused_counts().total(), asked - programmed);
            }
        }
    }
}
