//! Unit tests of the pure model: Service + slices -> service ports.

use super::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use std::net::IpAddr;

fn svc(spec: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": spec,
    }))
    .unwrap()
}

fn slice(name: &str, family: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": family, "ports": ports, "endpoints": endpoints,
    }))
    .unwrap()
}

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        ..Default::default()
    }
}

fn ports_of(s: &Service, slices: &[&EndpointSlice]) -> Vec<ServicePort> {
    match build_service(s, slices, &node()).unwrap().built {
        Built::Ports(p) => p,
        Built::Ignored(why) => panic!("ignored: {why}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn clusterip_ports_and_protocols() {
    let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "sig", "port": 2905, "protocol": "SCTP"},
    ]}));
    let p = ports_of(&s, &[]);
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].key.name.to_string(), "ns/web:http");
    assert_eq!(p[0].key.protocol, Protocol::Tcp);
    assert_eq!(p[1].key.protocol, Protocol::Udp);
    assert_eq!(p[2].key.protocol, Protocol::Sctp);
    assert_eq!(p[0].cluster_ip, Some(ip("10.96.0.10")));
    assert!(p.iter().all(|p| p.endpoints.is_empty()));
}

#[test]
fn unnamed_port_prints_without_colon() {
    let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
    assert_eq!(ports_of(&s, &[])[0].key.name.to_string(), "ns/web");
}

#[test]
fn ignored_services() {
    let headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    assert!(matches!(
        build_service(&headless, &[], &node()).unwrap().built,
        Built::Ignored(_)
    ));
    let ext = svc(json!({"type": "ExternalName", "externalName": "example.org"}));
    assert!(matches!(
        build_service(&ext, &[], &node()).unwrap().built,
        Built::Ignored(_)
    ));
    let mut other = svc(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
    other.metadata.labels = Some(
        [(
            build::SERVICE_PROXY_NAME_LABEL.to_string(),
            "cilium".to_string(),
        )]
        .into(),
    );
    assert!(matches!(
        build_service(&other, &[], &node()).unwrap().built,
        Built::Ignored(_)
    ));
    // ... unless it names us.
    let mine = NodeContext {
        service_proxy_name: Some("cilium".into()),
        ..node()
    };
    assert!(matches!(
        build_service(&other, &[], &mine).unwrap().built,
        Built::Ports(_)
    ));
    let plain = svc(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
    assert!(matches!(
        build_service(&plain, &[], &mine).unwrap().built,
        Built::Ignored(_)
    ));
}

#[test]
fn invalid_services_are_errors_naming_them() {
    for (spec, needle) in [
        (
            json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}),
            "invalid clusterIP",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 0}]}),
            "out of range",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 70000}]}),
            "out of range",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 70000}]}),
            "nodePort",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "protocol": "ICMP"}]}),
            "unknown protocol",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "a\" -j ACCEPT", "port": 80}]}),
            "invalid port name",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "externalIPs": ["1.2.3.4\n-A X"], "ports": [{"port": 80}]}),
            "externalIPs",
        ),
        (
            json!({"clusterIP": "10.96.0.1", "loadBalancerSourceRanges": ["1.2.3.0/99"], "ports": [{"port": 80}]}),
            "loadBalancerSourceRanges",
        ),
        (json!({"ports": [{"port": 80}]}), "no clusterIP"),
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
            "duplicate port",
        ),
    ] {
        let err = build_service(&svc(spec.clone()), &[], &node()).unwrap_err();
        assert!(err.starts_with("Service ns/web:"), "{err}");
        assert!(err.contains(needle), "{spec}: {err}");
    }
    let mut bad_name = svc(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
    bad_name.metadata.name = Some("web\n-A INPUT -j ACCEPT".into());
    let err = build_service(&bad_name, &[], &node()).unwrap_err();
    assert!(
        err.contains("invalid namespace or name") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn named_target_port_resolves_per_slice() {
    let s = svc(
        json!({"clusterIP": "10.96.0.10", "ports": [{"name": "web", "port": 80, "targetPort": "web-port"}]}),
    );
    let a = slice(
        "web-a",
        "IPv4",
        json!([{"name": "web", "port": 8080}]),
        json!([{"addresses": ["10.0.1.1"]}, {"addresses": ["10.0.1.2"]}]),
    );
    let b = slice(
        "web-b",
        "IPv4",
        json!([{"name": "web", "port": 9090}]),
        json!([{"addresses": ["10.0.2.1"]}]),
    );
    let p = &ports_of(&s, &[&a, &b])[0];
    let got: Vec<String> = p.endpoints.iter().map(|e| e.addr_string()).collect();
    assert_eq!(got, vec!["10.0.1.1:8080", "10.0.1.2:8080", "10.0.2.1:9090"]);
}

#[test]
fn slice_ports_match_by_name_and_protocol() {
    let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [
        {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}));
    let sl = slice(
        "web-a",
        "IPv4",
        json!([{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}]),
        json!([{"addresses": ["10.0.1.1"]}]),
    );
    let p = ports_of(&s, &[&sl]);
    assert_eq!(p[0].endpoints[0].port, 5353);
    assert_eq!(p[1].endpoints[0].port, 5354);
}

#[test]
fn endpoints_deduplicated_and_sorted_like_upstream() {
    let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
    let a = slice(
        "web-a",
        "IPv4",
        json!([{"port": 80}]),
        json!([{"addresses": ["10.0.0.9"], "conditions": {"ready": false}}, {"addresses": ["10.0.0.10"]}]),
    );
    let b = slice(
        "web-b",
        "IPv4",
        json!([{"port": 80}]),
        json!([{"addresses": ["10.0.0.9"], "conditions": {"ready": true}}, {"addresses": ["10.0.0.10"]}]),
    );
    let p = &ports_of(&s, &[&a, &b])[0];
    // String order, as upstream sorts: "10.0.0.10:80" < "10.0.0.9:80".
    let got: Vec<String> = p.endpoints.iter().map(|e| e.addr_string()).collect();
    assert_eq!(got, vec!["10.0.0.10:80", "10.0.0.9:80"]);
    assert!(p.endpoints[1].ready, "the ready duplicate wins");
}

#[test]
fn conditions_default_like_upstream() {
    let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
    let sl = slice(
        "web-a",
        "IPv4",
        json!([{"port": 80}]),
        json!([
            {"addresses": ["10.0.0.1"]},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]),
    );
    let e = &ports_of(&s, &[&sl])[0].endpoints;
    assert!(e[0].ready && e[0].serving && !e[0].terminating);
    assert!(
        !e[1].ready && e[1].serving && !e[1].terminating,
        "absent serving counts as serving"
    );
    assert!(!e[2].ready && e[2].serving && e[2].terminating);
}

#[test]
fn garbage_endpoints_skipped_with_named_warning() {
    let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
    let sl = slice(
        "web-a",
        "IPv4",
        json!([{"port": 80}]),
        json!([
        {"addresses": ["not-an-ip"]}, {"addresses": ["fd00::1"]}, {"addresses": ["10.0.0.1"]}]),
    );
    let out = build_service(&s, &[&sl], &node()).unwrap();
    let Built::Ports(p) = out.built else { panic!() };
    assert_eq!(p[0].endpoints.len(), 1);
    assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
    assert!(out
        .warnings
        .iter()
        .all(|w| w.starts_with("EndpointSlice ns/web-a:")));
    let bad_port = slice(
        "web-b",
        "IPv4",
        json!([{"port": 0}]),
        json!([{"addresses": ["10.0.0.2"]}]),
    );
    let out = build_service(&s, &[&bad_port], &node()).unwrap();
    assert_eq!(out.warnings.len(), 1);
}

#[test]
fn dual_stack_yields_both_families() {
    let s = svc(
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
        "ipFamilies": ["IPv4", "IPv6"], "externalIPs": ["192.0.2.1", "2001:db8::1"], "ports": [{"port": 80}]}),
    );
    let v4 = slice(
        "web-4",
        "IPv4",
        json!([{"port": 8080}]),
        json!([{"addresses": ["10.0.0.1"]}]),
    );
    let v6 = slice(
        "web-6",
        "IPv6",
        json!([{"port": 8080}]),
        json!([{"addresses": ["fd00::1"]}]),
    );
    let p = ports_of(&s, &[&v4, &v6]);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].key.family, Family::V4);
    assert_eq!(p[0].external_ips, vec![ip("192.0.2.1")]);
    assert_eq!(p[0].endpoints[0].addr_string(), "10.0.0.1:8080");
    assert_eq!(p[1].key.family, Family::V6);
    assert_eq!(p[1].cluster_ip, Some(ip("fd00:96::10")));
    assert_eq!(p[1].external_ips, vec![ip("2001:db8::1")]);
    assert_eq!(p[1].endpoints[0].addr_string(), "[fd00::1]:8080");
}

#[test]
fn load_balancer_fields() {
    let mut s = svc(
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000, "loadBalancerSourceRanges": ["192.0.2.0/24", " 198.51.100.7/32 "],
        "sessionAffinity": "ClientIP", "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "203.0.113.5"}, {"hostname": "lb.example"}, {"ip": "203.0.113.6", "ipMode": "Proxy"}]}})).unwrap();
    let p = &ports_of(&s, &[])[0];
    assert_eq!(p.load_balancer_ips, vec![ip("203.0.113.5")]);
    assert_eq!(p.load_balancer_source_ranges.len(), 2);
    assert_eq!(p.node_port, Some(30080));
    assert_eq!(p.health_check_node_port, Some(32000));
    assert_eq!(p.affinity_timeout, Some(build::DEFAULT_AFFINITY_TIMEOUT));
    assert!(p.external_policy_local && p.external_local());
}

fn port_with(
    eps: Value,
    internal_local: bool,
    external_local: bool,
    node_port: bool,
) -> ServicePort {
    let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
    if internal_local {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if external_local {
        spec["externalTrafficPolicy"] = json!("Local");
    }
    if node_port {
        spec["type"] = json!("NodePort");
        spec["ports"][0]["nodePort"] = json!(30080);
    }
    let sl = slice("web-a", "IPv4", json!([{"port": 80}]), eps);
    ports_of(&svc(spec), &[&sl]).remove(0)
}

fn ips(v: &[&Endpoint]) -> Vec<String> {
    v.iter().map(|e| e.ip.to_string()).collect()
}

#[test]
fn categorize_cluster_policy_prefers_ready_then_terminating() {
    let sp = port_with(
        json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]),
        false,
        false,
        false,
    );
    let c = categorize(&sp);
    assert_eq!(ips(&c.cluster), vec!["10.0.0.1"]);
    assert!(c.has_any);
    let sp = port_with(
        json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": false, "terminating": true}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]),
        false,
        false,
        false,
    );
    let c = categorize(&sp);
    assert_eq!(
        ips(&c.cluster),
        vec!["10.0.0.2"],
        "falls back to serving+terminating"
    );
    let sp = port_with(
        json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]),
        false,
        false,
        false,
    );
    let c = categorize(&sp);
    assert!(c.cluster.is_empty() && !c.has_any);
}

#[test]
fn categorize_local_policies() {
    let eps = json!([
        {"addresses": ["10.0.0.1"], "nodeName": "node-a"},
        {"addresses": ["10.0.0.2"], "nodeName": "node-b"},
        {"addresses": ["10.0.0.3"], "nodeName": "node-a", "conditions": {"ready": false, "serving": true, "terminating": true}},
    ]);
    // internalTrafficPolicy Local: only local ready endpoints.
    let sp = port_with(eps.clone(), true, false, false);
    let c = categorize(&sp);
    assert!(c.cluster.is_empty());
    assert_eq!(ips(&c.local), vec!["10.0.0.1"]);
    assert_eq!(ips(&c.all_reachable), vec!["10.0.0.1"]);
    // externalTrafficPolicy Local with a NodePort: both sets in use.
    let sp = port_with(eps.clone(), false, true, true);
    let c = categorize(&sp);
    assert_eq!(ips(&c.cluster), vec!["10.0.0.1", "10.0.0.2"]);
    assert_eq!(ips(&c.local), vec!["10.0.0.1"]);
    assert_eq!(ips(&c.all_reachable), vec!["10.0.0.1", "10.0.0.2"]);
    // externalTrafficPolicy Local without external destinations is just Cluster.
    let sp = port_with(eps, false, true, false);
    assert!(categorize(&sp).local.is_empty());
    // Local terminating fallback.
    let sp = port_with(
        json!([
            {"addresses": ["10.0.0.2"], "nodeName": "node-b"},
            {"addresses": ["10.0.0.3"], "nodeName": "node-a", "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]),
        true,
        false,
        false,
    );
    let c = categorize(&sp);
    assert_eq!(ips(&c.local), vec!["10.0.0.3"]);
    assert!(c.has_any);
    // No local endpoints at all, but some elsewhere.
    let sp = port_with(
        json!([{"addresses": ["10.0.0.2"], "nodeName": "node-b"}]),
        true,
        false,
        false,
    );
    let c = categorize(&sp);
    assert!(c.local.is_empty() && c.has_any);
}

#[test]
fn topology_hints_filter_cluster_endpoints() {
    let eps = json!([
        {"addresses": ["10.0.0.1"], "zone": "a", "hints": {"forZones": [{"name": "a"}]}},
        {"addresses": ["10.0.0.2"], "zone": "b", "hints": {"forZones": [{"name": "b"}]}},
    ]);
    let sl = slice("web-a", "IPv4", json!([{"port": 80}]), eps);
    let in_zone = |spec: Value, zone: Option<&str>| {
        let ctx = NodeContext {
            zone: zone.map(str::to_string),
            ..node()
        };
        let Built::Ports(mut p) = build_service(&svc(spec), &[&sl], &ctx).unwrap().built else {
            panic!()
        };
        let sp = p.remove(0);
        ips(&categorize(&sp).cluster)
    };
    let prefer = json!({"clusterIP": "10.96.0.10", "trafficDistribution": "PreferClose", "ports": [{"port": 80}]});
    assert_eq!(in_zone(prefer.clone(), Some("a")), vec!["10.0.0.1"]);
    assert_eq!(in_zone(prefer.clone(), Some("b")), vec!["10.0.0.2"]);
    // No hint for this zone, or node zone unknown: all endpoints.
    assert_eq!(in_zone(prefer.clone(), Some("c")).len(), 2);
    assert_eq!(in_zone(prefer, None).len(), 2);
    // Not asked for: all endpoints.
    let plain = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
    assert_eq!(in_zone(plain, Some("a")).len(), 2);
    // One ready endpoint without hints disables topology.
    let e = vec![
        Endpoint {
            zone_hints: vec!["a".into()],
            ..ep_at("10.0.0.1")
        },
        ep_at("10.0.0.2"),
    ];
    assert!(!categorize::can_use_topology(&e, "a"));
}

fn ep_at(ip: &str) -> Endpoint {
    fixtures::endpoint(ip, 80)
}

#[test]
fn special_addresses_are_never_vips_or_endpoints() {
    // A ClusterIP in a special range: the Service is refused, named.
    let e = build_service(
        &svc(json!({"clusterIP": "127.0.0.1", "ports": [{"port": 80}]})),
        &[],
        &node(),
    )
    .unwrap_err();
    assert_eq!(e, "Service ns/web: clusterIP 127.0.0.1 is loopback");
    // Special externalIPs, LB IPs and endpoints: left out, one warning each;
    // the rest of the Service is programmed.
    let mut s = svc(json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
        "externalIPs": ["0.0.0.0", "192.0.2.1", "169.254.169.254"],
        "ports": [{"port": 80}]}));
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "224.0.0.1"}, {"ip": "198.51.100.1"}]}}))
    .unwrap();
    let sl = slice(
        "web-1",
        "IPv4",
        json!([{"port": 80}]),
        json!([{"addresses": ["127.0.0.1"]}, {"addresses": ["10.244.1.1"]}]),
    );
    let out = build_service(&s, &[&sl], &node()).unwrap();
    let Built::Ports(p) = &out.built else {
        panic!()
    };
    assert_eq!(p[0].external_ips, vec![ip("192.0.2.1")]);
    assert_eq!(p[0].load_balancer_ips, vec![ip("198.51.100.1")]);
    assert_eq!(p[0].endpoints.len(), 1);
    assert_eq!(p[0].endpoints[0].ip, ip("10.244.1.1"));
    let w = out.warnings.join("\n");
    for needle in [
        "externalIP 0.0.0.0 is unspecified; not programmed",
        "externalIP 169.254.169.254 is link-local; not programmed",
        "status.loadBalancer.ingress IP 224.0.0.1 is multicast; not programmed",
        "address 127.0.0.1 is loopback; endpoint skipped",
    ] {
        assert!(w.contains(needle), "{needle}:\n{w}");
    }
}
