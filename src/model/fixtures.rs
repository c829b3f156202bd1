//! Builders for unit tests across the crate: a ready endpoint, a plain
//! service port, numbered service ports and the map the backends take.

use super::types::*;

/// A ready, serving, non-local endpoint.
pub fn endpoint(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
        ready: true,
        serving: true,
        terminating: false,
        is_local: false,
        zone_hints: vec![],
    }
}

/// A ClusterIP service port `ns/name[:port_name]` with the given endpoints.
pub fn service_port(
    ns: &str,
    name: &str,
    port_name: &str,
    proto: Protocol,
    cluster_ip: &str,
    port: u16,
    endpoints: Vec<Endpoint>,
) -> ServicePort {
    let cip: std::net::IpAddr = cluster_ip.parse().unwrap();
    ServicePort {
        key: ServicePortKey {
            name: ServicePortName {
                namespace: ns.into(),
                name: name.into(),
                port: port_name.into(),
            },
            protocol: proto,
            family: Family::of(&cip),
        },
        cluster_ip: Some(cip),
        port,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        topology_zone: None,
        endpoints,
    }
}

/// Service port number `i` (`bench/svc-<i>:http`, a distinct ClusterIP)
/// with `endpoints` ready endpoints on port 8080.
pub fn numbered(i: usize, endpoints: usize) -> ServicePort {
    let eps = (0..endpoints)
        .map(|e| endpoint(&format!("10.{}.{}.{}", 1 + i / 250, i % 250, e + 1), 8080))
        .collect();
    service_port(
        "bench",
        &format!("svc-{i}"),
        "http",
        Protocol::Tcp,
        &format!("10.96.{}.{}", i / 250, i % 250 + 1),
        80,
        eps,
    )
}

/// Service ports by key, as the backends take them.
pub fn ports(list: Vec<ServicePort>) -> std::collections::BTreeMap<ServicePortKey, ServicePort> {
    list.into_iter().map(|p| (p.key.clone(), p)).collect()
}
