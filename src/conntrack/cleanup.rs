//! Stale UDP conntrack entries after a change: which filters a service
//! port's change calls for ([`flushes`]), and which dumped entries a filter
//! covers ([`Flush::covers`], [`Matcher`]). Pure; the entries are deleted
//! over netlink by the background cleaner (`worker.rs`) after the rules are
//! in the kernel.
//!
//! UDP has no connection teardown, so without this a client keeps sending to
//! an endpoint that is gone, or to the REJECT a service had before it gained
//! its first endpoint.
//!
//! The filters are upstream kube-proxy's: entries to a service IP and port
//! when the service gains its first endpoint (`--orig-dst IP --dport PORT`),
//! to a NodePort likewise (`--dport PORT`, any local address), and entries
//! DNATed to a removed endpoint through a service IP (`--orig-dst IP
//! --dst-nat EP`) or through a NodePort (`--dport PORT --dst-nat EP`).
//! [`args`] spells each as the `conntrack -D` command it replaces.

use super::wire::{Entry, UDP};
use crate::model::{categorize, Family, Protocol, ServicePort};
use crate::sync::model::PortChange;
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

/// One filter over the UDP entries of one family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flush {
    /// Entries to a service IP and port (the service gained endpoints).
    ToServiceIp { ip: IpAddr, port: u16 },
    /// Entries to a NodePort on any local address.
    ToNodePort { family: Family, port: u16 },
    /// Entries to a service IP that were DNATed to a removed endpoint.
    ToEndpoint {
        service_ip: IpAddr,
        endpoint: IpAddr,
    },
    /// Entries to a NodePort that were DNATed to a removed endpoint.
    ToNodePortEndpoint {
        family: Family,
        port: u16,
        endpoint: IpAddr,
    },
}

impl Flush {
    /// The family whose entries the filter reads.
    pub fn family(&self) -> Family {
        match self {
            Flush::ToServiceIp { ip, .. } => Family::of(ip),
            Flush::ToNodePort { family, .. } | Flush::ToNodePortEndpoint { family, .. } => *family,
            Flush::ToEndpoint { service_ip, .. } => Family::of(service_ip),
        }
    }

    /// Whether the filter covers `e`, as `conntrack` with [`args`] decides:
    /// `--orig-dst` and `--dport` compare the original tuple's destination,
    /// `--dst-nat EP` holds for an entry whose reply comes from EP while its
    /// original destination was another address.
    pub fn covers(&self, e: &Entry) -> bool {
        if e.orig.proto != UDP || e.family() != self.family() {
            return false;
        }
        match self {
            Flush::ToServiceIp { ip, port } => e.orig.dst == *ip && e.orig.dport == *port,
            Flush::ToNodePort { port, .. } => e.orig.dport == *port,
            Flush::ToEndpoint {
                service_ip,
                endpoint,
            } => e.orig.dst == *service_ip && dnat_to(e, endpoint),
            Flush::ToNodePortEndpoint { port, endpoint, .. } => {
                e.orig.dport == *port && dnat_to(e, endpoint)
            }
        }
    }
}

/// `--dst-nat EP`: the reply comes from EP, which is not where the packets
/// were sent.
fn dnat_to(e: &Entry, endpoint: &IpAddr) -> bool {
    e.reply.src == *endpoint && e.orig.dst != *endpoint
}

/// A set of filters, indexed: whether any covers an entry costs a few hash
/// lookups however many filters there are (a Service with 1,000 external
/// IPs losing an endpoint makes 1,000 of them).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    service_ips: HashSet<(IpAddr, u16)>,
    node_ports: HashSet<(Family, u16)>,
    endpoints: HashSet<(IpAddr, IpAddr)>,
    node_port_endpoints: HashSet<(Family, u16, IpAddr)>,
}

impl Matcher {
    pub fn new<'a>(flushes: impl IntoIterator<Item = &'a Flush>) -> Matcher {
        let mut m = Matcher::default();
        for f in flushes {
            match f {
                Flush::ToServiceIp { ip, port } => {
                    m.service_ips.insert((*ip, *port));
                }
                Flush::ToNodePort { family, port } => {
                    m.node_ports.insert((*family, *port));
                }
                Flush::ToEndpoint {
                    service_ip,
                    endpoint,
                } => {
                    m.endpoints.insert((*service_ip, *endpoint));
                }
                Flush::ToNodePortEndpoint {
                    family,
                    port,
                    endpoint,
                } => {
                    m.node_port_endpoints.insert((*family, *port, *endpoint));
                }
            }
        }
        m
    }

    pub fn is_empty(&self) -> bool {
        self.service_ips.is_empty()
            && self.node_ports.is_empty()
            && self.endpoints.is_empty()
            && self.node_port_endpoints.is_empty()
    }

    /// Whether any of the filters covers `e` (the same answer as
    /// `flushes.iter().any(|f| f.covers(e))`).
    pub fn covers(&self, e: &Entry) -> bool {
        if e.orig.proto != UDP {
            return false;
        }
        let (o, r) = (&e.orig, &e.reply);
        let dnat = o.dst != r.src;
        self.service_ips.contains(&(o.dst, o.dport))
            || self.node_ports.contains(&(e.family(), o.dport))
            || (dnat && self.endpoints.contains(&(o.dst, r.src)))
            || (dnat
                && self
                    .node_port_endpoints
                    .contains(&(e.family(), o.dport, r.src)))
    }
}

fn udp(p: &Option<ServicePort>) -> Option<&ServicePort> {
    p.as_ref().filter(|p| p.key.protocol == Protocol::Udp)
}

fn service_ips(sp: &ServicePort) -> Vec<IpAddr> {
    sp.cluster_ip
        .iter()
        .chain(&sp.external_ips)
        .chain(&sp.load_balancer_ips)
        .cloned()
        .collect()
}

/// The flushes one service port change calls for.
///
/// A destination (service IP and port, or NodePort) that starts leading to
/// endpoints (the port gained its first endpoint, or gained the destination:
/// a new external IP, a claim won from another Service, a new NodePort)
/// loses every entry made to it before: those went to a REJECT, un-NATed,
/// or to another Service. An endpoint that a destination stops leading to
/// (the endpoint removed, or the destination: an external IP removed, a
/// claim lost, the Service deleted) loses the entries DNATed to it through
/// that destination.
pub fn flushes(change: &PortChange) -> Vec<Flush> {
    let (old, new) = (udp(&change.0), udp(&change.1));
    let mut out = BTreeSet::new();
    let reachable = |sp: Option<&ServicePort>| -> Vec<IpAddr> {
        sp.map(|sp| categorize(sp).all_reachable.iter().map(|e| e.ip).collect())
            .unwrap_or_default()
    };
    let (before, after) = (reachable(old), reachable(new));
    let has_ip = |sp: Option<&ServicePort>, ip: &IpAddr, port: u16| {
        sp.is_some_and(|sp| sp.port == port && service_ips(sp).contains(ip))
    };
    let has_node_port =
        |sp: Option<&ServicePort>, np: u16| sp.is_some_and(|sp| sp.node_port == Some(np));
    if let Some(new) = new.filter(|_| !after.is_empty()) {
        for ip in service_ips(new) {
            if before.is_empty() || !has_ip(old, &ip, new.port) {
                out.insert(Flush::ToServiceIp { ip, port: new.port });
            }
        }
        if let Some(np) = new.node_port {
            if before.is_empty() || !has_node_port(old, np) {
                out.insert(Flush::ToNodePort {
                    family: new.key.family,
                    port: np,
                });
            }
        }
    }
    if let Some(old) = old {
        for sip in service_ips(old) {
            let kept = has_ip(new, &sip, old.port);
            for ep in before.iter().filter(|ep| !kept || !after.contains(ep)) {
                out.insert(Flush::ToEndpoint {
                    service_ip: sip,
                    endpoint: *ep,
                });
            }
        }
        if let Some(np) = old.node_port {
            let kept = has_node_port(new, np);
            for ep in before.iter().filter(|ep| !kept || !after.contains(ep)) {
                out.insert(Flush::ToNodePortEndpoint {
                    family: old.key.family,
                    port: np,
                    endpoint: *ep,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// The `conntrack -D` command a filter stands for: what the proxy ran
/// before it deleted over netlink, and what the kernel tests check
/// [`Flush::covers`] against (`-L` with the same filter).
pub fn args(f: &Flush) -> Vec<String> {
    let fam = |f: Family| if f == Family::V6 { "ipv6" } else { "ipv4" };
    let mut a: Vec<String> = vec!["-D".into()];
    match f {
        Flush::ToServiceIp { ip, port } => {
            a.extend([
                "-f".into(),
                fam(Family::of(ip)).into(),
                "-p".into(),
                "udp".into(),
            ]);
            a.extend([
                "--orig-dst".into(),
                ip.to_string(),
                "--dport".into(),
                port.to_string(),
            ]);
        }
        Flush::ToNodePort { family, port } => {
            a.extend(["-f".into(), fam(*family).into(), "-p".into(), "udp".into()]);
            a.extend(["--dport".into(), port.to_string()]);
        }
        Flush::ToEndpoint {
            service_ip,
            endpoint,
        } => {
            a.extend([
                "-f".into(),
                fam(Family::of(service_ip)).into(),
                "-p".into(),
                "udp".into(),
            ]);
            a.extend([
                "--orig-dst".into(),
                service_ip.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]);
        }
        Flush::ToNodePortEndpoint {
            family,
            port,
            endpoint,
        } => {
            a.extend(["-f".into(), fam(*family).into(), "-p".into(), "udp".into()]);
            a.extend([
                "--dport".into(),
                port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::wire::Tuple;
    use crate::model::*;

    fn port(proto: Protocol, eps: &[&str]) -> ServicePort {
        let eps = eps
            .iter()
            .map(|ip| crate::model::fixtures::endpoint(ip, 5353))
            .collect();
        let mut p =
            crate::model::fixtures::service_port("ns", "dns", "", proto, "10.96.0.53", 53, eps);
        p.node_port = Some(30053);
        p.external_ips = vec!["192.0.2.53".parse().unwrap()];
        p
    }

    #[test]
    fn first_endpoint_flushes_service_ips_and_nodeport() {
        let f = flushes(&(
            Some(port(Protocol::Udp, &[])),
            Some(port(Protocol::Udp, &["10.0.0.1"])),
        ));
        assert_eq!(
            f,
            vec![
                Flush::ToServiceIp {
                    ip: "10.96.0.53".parse().unwrap(),
                    port: 53
                },
                Flush::ToServiceIp {
                    ip: "192.0.2.53".parse().unwrap(),
                    port: 53
                },
                Flush::ToNodePort {
                    family: Family::V4,
                    port: 30053
                },
            ]
        );
        // A brand-new service with endpoints counts too.
        assert_eq!(
            flushes(&(None, Some(port(Protocol::Udp, &["10.0.0.1"])))).len(),
            3
        );
    }

    #[test]
    fn removed_endpoint_flushes_its_entries() {
        let f = flushes(&(
            Some(port(Protocol::Udp, &["10.0.0.1", "10.0.0.2"])),
            Some(port(Protocol::Udp, &["10.0.0.2"])),
        ));
        let ep: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            f,
            vec![
                Flush::ToEndpoint {
                    service_ip: "10.96.0.53".parse().unwrap(),
                    endpoint: ep
                },
                Flush::ToEndpoint {
                    service_ip: "192.0.2.53".parse().unwrap(),
                    endpoint: ep
                },
                // Also what came in through the NodePort (upstream's
                // filterForPortNAT): the old code left those flows on the
                // removed endpoint.
                Flush::ToNodePortEndpoint {
                    family: Family::V4,
                    port: 30053,
                    endpoint: ep
                },
            ]
        );
        // Service deleted: all its endpoints' entries go.
        assert_eq!(
            flushes(&(Some(port(Protocol::Udp, &["10.0.0.1"])), None)).len(),
            3
        );
    }

    #[test]
    fn destinations_gained_and_lost() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let eps = ["10.0.0.1", "10.0.0.2"];
        let base = port(Protocol::Udp, &eps);
        let to_eps = |sip: &str| {
            eps.map(|ep| Flush::ToEndpoint {
                service_ip: ip(sip),
                endpoint: ip(ep),
            })
        };
        // An external IP added (or a claim won): what went there before
        // went elsewhere.
        let mut more = base.clone();
        more.external_ips.push(ip("192.0.2.54"));
        assert_eq!(
            flushes(&(Some(base.clone()), Some(more.clone()))),
            [Flush::ToServiceIp {
                ip: ip("192.0.2.54"),
                port: 53
            }]
        );
        // ... and removed again (or the claim lost): its flows to the
        // endpoints go, the other destinations' stay.
        assert_eq!(
            flushes(&(Some(more), Some(base.clone()))),
            to_eps("192.0.2.54")
        );
        // A new NodePort number: the old one's flows to the endpoints go,
        // the new one's earlier entries too.
        let mut moved = base.clone();
        moved.node_port = Some(30054);
        let mut want = vec![Flush::ToNodePort {
            family: Family::V4,
            port: 30054,
        }];
        want.extend(eps.map(|ep| Flush::ToNodePortEndpoint {
            family: Family::V4,
            port: 30053,
            endpoint: ip(ep),
        }));
        assert_eq!(flushes(&(Some(base.clone()), Some(moved))), want);
        // A new port number: every service IP is a new destination.
        let mut renumbered = base.clone();
        renumbered.port = 54;
        let f = flushes(&(Some(base.clone()), Some(renumbered)));
        assert!(f.contains(&Flush::ToServiceIp {
            ip: ip("10.96.0.53"),
            port: 54
        }));
        assert!(to_eps("10.96.0.53").iter().all(|t| f.contains(t)));
        assert_eq!(f.len(), 2 + 4, "{f:?}");
        // Gaining a destination without endpoints: nothing (REJECT).
        let mut empty = port(Protocol::Udp, &[]);
        let before = empty.clone();
        empty.external_ips.push(ip("192.0.2.54"));
        assert!(flushes(&(Some(before), Some(empty))).is_empty());
    }

    #[test]
    fn tcp_and_unchanged_need_nothing() {
        let p = port(Protocol::Tcp, &["10.0.0.1"]);
        assert!(flushes(&(Some(port(Protocol::Tcp, &[])), Some(p))).is_empty());
        let u = port(Protocol::Udp, &["10.0.0.1"]);
        assert!(flushes(&(Some(u.clone()), Some(u))).is_empty());
    }

    #[test]
    fn conntrack_arguments() {
        let a = args(&Flush::ToEndpoint {
            service_ip: "10.96.0.53".parse().unwrap(),
            endpoint: "10.0.0.1".parse().unwrap(),
        });
        assert_eq!(
            a.join(" "),
            "-D -f ipv4 -p udp --orig-dst 10.96.0.53 --dst-nat 10.0.0.1"
        );
        let a = args(&Flush::ToNodePort {
            family: Family::V6,
            port: 30053,
        });
        assert_eq!(a.join(" "), "-D -f ipv6 -p udp --dport 30053");
        let a = args(&Flush::ToNodePortEndpoint {
            family: Family::V4,
            port: 30053,
            endpoint: "10.0.0.1".parse().unwrap(),
        });
        assert_eq!(
            a.join(" "),
            "-D -f ipv4 -p udp --dport 30053 --dst-nat 10.0.0.1"
        );
        let a = args(&Flush::ToServiceIp {
            ip: "10.96.0.53".parse().unwrap(),
            port: 53,
        });
        assert_eq!(
            a.join(" "),
            "-D -f ipv4 -p udp --orig-dst 10.96.0.53 --dport 53"
        );
    }

    fn entry(osrc: &str, odst: &str, sport: u16, dport: u16, rsrc: &str) -> Entry {
        let t = |src: &str, dst: &str, sport, dport| Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: UDP,
            sport,
            dport,
        };
        Entry {
            orig: t(osrc, odst, sport, dport),
            reply: t(rsrc, osrc, 5353, sport),
            zone: 0,
            id: None,
            status: 0,
        }
    }

    #[test]
    fn what_each_filter_covers() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        // To the ClusterIP DNATed to 10.0.0.1; to a NodePort on the node's
        // address DNATed to 10.0.0.1; to the VIP before it had endpoints
        // (not DNATed); to another port of the VIP; IPv6.
        let to_vip = entry("10.244.1.7", "10.96.0.53", 40000, 53, "10.0.0.1");
        let to_np = entry("192.168.10.100", "192.168.10.5", 40001, 30053, "10.0.0.1");
        let rejected = entry("10.244.1.7", "10.96.0.53", 40002, 53, "10.96.0.53");
        let other_port = entry("10.244.1.7", "10.96.0.53", 40003, 54, "10.0.0.1");
        let v6 = entry("fd00::7", "fd00:96::53", 40004, 53, "fd00::1");
        let all = [to_vip, to_np, rejected, other_port, v6];
        let covered =
            |f: Flush| -> Vec<usize> { (0..all.len()).filter(|i| f.covers(&all[*i])).collect() };
        let vip = ip("10.96.0.53");
        assert_eq!(covered(Flush::ToServiceIp { ip: vip, port: 53 }), [0, 2]);
        assert_eq!(
            covered(Flush::ToNodePort {
                family: Family::V4,
                port: 30053
            }),
            [1]
        );
        let ep = ip("10.0.0.1");
        assert_eq!(
            covered(Flush::ToEndpoint {
                service_ip: vip,
                endpoint: ep
            }),
            [0, 3]
        );
        // Not DNATed: the reply comes from the VIP itself.
        assert_eq!(
            covered(Flush::ToEndpoint {
                service_ip: vip,
                endpoint: vip
            }),
            Vec::<usize>::new()
        );
        assert_eq!(
            covered(Flush::ToNodePortEndpoint {
                family: Family::V4,
                port: 30053,
                endpoint: ep
            }),
            [1]
        );
        assert_eq!(
            covered(Flush::ToNodePortEndpoint {
                family: Family::V4,
                port: 30053,
                endpoint: ip("10.0.0.2")
            }),
            Vec::<usize>::new()
        );
        assert_eq!(
            covered(Flush::ToServiceIp {
                ip: ip("fd00:96::53"),
                port: 53
            }),
            [4]
        );
        // A v4 NodePort filter never covers a v6 entry, nor TCP anything.
        assert_eq!(
            covered(Flush::ToNodePort {
                family: Family::V6,
                port: 30053
            }),
            Vec::<usize>::new()
        );
        let mut tcp = to_vip;
        tcp.orig.proto = 6;
        assert!(!Flush::ToServiceIp { ip: vip, port: 53 }.covers(&tcp));
        assert!(!Matcher::new(&[Flush::ToServiceIp { ip: vip, port: 53 }]).covers(&tcp));
    }

    mod matcher {
        use super::*;
        use proptest::prelude::*;

        // Small pools so that filters and entries meet often.
        fn addr() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                (0u8..4).prop_map(|i| IpAddr::from([10, 0, 0, i])),
                (0u8..2).prop_map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i as u16])),
            ]
        }
        fn port() -> impl Strategy<Value = u16> {
            prop_oneof![Just(53u16), Just(30053), Just(5353)]
        }
        fn family() -> impl Strategy<Value = Family> {
            prop_oneof![Just(Family::V4), Just(Family::V6)]
        }
        fn flush() -> impl Strategy<Value = Flush> {
            prop_oneof![
                (addr(), port()).prop_map(|(ip, port)| Flush::ToServiceIp { ip, port }),
                (family(), port()).prop_map(|(family, port)| Flush::ToNodePort { family, port }),
                (addr(), addr()).prop_map(|(service_ip, endpoint)| Flush::ToEndpoint {
                    service_ip,
                    endpoint
                }),
                (family(), port(), addr()).prop_map(|(family, port, endpoint)| {
                    Flush::ToNodePortEndpoint {
                        family,
                        port,
                        endpoint,
                    }
                }),
            ]
        }
        fn entry() -> impl Strategy<Value = Entry> {
            (
                addr(),
                addr(),
                port(),
                addr(),
                prop_oneof![Just(UDP), Just(6u8)],
            )
                .prop_map(|(src, dst, dport, rsrc, proto)| {
                    // Addresses of one family per entry, as the kernel has them.
                    let fix = |a: IpAddr| match (src, a) {
                        (IpAddr::V4(_), IpAddr::V6(v)) => IpAddr::from([10, 0, 0, v.octets()[15]]),
                        (IpAddr::V6(_), IpAddr::V4(v)) => {
                            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, v.octets()[3] as u16])
                        }
                        _ => a,
                    };
                    Entry {
                        orig: Tuple {
                            src,
                            dst: fix(dst),
                            proto,
                            sport: 40000,
                            dport,
                        },
                        reply: Tuple {
                            src: fix(rsrc),
                            dst: src,
                            proto,
                            sport: 5353,
                            dport: 40000,
                        },
                        zone: 0,
                        id: None,
                        status: 0,
                    }
                })
        }

        proptest! {
            #[test]
            fn agrees_with_the_filters_one_by_one(
                flushes in proptest::collection::vec(flush(), 0..6),
                entries in proptest::collection::vec(entry(), 1..12),
            ) {
                let m = Matcher::new(&flushes);
                for e in &entries {
                    prop_assert_eq!(m.covers(e), flushes.iter().any(|f| f.covers(e)), "{:?}", e);
                }
            }
        }
    }
}
