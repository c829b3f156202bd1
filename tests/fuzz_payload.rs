//! Property-based fuzzing of the object -> model -> iptables payload path
//! (issue #6 item 4).
//!
//! Generates Services and EndpointSlices mixing valid and hostile values
//! (names with newlines and quotes, `-j ACCEPT` fragments, overlong and
//! unicode strings, out-of-range ports, bad and wrong-family IPs, duplicate
//! endpoints, every Service type and traffic policy) and feeds them through
//! the real pipeline twice:
//!
//! * the daemon's path: `source::Store` -> `sync::model::ModelCache` ->
//!   `iptables::state::render_full` (the engine's own payload) for each `run::render_configs` config;
//! * the `render` command's path: the objects written as YAML into a tempdir
//!   and read back by `run::render_text`, whose payload lines must equal the
//!   daemon path's.
//!
//! Properties: (a) nothing panics; (b) every payload line is a table header,
//! a chain declaration, an `-A` rule built from known options, `COMMIT` or a
//! comment line, all printable ASCII, every `--comment` value within the
//! validated charset, and no input string longer than 256 chars appears;
//! (c) every chain appended to or jumped to is declared (or built in) and
//! every declared chain is one the model names; (d) DNAT targets are valid
//! endpoints of the Service named in the rule, `-d` addresses are that
//! Service's valid clusterIP/externalIP/load-balancer IPs, and every address
//! is of the payload's family; (e) as root, `iptables-restore --noflush
//! --test` (in a throwaway network namespace) accepts the payloads of a second,
//! 40-case run of mostly clean inputs (skipped with a printed reason otherwise).
//!
//! Run with `cargo test --test fuzz_payload -- --show-output` for the summary.
//! PROPTEST_CASES=N / FUZZ_PAYLOAD_RESTORE_CASES=N search deeper.

mod support;

use clap::Parser;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort as KPort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as KEndpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_proxy_rs::cli::{Cli, Settings};
use kube_proxy_rs::iptables::large::{is_large, total_endpoints};
use kube_proxy_rs::iptables::names::{self, endpoint_chain, ServiceChains};
use kube_proxy_rs::iptables::state::render_full;
use kube_proxy_rs::iptables::RenderConfig;
use kube_proxy_rs::model::{Family, NodeContext, ServicePort};
use kube_proxy_rs::source::{Store, Update};
use kube_proxy_rs::sync::model::ModelCache;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Cases for the pure properties (a)-(d).
const CASES: u32 = 256;
/// Cases whose payloads also go through `iptables-restore --test` (e).
const RESTORE_CASES: u32 = 40;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------
//
// Every generator takes `h`, the weight (in percent) of hostile values per
// field: inputs come clean (h = 0, so rules with endpoints get rendered),
// mildly hostile or very hostile.

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `clean` most of the time, `bad` with weight `h` percent.
fn mix<T: std::fmt::Debug + Clone + 'static>(
    h: u32,
    clean: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if h == 0 {
        clean.boxed()
    } else {
        prop_oneof![100 - h => clean, h => bad].boxed()
    }
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    p: f64,
    st: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::weighted(p, st).boxed()
}

/// More than 256 chars: must never reach a payload.
fn long_string() -> BoxedStrategy<String> {
    (
        257usize..400,
        select(s(&["a", "z-", "\n-A KUBE-SERVICES -j ACCEPT", "é", "\""])),
    )
        .prop_map(|(n, unit)| {
            let mut out = String::from("long");
            while out.chars().count() < n {
                out.push_str(&unit);
            }
            out
        })
        .boxed()
}

/// Strings no validator should let through.
fn hostile() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(s(&[
            "a\nb",
            "web\" -j ACCEPT",
            "\n-A KUBE-SERVICES -j ACCEPT",
            "web\n-A KUBE-SERVICES -j ACCEPT\n",
            "-j ACCEPT",
            "web -j ACCEPT",
            "web\" -m comment --comment \"x",
            "\"",
            "'",
            "$(reboot)",
            "a\tb",
            "a\rb",
            "a\u{0}b",
            "a\u{7f}b",
            "Ünïcödé",
            "名前",
            "web\u{202e}",
            "UPPER",
            "-web",
            "web-",
            "web.",
            "web_port",
            "",
            " ",
            "COMMIT",
            "*filter",
            ":KUBE-X - [0:0]",
            "# comment",
            "web\\",
        ])),
        2 => long_string(),
        2 => "[ -~]{0,16}",
        1 => "\\PC{0,12}",
    ]
    .boxed()
}

fn ns_name(h: u32) -> BoxedStrategy<Option<String>> {
    mix(
        h,
        prop_oneof![
            3 => Just(None),
            3 => Just(Some("default".to_string())),
            1 => Just(Some("kube-system".to_string())),
        ],
        hostile().prop_map(Some),
    )
}

fn obj_name(h: u32) -> BoxedStrategy<String> {
    mix(
        h,
        prop_oneof![
            12 => select(s(&["web", "db", "api"])),
            1 => "[a-z0-9][a-z0-9.-]{0,12}[a-z0-9]",
            1 => Just("a".repeat(253)),
        ],
        hostile(),
    )
}

fn port_name(h: u32) -> BoxedStrategy<String> {
    mix(
        h,
        prop_oneof![
            14 => select(s(&["", "http", "dns", "metrics"])),
            1 => "[a-z][a-z0-9-]{0,6}[a-z0-9]",
            1 => Just("p".repeat(63)),
        ],
        prop_oneof![
            Just("p".repeat(64)),
            Just("web.port".to_string()),
            hostile()
        ],
    )
}

fn protocol(h: u32) -> BoxedStrategy<Option<String>> {
    mix(
        h,
        prop_oneof![
            3 => Just(None),
            10 => select(s(&["TCP", "UDP", "SCTP"])).prop_map(Some),
        ],
        prop_oneof![
            select(s(&["tcp", "ICMP", "", "TCP ", "TCP\n-j ACCEPT"])),
            hostile()
        ]
        .prop_map(Some),
    )
}

fn port_num(h: u32) -> BoxedStrategy<i32> {
    mix(
        h,
        select(vec![80, 443, 53, 8080, 1, 65535]),
        prop_oneof![-3i32..=3, 65533i32..=65540, any::<i32>()],
    )
}

/// A valid address of one family, or (weight `h`) a malformed one.
fn ip_of(h: u32, v4: bool) -> BoxedStrategy<String> {
    let clean = if v4 {
        prop_oneof![
            3 => select(s(&[
                "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.96.0.10", "192.168.10.5",
                "10.244.1.5", "0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1",
            ])),
            1 => any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        ]
        .boxed()
    } else {
        prop_oneof![
            3 => select(s(&[
                "fd00::1", "fd00::2", "::1", "::", "fe80::1", "2001:db8::10",
                "::ffff:10.0.0.1", "fd00:0:0:0:0:0:0:3", "FD00::4",
            ])),
            1 => any::<[u16; 8]>().prop_map(|o| Ipv6Addr::from(o).to_string()),
        ]
        .boxed()
    };
    mix(
        h,
        clean,
        prop_oneof![
            3 => select(s(&[
                "10.0.0.256", "1.2.3", "1.2.3.4.5", "fe80::1%eth0", "10.0.0.1/24",
                "fd00::/64", " 10.0.0.1", "10.0.0.1 ", "10.0.0.1\n-A KUBE-SERVICES -j ACCEPT",
                "10.0.0.1\" -j ACCEPT", "", "None", "localhost", "010.0.0.1", "10.0.0.1:80",
                "[::1]", "::ffff:999.0.0.1", "1::2::3", "0x0a000001", "+1.2.3.4",
                "١٠.0.0.1", "-1.0.0.1",
            ])),
            1 => hostile(),
        ],
    )
}

/// Either family (so family mismatches happen).
fn ip_str(h: u32) -> BoxedStrategy<String> {
    prop_oneof![ip_of(h, true), ip_of(h, false)].boxed()
}

fn service_port(h: u32) -> BoxedStrategy<KPort> {
    (
        opt(0.9, port_name(h)),
        protocol(h),
        port_num(h),
        prop_oneof![
            4 => Just(None),
            1 => Just(Some(0)),
            4 => (30000i32..30010).prop_map(Some),
            1 => port_num(h).prop_map(Some),
        ],
    )
        .prop_map(|(name, protocol, port, node_port)| KPort {
            name,
            protocol,
            port,
            node_port,
            ..Default::default()
        })
        .boxed()
}

fn load_balancer_ingress(h: u32) -> BoxedStrategy<LoadBalancerIngress> {
    (
        opt(0.85, ip_str(h)),
        opt(0.3, select(s(&["VIP", "Proxy", "proxy"]))),
        opt(0.3, mix(h, Just("lb.example.com".to_string()), hostile())),
    )
        .prop_map(|(ip, ip_mode, hostname)| LoadBalancerIngress {
            ip,
            ip_mode,
            hostname,
            ..Default::default()
        })
        .boxed()
}

fn source_range(h: u32) -> BoxedStrategy<String> {
    mix(
        h,
        select(s(&[
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.168.10.0/24",
            "fd00::/64",
            "::/0",
            " 192.168.0.0/16 ",
            "10.1.2.3/16",
        ])),
        prop_oneof![
            select(s(&[
                "1.2.3.4/33",
                "10.0.0.0",
                "fd00::/129",
                "10.0.0.0/8\n-j ACCEPT"
            ])),
            hostile(),
        ],
    )
}

fn service(h: u32) -> BoxedStrategy<Service> {
    let meta = (
        ns_name(h),
        obj_name(h),
        opt(0.05, mix(h, Just("other".to_string()), hostile())),
        opt(0.15, select(s(&["Auto", "auto", "Disabled"]))),
    );
    let ips = (
        opt(
            0.8,
            prop_oneof![12 => ip_str(h), 1 => Just("None".to_string())],
        ),
        prop_oneof![
            4 => Just(None),
            3 => ip_str(h).prop_map(|a| Some(vec![a])),
            3 => (ip_str(h), ip_str(h)).prop_map(|(a, b)| Some(vec![a, b])),
            1 => Just(Some(vec!["None".to_string()])),
            1 => Just(Some(vec![])),
        ],
        opt(0.3, prop::collection::vec(ip_str(h), 0..3)),
        opt(0.4, prop::collection::vec(load_balancer_ingress(h), 0..3)),
        opt(0.2, prop::collection::vec(source_range(h), 0..3)),
    );
    let kinds = (
        opt(
            0.85,
            mix(
                h,
                prop_oneof![
                    4 => select(s(&["ClusterIP", "NodePort", "LoadBalancer"])),
                    1 => Just("ExternalName".to_string()),
                ],
                hostile(),
            ),
        ),
        opt(0.4, mix(h, select(s(&["None", "ClientIP"])), hostile())),
        opt(
            0.5,
            mix(
                h,
                select(vec![1, 10, 10800, 86400]),
                prop_oneof![select(vec![-1, 0, 86401]), any::<i32>()],
            ),
        ),
        opt(0.5, mix(h, select(s(&["Cluster", "Local"])), hostile())),
        opt(0.4, mix(h, select(s(&["Cluster", "Local"])), hostile())),
        opt(0.4, mix(h, 32000i32..32010, port_num(100))),
        opt(0.15, select(s(&["PreferClose", "PreferSameZone"]))),
    );
    (
        meta,
        ips,
        kinds,
        opt(0.95, prop::collection::vec(service_port(h), 0..4)),
    )
        .prop_map(
            |(
                (namespace, name, proxy_label, topology),
                (cluster_ip, cluster_ips, external_ips, ingress, ranges),
                (type_, affinity, timeout, etp, itp, hcnp, traffic_distribution),
                ports,
            )| {
                let labels = proxy_label.map(|v| {
                    BTreeMap::from([("service.kubernetes.io/service-proxy-name".to_string(), v)])
                });
                let annotations = topology.map(|v| {
                    BTreeMap::from([("service.kubernetes.io/topology-mode".to_string(), v)])
                });
                Service {
                    metadata: ObjectMeta {
                        namespace,
                        name: Some(name),
                        labels,
                        annotations,
                        ..Default::default()
                    },
                    spec: Some(ServiceSpec {
                        type_,
                        cluster_ip,
                        cluster_ips,
                        external_ips,
                        load_balancer_source_ranges: ranges,
                        session_affinity: affinity,
                        session_affinity_config: timeout.map(|t| SessionAffinityConfig {
                            client_ip: Some(ClientIPConfig {
                                timeout_seconds: Some(t),
                            }),
                        }),
                        external_traffic_policy: etp,
                        internal_traffic_policy: itp,
                        health_check_node_port: hcnp,
                        traffic_distribution,
                        ports,
                        ..Default::default()
                    }),
                    status: ingress.map(|ingress| ServiceStatus {
                        load_balancer: Some(LoadBalancerStatus {
                            ingress: Some(ingress),
                        }),
                        ..Default::default()
                    }),
                }
            },
        )
        .boxed()
}

/// An endpoint whose addresses are mostly of family `v4`.
fn endpoint(h: u32, v4: bool) -> BoxedStrategy<KEndpoint> {
    let conditions = opt(
        0.6,
        (
            opt(0.8, prop::bool::weighted(0.8)),
            opt(0.6, any::<bool>()),
            opt(0.6, any::<bool>()),
        )
            .prop_map(|(ready, serving, terminating)| EndpointConditions {
                ready,
                serving,
                terminating,
            }),
    );
    let zone = move || mix(h, select(s(&["zone-a", "zone-b"])), hostile());
    (
        prop_oneof![
            8 => prop::collection::vec(prop_oneof![6 => ip_of(h, v4), 1 => ip_str(h)], 1..3),
            1 => Just(vec![]),
        ],
        conditions,
        opt(0.3, mix(h, Just("pod-1".to_string()), hostile())),
        opt(0.7, mix(h, select(s(&["node-a", "node-b"])), hostile())),
        opt(0.4, zone()),
        opt(
            0.3,
            prop::collection::vec(zone().prop_map(|name| ForZone { name }), 0..3),
        ),
    )
        .prop_map(
            |(addresses, conditions, hostname, node_name, zone, hints)| KEndpoint {
                addresses,
                conditions,
                hostname,
                node_name,
                zone,
                hints: hints.map(|z| EndpointHints {
                    for_zones: Some(z),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .boxed()
}

fn slice(h: u32) -> BoxedStrategy<EndpointSlice> {
    any::<bool>()
        .prop_flat_map(move |v4| slice_of(h, v4))
        .boxed()
}

fn slice_of(h: u32, v4: bool) -> BoxedStrategy<EndpointSlice> {
    (
        ns_name(h),
        obj_name(h),
        opt(0.95, obj_name(h)),
        mix(
            h,
            prop_oneof![
                8 => Just(if v4 { "IPv4" } else { "IPv6" }.to_string()),
                1 => select(s(&["IPv4", "IPv6"])),
            ],
            prop_oneof![select(s(&["FQDN", "ipv4", ""])), hostile()],
        ),
        opt(
            0.95,
            prop::collection::vec(
                (opt(0.9, port_name(h)), protocol(h), opt(0.95, port_num(h))).prop_map(
                    |(name, protocol, port)| EndpointPort {
                        name,
                        protocol,
                        port,
                        ..Default::default()
                    },
                ),
                0..3,
            ),
        ),
        prop::collection::vec(endpoint(h, v4), 0..8),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(namespace, name, owner, address_type, ports, mut endpoints, dup)| {
                if dup {
                    endpoints.extend(endpoints.clone());
                }
                EndpointSlice {
                    metadata: ObjectMeta {
                        namespace,
                        name: Some(name),
                        labels: owner.map(|o| {
                            BTreeMap::from([("kubernetes.io/service-name".to_string(), o)])
                        }),
                        ..Default::default()
                    },
                    address_type,
                    ports,
                    endpoints,
                }
            },
        )
        .boxed()
}

/// Flags of one run (what `render` would be invoked with).
#[derive(Debug, Clone)]
struct Knobs {
    cluster_cidr: String,
    masquerade_all: bool,
    nodeport_addresses: String,
    localhost_nodeports: bool,
    ip_families: String,
    service_proxy_name: Option<String>,
    zone: Option<String>,
}

fn knobs() -> BoxedStrategy<Knobs> {
    (
        select(s(&[
            "",
            "10.244.0.0/16",
            "10.244.0.0/16,fd00:244::/48",
            "fd00::/8",
        ])),
        any::<bool>(),
        select(s(&[
            "",
            "192.168.10.0/24",
            "0.0.0.0/0,::/0",
            "127.0.0.0/8",
            "10.0.0.0/8,fd00::/8",
        ])),
        any::<bool>(),
        prop_oneof![
            4 => Just("ipv4,ipv6".to_string()),
            1 => Just("ipv4".to_string()),
            1 => Just("ipv6".to_string()),
        ],
        opt(0.05, Just("other".to_string())),
        opt(0.5, select(s(&["zone-a", "zone-b"]))),
    )
        .prop_map(
            |(
                cluster_cidr,
                masquerade_all,
                nodeport_addresses,
                localhost_nodeports,
                ip_families,
                service_proxy_name,
                zone,
            )| Knobs {
                cluster_cidr,
                masquerade_all,
                nodeport_addresses,
                localhost_nodeports,
                ip_families,
                service_proxy_name,
                zone,
            },
        )
        .boxed()
}

#[derive(Debug, Clone)]
struct Input {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    knobs: Knobs,
}

/// What a slice needs to belong to a Service and match its ports.
type Owner = (
    Option<String>,
    String,
    Vec<(Option<String>, Option<String>)>,
);

fn owner_of(svc: &Service) -> Owner {
    (
        svc.metadata.namespace.clone(),
        svc.metadata.name.clone().unwrap_or_default(),
        svc.spec
            .iter()
            .flat_map(|sp| sp.ports.iter().flatten())
            .map(|p| (p.name.clone(), p.protocol.clone()))
            .collect(),
    )
}

/// Mostly slices of the generated Services (same namespace, owner label,
/// port names and protocols), so that endpoints get rendered.
fn slice_for(h: u32, owners: Vec<Owner>) -> BoxedStrategy<EndpointSlice> {
    if owners.is_empty() {
        return slice(h);
    }
    let linked = (
        slice(h),
        select(owners),
        prop::collection::vec(port_num(h), 4),
    )
        .prop_map(|(mut sl, (ns, name, ports), numbers)| {
            sl.metadata.namespace = ns;
            sl.metadata.labels = Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                name,
            )]));
            sl.ports = Some(
                ports
                    .into_iter()
                    .zip(numbers)
                    .map(|((name, protocol), port)| EndpointPort {
                        name,
                        protocol,
                        port: Some(port),
                        ..Default::default()
                    })
                    .collect(),
            );
            sl
        });
    prop_oneof![3 => linked, 1 => slice(h)].boxed()
}

fn input_with(h: u32) -> BoxedStrategy<Input> {
    prop::collection::vec(service(h), 0..6)
        .prop_flat_map(move |services| {
            let owners: Vec<Owner> = services.iter().map(owner_of).collect();
            (
                Just(services),
                prop::collection::vec(slice_for(h, owners), 0..7),
                knobs(),
            )
        })
        .prop_map(|(services, slices, knobs)| Input {
            services,
            slices,
            knobs,
        })
        .boxed()
}

/// Clean, mildly hostile and very hostile inputs.
fn input() -> BoxedStrategy<Input> {
    prop_oneof![2 => input_with(0), 3 => input_with(4), 2 => input_with(20)].boxed()
}

/// For the kernel check: mostly clean inputs, which render the most rules.
fn restore_input() -> BoxedStrategy<Input> {
    prop_oneof![3 => input_with(0), 1 => input_with(4)].boxed()
}

// ---------------------------------------------------------------------------
// What the input allows a payload to contain
// ---------------------------------------------------------------------------

/// `ns/name` as the rules' comments print it.
fn key_str(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or("default"), name.unwrap_or(""))
}

#[derive(Default)]
struct Allowed {
    /// Per Service: valid clusterIPs, externalIPs, load-balancer ingress IPs.
    vips: HashMap<String, HashSet<IpAddr>>,
    /// Per Service: valid endpoint ip:port of the slices labelled for it.
    endpoints: HashMap<String, HashSet<SocketAddr>>,
    /// Every valid endpoint IP of any slice.
    endpoint_ips: HashSet<IpAddr>,
    /// Input strings longer than 256 chars.
    long: BTreeSet<String>,
}

fn collect_strings(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::String(s) if s.chars().count() > 256 => {
            out.insert(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            if k.chars().count() > 256 {
                out.insert(k.clone());
            }
            collect_strings(x, out)
        }),
        _ => {}
    }
}

fn allowed(input: &Input) -> Allowed {
    let mut a = Allowed::default();
    for svc in &input.services {
        let key = key_str(
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        );
        let set = a.vips.entry(key).or_default();
        let spec = svc.spec.as_ref();
        let strings = spec
            .into_iter()
            .flat_map(|sp| {
                sp.cluster_ip
                    .iter()
                    .chain(sp.cluster_ips.iter().flatten())
                    .chain(sp.external_ips.iter().flatten())
            })
            .chain(
                svc.status
                    .iter()
                    .flat_map(|st| st.load_balancer.iter())
                    .flat_map(|lb| lb.ingress.iter().flatten())
                    .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
                    .flat_map(|ing| ing.ip.iter()),
            );
        set.extend(strings.filter_map(|s| s.parse::<IpAddr>().ok()));
    }
    for sl in &input.slices {
        let Some(owner) = sl
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let key = key_str(sl.metadata.namespace.as_deref(), Some(owner));
        let want_v4 = match sl.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            _ => continue,
        };
        let ports: Vec<u16> = sl
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port)
            .filter(|p| (1..=65535).contains(p))
            .map(|p| p as u16)
            .collect();
        for ep in &sl.endpoints {
            // Only the first address counts (as upstream).
            let Some(ip) = ep.addresses.first().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            if ip.is_ipv4() != want_v4 {
                continue;
            }
            a.endpoint_ips.insert(ip);
            let set = a.endpoints.entry(key.clone()).or_default();
            set.extend(ports.iter().map(|&p| SocketAddr::new(ip, p)));
        }
    }
    for v in input
        .services
        .iter()
        .map(|x| serde_json::to_value(x).unwrap())
        .chain(
            input
                .slices
                .iter()
                .map(|x| serde_json::to_value(x).unwrap()),
        )
    {
        collect_strings(&v, &mut a.long);
    }
    a
}

// ---------------------------------------------------------------------------
// Payload checks
// ---------------------------------------------------------------------------

const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", "FORWARD"];
const BUILTIN_TARGETS: [&str; 8] = [
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "MARK",
    "MASQUERADE",
    "DNAT",
    "SNAT",
];
/// Every option a rule may carry.
const OPTIONS: [&str; 25] = [
    "-A",
    "-m",
    "-p",
    "-d",
    "-s",
    "-j",
    "--dport",
    "--comment",
    "--to-destination",
    "--mode",
    "--probability",
    "--name",
    "--set",
    "--rcheck",
    "--seconds",
    "--reap",
    "--dst-type",
    "--src-type",
    "--mark",
    "--xor-mark",
    "--or-mark",
    "--random-fully",
    "--ctstate",
    "--hitcount",
    "!",
];

/// Characters a `--comment` value may hold (names pass the RFC 1123 check;
/// the fixed comments add spaces and a little punctuation).
fn comment_char_ok(c: char, quoted: bool) -> bool {
    c.is_ascii_alphanumeric() || "-./:[]".contains(c) || (quoted && " ;,>".contains(c))
}

/// Characters any other rule value may hold.
fn value_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-./:[],".contains(c)
}

struct Token<'a> {
    text: &'a str,
    quoted: bool,
}

fn tokenize(line: &str) -> Result<Vec<Token<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        if let Some(r) = rest.strip_prefix(' ') {
            if r.starts_with(' ') {
                return Err("double space".into());
            }
            rest = r;
        }
        if rest.is_empty() {
            return Ok(out);
        }
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').ok_or("unterminated quote")?;
            out.push(Token {
                text: &r[..end],
                quoted: true,
            });
            rest = &r[end + 1..];
            if !(rest.is_empty() || rest.starts_with(' ')) {
                return Err("text right after a closing quote".into());
            }
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let t = &rest[..end];
            if t.contains('"') {
                return Err("quote inside a bare word".into());
            }
            out.push(Token {
                text: t,
                quoted: false,
            });
            rest = &rest[end..];
        }
    }
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<ipnet::IpNet>().ok().map(|n| n.addr()))
}

macro_rules! ensure {
    ($cond:expr, $ctx:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(TestCaseError::fail(format!(
                "{}\n  in line: {:?}",
                format!($($fmt)*),
                $ctx
            )));
        }
    };
}

/// (b) for any text `render` may print: every line is a header, a chain
/// declaration, a well-formed rule, COMMIT or (if allowed) a comment line.
fn check_lines(text: &str, comments_allowed: bool, a: &Allowed) -> Result<(), TestCaseError> {
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        text.lines().last(),
        "payload does not end with a newline"
    );
    ensure!(
        text.bytes()
            .all(|b| b == b'\n' || (0x20..0x7f).contains(&b)),
        text.lines()
            .find(|l| !l.bytes().all(|b| (0x20..0x7f).contains(&b))),
        "payload holds a control or non-ASCII character"
    );
    for s in &a.long {
        ensure!(
            !text.contains(s.as_str()),
            &s[..40.min(s.len())],
            "input string of {} chars appears in the payload",
            s.chars().count()
        );
    }
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with('#') {
            ensure!(comments_allowed, line, "comment line inside a bare payload");
            continue;
        }
        if line == "*nat" || line == "*filter" {
            ensure!(!in_table, line, "table header before COMMIT");
            in_table = true;
            continue;
        }
        ensure!(in_table, line, "line outside a table section");
        if line == "COMMIT" {
            in_table = false;
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.strip_suffix(" - [0:0]");
            ensure!(name.is_some(), line, "malformed chain declaration");
            let name = name.unwrap();
            ensure!(
                !name.is_empty()
                    && name.len() <= 28
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'),
                line,
                "bad chain name {name:?}"
            );
            continue;
        }
        ensure!(line.starts_with("-A "), line, "unexpected line");
        let toks = tokenize(line).map_err(|e| TestCaseError::fail(format!("{e}: {line:?}")))?;
        let mut jumps = 0;
        for (i, t) in toks.iter().enumerate() {
            let prev = if i > 0 { toks[i - 1].text } else { "" };
            if prev == "--comment" {
                ensure!(
                    !t.text.is_empty() && t.text.chars().all(|c| comment_char_ok(c, t.quoted)),
                    line,
                    "--comment value {:?} outside the validated charset",
                    t.text
                );
                continue;
            }
            ensure!(
                !t.quoted,
                line,
                "quoted text that is not a comment: {:?}",
                t.text
            );
            if t.text.starts_with('-') || t.text == "!" {
                ensure!(
                    OPTIONS.contains(&t.text),
                    line,
                    "unknown option {:?}",
                    t.text
                );
                ensure!(t.text != "-A" || i == 0, line, "-A not first");
                jumps += usize::from(t.text == "-j");
            } else {
                ensure!(
                    !t.text.is_empty() && t.text.chars().all(value_char_ok),
                    line,
                    "value {:?} outside the rule charset",
                    t.text
                );
            }
        }
        ensure!(jumps <= 1, line, "more than one -j");
    }
    ensure!(!in_table, "", "payload ends inside a table section");
    Ok(())
}

/// The value after option `opt`.
fn after<'a>(toks: &'a [Token<'a>], opt: &str) -> Option<&'a str> {
    toks.iter()
        .position(|t| !t.quoted && t.text == opt)
        .and_then(|i| toks.get(i + 1))
        .map(|t| t.text)
}

/// The Service key (`ns/name`) a rule's comment names, if any.
fn comment_service(toks: &[Token<'_>]) -> Option<String> {
    let c = after(toks, "--comment")?;
    let first = c.split(' ').next()?;
    if !first.contains('/') {
        return None;
    }
    Some(first.split(':').next().unwrap().to_string())
}

/// (b)-(d) for one payload of one family, rendered from `ports`.
fn check_payload(
    payload: &str,
    cfg: &RenderConfig,
    ports: &[&ServicePort],
    a: &Allowed,
) -> Result<(), TestCaseError> {
    check_lines(payload, false, a)?;

    // Chains the model names.
    let mut model_chains: HashSet<String> = [
        names::KUBE_SERVICES,
        names::KUBE_EXTERNAL_SERVICES,
        names::KUBE_NODEPORTS,
        names::KUBE_POSTROUTING,
        names::KUBE_MARK_MASQ,
        names::KUBE_FORWARD,
        names::KUBE_PROXY_FIREWALL,
        names::KUBE_FIREWALL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for sp in ports {
        let c = ServiceChains::of(sp);
        model_chains.extend([c.svc, c.svl, c.ext, c.fw]);
        model_chains.extend(sp.endpoints.iter().map(|e| endpoint_chain(sp, e)));
    }

    let mut tables_seen = Vec::new();
    let mut declared: HashSet<&str> = HashSet::new();
    let mut rules: Vec<&str> = Vec::new();
    let flush = |declared: &mut HashSet<&str>, rules: &mut Vec<&str>| {
        for line in rules.drain(..) {
            let toks = tokenize(line).unwrap();
            let chain = toks[1].text;
            ensure!(
                declared.contains(chain) || BUILTIN_CHAINS.contains(&chain),
                line,
                "-A to undeclared chain {chain}"
            );
            if let Some(target) = after(&toks, "-j") {
                ensure!(
                    declared.contains(target) || BUILTIN_TARGETS.contains(&target),
                    line,
                    "jump to undeclared chain {target}"
                );
            }
            let svc = comment_service(&toks);
            // Every address is of this payload's family.
            for opt in ["-d", "-s", "--to-destination"] {
                if let Some(v) = after(&toks, opt) {
                    let ip = if opt == "--to-destination" {
                        v.parse::<SocketAddr>().ok().map(|s| s.ip())
                    } else {
                        parse_addr(v)
                    };
                    ensure!(ip.is_some(), line, "{opt} {v:?} is not an address");
                    let ip = ip.unwrap();
                    ensure!(
                        Family::of(&ip) == cfg.family,
                        line,
                        "{opt} {v} is not of family {:?}",
                        cfg.family
                    );
                }
            }
            if let Some(v) = after(&toks, "--dport") {
                ensure!(
                    v.parse::<u16>().is_ok_and(|p| p != 0),
                    line,
                    "bad --dport {v}"
                );
            }
            // (d) DNAT only to valid endpoints of the named Service.
            if after(&toks, "-j") == Some("DNAT") {
                let dest = after(&toks, "--to-destination");
                ensure!(dest.is_some(), line, "DNAT without --to-destination");
                let dest: SocketAddr = dest.unwrap().parse().unwrap();
                ensure!(svc.is_some(), line, "DNAT rule names no Service");
                let svc = svc.clone().unwrap();
                ensure!(
                    a.endpoints.get(&svc).is_some_and(|e| e.contains(&dest)),
                    line,
                    "DNAT to {dest}, not a valid endpoint of {svc} in the input"
                );
            }
            // (d) -d VIP only for that Service's valid VIPs (the KUBE-SERVICES
            // tail may name this node's --nodeport-addresses IPs).
            if let Some(v) = after(&toks, "-d") {
                if let Ok(ip) = v.parse::<IpAddr>() {
                    match &svc {
                        Some(svc) => ensure!(
                            a.vips.get(svc).is_some_and(|s| s.contains(&ip)),
                            line,
                            "-d {ip}: not a valid VIP of {svc} in the input"
                        ),
                        None => ensure!(
                            cfg.node_ips.contains(&ip),
                            line,
                            "-d {ip}: neither a Service VIP nor a node IP"
                        ),
                    }
                }
            }
            if let Some(v) = after(&toks, "-s") {
                if let Ok(ip) = v.parse::<IpAddr>() {
                    let ok = a.endpoint_ips.contains(&ip)
                        || svc
                            .as_ref()
                            .is_some_and(|s| a.vips.get(s).is_some_and(|v| v.contains(&ip)));
                    ensure!(ok, line, "-s {ip}: not an endpoint or VIP from the input");
                }
            }
        }
        declared.clear();
        Ok(())
    };
    for line in payload.lines() {
        if let Some(t) = line.strip_prefix('*') {
            ensure!(!tables_seen.contains(&t), line, "table {t} twice");
            tables_seen.push(t);
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.strip_suffix(" - [0:0]").unwrap();
            ensure!(declared.insert(name), line, "chain {name} declared twice");
            ensure!(
                model_chains.contains(name),
                line,
                "chain {name} is not one the model names"
            );
        } else if line.starts_with("-A ") {
            rules.push(line);
        } else if line == "COMMIT" {
            flush(&mut declared, &mut rules)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------

static INPUTS: AtomicUsize = AtomicUsize::new(0);
static SERVICES: AtomicUsize = AtomicUsize::new(0);
static SLICES: AtomicUsize = AtomicUsize::new(0);
static REJECTED: AtomicUsize = AtomicUsize::new(0);
static WARNINGS: AtomicUsize = AtomicUsize::new(0);
static PORTS: AtomicUsize = AtomicUsize::new(0);
static DNATS: AtomicUsize = AtomicUsize::new(0);
static PAYLOADS: AtomicUsize = AtomicUsize::new(0);
static RESTORED: AtomicUsize = AtomicUsize::new(0);
static RESTORED_RULES: AtomicUsize = AtomicUsize::new(0);

fn settings(k: &Knobs, dir: &std::path::Path) -> Settings {
    let mut args: Vec<String> = s(&["kube-proxy-rs", "--hostname-override", "node-a"]);
    args.push("--source".into());
    args.push(format!("dir:{}", dir.display()));
    for (flag, v) in [
        ("--cluster-cidr", &k.cluster_cidr),
        ("--nodeport-addresses", &k.nodeport_addresses),
        ("--ip-families", &k.ip_families),
    ] {
        if !v.is_empty() {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    args.push(format!("--masquerade-all={}", k.masquerade_all));
    args.push(format!(
        "--iptables-localhost-nodeports={}",
        k.localhost_nodeports
    ));
    if let Some(n) = &k.service_proxy_name {
        args.push("--service-proxy-name".into());
        args.push(n.clone());
    }
    Cli::try_parse_from(&args)
        .expect("flags parse")
        .flags
        .settings()
        .expect("settings")
}

const LOCAL_IPS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(192, 168, 10, 5)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)),
];

/// Runs both paths and checks (b)-(d); returns the payloads per family.
fn run_case(input: &Input) -> Result<Vec<(Family, String)>, TestCaseError> {
    INPUTS.fetch_add(1, Relaxed);
    SERVICES.fetch_add(input.services.len(), Relaxed);
    SLICES.fetch_add(input.slices.len(), Relaxed);
    let a = allowed(input);
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&input.knobs, tmp.path());
    let configs = kube_proxy_rs::run::render_configs(&s, &LOCAL_IPS);

    // Daemon path: Store -> ModelCache -> render_full.
    let mut store = Store::default();
    let mut dirty = store.apply(Update::ReplaceServices(input.services.clone()));
    dirty.extend(store.apply(Update::ReplaceSlices(input.slices.clone())));
    let node = NodeContext {
        node_name: s.node_name.clone(),
        zone: None,
        service_proxy_name: s.service_proxy_name.clone(),
    };
    let mut cache = ModelCache::new(node.clone());
    let rebuild = cache.rebuild(&store, &dirty);
    REJECTED.fetch_add(rebuild.errors.len(), Relaxed);
    WARNINGS.fetch_add(rebuild.warnings.len(), Relaxed);
    PORTS.fetch_add(cache.ports.len(), Relaxed);
    for msg in rebuild.errors.iter().chain(&rebuild.warnings) {
        prop_assert!(!msg.contains('\n'), "multi-line problem message {msg:?}");
    }
    let mut payloads = Vec::new();
    let mut expected_text = String::new();
    for cfg in &configs {
        let fam: Vec<&ServicePort> = cache
            .ports
            .values()
            .filter(|p| p.key.family == cfg.family)
            .collect();
        // (d) reads the Service from each DNAT rule's comment, which large
        // cluster mode (over 1,000 endpoints) leaves out: cases stay below.
        prop_assert!(
            !is_large(total_endpoints(fam.iter().copied())),
            "case too big for the comment checks"
        );
        let payload = render_full(&fam, cfg);
        check_payload(&payload, cfg, &fam, &a)?;
        PAYLOADS.fetch_add(1, Relaxed);
        DNATS.fetch_add(payload.matches("-j DNAT").count(), Relaxed);
        if !(cfg.family == Family::V6 && fam.is_empty()) {
            expected_text.push_str(&payload);
        }
        payloads.push((cfg.family, payload));
    }

    // With this node's zone known (topology hints) the same must hold.
    if let Some(zone) = &input.knobs.zone {
        let mut zoned = ModelCache::new(NodeContext {
            zone: Some(zone.clone()),
            ..node
        });
        zoned.rebuild(&store, &dirty);
        for cfg in &configs {
            let fam: Vec<&ServicePort> = zoned
                .ports
                .values()
                .filter(|p| p.key.family == cfg.family)
                .collect();
            check_payload(&render_full(&fam, cfg), cfg, &fam, &a)?;
        }
    }

    // `render` path: YAML files -> render_text; same rules, and its extra
    // lines are comments.
    let mut yaml = String::new();
    for doc in input
        .services
        .iter()
        .map(|x| serde_yaml::to_string(x).unwrap())
        .chain(
            input
                .slices
                .iter()
                .map(|x| serde_yaml::to_string(x).unwrap()),
        )
    {
        yaml.push_str("---\n");
        yaml.push_str(&doc);
    }
    std::fs::write(tmp.path().join("objects.yaml"), &yaml).unwrap();
    let (text, problems) = kube_proxy_rs::run::render_text(&s, tmp.path(), &LOCAL_IPS);
    let tmp_path = tmp.path().display().to_string();
    let load_errors: Vec<&String> = problems.iter().filter(|p| p.contains(&tmp_path)).collect();
    prop_assert!(
        load_errors.is_empty(),
        "objects did not survive a YAML round trip: {load_errors:?}"
    );
    check_lines(&text, true, &a)?;
    let rules: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    prop_assert!(
        rules == expected_text,
        "render_text and ModelCache+render_full disagree\n--- render_text ---\n{rules}\n--- model cache ---\n{expected_text}"
    );
    Ok(payloads)
}

// ---------------------------------------------------------------------------
// (e) iptables-restore --test in a throwaway network namespace
// ---------------------------------------------------------------------------

fn restore_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables-restore", "ip6tables-restore"] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} not available"));
        }
    }
    None
}

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "kprs-fuzz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name} failed");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn restore_test(ns: &Netns, family: Family, payload: &str) -> Result<(), TestCaseError> {
    let tool = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, tool, "--noflush", "--test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    RESTORED.fetch_add(1, Relaxed);
    RESTORED_RULES.fetch_add(
        payload.lines().filter(|l| l.starts_with("-A ")).count(),
        Relaxed,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad_line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error occurred at line: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .and_then(|n| payload.lines().nth(n - 1));
    prop_assert!(
        out.status.success(),
        "{tool} --test rejected the payload: {stderr}\n  line: {bad_line:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------

fn config(cases: u32) -> Config {
    Config {
        cases,
        source_file: Some(file!()),
        // A failure is saved next to this file (tests/fuzz_payload.proptest-regressions).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

#[test]
fn fuzz_object_to_payload() {
    // PROPTEST_CASES=N runs a deeper search; FUZZ_PAYLOAD_RESTORE_CASES=N
    // a deeper kernel check.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(&input(), |input| run_case(&input).map(|_| ())) {
        panic!("{e}");
    }

    let skip = restore_skip_reason();
    match &skip {
        Some(why) => support::skip(&format!("fuzz_payload: iptables-restore --test: {why}")),
        None => {
            let cases = std::env::var("FUZZ_PAYLOAD_RESTORE_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(RESTORE_CASES);
            let mut runner = TestRunner::new(config(cases));
            let result = runner.run(&restore_input(), |input| {
                let payloads = run_case(&input)?;
                let ns = Netns::new();
                for (family, payload) in &payloads {
                    restore_test(&ns, *family, payload)?;
                }
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}");
            }
        }
    }

    println!(
        "fuzz_payload: {} inputs tried ({} Services, {} EndpointSlices); {} Services rejected with errors, {} slice warnings; {} service ports built; {} payloads checked ({} DNAT rules); {} payloads ({} rules) accepted by iptables-restore --test{}",
        INPUTS.load(Relaxed),
        SERVICES.load(Relaxed),
        SLICES.load(Relaxed),
        REJECTED.load(Relaxed),
        WARNINGS.load(Relaxed),
        PORTS.load(Relaxed),
        PAYLOADS.load(Relaxed),
        DNATS.load(Relaxed),
        RESTORED.load(Relaxed),
        RESTORED_RULES.load(Relaxed),
        if skip.is_some() { " (skipped)" } else { "" },
    );
}
