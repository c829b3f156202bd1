//! Prometheus metrics under upstream kube-proxy's names (`kubeproxy_` prefix),
//! so existing dashboards work, plus this project's own (`kube_proxy_rs_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub traffic_policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

type FGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: Histogram,
    pub full_sync_duration: Histogram,
    pub partial_sync_duration: Histogram,
    pub network_programming: Histogram,
    pub last_sync_timestamp: FGauge,
    pub last_queued_timestamp: FGauge,
    pub rules: Family<TableLabel, Gauge>,
    pub restore_failures: Counter,
    pub endpoint_changes: Counter,
    pub service_changes: Counter,
    pub endpoint_changes_pending: Gauge,
    pub service_changes_pending: Gauge,
    pub no_local_endpoints: Family<PolicyLabel, Gauge>,
    pub sync_failures: Counter,
    pub service_ports: Gauge,
    pub endpoints: Family<BackendLabel, Gauge>,
    /// externalIP/LoadBalancer IP claims not programmed now, per reason.
    pub vip_conflicts: Family<ReasonLabel, Gauge>,
}

/// Upstream's network programming buckets: 0.25 s .. 5 min.
fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sync_hist = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let m = Metrics {
            sync_duration: sync_hist(),
            full_sync_duration: sync_hist(),
            partial_sync_duration: sync_hist(),
            network_programming: Histogram::new(programming_buckets()),
            last_sync_timestamp: FGauge::default(),
            last_queued_timestamp: FGauge::default(),
            rules: Family::default(),
            restore_failures: Counter::default(),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            service_changes_pending: Gauge::default(),
            no_local_endpoints: Family::default(),
            sync_failures: Counter::default(),
            service_ports: Gauge::default(),
            endpoints: Family::default(),
            vip_conflicts: Family::default(),
            registry: Registry::default(),
        };
        {
            let r = registry.sub_registry_with_prefix("kubeproxy");
            r.register(
                "sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                m.sync_duration.clone(),
            );
            r.register(
                "sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                m.full_sync_duration.clone(),
            );
            r.register(
                "sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                m.partial_sync_duration.clone(),
            );
            r.register(
                "network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                m.network_programming.clone(),
            );
            r.register(
                "sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                m.last_sync_timestamp.clone(),
            );
            r.register(
                "sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                m.last_queued_timestamp.clone(),
            );
            r.register(
                "sync_proxy_rules_iptables_total",
                "Total number of iptables rules owned by kube-proxy",
                m.rules.clone(),
            );
            r.register(
                "sync_proxy_rules_iptables_restore_failures",
                "Cumulative proxy iptables restore failures",
                m.restore_failures.clone(),
            );
            r.register(
                "sync_proxy_rules_endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                m.endpoint_changes.clone(),
            );
            r.register(
                "sync_proxy_rules_service_changes",
                "Cumulative proxy rules Service changes",
                m.service_changes.clone(),
            );
            r.register(
                "sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                m.endpoint_changes_pending.clone(),
            );
            r.register(
                "sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                m.service_changes_pending.clone(),
            );
            r.register(
                "sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                m.no_local_endpoints.clone(),
            );
        }
        {
            let r = registry.sub_registry_with_prefix("kube_proxy_rs");
            r.register(
                "sync_failures",
                "Syncs that failed (each is retried with backoff)",
                m.sync_failures.clone(),
            );
            r.register(
                "service_ports",
                "Service ports programmed",
                m.service_ports.clone(),
            );
            r.register(
                "endpoints",
                "Endpoints across all programmed service ports, per backend",
                m.endpoints.clone(),
            );
            r.register(
                "vip_conflicts",
                "externalIP and LoadBalancer IP claims not programmed because another Service's ClusterIP or earlier claim, or this node's address, has the IP, port and protocol; per reason (cluster_ip, node_address, earlier_claim)",
                m.vip_conflicts.clone(),
            );
        }
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_are_exposed() {
        let m = Metrics::new();
        m.sync_duration.observe(0.02);
        m.rules
            .get_or_create(&TableLabel {
                table: "nat".into(),
            })
            .set(42);
        m.restore_failures.inc();
        let text = m.encode();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
            "kubeproxy_network_programming_duration_seconds_bucket",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} 42",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "kube_proxy_rs_sync_failures_total",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        assert_eq!(programming_buckets().last(), Some(&300.0));
    }
}
