//! Command line, compatible with kube-proxy's flags where they make sense.
//! Precedence: flags > `--config` file > defaults.

use crate::config::{
    duration_in, format_duration, int_in, KubeProxyConfiguration, MAX_CONNTRACK_TIMEOUT, MAX_COUNT,
    MAX_PERIOD,
};
use crate::source::SourceSpec;
use crate::xtables::IptablesFlavor;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "kube-proxy-rs",
    version,
    about = "A drop-in replacement for kube-proxy: programs Service VIPs into the node's kernel",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
    /// Remove every rule and chain this proxy owns, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Only do the privileged node setup (sysctls), then exit: for a privileged
    /// init container in front of a capabilities-only proxy container.
    #[arg(long)]
    pub init_only: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the payload that would be applied for a dir: source; touches nothing.
    Render(RenderArgs),
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub flags: Flags,
    /// Node name for endpoint locality (alias of --hostname-override).
    #[arg(long)]
    pub node: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct Flags {
    /// Which proxy mode to use: iptables or ipvs.
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,
    /// Path to a KubeProxyConfiguration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Path to a kubeconfig file with authorization information.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the Kubernetes API server (overrides any value in kubeconfig).
    #[arg(long)]
    pub master: Option<String>,
    /// Use this name as the node's name instead of the hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The CIDR range(s) of pods, comma separated; traffic from outside is masqueraded.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,
    /// SNAT all traffic sent via Service cluster IPs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub masquerade_all: Option<bool>,
    /// CIDRs of node addresses that accept NodePort traffic (comma separated).
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub nodeport_addresses: Option<String>,
    /// IPVS scheduler (rr, wrr, lc, sh, mh, ...); ipvs mode only.
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,
    /// Set arp_ignore=1 and arp_announce=2 (needed by MetalLB L2); ipvs mode only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ipvs_strict_arp: Option<bool>,
    /// CIDRs whose IPVS virtual servers the proxy never touches (comma separated).
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub ipvs_exclude_cidrs: Option<String>,
    /// How often rules are checked and repaired (e.g. 30s, 1m).
    #[arg(long, value_parser = flag_period, alias = "iptables-sync-period", alias = "ipvs-sync-period")]
    pub sync_period: Option<Duration>,
    /// Minimum interval between rule syncs; bursts of changes are coalesced (e.g. 1s, 0s).
    #[arg(long, value_parser = flag_min_period, alias = "iptables-min-sync-period", alias = "ipvs-min-sync-period")]
    pub min_sync_period: Option<Duration>,
    /// Where objects come from: `apiserver` (default) or `dir:PATH` (YAML/JSON files).
    #[arg(long)]
    pub source: Option<SourceSpec>,
    /// Serve only Services labelled service.kubernetes.io/service-proxy-name=NAME.
    #[arg(long)]
    pub service_proxy_name: Option<String>,
    /// Program externalIPs that are addresses of this node (refused and
    /// reported by default: they would take the node's own ports).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub allow_node_ip_external_ips: Option<bool>,
    /// Bit of the packet mark used for SNAT (0-31, default 14).
    #[arg(long, value_name = "BIT", value_parser = flag_int::<u8, 0, 31>)]
    pub iptables_masquerade_bit: Option<u8>,
    /// Which iptables binaries to run.
    #[arg(long, value_enum)]
    pub iptables_backend: Option<IptablesFlavor>,
    /// Allow NodePorts on 127.0.0.1 (sets route_localnet), as upstream's default.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub iptables_localhost_nodeports: Option<bool>,
    /// IP families to program: ipv4, ipv6 or both (default: both where the tools work).
    #[arg(long, value_name = "FAMILIES")]
    pub ip_families: Option<String>,
    /// Most lines per iptables-restore call with iptables-nft (tuning; 0 = one payload).
    #[arg(long, hide = true, value_parser = flag_int::<usize, 0, { u32::MAX as i64 }>)]
    pub iptables_max_payload_lines: Option<usize>,
    /// Conntrack entries per CPU: the table size is this x CPUs, at least
    /// --conntrack-min (default 32768; 0 leaves the size as it is).
    #[arg(long, value_name = "N", value_parser = flag_int::<u32, 0, MAX_COUNT>)]
    pub conntrack_max_per_core: Option<u32>,
    /// Smallest conntrack table size set, whatever the CPU count (default 131072).
    #[arg(long, value_name = "N", value_parser = flag_int::<u32, 0, MAX_COUNT>)]
    pub conntrack_min: Option<u32>,
    /// Conntrack timeout of idle established TCP connections (default 24h; 0 leaves it).
    #[arg(long, value_parser = flag_conntrack_timeout)]
    pub conntrack_tcp_timeout_established: Option<Duration>,
    /// Conntrack timeout of TCP connections in CLOSE_WAIT (default 1h; 0 leaves it).
    #[arg(long, value_parser = flag_conntrack_timeout)]
    pub conntrack_tcp_timeout_close_wait: Option<Duration>,
    /// Do not mark out-of-window TCP packets INVALID (nf_conntrack_tcp_be_liberal=1).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// Conntrack timeout of one-way UDP flows (0, the default, leaves it).
    #[arg(long, value_parser = flag_conntrack_timeout)]
    pub conntrack_udp_timeout: Option<Duration>,
    /// Conntrack timeout of two-way UDP flows (0, the default, leaves it).
    #[arg(long, value_parser = flag_conntrack_timeout)]
    pub conntrack_udp_timeout_stream: Option<Duration>,
    /// ip:port of the health server (/healthz, /livez); empty disables it.
    #[arg(long, value_name = "IP:PORT")]
    pub healthz_bind_address: Option<String>,
    /// ip:port of the metrics server (/metrics); empty disables it.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,
    /// Exit if the health or metrics port cannot be bound.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub bind_address_hard_fail: Option<bool>,
    /// Log verbosity (0-10; 4+ is debug, 6+ trace), as kube-proxy's -v.
    #[arg(short = 'v', long = "v", value_name = "LEVEL", value_parser = flag_int::<u32, 0, MAX_COUNT>)]
    pub verbosity: Option<u32>,
    /// Log format: text or json.
    #[arg(long, alias = "logging-format")]
    pub log_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Iptables,
    Ipvs,
    Nftables,
}

/// Effective settings after merging flags over the file over defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: ProxyMode,
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
    pub node_name: String,
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub nodeport_addresses: Vec<IpNet>,
    /// `--nodeport-addresses primary`: NodePorts only on the node's primary IPs
    /// (its Node object's InternalIP, else ExternalIP, per family).
    pub nodeport_primary: bool,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub source: SourceSpec,
    pub service_proxy_name: Option<String>,
    /// `--allow-node-ip-external-ips`.
    pub allow_node_ip_external_ips: bool,
    pub iptables_flavor: IptablesFlavor,
    pub max_payload_lines: Option<usize>,
    pub localhost_nodeports: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub verbosity: u8,
    pub json_logs: bool,
    pub ipvs_scheduler: String,
    pub strict_arp: bool,
    pub ipvs_exclude_cidrs: Vec<IpNet>,
    pub healthz_bind_address: Option<std::net::SocketAddr>,
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    pub bind_address_hard_fail: bool,
    pub conntrack: crate::conntrack::limits::ConntrackSettings,
}

/// An integer flag within `LO..=HI` (clap names the flag in the error).
fn flag_int<T: TryFrom<i64>, const LO: i64, const HI: i64>(s: &str) -> Result<T, String> {
    let v = int_in(s, LO, HI)?;
    T::try_from(v).map_err(|_| format!("{s} is out of range (accepted: {LO}..={HI})"))
}

/// `--sync-period`: more than 0, at most a year.
fn flag_period(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::from_nanos(1), MAX_PERIOD)
}

/// `--min-sync-period`: 0 to a year.
fn flag_min_period(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::ZERO, MAX_PERIOD)
}

/// `--conntrack-*-timeout*`: 0 (leave it) to the kernel's limit.
fn flag_conntrack_timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::ZERO, MAX_CONNTRACK_TIMEOUT)
}

/// `ip:port` (or `[v6]:port`); empty means disabled.
fn parse_bind(s: &str, what: &str) -> Result<Option<std::net::SocketAddr>> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse().map(Some).map_err(|_| {
        anyhow::anyhow!("{what}: expected IP:PORT with a port in 0..=65535, got {s:?}")
    })
}

/// Where an effective setting came from, for errors naming it.
fn origin<T>(candidates: [(Option<T>, &'static str); 3], default: T) -> (T, &'static str) {
    candidates
        .into_iter()
        .find_map(|(v, from)| v.map(|v| (v, from)))
        .unwrap_or((default, "the default"))
}

fn parse_cidrs(s: &str, what: &str) -> Result<Vec<IpNet>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .map(|n| n.trunc())
                .with_context(|| format!("{what}: invalid CIDR {p:?}"))
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default()
}

impl Flags {
    /// Merges these flags over the `--config` file and the defaults.
    pub fn settings(&self) -> Result<Settings> {
        let file = match &self.config {
            Some(p) => KubeProxyConfiguration::load(p)?,
            None => KubeProxyConfiguration::default(),
        };
        for f in file.unused_fields() {
            tracing::warn!(
                field = f,
                "config field is accepted but not used by kube-proxy-rs"
            );
        }
        let ipt = file.iptables.as_ref();
        let ipvs = file.ipvs.as_ref();
        let mode_s = self
            .proxy_mode
            .clone()
            .or(file.mode.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "iptables".into());
        let mode = match mode_s.as_str() {
            "iptables" => ProxyMode::Iptables,
            "ipvs" => ProxyMode::Ipvs,
            "nftables" => ProxyMode::Nftables,
            other => {
                bail!("unsupported proxy mode {other:?} (supported: iptables, ipvs, nftables)")
            }
        };
        if let Some(m) = &file.detect_local_mode {
            if !m.is_empty() && m != "ClusterCIDR" {
                bail!("detectLocalMode {m:?} is not supported (supported: ClusterCIDR)");
            }
        }
        let cidr_s = self
            .cluster_cidr
            .clone()
            .or(file.cluster_cidr.clone())
            .unwrap_or_default();
        let np_s = match (&self.nodeport_addresses, &file.node_port_addresses) {
            (Some(s), _) => s.clone(),
            (None, Some(v)) => v.join(","),
            _ => String::new(),
        };
        let families = self
            .ip_families
            .clone()
            .unwrap_or_else(|| "ipv4,ipv6".into());
        let (ipv4, ipv6) = (families.contains("ipv4"), families.contains("ipv6"));
        if !ipv4 && !ipv6 {
            bail!("--ip-families: use ipv4, ipv6 or ipv4,ipv6");
        }
        // Both sources are range-checked where they are parsed; this only
        // guards settings built by hand.
        let bit = self
            .iptables_masquerade_bit
            .or(ipt.and_then(|i| i.masquerade_bit))
            .unwrap_or(14);
        if bit > 31 {
            bail!("--iptables-masquerade-bit/iptables.masqueradeBit: {bit} is out of range (accepted: 0..=31)");
        }
        let (section_sync, section_min, section) = match mode {
            ProxyMode::Iptables => (
                ipt.and_then(|i| i.sync_period),
                ipt.and_then(|i| i.min_sync_period),
                ["iptables.syncPeriod", "iptables.minSyncPeriod"],
            ),
            ProxyMode::Ipvs => (
                ipvs.and_then(|i| i.sync_period),
                ipvs.and_then(|i| i.min_sync_period),
                ["ipvs.syncPeriod", "ipvs.minSyncPeriod"],
            ),
            // The nftables section is accepted but not read (yet).
            ProxyMode::Nftables => (
                None,
                None,
                ["nftables.syncPeriod", "nftables.minSyncPeriod"],
            ),
        };
        let (sync_period, sync_from) = origin(
            [
                (self.sync_period, "--sync-period"),
                (section_sync, section[0]),
                (file.sync_period, "syncPeriod"),
            ],
            Duration::from_secs(30),
        );
        let (min_sync_period, min_from) = origin(
            [
                (self.min_sync_period, "--min-sync-period"),
                (section_min, section[1]),
                (file.min_sync_period, "minSyncPeriod"),
            ],
            Duration::from_secs(1),
        );
        // Each is range-checked where it is parsed (a zero in the file means
        // the default); upstream also wants them in order.
        if sync_period.is_zero() || sync_period > MAX_PERIOD {
            bail!(
                "{sync_from}: {} is out of range (accepted: 1ns..=8760h)",
                format_duration(sync_period)
            );
        }
        if min_sync_period > sync_period {
            let from = |d: Duration, from: &str| match from {
                "the default" => format!("{}, the default", format_duration(d)),
                _ => format!("{} from {from}", format_duration(d)),
            };
            bail!(
                "the minimum sync period ({}) must not exceed the sync period ({})",
                from(min_sync_period, min_from),
                from(sync_period, sync_from)
            );
        }
        let ct = file.conntrack.as_ref();
        let conntrack = crate::conntrack::limits::ConntrackSettings {
            max_per_core: self
                .conntrack_max_per_core
                .or(ct.and_then(|c| c.max_per_core)),
            min: self.conntrack_min.or(ct.and_then(|c| c.min)),
            tcp_established: self
                .conntrack_tcp_timeout_established
                .or(ct.and_then(|c| c.tcp_established_timeout)),
            tcp_close_wait: self
                .conntrack_tcp_timeout_close_wait
                .or(ct.and_then(|c| c.tcp_close_wait_timeout)),
            tcp_be_liberal: self
                .conntrack_tcp_be_liberal
                .or(ct.and_then(|c| c.tcp_be_liberal))
                .unwrap_or(false),
            udp_timeout: self
                .conntrack_udp_timeout
                .or(ct.and_then(|c| c.udp_timeout)),
            udp_stream_timeout: self
                .conntrack_udp_timeout_stream
                .or(ct.and_then(|c| c.udp_stream_timeout)),
        };
        let log_format = self.log_format.clone().unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            bail!("--log-format: use text or json");
        }
        Ok(Settings {
            mode,
            kubeconfig: self
                .kubeconfig
                .clone()
                .or(file
                    .client_connection
                    .as_ref()
                    .and_then(|c| c.kubeconfig.clone())
                    .map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty()),
            master: self.master.clone(),
            node_name: self
                .hostname_override
                .clone()
                .or(file.hostname_override.clone())
                .filter(|h| !h.is_empty())
                .map(|h| h.to_lowercase())
                .unwrap_or_else(hostname),
            cluster_cidrs: parse_cidrs(&cidr_s, "cluster CIDR")?,
            masquerade_all: self
                .masquerade_all
                .or(ipt.and_then(|i| i.masquerade_all))
                .unwrap_or(false),
            masquerade_bit: bit,
            nodeport_addresses: parse_cidrs(
                &np_s
                    .split(',')
                    .filter(|p| p.trim() != "primary")
                    .collect::<Vec<_>>()
                    .join(","),
                "nodeport addresses",
            )?,
            nodeport_primary: np_s.split(',').any(|p| p.trim() == "primary"),
            sync_period,
            min_sync_period,
            source: self.source.clone().unwrap_or(SourceSpec::ApiServer),
            service_proxy_name: self.service_proxy_name.clone().filter(|s| !s.is_empty()),
            allow_node_ip_external_ips: self.allow_node_ip_external_ips.unwrap_or(false),
            iptables_flavor: self.iptables_backend.unwrap_or_default(),
            max_payload_lines: self.iptables_max_payload_lines.map(|n| {
                if n == 0 {
                    usize::MAX
                } else {
                    n
                }
            }),
            localhost_nodeports: self
                .iptables_localhost_nodeports
                .or(ipt.and_then(|i| i.localhost_node_ports))
                .unwrap_or(true),
            ipv4,
            ipv6,
            verbosity: self.verbosity.unwrap_or(0).min(u32::from(u8::MAX)) as u8,
            json_logs: log_format == "json",
            ipvs_scheduler: {
                let sched = self
                    .ipvs_scheduler
                    .clone()
                    .or(ipvs.and_then(|i| i.scheduler.clone()))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "rr".into());
                if sched.len() > crate::ipvs::wire::SCHED_NAME_MAX
                    || !sched
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                {
                    bail!("invalid IPVS scheduler {sched:?} (expected a name such as rr, wrr, lc, sh, mh)");
                }
                sched
            },
            strict_arp: self
                .ipvs_strict_arp
                .or(ipvs.and_then(|i| i.strict_arp))
                .unwrap_or(false),
            ipvs_exclude_cidrs: parse_cidrs(
                &self.ipvs_exclude_cidrs.clone().unwrap_or_else(|| {
                    ipvs.and_then(|i| i.exclude_cidrs.clone())
                        .unwrap_or_default()
                        .join(",")
                }),
                "ipvs exclude CIDR",
            )?,
            healthz_bind_address: parse_bind(
                self.healthz_bind_address
                    .as_deref()
                    .or(file.healthz_bind_address.as_deref())
                    .unwrap_or("0.0.0.0:10256"),
                "--healthz-bind-address/healthzBindAddress",
            )?,
            metrics_bind_address: parse_bind(
                self.metrics_bind_address
                    .as_deref()
                    .or(file.metrics_bind_address.as_deref())
                    .unwrap_or("127.0.0.1:10249"),
                "--metrics-bind-address/metricsBindAddress",
            )?,
            bind_address_hard_fail: self
                .bind_address_hard_fail
                .or(file.bind_address_hard_fail)
                .unwrap_or(false),
            conntrack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kube-proxy-rs").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn kube_proxy_style_flags() {
        let cli = parse(&[
            "--proxy-mode=iptables",
            "--cluster-cidr=10.244.0.0/16,fd00::/48",
            "--masquerade-all",
            "--min-sync-period=0s",
            "--sync-period",
            "1m30s",
            "--source=dir:/tmp/x",
            "--hostname-override=Node-1",
            "-v=4",
        ]);
        let s = cli.flags.settings().unwrap();
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(s.cluster_cidrs.len(), 2);
        assert!(s.masquerade_all);
        assert_eq!(s.min_sync_period, Duration::ZERO);
        assert_eq!(s.sync_period, Duration::from_secs(90));
        assert_eq!(s.source, SourceSpec::Dir("/tmp/x".into()));
        assert_eq!(s.node_name, "node-1");
        assert_eq!(s.verbosity, 4);
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\nclusterCIDR: 10.0.0.0/8\niptables:\n  minSyncPeriod: 5s\n  masqueradeAll: true\nipvs:\n  strictARP: true\n",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let s = parse(&["--config", path, "--min-sync-period=250ms"])
            .flags
            .settings()
            .unwrap();
        assert_eq!(s.min_sync_period, Duration::from_millis(250));
        assert!(s.masquerade_all);
        assert!(s.strict_arp);
        assert_eq!(s.cluster_cidrs[0].to_string(), "10.0.0.0/8");
        let s = parse(&["--config", path, "--cluster-cidr=192.168.0.0/16"])
            .flags
            .settings()
            .unwrap();
        assert_eq!(s.cluster_cidrs[0].to_string(), "192.168.0.0/16");
    }

    #[test]
    fn conntrack_flags_as_upstreams_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "conntrack:\n  maxPerCore: 0\n  min: 1000\n  tcpEstablishedTimeout: 2h\n  udpTimeout: 30s\n",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let c = parse(&[
            "--config",
            path,
            "--conntrack-max-per-core=65536",
            "--conntrack-tcp-timeout-close-wait=0s",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout-stream=2m0s",
        ])
        .flags
        .settings()
        .unwrap()
        .conntrack;
        assert_eq!(c.max_per_core, Some(65536), "the flag wins");
        assert_eq!(c.min, Some(1000), "from the file");
        assert_eq!(c.tcp_established, Some(Duration::from_secs(7200)));
        assert_eq!(c.tcp_close_wait, Some(Duration::ZERO), "0s: leave it");
        assert!(c.tcp_be_liberal);
        assert_eq!(c.udp_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.udp_stream_timeout, Some(Duration::from_secs(120)));
        let d = parse(&[]).flags.settings().unwrap().conntrack;
        assert_eq!(d, crate::conntrack::limits::ConntrackSettings::default());
    }

    fn err(args: &[&str]) -> String {
        match Cli::try_parse_from(std::iter::once("kube-proxy-rs").chain(args.iter().copied())) {
            Err(e) => e.to_string(),
            Ok(cli) => format!("{:#}", cli.flags.settings().unwrap_err()),
        }
    }

    #[test]
    fn numeric_flags_are_range_checked_by_name() {
        for (args, want) in [
            (
                &["--sync-period", "99999999999999999999h"][..],
                "'--sync-period <SYNC_PERIOD>': \"99999999999999999999h\" is out of range (accepted: 1ns..=8760h)",
            ),
            (
                &["--iptables-sync-period=0s"],
                "'--sync-period <SYNC_PERIOD>': \"0s\" is out of range (accepted: 1ns..=8760h)",
            ),
            (
                &["--ipvs-min-sync-period=-1s"],
                "'--min-sync-period <MIN_SYNC_PERIOD>': \"-1s\" is out of range (accepted: 0s..=8760h)",
            ),
            (
                &["--iptables-masquerade-bit=270"],
                "'--iptables-masquerade-bit <BIT>': 270 is out of range (accepted: 0..=31)",
            ),
            (
                &["--conntrack-max-per-core=-1"],
                "'--conntrack-max-per-core <N>': -1 is out of range (accepted: 0..=2147483647)",
            ),
            (
                &["--conntrack-min=4294967296"],
                "'--conntrack-min <N>': 4294967296 is out of range (accepted: 0..=2147483647)",
            ),
            (
                &["--conntrack-udp-timeout=30d"],
                "unknown unit \"d\" (accepted: 0s..=596h31m23s, e.g. 30s, 1m30s)",
            ),
            (
                &["--conntrack-tcp-timeout-close-wait=597h"],
                "'--conntrack-tcp-timeout-close-wait <CONNTRACK_TCP_TIMEOUT_CLOSE_WAIT>': \"597h\" is out of range (accepted: 0s..=596h31m23s)",
            ),
            (
                &["--iptables-max-payload-lines=-1"],
                "'--iptables-max-payload-lines <IPTABLES_MAX_PAYLOAD_LINES>': -1 is out of range (accepted: 0..=4294967295)",
            ),
            (
                &["-v", "x"],
                "'--v <LEVEL>': expected an integer, got \"x\" (accepted: 0..=2147483647)",
            ),
            (
                &["--min-sync-period=45s"],
                "the minimum sync period (45s from --min-sync-period) must not exceed the sync period (30s, the default)",
            ),
            (
                &["--sync-period=500ms"],
                "the minimum sync period (1s, the default) must not exceed the sync period (500ms from --sync-period)",
            ),
            (
                &["--healthz-bind-address=0.0.0.0:65536"],
                "--healthz-bind-address/healthzBindAddress: expected IP:PORT with a port in 0..=65535",
            ),
        ] {
            let e = err(args);
            assert!(e.contains(want), "{args:?}:\n got {e}\nwant {want}");
        }
        let s = parse(&["--sync-period=8760h", "--min-sync-period=8760h", "-v=1000"])
            .flags
            .settings()
            .unwrap();
        assert_eq!(s.sync_period, crate::config::MAX_PERIOD);
        assert_eq!(
            s.verbosity, 255,
            "any level above 255 is as verbose as it gets"
        );
    }

    #[test]
    fn file_numbers_are_range_checked_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        let path = f.to_str().unwrap();
        std::fs::write(&f, "iptables:\n  masqueradeBit: 270\n").unwrap();
        let e = err(&["--config", path]);
        assert!(
            e.contains("iptables.masqueradeBit: 270 is out of range (accepted: 0..=31)"),
            "{e}"
        );
        std::fs::write(&f, "iptables:\n  masqueradeBit: 31\n").unwrap();
        assert_eq!(
            parse(&["--config", path])
                .flags
                .settings()
                .unwrap()
                .masquerade_bit,
            31
        );
        // In order across sources: the file's section against a flag.
        std::fs::write(&f, "iptables:\n  minSyncPeriod: 10s\n").unwrap();
        let e = err(&["--config", path, "--sync-period=5s"]);
        assert!(
            e.contains("the minimum sync period (10s from iptables.minSyncPeriod) must not exceed the sync period (5s from --sync-period)"),
            "{e}"
        );
        // ipvs mode takes the ipvs section; the iptables one does not count.
        std::fs::write(
            &f,
            "mode: ipvs\niptables:\n  minSyncPeriod: 10m\nipvs:\n  syncPeriod: 2m\n  minSyncPeriod: 90s\n",
        )
        .unwrap();
        let s = parse(&["--config", path]).flags.settings().unwrap();
        assert_eq!(
            (s.sync_period, s.min_sync_period),
            (Duration::from_secs(120), Duration::from_secs(90))
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(parse(&["--proxy-mode=userspace"]).flags.settings().is_err());
        assert!(parse(&["--cluster-cidr=10.0.0.0/33"])
            .flags
            .settings()
            .is_err());
        assert!(Cli::try_parse_from(["kube-proxy-rs", "--sync-period=5"]).is_err());
        assert!(Cli::try_parse_from(["kube-proxy-rs", "--source=http://x"]).is_err());
    }

    #[test]
    fn render_subcommand() {
        let cli = parse(&[
            "render",
            "--proxy-mode",
            "iptables",
            "--source",
            "dir:/x",
            "--node",
            "n1",
        ]);
        match cli.command {
            Some(Command::Render(r)) => assert_eq!(r.node.as_deref(), Some("n1")),
            _ => panic!("expected render"),
        }
    }
}
