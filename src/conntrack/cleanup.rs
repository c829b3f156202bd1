//! Stale UDP conntrack entries: computed from a service port's change (pure),
//! deleted with the `conntrack` tool after the rules are in the kernel.
//!
//! UDP has no connection teardown, so without this a client keeps sending to
//! an endpoint that is gone, or to the REJECT a service had before it gained
//! its first endpoint.

use crate::model::{categorize, Family, Protocol, ServicePort};
use crate::sync::model::PortChange;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// One `conntrack -D` filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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
pub fn flushes(change: &PortChange) -> Vec<Flush> {
    let (old, new) = (udp(&change.0), udp(&change.1));
    let mut out = BTreeSet::new();
    let reachable = |sp: Option<&ServicePort>| -> Vec<IpAddr> {
        sp.map(|sp| categorize(sp).all_reachable.iter().map(|e| e.ip).collect())
            .unwrap_or_default()
    };
    let (before, after) = (reachable(old), reachable(new));
    if let Some(new) = new {
        if before.is_empty() && !after.is_empty() {
            for ip in service_ips(new) {
                out.insert(Flush::ToServiceIp { ip, port: new.port });
            }
            if let Some(np) = new.node_port {
                out.insert(Flush::ToNodePort {
                    family: new.key.family,
                    port: np,
                });
            }
        }
    }
    if let Some(old) = old {
        for ep in before.iter().filter(|ip| !after.contains(ip)) {
            for sip in service_ips(old) {
                out.insert(Flush::ToEndpoint {
                    service_ip: sip,
                    endpoint: *ep,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// `conntrack` arguments for a flush.
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
    }
    a
}

/// Runs the flushes; "no entries matched" is not an error.
pub fn run(flushes: &[Flush]) {
    for f in flushes {
        match Command::new("conntrack")
            .args(args(f))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => tracing::debug!(?f, "conntrack entries flushed"),
            Err(e) => {
                tracing::warn!(error = %e, "conntrack tool not runnable; stale UDP entries stay until they expire");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(f.len(), 2);
        assert!(f.contains(&Flush::ToEndpoint {
            service_ip: "10.96.0.53".parse().unwrap(),
            endpoint: "10.0.0.1".parse().unwrap()
        }));
        // Service deleted: all its endpoints' entries go.
        assert_eq!(
            flushes(&(Some(port(Protocol::Udp, &["10.0.0.1"])), None)).len(),
            2
        );
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
    }
}
