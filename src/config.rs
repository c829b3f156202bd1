//! kube-proxy's configuration file (KubeProxyConfiguration, v1alpha1) and
//! Go-style durations. Unknown fields are an error naming the field; known
//! fields this proxy does not act on are accepted with a warning naming them.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The longest period accepted (sync periods, IPVS timeouts): a year. Longer
/// ones mean nothing to a proxy, and every timer built from one (tokio's
/// wheel reaches about two years; `Instant + d`, `2 × d`) must not overflow.
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest conntrack timeout: the kernel keeps these in jiffies in an
/// `int` and refuses more than INT_MAX / HZ seconds; HZ is at most 1000.
pub const MAX_CONNTRACK_TIMEOUT: Duration = Duration::from_secs(i32::MAX as u64 / 1000);

/// Upstream's int32 counts (conntrack sizes, client burst): 0..=INT32_MAX.
pub const MAX_COUNT: i64 = i32::MAX as i64;

/// Parses a Go `time.Duration` string as Go's `time.ParseDuration` does
/// (`0`, `500ms`, `1m30s`, `1.5h`, `-2us`, `+1s`; units ns, us, µs, μs, ms,
/// s, m, h) to signed nanoseconds. Values beyond i128 saturate, so they are
/// out of every range the callers check.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let invalid = |why: &str| format!("invalid duration {s:?}{why}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid(""));
    }
    let digits_len = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let (int, tail) = rest.split_at(digits_len(rest));
        let (frac, tail) = match tail.strip_prefix('.') {
            Some(t) => t.split_at(digits_len(t)),
            None => ("", tail),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid(": expected a number"));
        }
        let unit_len = tail
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(invalid(": missing unit")),
            _ => return Err(invalid(&format!(": unknown unit {unit:?}"))),
        };
        let number = |d: &str| {
            d.bytes().fold(0i128, |acc, b| {
                acc.saturating_mul(10).saturating_add(i128::from(b - b'0'))
            })
        };
        let mut value = number(int).saturating_mul(scale);
        // Twenty fraction digits are below a nanosecond of any unit.
        let frac = &frac[..frac.len().min(20)];
        if !frac.is_empty() {
            value = value.saturating_add(number(frac) * scale / 10i128.pow(frac.len() as u32));
        }
        total = total.saturating_add(value);
        rest = next;
    }
    Ok(if neg { -total } else { total })
}

/// A duration the way Go prints one, compactly: `0s`, `1ns`, `500ms`,
/// `1.5s`, `1m30s`, `8760h`.
pub fn format_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if secs == 0 {
        return match nanos {
            0 => "0s".into(),
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}µs", n / 1_000),
            n => format!("{n}ns"),
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out += &format!("{s}.{}s", frac.trim_end_matches('0'));
    } else if s > 0 {
        out += &format!("{s}s");
    }
    out
}

/// `accepted: LO..=HI`, as every range error spells it.
pub fn duration_range(lo: Duration, hi: Duration) -> String {
    format!(
        "accepted: {}..={}",
        format_duration(lo),
        format_duration(hi)
    )
}

/// Parses a Go duration and checks it is within `lo..=hi`; the error says
/// what was wrong and the accepted range (the caller names the field).
pub fn duration_in(s: &str, lo: Duration, hi: Duration) -> Result<Duration, String> {
    let range = duration_range(lo, hi);
    let ns = parse_go_duration(s).map_err(|e| format!("{e} ({range}, e.g. 30s, 1m30s)"))?;
    if ns < lo.as_nanos() as i128 || ns > hi.as_nanos() as i128 {
        return Err(format!("{s:?} is out of range ({range})"));
    }
    // Within hi, which is far below u64::MAX nanoseconds (584 years).
    Ok(Duration::from_nanos(ns as u64))
}

/// Parses a decimal integer (`[+-]?[0-9]+`) and checks it is within `lo..=hi`.
pub fn int_in(s: &str, lo: i64, hi: i64) -> Result<i64, String> {
    let range = format!("accepted: {lo}..={hi}");
    match s.parse::<i128>() {
        Ok(v) if v >= i128::from(lo) && v <= i128::from(hi) => Ok(v as i64),
        Ok(_) => Err(format!("{s} is out of range ({range})")),
        Err(e)
            if matches!(
                e.kind(),
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
            ) =>
        {
            Err(format!("{s} is out of range ({range})"))
        }
        Err(_) => Err(format!("expected an integer, got {s:?} ({range})")),
    }
}

/// Parses a duration flag or field that must be non-negative and at most a
/// year (`0s..=8760h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::ZERO, MAX_PERIOD)
}

/// A duration field of the file: a Go duration string within `0..=max` (or
/// the integer 0), null for "not set". Errors are raised inside the YAML
/// deserializer, so they carry the field's path and line.
fn de_duration_upto<'de, D: serde::Deserializer<'de>>(
    d: D,
    max: Duration,
) -> Result<Option<Duration>, D::Error> {
    use serde::de::{Error, Visitor};
    struct V(Duration);
    impl<'de> Visitor<'de> for V {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(
                f,
                "a duration such as 30s or 1m30s ({})",
                duration_range(Duration::ZERO, self.0)
            )
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_str<E: Error>(self, s: &str) -> Result<Self::Value, E> {
            duration_in(s, Duration::ZERO, self.0)
                .map(Some)
                .map_err(E::custom)
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            self.visit_i128(i128::from(v))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            self.visit_i128(i128::from(v))
        }
        fn visit_i128<E: Error>(self, v: i128) -> Result<Self::Value, E> {
            if v == 0 {
                return Ok(Some(Duration::ZERO));
            }
            Err(E::custom(format!(
                "{v} has no unit ({}, e.g. 30s, 1m30s)",
                duration_range(Duration::ZERO, self.0)
            )))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            Err(E::custom(format!(
                "{v} has no unit ({}, e.g. 30s, 1m30s)",
                duration_range(Duration::ZERO, self.0)
            )))
        }
    }
    d.deserialize_option(V(max))
}

/// Sync periods, `configSyncPeriod`, IPVS timeouts: `0s..=8760h`.
fn de_period<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration_upto(d, MAX_PERIOD)
}

/// Conntrack timeouts: `0s..=596h31m23s` (see [`MAX_CONNTRACK_TIMEOUT`]).
fn de_conntrack_timeout<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration_upto(d, MAX_CONNTRACK_TIMEOUT)
}

/// An integer field of the file within `lo..=hi`, null for "not set"; errors
/// carry the field's path (raised inside the YAML deserializer).
fn de_int_in<'de, D: serde::Deserializer<'de>, T: TryFrom<i64>>(
    d: D,
    lo: i64,
    hi: i64,
) -> Result<Option<T>, D::Error> {
    use serde::de::{Error, Visitor};
    struct V(i64, i64);
    impl V {
        fn check<E: Error>(&self, v: i128) -> Result<Option<i64>, E> {
            if v < i128::from(self.0) || v > i128::from(self.1) {
                return Err(E::custom(format!(
                    "{v} is out of range (accepted: {}..={})",
                    self.0, self.1
                )));
            }
            Ok(Some(v as i64))
        }
    }
    impl<'de> Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an integer (accepted: {}..={})", self.0, self.1)
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            self.check(i128::from(v))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            self.check(i128::from(v))
        }
        fn visit_i128<E: Error>(self, v: i128) -> Result<Self::Value, E> {
            self.check(v)
        }
        fn visit_u128<E: Error>(self, v: u128) -> Result<Self::Value, E> {
            self.check(i128::try_from(v).unwrap_or(i128::MAX))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            let beyond =
                v.is_finite() && v.fract() == 0.0 && (v < self.0 as f64 || v > self.1 as f64);
            let what = if beyond {
                "is out of range"
            } else {
                "is not an integer"
            };
            Err(E::custom(format!(
                "{v} {what} (accepted: {}..={})",
                self.0, self.1
            )))
        }
    }
    match d.deserialize_option(V(lo, hi))? {
        None => Ok(None),
        Some(v) => T::try_from(v)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{v} is out of range (accepted: {lo}..={hi})"))),
    }
}

/// `iptables.masqueradeBit`: 0..=31, as upstream.
fn de_mark_bit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    de_int_in(d, 0, 31)
}

/// Upstream's non-negative int32 counts.
fn de_count<'de, D: serde::Deserializer<'de>, T: TryFrom<i64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    de_int_in(d, 0, MAX_COUNT)
}

/// `oomScoreAdj`: -1000..=1000, as upstream.
fn de_oom_score_adj<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    de_int_in(d, -1000, 1000)
}

/// `clientConnection`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    #[serde(default, deserialize_with = "de_count")]
    pub burst: Option<i64>,
}

/// `iptables`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IptablesSection {
    pub masquerade_all: Option<bool>,
    #[serde(default, deserialize_with = "de_mark_bit")]
    pub masquerade_bit: Option<u8>,
    pub localhost_node_ports: Option<bool>,
    #[serde(default, deserialize_with = "de_period")]
    pub sync_period: Option<Duration>,
    #[serde(default, deserialize_with = "de_period")]
    pub min_sync_period: Option<Duration>,
}

/// `ipvs` (accepted in every mode, as upstream does).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpvsSection {
    #[serde(default, deserialize_with = "de_period")]
    pub sync_period: Option<Duration>,
    #[serde(default, deserialize_with = "de_period")]
    pub min_sync_period: Option<Duration>,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    #[serde(default, deserialize_with = "de_period")]
    pub tcp_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_period")]
    pub tcp_fin_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_period")]
    pub udp_timeout: Option<Duration>,
}

/// `conntrack`. Unlike elsewhere, a zero is kept as given: it means "leave
/// the kernel's value" (a missing or null field means upstream's default).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConntrackSection {
    /// Removed upstream long ago; old ConfigMaps still carry `max: 0`.
    #[serde(default, deserialize_with = "de_count")]
    pub max: Option<i64>,
    #[serde(default, deserialize_with = "de_count")]
    pub max_per_core: Option<u32>,
    #[serde(default, deserialize_with = "de_count")]
    pub min: Option<u32>,
    #[serde(default, deserialize_with = "de_conntrack_timeout")]
    pub tcp_established_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_conntrack_timeout")]
    pub tcp_close_wait_timeout: Option<Duration>,
    pub tcp_be_liberal: Option<bool>,
    #[serde(default, deserialize_with = "de_conntrack_timeout")]
    pub udp_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_conntrack_timeout")]
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
    #[serde(default, deserialize_with = "de_period")]
    pub sync_period: Option<Duration>,
    #[serde(default, deserialize_with = "de_period")]
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
    #[serde(default, deserialize_with = "de_oom_score_adj")]
    pub oom_score_adj: Option<i32>,
    #[serde(default, deserialize_with = "de_period")]
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
        assert_eq!(parse_duration("-0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5.s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("+2µs").unwrap(), Duration::from_micros(2));
        assert_eq!(parse_duration("2μs").unwrap(), Duration::from_micros(2));
        assert_eq!(parse_duration("8760h").unwrap(), MAX_PERIOD);
        for bad in [
            "10", "5x", "", ".", ".s", "1e3s", "1 s", "--1s", "1h-5m", "inf",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("accepted: 0s..=8760h"), "{bad:?}: {err}");
        }
        for out in [
            "-1s",
            "8760h0m0.000000001s",
            "99999999999999999999h",
            "9223372036854775808ns",
        ] {
            let err = parse_duration(out).unwrap_err();
            assert!(
                err.contains("is out of range (accepted: 0s..=8760h)"),
                "{out:?}: {err}"
            );
        }
    }

    #[test]
    fn go_durations_are_exact_and_saturate() {
        assert_eq!(parse_go_duration("1h1m1.000000001s"), Ok(3_661_000_000_001));
        assert_eq!(parse_go_duration("-1.5h"), Ok(-5_400_000_000_000));
        assert_eq!(parse_go_duration("0.1ns"), Ok(0));
        assert_eq!(
            parse_go_duration("2562047h47m16.854775807s"),
            Ok(i128::from(i64::MAX)),
            "Go's largest duration"
        );
        let huge = format!("{}h", "9".repeat(60));
        assert_eq!(parse_go_duration(&huge), Ok(i128::MAX));
        assert_eq!(parse_go_duration(&format!("-{huge}")), Ok(-i128::MAX));
        let long_fraction = format!("1.{}s", "9".repeat(100));
        assert_eq!(parse_go_duration(&long_fraction), Ok(1_999_999_999));
    }

    #[test]
    fn durations_print_as_go_does() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_micros(5), "5µs"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (MAX_PERIOD, "8760h"),
            (MAX_CONNTRACK_TIMEOUT, "596h31m23s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_go_duration(s), Ok(d.as_nanos() as i128), "{s}");
        }
    }

    #[test]
    fn integers() {
        assert_eq!(int_in("31", 0, 31), Ok(31));
        assert_eq!(int_in("+7", 0, 31), Ok(7));
        assert_eq!(int_in("-1000", -1000, 1000), Ok(-1000));
        for (s, want) in [
            ("32", "32 is out of range (accepted: 0..=31)"),
            ("-1", "-1 is out of range (accepted: 0..=31)"),
            (
                "99999999999999999999999999999999999999999",
                "is out of range (accepted: 0..=31)",
            ),
            ("x", "expected an integer, got \"x\" (accepted: 0..=31)"),
            ("", "expected an integer, got \"\" (accepted: 0..=31)"),
            ("1.0", "expected an integer"),
            (" 1", "expected an integer"),
        ] {
            let err = int_in(s, 0, 31).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn file_numbers_are_range_checked_with_their_path() {
        for (yaml, want) in [
            (
                "iptables:\n  masqueradeBit: 270\n",
                "iptables.masqueradeBit: 270 is out of range (accepted: 0..=31)",
            ),
            (
                "iptables:\n  masqueradeBit: -1\n",
                "iptables.masqueradeBit: -1 is out of range (accepted: 0..=31)",
            ),
            (
                "iptables:\n  masqueradeBit: 1.5\n",
                "iptables.masqueradeBit: 1.5 is not an integer (accepted: 0..=31)",
            ),
            (
                "iptables:\n  masqueradeBit: \"14\"\n",
                "iptables.masqueradeBit: invalid type: string \"14\", expected an integer (accepted: 0..=31)",
            ),
            (
                "syncPeriod: 99999999999999999999h\n",
                "syncPeriod: \"99999999999999999999h\" is out of range (accepted: 0s..=8760h)",
            ),
            (
                "ipvs:\n  minSyncPeriod: -1s\n",
                "ipvs.minSyncPeriod: \"-1s\" is out of range (accepted: 0s..=8760h)",
            ),
            (
                "ipvs:\n  udpTimeout: 30\n",
                "ipvs.udpTimeout: 30 has no unit (accepted: 0s..=8760h",
            ),
            (
                "conntrack:\n  tcpEstablishedTimeout: 600h\n",
                "conntrack.tcpEstablishedTimeout: \"600h\" is out of range (accepted: 0s..=596h31m23s)",
            ),
            (
                "conntrack:\n  maxPerCore: 2147483648\n",
                "conntrack.maxPerCore: 2147483648 is out of range (accepted: 0..=2147483647)",
            ),
            (
                "conntrack:\n  min: -5\n",
                "conntrack.min: -5 is out of range (accepted: 0..=2147483647)",
            ),
            (
                "conntrack:\n  max: 99999999999999999999\n",
                "conntrack.max: 99999999999999999999 is out of range (accepted: 0..=2147483647)",
            ),
            (
                "clientConnection:\n  burst: -1\n",
                "clientConnection.burst: -1 is out of range (accepted: 0..=2147483647)",
            ),
            (
                "oomScoreAdj: -1001\n",
                "oomScoreAdj: -1001 is out of range (accepted: -1000..=1000)",
            ),
            (
                "configSyncPeriod: 9000h\n",
                "configSyncPeriod: \"9000h\" is out of range (accepted: 0s..=8760h)",
            ),
        ] {
            let err = format!("{:#}", KubeProxyConfiguration::parse(yaml).unwrap_err());
            assert!(err.contains(want), "{yaml:?}:\n got {err}\nwant {want}");
        }
        let ok = KubeProxyConfiguration::parse(
            "iptables:\n  masqueradeBit: 31\n  syncPeriod: 8760h\nconntrack:\n  maxPerCore: 2147483647\n  udpTimeout: 596h31m23s\n  tcpCloseWaitTimeout: 0\noomScoreAdj: -999\n",
        )
        .unwrap();
        let ipt = ok.iptables.unwrap();
        assert_eq!(ipt.masquerade_bit, Some(31));
        assert_eq!(ipt.sync_period, Some(MAX_PERIOD));
        let ct = ok.conntrack.unwrap();
        assert_eq!(ct.max_per_core, Some(i32::MAX as u32));
        assert_eq!(ct.udp_timeout, Some(MAX_CONNTRACK_TIMEOUT));
        assert_eq!(ct.tcp_close_wait_timeout, Some(Duration::ZERO));
        assert_eq!(ok.oom_score_adj, Some(-999));
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
