//! kube-proxy's configuration file (KubeProxyConfiguration, v1alpha1) and
//! Go-style durations. Unknown fields are an error naming the field; known
//! fields this proxy does not act on are accepted with a warning naming them.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Parses a Go `time.Duration` string: `0s`, `500ms`, `1m30s`, `1.5h`, `2us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(format!(
            "invalid duration {s:?} (expected e.g. 0s, 500ms, 1m30s)"
        ));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit"))?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {num:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
        };
        total += value * secs;
        rest = next;
    }
    Ok(Duration::from_secs_f64(total))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// `clientConnection`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

/// `iptables`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IptablesSection {
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<i32>,
    pub localhost_node_ports: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub sync_period: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub min_sync_period: Option<Duration>,
}

/// `ipvs` (accepted in every mode, as upstream does).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpvsSection {
    #[serde(default, deserialize_with = "de_duration")]
    pub sync_period: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub min_sync_period: Option<Duration>,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub tcp_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub tcp_fin_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub udp_timeout: Option<Duration>,
}

/// `conntrack`. Unlike elsewhere, a zero is kept as given: it means "leave
/// the kernel's value" (a missing or null field means upstream's default).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConntrackSection {
    /// Removed upstream long ago; old ConfigMaps still carry `max: 0`.
    pub max: Option<i64>,
    pub max_per_core: Option<u32>,
    pub min: Option<u32>,
    #[serde(default, deserialize_with = "de_duration")]
    pub tcp_established_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub tcp_close_wait_timeout: Option<Duration>,
    pub tcp_be_liberal: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub udp_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub udp_stream_timeout: Option<Duration>,
}

/// KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub client_connection: Option<ClientConnection>,
    pub hostname_override: Option<String>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub mode: Option<String>,
    pub iptables: Option<IptablesSection>,
    pub ipvs: Option<IpvsSection>,
    pub conntrack: Option<ConntrackSection>,
    pub node_port_addresses: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_duration")]
    pub sync_period: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub min_sync_period: Option<Duration>,
    pub detect_local_mode: Option<String>,
    // Known upstream fields this proxy does not act on (yet): accepted, warned.
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub nftables: Option<serde_yaml::Value>,
    pub winkernel: Option<serde_yaml::Value>,
    pub detect_local: Option<serde_yaml::Value>,
    pub oom_score_adj: Option<i32>,
    #[serde(default, deserialize_with = "de_duration")]
    pub config_sync_period: Option<Duration>,
    pub port_range: Option<String>,
    pub windows_run_as_service: Option<bool>,
    pub logging: Option<serde_yaml::Value>,
}

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// A YAML value that only holds defaults: null, "", 0, "0", "0s", false, or
/// maps/lists of those.
fn is_zero(v: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0" || s == "0s",
        Value::Sequence(seq) => seq.iter().all(is_zero),
        Value::Mapping(m) => m.values().all(is_zero),
        Value::Tagged(t) => is_zero(&t.value),
    }
}

impl KubeProxyConfiguration {
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: KubeProxyConfiguration =
            serde_yaml::from_str(text).context("invalid KubeProxyConfiguration")?;
        if let Some(v) = &cfg.api_version {
            if v != API_VERSION {
                bail!("unsupported apiVersion {v:?} (expected {API_VERSION})");
            }
        }
        if let Some(k) = &cfg.kind {
            if k != "KubeProxyConfiguration" {
                bail!("unsupported kind {k:?} (expected KubeProxyConfiguration)");
            }
        }
        Ok(cfg.normalized())
    }

    /// Zero values mean "use the default", as upstream's defaulting treats them
    /// (kubeadm writes `syncPeriod: 0s`, `healthzBindAddress: ""`, ...).
    fn normalized(mut self) -> Self {
        fn s(v: &mut Option<String>) {
            if v.as_deref().is_some_and(|x| x.trim().is_empty()) {
                *v = None;
            }
        }
        fn d(v: &mut Option<Duration>) {
            if v.is_some_and(|x| x.is_zero()) {
                *v = None;
            }
        }
        fn f(v: &mut Option<bool>) {
            if *v == Some(false) {
                *v = None;
            }
        }
        fn val(v: &mut Option<serde_yaml::Value>) {
            if v.as_ref().is_some_and(is_zero) {
                *v = None;
            }
        }
        for x in [
            &mut self.hostname_override,
            &mut self.cluster_cidr,
            &mut self.mode,
            &mut self.detect_local_mode,
            &mut self.bind_address,
            &mut self.healthz_bind_address,
            &mut self.metrics_bind_address,
            &mut self.show_hidden_metrics_for_version,
            &mut self.port_range,
        ] {
            s(x);
        }
        if matches!(self.bind_address.as_deref(), Some("0.0.0.0") | Some("::")) {
            self.bind_address = None;
        }
        for x in [
            &mut self.sync_period,
            &mut self.min_sync_period,
            &mut self.config_sync_period,
        ] {
            d(x);
        }
        for x in [&mut self.enable_profiling, &mut self.windows_run_as_service] {
            f(x);
        }
        for x in [
            &mut self.nftables,
            &mut self.winkernel,
            &mut self.detect_local,
            &mut self.logging,
        ] {
            val(x);
        }
        if self.oom_score_adj == Some(0) {
            self.oom_score_adj = None;
        }
        if self.feature_gates.as_ref().is_some_and(|g| g.is_empty()) {
            self.feature_gates = None;
        }
        if let Some(c) = &mut self.client_connection {
            s(&mut c.kubeconfig);
            s(&mut c.accept_content_types);
            s(&mut c.content_type);
            if c.qps == Some(0.0) {
                c.qps = None;
            }
            if c.burst == Some(0) {
                c.burst = None;
            }
        }
        if let Some(i) = &mut self.iptables {
            d(&mut i.sync_period);
            d(&mut i.min_sync_period);
        }
        if let Some(i) = &mut self.ipvs {
            d(&mut i.sync_period);
            d(&mut i.min_sync_period);
            d(&mut i.tcp_timeout);
            d(&mut i.tcp_fin_timeout);
            d(&mut i.udp_timeout);
            s(&mut i.scheduler);
            if i.exclude_cidrs.as_ref().is_some_and(|v| v.is_empty()) {
                i.exclude_cidrs = None;
            }
        }
        if self
            .node_port_addresses
            .as_ref()
            .is_some_and(|v| v.is_empty())
        {
            self.node_port_addresses = None;
        }
        self
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Names of set fields that this proxy accepts but does not act on.
    pub fn unused_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut note = |set: bool, name: &'static str| {
            if set {
                out.push(name)
            }
        };
        note(self.feature_gates.is_some(), "featureGates");
        note(self.bind_address.is_some(), "bindAddress");
        note(self.enable_profiling.is_some(), "enableProfiling");
        note(
            self.show_hidden_metrics_for_version.is_some(),
            "showHiddenMetricsForVersion",
        );
        note(self.nftables.is_some(), "nftables");
        note(self.winkernel.is_some(), "winkernel");
        note(self.detect_local.is_some(), "detectLocal");
        note(self.oom_score_adj.is_some(), "oomScoreAdj");
        note(
            self.conntrack
                .as_ref()
                .is_some_and(|c| c.max.is_some_and(|m| m != 0)),
            "conntrack.max",
        );
        note(self.config_sync_period.is_some(), "configSyncPeriod");
        note(self.port_range.is_some(), "portRange");
        note(self.windows_run_as_service.is_some(), "windowsRunAsService");
        note(self.logging.is_some(), "logging");
        if let Some(c) = &self.client_connection {
            note(
                c.accept_content_types.is_some(),
                "clientConnection.acceptContentTypes",
            );
            note(c.content_type.is_some(), "clientConnection.contentType");
            note(c.qps.is_some(), "clientConnection.qps");
            note(c.burst.is_some(), "clientConnection.burst");
        }
        if let Some(i) = &self.ipvs {
            note(i.tcp_timeout.is_some(), "ipvs.tcpTimeout");
            note(i.tcp_fin_timeout.is_some(), "ipvs.tcpFinTimeout");
            note(i.udp_timeout.is_some(), "ipvs.udpTimeout");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn kubeadm_style_config() {
        let cfg = KubeProxyConfiguration::parse(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\nclusterCIDR: 10.244.0.0/16\niptables:\n  masqueradeAll: false\n  minSyncPeriod: 0s\n  syncPeriod: 30s\nipvs:\n  strictARP: true\n  scheduler: rr\nclientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\nnodePortAddresses: null\n",
        )
        .unwrap();
        assert_eq!(cfg.mode.as_deref(), Some("iptables"));
        assert_eq!(cfg.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        let ipt = cfg.iptables.as_ref().unwrap();
        assert_eq!(
            ipt.min_sync_period, None,
            "0s means the default, as upstream"
        );
        assert_eq!(ipt.sync_period, Some(Duration::from_secs(30)));
        assert_eq!(cfg.ipvs.as_ref().unwrap().strict_arp, Some(true));
        assert!(cfg.unused_fields().is_empty());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = KubeProxyConfiguration::parse("mode: iptables\nfrobnicate: true\n").unwrap_err();
        assert!(format!("{err:#}").contains("frobnicate"), "{err:#}");
        let err = KubeProxyConfiguration::parse("iptables:\n  masqueradeAl: true\n").unwrap_err();
        assert!(format!("{err:#}").contains("masqueradeAl"), "{err:#}");
    }

    #[test]
    fn unused_fields_are_named() {
        let cfg = KubeProxyConfiguration::parse(
            "enableProfiling: true\nmetricsBindAddress: 0.0.0.0:10249\nconntrack:\n  maxPerCore: 4\n",
        )
        .unwrap();
        assert_eq!(cfg.unused_fields(), vec!["enableProfiling"]);
    }

    #[test]
    fn conntrack_zeros_are_kept_and_nulls_are_defaults() {
        let cfg = KubeProxyConfiguration::parse(
            "conntrack:\n  maxPerCore: 0\n  min: null\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 1h0m0s\n  udpTimeout: 30s\n",
        )
        .unwrap();
        let c = cfg.conntrack.unwrap();
        assert_eq!(c.max_per_core, Some(0));
        assert_eq!(c.min, None);
        assert_eq!(c.tcp_established_timeout, Some(Duration::ZERO));
        assert_eq!(c.tcp_close_wait_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.udp_timeout, Some(Duration::from_secs(30)));
        assert!(
            KubeProxyConfiguration::parse("conntrack:\n  maxPerCor: 1\n").is_err(),
            "a misspelt field is refused"
        );
        // Old ConfigMaps' `max` loads; set, it is named as unused.
        let old = KubeProxyConfiguration::parse("conntrack:\n  max: 0\n").unwrap();
        assert!(old.unused_fields().is_empty());
        let old = KubeProxyConfiguration::parse("conntrack:\n  max: 5000\n").unwrap();
        assert_eq!(old.unused_fields(), vec!["conntrack.max"]);
    }

    #[test]
    fn kubeadm_written_config_is_accepted_with_upstream_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/config/kubeadm-1.33.yaml"
        );
        let cfg = KubeProxyConfiguration::load(std::path::Path::new(path)).unwrap();
        assert!(cfg.unused_fields().is_empty(), "{:?}", cfg.unused_fields());
        assert_eq!(
            cfg.iptables.as_ref().unwrap().min_sync_period,
            None,
            "0s means default"
        );
        assert_eq!(cfg.healthz_bind_address, None, "\"\" means default");
        assert_eq!(cfg.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
    }

    #[test]
    fn wrong_kind_or_version() {
        assert!(KubeProxyConfiguration::parse("kind: KubeletConfiguration\n").is_err());
        assert!(KubeProxyConfiguration::parse("apiVersion: v1\n").is_err());
    }
}
