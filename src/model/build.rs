//! Service + EndpointSlices -> service ports of this node. Pure.

use super::types::*;
use super::validate::{for_log, is_object_name, is_port_name, port_number, special_ip};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Label that hands a Service to an alternative proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// Outcome of building one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    /// Service ports to program (possibly none, e.g. a Service without ports).
    Ports(Vec<ServicePort>),
    /// Not ours to program (headless, ExternalName, other proxy); the reason.
    Ignored(&'static str),
}

/// Result of building one Service: what to program, plus problems with its
/// slices that did not stop the Service (each names the object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    pub built: Built,
    pub warnings: Vec<String>,
}

/// Builds the service ports of `svc` for this node from its EndpointSlices.
/// `Err` names the Service and says what is wrong with it; the caller skips it.
pub fn build_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
) -> Result<BuildOutput, String> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let who = format!("Service {}/{}", for_log(ns), for_log(name));
    if !is_object_name(ns) || !is_object_name(name) {
        return Err(format!("{who}: invalid namespace or name"));
    }
    let ignored = |why| {
        Ok(BuildOutput {
            built: Built::Ignored(why),
            warnings: vec![],
        })
    };
    let labels = svc.metadata.labels.as_ref();
    let proxy_label = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL));
    if proxy_label.map(String::as_str) != node.service_proxy_name.as_deref() {
        return ignored("served by another proxy (service.kubernetes.io/service-proxy-name)");
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Err(format!("{who}: no spec"));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return ignored("ExternalName");
    }
    let mut ip_strings: Vec<&str> = spec
        .cluster_ips
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if ip_strings.is_empty() {
        if let Some(ip) = spec.cluster_ip.as_deref() {
            ip_strings.push(ip);
        }
    }
    if ip_strings.first() == Some(&"None") {
        return ignored("headless");
    }
    if ip_strings.is_empty() || ip_strings.iter().all(|s| s.is_empty()) {
        return Err(format!("{who}: no clusterIP"));
    }
    let mut cluster_ips: BTreeMap<Family, IpAddr> = BTreeMap::new();
    for s in ip_strings {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("{who}: invalid clusterIP {:?}", for_log(s)))?;
        if let Some(why) = special_ip(&ip) {
            return Err(format!("{who}: clusterIP {ip} is {why}"));
        }
        cluster_ips.entry(Family::of(&ip)).or_insert(ip);
    }
    let mut warnings = Vec::new();
    let mut external_ips = parse_ips(spec.external_ips.as_deref(), &who, "externalIPs")?;
    drop_special(&mut external_ips, &who, "externalIP", &mut warnings);
    let mut lb_ips = Vec::new();
    if let Some(ingress) = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
    {
        for ing in ingress {
            // ipMode Proxy: the load balancer delivers to the node, not to the VIP.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(ip) = ing.ip.as_deref() {
                let parsed: IpAddr = ip.parse().map_err(|_| {
                    format!(
                        "{who}: invalid status.loadBalancer.ingress IP {:?}",
                        for_log(ip)
                    )
                })?;
                lb_ips.push(parsed);
            }
        }
        drop_special(
            &mut lb_ips,
            &who,
            "status.loadBalancer.ingress IP",
            &mut warnings,
        );
    }
    let mut source_ranges = Vec::new();
    for r in spec.load_balancer_source_ranges.iter().flatten() {
        let net: IpNet = r.trim().parse().map_err(|_| {
            format!(
                "{who}: invalid loadBalancerSourceRanges entry {:?}",
                for_log(r)
            )
        })?;
        source_ranges.push(net.trunc());
    }
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let t = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT as i32);
        if !(1..=86400).contains(&t) {
            return Err(format!(
                "{who}: sessionAffinity timeoutSeconds {t} out of range 1..86400"
            ));
        }
        Some(t as u32)
    } else {
        None
    };
    let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
    let annotations = svc.metadata.annotations.as_ref();
    let auto = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .is_some_and(|v| v == "Auto" || v == "auto")
    };
    let topology = spec.traffic_distribution.as_deref() == Some("PreferClose")
        || auto("service.kubernetes.io/topology-mode")
        || auto("service.kubernetes.io/topology-aware-hints");
    let topology_zone = if topology { node.zone.clone() } else { None };
    let external_policy_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = match spec.health_check_node_port {
        Some(p) if is_lb && external_policy_local => Some(
            port_number(p).ok_or_else(|| format!("{who}: healthCheckNodePort {p} out of range"))?,
        ),
        _ => None,
    };

    // Validate every port before producing anything.
    struct PortSpec {
        name: String,
        protocol: Protocol,
        port: u16,
        node_port: Option<u16>,
    }
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        if !is_port_name(&pname) {
            return Err(format!("{who}: invalid port name {:?}", for_log(&pname)));
        }
        let proto_s = p.protocol.as_deref().unwrap_or("TCP");
        let protocol = Protocol::parse(proto_s).ok_or_else(|| {
            format!(
                "{who}: port {pname:?}: unknown protocol {:?}",
                for_log(proto_s)
            )
        })?;
        let port = port_number(p.port).ok_or_else(|| {
            format!(
                "{who}: port {pname:?}: port {} out of range 1-65535",
                p.port
            )
        })?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(
                port_number(n)
                    .ok_or_else(|| format!("{who}: port {pname:?}: nodePort {n} out of range"))?,
            ),
        };
        if ports
            .iter()
            .any(|q: &PortSpec| q.name == pname && q.protocol == protocol)
        {
            return Err(format!(
                "{who}: duplicate port {pname:?}/{}",
                protocol.upper()
            ));
        }
        ports.push(PortSpec {
            name: pname,
            protocol,
            port,
            node_port,
        });
    }

    let mut out = Vec::new();
    for (&family, &cip) in &cluster_ips {
        let endpoints_by_port = collect_endpoints(slices, family, node, &mut warnings);
        for p in &ports {
            let key = ServicePortKey {
                name: ServicePortName {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    port: p.name.clone(),
                },
                protocol: p.protocol,
                family,
            };
            let endpoints = endpoints_by_port
                .get(&(p.name.clone(), p.protocol))
                .cloned()
                .unwrap_or_default();
            out.push(ServicePort {
                key,
                cluster_ip: Some(cip),
                port: p.port,
                node_port: p.node_port,
                external_ips: of_family(&external_ips, family),
                load_balancer_ips: of_family(&lb_ips, family),
                load_balancer_source_ranges: source_ranges
                    .iter()
                    .filter(|n| Family::of_net(n) == family)
                    .cloned()
                    .collect(),
                affinity_timeout,
                external_policy_local,
                internal_policy_local,
                health_check_node_port,
                topology_zone: topology_zone.clone(),
                endpoints,
            });
        }
    }
    warnings.dedup();
    Ok(BuildOutput {
        built: Built::Ports(out),
        warnings,
    })
}

fn parse_ips(list: Option<&[String]>, who: &str, field: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for s in list.unwrap_or_default() {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("{who}: invalid {field} entry {:?}", for_log(s)))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Leaves out the special addresses of `ips` (see [`special_ip`]), one
/// warning each: the rest of the Service is programmed.
fn drop_special(ips: &mut Vec<IpAddr>, who: &str, field: &str, warnings: &mut Vec<String>) {
    ips.retain(|ip| match special_ip(ip) {
        Some(why) => {
            warnings.push(format!("{who}: {field} {ip} is {why}; not programmed"));
            false
        }
        None => true,
    });
}

fn of_family(ips: &[IpAddr], family: Family) -> Vec<IpAddr> {
    ips.iter()
        .filter(|ip| Family::of(ip) == family)
        .cloned()
        .collect()
}

type PortEndpoints = BTreeMap<(String, Protocol), Vec<Endpoint>>;

/// Endpoints of one family from all slices, per (port name, protocol), with
/// the port number resolved per slice, deduplicated by ip:port and sorted as
/// upstream sorts them (by the `ip:port` string).
fn collect_endpoints(
    slices: &[&EndpointSlice],
    family: Family,
    node: &NodeContext,
    warnings: &mut Vec<String>,
) -> PortEndpoints {
    let mut sorted: Vec<&&EndpointSlice> = slices.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out: PortEndpoints = BTreeMap::new();
    for slice in sorted {
        if slice.address_type != family.address_type() {
            continue;
        }
        let who = format!(
            "EndpointSlice {}/{}",
            for_log(slice.metadata.namespace.as_deref().unwrap_or("default")),
            for_log(slice.metadata.name.as_deref().unwrap_or(""))
        );
        for sp in slice.ports.iter().flatten() {
            let pname = sp.name.clone().unwrap_or_default();
            if !is_port_name(&pname) {
                warnings.push(format!(
                    "{who}: invalid port name {:?}; port skipped",
                    for_log(&pname)
                ));
                continue;
            }
            let proto_s = sp.protocol.as_deref().unwrap_or("TCP");
            let Some(protocol) = Protocol::parse(proto_s) else {
                warnings.push(format!(
                    "{who}: unknown protocol {:?}; port skipped",
                    for_log(proto_s)
                ));
                continue;
            };
            let Some(port) = sp.port.and_then(port_number) else {
                warnings.push(format!(
                    "{who}: port {pname:?} has no valid number ({:?}); port skipped",
                    sp.port
                ));
                continue;
            };
            let list = out.entry((pname, protocol)).or_default();
            for ep in &slice.endpoints {
                let Some(addr) = ep.addresses.first() else {
                    continue;
                };
                let ip: IpAddr = match addr.parse() {
                    Ok(ip) if special_ip(&ip).is_some() => {
                        warnings.push(format!(
                            "{who}: address {ip} is {}; endpoint skipped",
                            special_ip(&ip).unwrap_or_default()
                        ));
                        continue;
                    }
                    Ok(ip) if Family::of(&ip) == family => ip,
                    Ok(_) => {
                        warnings.push(format!(
                            "{who}: address {addr} is not {}; endpoint skipped",
                            family.address_type()
                        ));
                        continue;
                    }
                    Err(_) => {
                        warnings.push(format!(
                            "{who}: invalid address {:?}; endpoint skipped",
                            for_log(addr)
                        ));
                        continue;
                    }
                };
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                // As upstream: an absent `serving` counts as serving.
                let serving = cond.and_then(|c| c.serving).unwrap_or(true);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let endpoint = Endpoint {
                    ip,
                    port,
                    ready,
                    serving,
                    terminating,
                    is_local: !node.node_name.is_empty()
                        && ep.node_name.as_deref() == Some(node.node_name.as_str()),
                    zone_hints: ep
                        .hints
                        .as_ref()
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|z| z.iter().map(|z| z.name.clone()).collect())
                        .unwrap_or_default(),
                };
                match list.iter_mut().find(|e| e.ip == ip && e.port == port) {
                    // Duplicates across slices: keep one, preferring a ready copy.
                    Some(existing) => {
                        if !existing.ready && endpoint.ready {
                            *existing = endpoint;
                        }
                    }
                    None => list.push(endpoint),
                }
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by_cached_key(|e| e.addr_string());
    }
    out
}
