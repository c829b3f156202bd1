//! Model -> desired IPVS state (pure): virtual servers with their real servers,
//! and the addresses to bind on kube-ipvs0. Then the diff against what the
//! kernel holds, with graceful draining of removed real servers.

use super::ipset::SetKind;
use super::wire::{DestStats, Destination, ServiceId, VirtualServer};
use crate::model::{categorize, Endpoint, Family, Protocol, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Knobs for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConfig {
    pub scheduler: String,
    /// Node addresses NodePorts are served on.
    pub node_ips: Vec<IpAddr>,
    /// How long a removed TCP real server may drain (weight 0) before deletion.
    pub drain_timeout: Duration,
    /// Addresses already on another interface of the node: an externalIP or
    /// load-balancer IP among them is not bound to kube-ipvs0 again.
    pub host_addresses: BTreeSet<IpAddr>,
    /// The Node object's primary IPs (the node's own IP for source ranges).
    pub primary_ips: Vec<IpAddr>,
}

/// Desired state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceId, (VirtualServer, BTreeSet<Destination>)>,
    /// VIPs to bind as /32 (/128) on kube-ipvs0.
    pub addresses: BTreeSet<IpAddr>,
}

/// What one service port asks of the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    pub services: Vec<(VirtualServer, BTreeSet<Destination>)>,
    pub addresses: Vec<IpAddr>,
    /// ipset entries (KUBE-IPVS-IPS is derived from the bound addresses).
    pub entries: Vec<(SetKind, String)>,
    /// Load-balancer VIPs the node itself must not reach (source ranges).
    pub out_filter: Vec<(IpAddr, &'static str, u16)>,
}

fn dests(eps: &[&Endpoint]) -> BTreeSet<Destination> {
    eps.iter()
        .map(|e| Destination {
            addr: e.ip,
            port: e.port,
            weight: 1,
        })
        .collect()
}

/// `ip,proto:port` as ipset writes hash:ip,port entries.
fn ip_port(ip: &IpAddr, proto: &str, port: u16) -> String {
    format!("{ip},{proto}:{port}")
}

/// Everything one service port needs: its virtual servers with real
/// servers, the VIPs to bind, and its ipset entries.
pub fn contribution(sp: &ServicePort, cfg: &IpvsConfig) -> Contribution {
    let mut c = Contribution::default();
    let Some(cip) = sp.cluster_ip else { return c };
    let cat = categorize(sp);
    let internal = if sp.internal_policy_local {
        &cat.local
    } else {
        &cat.cluster
    };
    let external = if sp.external_policy_local {
        &cat.local
    } else {
        &cat.cluster
    };
    let proto = sp.key.protocol.lower();
    let vs = |addr: IpAddr, port: u16| VirtualServer {
        id: ServiceId {
            addr,
            protocol: sp.key.protocol,
            port,
        },
        scheduler: cfg.scheduler.clone(),
        persistence: sp.affinity_timeout,
    };
    c.services.push((vs(cip, sp.port), dests(internal)));
    c.addresses.push(cip);
    c.entries
        .push((SetKind::ClusterIp, ip_port(&cip, proto, sp.port)));
    for ep in sp.endpoints.iter().filter(|e| e.is_local) {
        c.entries.push((
            SetKind::LoopBack,
            format!("{},{proto}:{},{}", ep.ip, ep.port, ep.ip),
        ));
    }
    for ip in &sp.external_ips {
        c.services.push((vs(*ip, sp.port), dests(external)));
        if !cfg.host_addresses.contains(ip) {
            c.addresses.push(*ip);
        }
        let kind = if sp.external_policy_local {
            SetKind::ExternalIpLocal
        } else {
            SetKind::ExternalIp
        };
        c.entries.push((kind, ip_port(ip, proto, sp.port)));
    }
    let node_ip = cfg
        .primary_ips
        .iter()
        .chain(&cfg.node_ips)
        .find(|ip| Family::of(ip) == sp.key.family);
    for ip in &sp.load_balancer_ips {
        c.services.push((vs(*ip, sp.port), dests(external)));
        if !cfg.host_addresses.contains(ip) {
            c.addresses.push(*ip);
        }
        let e = ip_port(ip, proto, sp.port);
        c.entries.push((SetKind::LoadBalancer, e.clone()));
        if sp.external_policy_local {
            c.entries.push((SetKind::LoadBalancerLocal, e.clone()));
        }
        let ranges: Vec<_> = sp
            .load_balancer_source_ranges
            .iter()
            .filter(|r| Family::of_net(r) == sp.key.family)
            .collect();
        // A zero-length prefix lets every source in, and the kernel refuses
        // it in a hash:ip,port,net set (so the whole ipset write would fail):
        // such a family gets no source filter at all, which is what the same
        // ranges mean in iptables mode (upstream's ipvs mode leaves /0 out of
        // the set since kubernetes#132722).
        let ranges = if ranges.iter().any(|r| r.prefix_len() == 0) {
            vec![]
        } else {
            ranges
        };
        if !ranges.is_empty() {
            c.entries.push((SetKind::LoadBalancerFw, e.clone()));
            for r in &ranges {
                // ipset prints a host range without its prefix length.
                let net = if r.prefix_len() == r.max_prefix_len() {
                    r.addr().to_string()
                } else {
                    r.to_string()
                };
                c.entries
                    .push((SetKind::LoadBalancerSourceCidr, format!("{e},{net}")));
            }
            if node_ip.is_some_and(|n| ranges.iter().any(|r| r.contains(n))) {
                c.entries
                    .push((SetKind::LoadBalancerSourceIp, format!("{e},{ip}")));
            } else {
                c.out_filter.push((*ip, proto, sp.port));
            }
        }
    }
    if let Some(np) = sp.node_port {
        let node_ips: Vec<_> = cfg
            .node_ips
            .iter()
            .filter(|ip| Family::of(ip) == sp.key.family)
            .collect();
        for ip in &node_ips {
            c.services.push((vs(**ip, np), dests(external)));
        }
        if !node_ips.is_empty() {
            let local = sp.external_policy_local;
            let port = np.to_string();
            let mut add = |all: SetKind, loc: SetKind, entry: String| {
                if local {
                    c.entries.push((loc, entry.clone()));
                }
                c.entries.push((all, entry));
            };
            match sp.key.protocol {
                Protocol::Tcp => add(SetKind::NodePortTcp, SetKind::NodePortLocalTcp, port),
                Protocol::Udp => add(SetKind::NodePortUdp, SetKind::NodePortLocalUdp, port),
                Protocol::Sctp => {
                    for ip in &node_ips {
                        add(
                            SetKind::NodePortSctp,
                            SetKind::NodePortLocalSctp,
                            ip_port(ip, proto, np),
                        );
                    }
                }
            }
        }
    }
    if let Some(hc) = sp.health_check_node_port {
        c.entries
            .push((SetKind::HealthCheckNodePort, hc.to_string()));
    }
    c
}

/// Builds the whole desired state from all service ports (for `render` and
/// tests; the backend keeps it incrementally, see `state`).
pub fn desired<'a>(ports: impl IntoIterator<Item = &'a ServicePort>, cfg: &IpvsConfig) -> Desired {
    let mut d = Desired::default();
    for sp in ports {
        let c = contribution(sp, cfg);
        for (v, ds) in c.services {
            d.services.insert(v.id.clone(), (v, ds));
        }
        d.addresses.extend(c.addresses);
    }
    d
}

/// What the kernel holds for one virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub vs: VirtualServer,
    pub dests: Vec<(Destination, DestStats)>,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddService(VirtualServer),
    UpdateService(VirtualServer),
    DelService(ServiceId),
    AddDest(ServiceId, Destination),
    UpdateDest(ServiceId, Destination),
    DelDest(ServiceId, Destination),
}

impl Op {
    /// Whether the change lets new traffic through (a new virtual or real
    /// server, a changed scheduler, a raised weight) rather than taking
    /// some away; those go to the kernel first.
    pub fn serves_more(&self) -> bool {
        match self {
            Op::AddService(_) | Op::UpdateService(_) | Op::AddDest(..) => true,
            Op::UpdateDest(_, d) => d.weight > 0,
            Op::DelService(_) | Op::DelDest(..) => false,
        }
    }
}

/// Real servers being drained, and since when (kept across syncs; after a
/// restart, weight-0 strangers start their timer when first seen).
pub type Draining = BTreeMap<(ServiceId, IpAddr, u16), Instant>;

/// Computes the operations that turn `current` into `desired`. Only virtual
/// servers for which `owned` holds are ever deleted.
pub fn diff(
    current: &BTreeMap<ServiceId, Current>,
    desired: &Desired,
    draining: &mut Draining,
    now: Instant,
    drain_timeout: Duration,
    owned: impl Fn(&ServiceId) -> bool,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, (vs, want)) in &desired.services {
        let Some(cur) = current.get(id) else {
            ops.push(Op::AddService(vs.clone()));
            ops.extend(want.iter().map(|d| Op::AddDest(id.clone(), d.clone())));
            continue;
        };
        if cur.vs != *vs {
            ops.push(Op::UpdateService(vs.clone()));
        }
        for d in want {
            draining.remove(&(id.clone(), d.addr, d.port));
            match cur
                .dests
                .iter()
                .find(|(c, _)| c.addr == d.addr && c.port == d.port)
            {
                None => ops.push(Op::AddDest(id.clone(), d.clone())),
                Some((c, _)) if c.weight != d.weight => {
                    ops.push(Op::UpdateDest(id.clone(), d.clone()))
                }
                Some(_) => {}
            }
        }
        for (c, stats) in &cur.dests {
            if want.iter().any(|d| d.addr == c.addr && d.port == c.port) {
                continue;
            }
            let key = (id.clone(), c.addr, c.port);
            let since = *draining.entry(key.clone()).or_insert(now);
            // Only TCP has connections worth waiting for (as upstream).
            let idle = (stats.active == 0 && stats.inactive == 0) || id.protocol != Protocol::Tcp;
            if c.weight > 0 && !idle {
                ops.push(Op::UpdateDest(
                    id.clone(),
                    Destination {
                        weight: 0,
                        ..c.clone()
                    },
                ));
            } else if idle || now.duration_since(since) >= drain_timeout {
                ops.push(Op::DelDest(id.clone(), c.clone()));
                draining.remove(&key);
            }
        }
    }
    for id in current.keys() {
        if !desired.services.contains_key(id) && owned(id) {
            ops.push(Op::DelService(id.clone()));
            draining.retain(|(s, _, _), _| s != id);
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn ep(ip: &str, local: bool) -> Endpoint {
        Endpoint {
            is_local: local,
            ..crate::model::fixtures::endpoint(ip, 8080)
        }
    }

    fn sp(eps: Vec<Endpoint>) -> ServicePort {
        let mut p = crate::model::fixtures::service_port(
            "ns",
            "web",
            "",
            Protocol::Tcp,
            "10.96.0.10",
            80,
            eps,
        );
        p.node_port = Some(30080);
        p.external_ips = vec!["192.0.2.10".parse().unwrap()];
        p.load_balancer_ips = vec!["198.51.100.10".parse().unwrap()];
        p.external_policy_local = true;
        p
    }

    fn cfg() -> IpvsConfig {
        IpvsConfig {
            scheduler: "rr".into(),
            node_ips: vec!["192.168.10.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            drain_timeout: Duration::from_secs(30),
            host_addresses: BTreeSet::new(),
            primary_ips: vec![],
        }
    }

    fn id(addr: &str, port: u16) -> ServiceId {
        ServiceId {
            addr: addr.parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
        }
    }

    #[test]
    fn one_virtual_server_per_vip_port_with_policy_endpoints() {
        let p = sp(vec![ep("10.244.1.10", true), ep("10.244.2.10", false)]);
        let d = desired([&p], &cfg());
        assert_eq!(
            d.services.len(),
            4,
            "clusterIP, externalIP, LB IP, one NodePort (v4 node IP)"
        );
        assert_eq!(
            d.services[&id("10.96.0.10", 80)].1.len(),
            2,
            "cluster policy: both"
        );
        for ext in [
            id("192.0.2.10", 80),
            id("198.51.100.10", 80),
            id("192.168.10.5", 30080),
        ] {
            let set = &d.services[&ext].1;
            assert_eq!(set.len(), 1, "eTP Local: local endpoint only");
            assert_eq!(set.iter().next().unwrap().addr.to_string(), "10.244.1.10");
        }
        let addrs: Vec<String> = d.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addrs,
            vec!["10.96.0.10", "192.0.2.10", "198.51.100.10"],
            "node IPs are not bound"
        );
    }

    #[test]
    fn source_ranges_fill_the_firewall_sets_unless_one_lets_everyone_in() {
        let mut p = sp(vec![ep("10.244.1.10", true)]);
        p.load_balancer_source_ranges = vec![
            "203.0.113.0/24".parse().unwrap(),
            "198.51.100.7/32".parse().unwrap(),
        ];
        let c = contribution(&p, &cfg());
        let kinds = |c: &Contribution, k: SetKind| -> Vec<String> {
            c.entries
                .iter()
                .filter(|(kind, _)| *kind == k)
                .map(|(_, e)| e.clone())
                .collect()
        };
        assert_eq!(
            kinds(&c, SetKind::LoadBalancerSourceCidr),
            vec![
                "198.51.100.10,tcp:80,203.0.113.0/24",
                "198.51.100.10,tcp:80,198.51.100.7"
            ]
        );
        assert_eq!(kinds(&c, SetKind::LoadBalancerFw).len(), 1);
        // 0.0.0.0/0 among them: open to all, nothing the kernel would refuse.
        p.load_balancer_source_ranges
            .push("0.0.0.0/0".parse().unwrap());
        let c = contribution(&p, &cfg());
        assert!(kinds(&c, SetKind::LoadBalancerSourceCidr).is_empty());
        assert!(kinds(&c, SetKind::LoadBalancerFw).is_empty());
        assert!(c.out_filter.is_empty());
        assert_eq!(kinds(&c, SetKind::LoadBalancer).len(), 1);
    }

    #[test]
    fn diff_adds_updates_and_drains() {
        let t0 = Instant::now();
        let p = sp(vec![ep("10.244.1.10", true)]);
        let d = desired([&p], &cfg());
        let mut draining = Draining::new();
        let ops = diff(
            &BTreeMap::new(),
            &d,
            &mut draining,
            t0,
            Duration::from_secs(30),
            |_| true,
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::AddService(_)))
                .count(),
            4
        );
        assert_eq!(
            ops.iter().filter(|o| matches!(o, Op::AddDest(..))).count(),
            4
        );

        // Kernel holds the clusterIP service with an extra busy destination.
        let cid = id("10.96.0.10", 80);
        let (vs, _) = d.services[&cid].clone();
        let gone = Destination {
            addr: "10.244.9.9".parse().unwrap(),
            port: 8080,
            weight: 1,
        };
        let kept = Destination {
            addr: "10.244.1.10".parse().unwrap(),
            port: 8080,
            weight: 1,
        };
        let busy = DestStats {
            active: 2,
            inactive: 0,
            persistent: 0,
        };
        let mut current = BTreeMap::new();
        current.insert(
            cid.clone(),
            Current {
                vs: vs.clone(),
                dests: vec![(kept.clone(), busy), (gone.clone(), busy)],
            },
        );
        let only_cluster = Desired {
            services: [(cid.clone(), d.services[&cid].clone())].into(),
            addresses: d.addresses.clone(),
        };
        let ops = diff(
            &current,
            &only_cluster,
            &mut draining,
            t0,
            Duration::from_secs(30),
            |_| true,
        );
        assert_eq!(
            ops,
            vec![Op::UpdateDest(
                cid.clone(),
                Destination {
                    weight: 0,
                    ..gone.clone()
                }
            )],
            "drain first"
        );

        // Still busy at weight 0 before the timeout: leave it.
        current.get_mut(&cid).unwrap().dests[1].0.weight = 0;
        let ops = diff(
            &current,
            &only_cluster,
            &mut draining,
            t0 + Duration::from_secs(10),
            Duration::from_secs(30),
            |_| true,
        );
        assert!(ops.is_empty(), "{ops:?}");
        // Timeout reached: delete.
        let ops = diff(
            &current,
            &only_cluster,
            &mut draining,
            t0 + Duration::from_secs(31),
            Duration::from_secs(30),
            |_| true,
        );
        assert_eq!(
            ops,
            vec![Op::DelDest(
                cid.clone(),
                Destination {
                    weight: 0,
                    ..gone.clone()
                }
            )]
        );
        // An idle drained destination goes at once.
        current.get_mut(&cid).unwrap().dests[1].1 = DestStats::default();
        let ops = diff(
            &current,
            &only_cluster,
            &mut draining,
            t0,
            Duration::from_secs(30),
            |_| true,
        );
        assert_eq!(
            ops,
            vec![Op::DelDest(cid.clone(), Destination { weight: 0, ..gone })]
        );

        // Services nobody wants are deleted only when ours.
        let ops = diff(
            &current,
            &Desired::default(),
            &mut draining,
            t0,
            Duration::from_secs(30),
            |_| false,
        );
        assert!(ops.is_empty());
        let ops = diff(
            &current,
            &Desired::default(),
            &mut draining,
            t0,
            Duration::from_secs(30),
            |_| true,
        );
        assert_eq!(ops, vec![Op::DelService(cid.clone())]);

        // Scheduler or persistence change updates the service in place.
        let mut changed = only_cluster.clone();
        changed.services.get_mut(&cid).unwrap().0.persistence = Some(10800);
        current.get_mut(&cid).unwrap().dests.truncate(1);
        let ops = diff(
            &current,
            &changed,
            &mut draining,
            t0,
            Duration::from_secs(30),
            |_| true,
        );
        assert!(
            matches!(&ops[..], [Op::UpdateService(v)] if v.persistence == Some(10800)),
            "{ops:?}"
        );
    }
}
