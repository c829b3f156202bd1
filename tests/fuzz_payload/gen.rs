//! The inputs: Services and EndpointSlices mixing valid and hostile values,
//! and the proxy's knobs (cluster CIDR, masquerade-all, NodePort addresses,
//! families, service-proxy-name, zone).

use super::*;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------
//
// Every generator takes `h`, the weight (in percent) of hostile values per
// field: inputs come clean (h = 0, so rules with endpoints get rendered),
// mildly hostile or very hostile.

pub(crate) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `clean` most of the time, `bad` with weight `h` percent.
pub(crate) fn mix<T: std::fmt::Debug + Clone + 'static>(
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

pub(crate) fn opt<T: std::fmt::Debug + Clone + 'static>(
    p: f64,
    st: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::weighted(p, st).boxed()
}

/// More than 256 chars: must never reach a payload.
pub(crate) fn long_string() -> BoxedStrategy<String> {
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
pub(crate) fn hostile() -> BoxedStrategy<String> {
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

pub(crate) fn ns_name(h: u32) -> BoxedStrategy<Option<String>> {
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

pub(crate) fn obj_name(h: u32) -> BoxedStrategy<String> {
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

pub(crate) fn port_name(h: u32) -> BoxedStrategy<String> {
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

pub(crate) fn protocol(h: u32) -> BoxedStrategy<Option<String>> {
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

pub(crate) fn port_num(h: u32) -> BoxedStrategy<i32> {
    mix(
        h,
        select(vec![80, 443, 53, 8080, 1, 65535]),
        prop_oneof![-3i32..=3, 65533i32..=65540, any::<i32>()],
    )
}

/// A valid address of one family, or (weight `h`) a malformed one.
pub(crate) fn ip_of(h: u32, v4: bool) -> BoxedStrategy<String> {
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
pub(crate) fn ip_str(h: u32) -> BoxedStrategy<String> {
    prop_oneof![ip_of(h, true), ip_of(h, false)].boxed()
}

pub(crate) fn service_port(h: u32) -> BoxedStrategy<KPort> {
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

pub(crate) fn load_balancer_ingress(h: u32) -> BoxedStrategy<LoadBalancerIngress> {
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

pub(crate) fn source_range(h: u32) -> BoxedStrategy<String> {
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

pub(crate) fn service(h: u32) -> BoxedStrategy<Service> {
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
pub(crate) fn endpoint(h: u32, v4: bool) -> BoxedStrategy<KEndpoint> {
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

pub(crate) fn slice(h: u32) -> BoxedStrategy<EndpointSlice> {
    any::<bool>()
        .prop_flat_map(move |v4| slice_of(h, v4))
        .boxed()
}

pub(crate) fn slice_of(h: u32, v4: bool) -> BoxedStrategy<EndpointSlice> {
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
pub(crate) struct Knobs {
    pub(crate) cluster_cidr: String,
    pub(crate) masquerade_all: bool,
    pub(crate) nodeport_addresses: String,
    pub(crate) localhost_nodeports: bool,
    pub(crate) ip_families: String,
    pub(crate) service_proxy_name: Option<String>,
    pub(crate) zone: Option<String>,
}

pub(crate) fn knobs() -> BoxedStrategy<Knobs> {
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
pub(crate) struct Input {
    pub(crate) services: Vec<Service>,
    pub(crate) slices: Vec<EndpointSlice>,
    pub(crate) knobs: Knobs,
}

/// What a slice needs to belong to a Service and match its ports.
pub(crate) type Owner = (
    Option<String>,
    String,
    Vec<(Option<String>, Option<String>)>,
);

pub(crate) fn owner_of(svc: &Service) -> Owner {
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
pub(crate) fn slice_for(h: u32, owners: Vec<Owner>) -> BoxedStrategy<EndpointSlice> {
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

pub(crate) fn input_with(h: u32) -> BoxedStrategy<Input> {
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
pub(crate) fn input() -> BoxedStrategy<Input> {
    prop_oneof![2 => input_with(0), 3 => input_with(4), 2 => input_with(20)].boxed()
}

/// For the kernel check: mostly clean inputs, which render the most rules.
pub(crate) fn restore_input() -> BoxedStrategy<Input> {
    prop_oneof![3 => input_with(0), 1 => input_with(4)].boxed()
}
