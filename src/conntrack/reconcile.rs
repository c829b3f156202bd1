//! The startup reconcile of UDP conntrack entries against the model: which
//! entries were left stale by changes made while the proxy was not running.
//! Pure: [`Targets::of`] reads the service ports, [`Targets::is_stale`]
//! judges one dumped entry.
//!
//! As upstream kube-proxy's `CleanStaleEntries`: a UDP entry whose original
//! destination is a service IP and port (ClusterIP, external IP, load
//! balancer IP) or a NodePort of the model, and whose reply source (the
//! DNAT target) is not a serving endpoint of that service port, is stale: it
//! goes to an endpoint that is gone, or it was made before the service had
//! endpoints (not DNATed at all: the reply source is the VIP itself). Unlike
//! upstream, service IPs are keyed by IP and port, so two UDP ports of one
//! VIP keep their own endpoints.

use super::wire::{Entry, UDP};
use crate::backend::Ports;
use crate::model::{Family, Protocol};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// The serving endpoints behind every UDP destination of the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// (service IP, port) -> endpoint IPs.
    pub vips: HashMap<(IpAddr, u16), HashSet<IpAddr>>,
    /// (family, NodePort) -> endpoint IPs.
    pub node_ports: HashMap<(Family, u16), HashSet<IpAddr>>,
}

impl Targets {
    /// The UDP service ports' destinations and serving endpoints. When two
    /// ports claim one destination, either's endpoints count (nothing that
    /// may be current is deleted).
    pub fn of(ports: &Ports) -> Targets {
        let mut t = Targets::default();
        for sp in ports.values().filter(|p| p.key.protocol == Protocol::Udp) {
            // Upstream's IsServing: ready, or serving while terminating.
            let eps: Vec<IpAddr> = sp
                .endpoints
                .iter()
                .filter(|e| e.ready || e.serving)
                .map(|e| e.ip)
                .collect();
            let ips = sp
                .cluster_ip
                .iter()
                .chain(&sp.external_ips)
                .chain(&sp.load_balancer_ips);
            for ip in ips {
                t.vips
                    .entry((*ip, sp.port))
                    .or_default()
                    .extend(eps.iter().copied());
            }
            if let Some(np) = sp.node_port {
                t.node_ports
                    .entry((sp.key.family, np))
                    .or_default()
                    .extend(eps.iter().copied());
            }
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.node_ports.is_empty()
    }

    /// The families with a UDP destination (the dumps worth making).
    pub fn families(&self) -> HashSet<Family> {
        self.vips
            .keys()
            .map(|(ip, _)| Family::of(ip))
            .chain(self.node_ports.keys().map(|(f, _)| *f))
            .collect()
    }

    /// Whether `e` goes to a destination of the model but not to one of its
    /// serving endpoints.
    pub fn is_stale(&self, e: &Entry) -> bool {
        if e.orig.proto != UDP {
            return false;
        }
        let not_serving = |eps: &HashSet<IpAddr>| !eps.contains(&e.reply.src);
        self.vips
            .get(&(e.orig.dst, e.orig.dport))
            .is_some_and(not_serving)
            || self
                .node_ports
                .get(&(e.family(), e.orig.dport))
                .is_some_and(not_serving)
    }
}

/// The stale entries among `entries` for the model's `ports`.
pub fn stale(entries: &[Entry], ports: &Ports) -> Vec<Entry> {
    let t = Targets::of(ports);
    entries.iter().filter(|e| t.is_stale(e)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::wire::Tuple;
    use crate::model::fixtures::{endpoint, service_port};
    use crate::model::ServicePort;

    fn entry(osrc: &str, odst: &str, dport: u16, rsrc: &str) -> Entry {
        let t = |src: &str, dst: &str, sport, dport| Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: UDP,
            sport,
            dport,
        };
        Entry {
            orig: t(osrc, odst, 40000, dport),
            reply: t(rsrc, osrc, 5353, 40000),
            zone: 0,
            id: None,
            status: 0,
        }
    }

    fn ports(list: Vec<ServicePort>) -> Ports {
        list.into_iter().map(|p| (p.key.clone(), p)).collect()
    }

    fn dns(eps: &[&str]) -> ServicePort {
        let eps = eps.iter().map(|ip| endpoint(ip, 5353)).collect();
        let mut p = service_port(
            "kube-system",
            "dns",
            "",
            Protocol::Udp,
            "10.96.0.53",
            53,
            eps,
        );
        p.node_port = Some(30053);
        p.external_ips = vec!["192.0.2.53".parse().unwrap()];
        p.load_balancer_ips = vec!["198.51.100.53".parse().unwrap()];
        p
    }

    #[test]
    fn entries_to_endpoints_that_are_gone_are_stale() {
        let model = ports(vec![dns(&["10.244.1.11"])]);
        let current = "10.244.1.11";
        let gone = "10.244.1.10";
        let entries = [
            // Through every kind of destination, to the endpoint that went
            // away while the proxy was down: stale.
            entry("10.244.1.7", "10.96.0.53", 53, gone),
            entry("192.168.10.100", "192.0.2.53", 53, gone),
            entry("192.168.10.100", "198.51.100.53", 53, gone),
            entry("192.168.10.100", "192.168.10.5", 30053, gone),
            // The same to the current endpoint: kept.
            entry("10.244.1.7", "10.96.0.53", 53, current),
            entry("192.168.10.100", "192.0.2.53", 53, current),
            entry("192.168.10.100", "198.51.100.53", 53, current),
            entry("192.168.10.100", "192.168.10.5", 30053, current),
            // Made while the VIP had no endpoints (REJECTed, or sent on
            // un-NATed): the reply would come from the VIP itself. Stale.
            entry("10.244.1.7", "10.96.0.53", 53, "10.96.0.53"),
            // Not a destination of the model: another port of the VIP,
            // another address, another NodePort. Kept.
            entry("10.244.1.7", "10.96.0.53", 54, gone),
            entry("10.244.1.7", "10.96.0.54", 53, gone),
            entry("192.168.10.100", "192.168.10.5", 30054, gone),
        ];
        let s = stale(&entries, &model);
        assert_eq!(s, [0, 1, 2, 3, 8].map(|i| entries[i]));
        // TCP entries are never touched.
        let mut tcp = entries[0];
        tcp.orig.proto = 6;
        assert!(stale(&[tcp], &model).is_empty());
    }

    #[test]
    fn a_service_without_endpoints_keeps_nothing_and_tcp_ports_count_for_nothing() {
        let mut tcp = dns(&["10.244.1.10"]);
        tcp.key.protocol = Protocol::Tcp;
        let model = ports(vec![dns(&[]), tcp]);
        let e = entry("10.244.1.7", "10.96.0.53", 53, "10.244.1.10");
        assert_eq!(stale(&[e], &model), [e]);
        let t = Targets::of(&model);
        assert_eq!(t.vips.len(), 3, "UDP only: {t:?}");
        assert_eq!(t.families(), HashSet::from([Family::V4]));
    }

    #[test]
    fn serving_terminating_endpoints_keep_their_flows_and_ports_share_a_vip() {
        let mut p = dns(&["10.244.1.10", "10.244.1.11"]);
        p.endpoints[0].ready = false;
        p.endpoints[0].serving = true;
        p.endpoints[0].terminating = true;
        p.endpoints[1].ready = false;
        p.endpoints[1].serving = false;
        // A second service port claiming the same external IP and port (a
        // conflict the model reports): either's endpoints are current.
        let mut other = service_port(
            "a",
            "other",
            "",
            Protocol::Udp,
            "10.96.0.99",
            53,
            vec![endpoint("10.244.1.12", 5353)],
        );
        other.external_ips = vec!["192.0.2.53".parse().unwrap()];
        let model = ports(vec![p, other]);
        let via = |dst: &str, ep: &str| entry("10.244.1.7", dst, 53, ep);
        let entries = [
            via("10.96.0.53", "10.244.1.10"), // serving, terminating: kept
            via("10.96.0.53", "10.244.1.11"), // neither ready nor serving
            via("192.0.2.53", "10.244.1.12"), // the other claimant's: kept
            via("192.0.2.53", "10.244.1.10"),
            via("10.96.0.99", "10.244.1.10"), // not other's endpoint
        ];
        assert_eq!(
            stale(&entries, &model),
            [entries[1], entries[4]],
            "{:?}",
            Targets::of(&model)
        );
    }

    #[test]
    fn ipv6_nodeports_are_their_own() {
        let eps = vec![endpoint("fd00:244:1::11", 5353)];
        let mut p = service_port("ns", "dns6", "", Protocol::Udp, "fd00:96::53", 53, eps);
        p.node_port = Some(30053);
        let model = ports(vec![p]);
        let v6 = entry("fd00:10::100", "fd00:10::5", 30053, "fd00:244:1::10");
        let v4 = entry("192.168.10.100", "192.168.10.5", 30053, "10.244.1.10");
        assert_eq!(stale(&[v6, v4], &model), [v6]);
    }
}
