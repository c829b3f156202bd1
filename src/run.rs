//! The imperative shell: wires settings, sources, backend and sync loop.

use crate::backend::Backend;
use crate::cli::{Flags, ProxyMode, RenderArgs, Settings};
use crate::health::Health;
use crate::http::{self, Shared};
use crate::iptables::apply::{detect_flavor, IptablesFlavor, Kernel, SystemIptables};
use crate::iptables::backend::KernelFactory;
use crate::iptables::render::jumps;
use crate::iptables::state::render_full;
use crate::iptables::{IptablesBackend, RenderConfig};
use crate::metrics::Metrics;
use crate::model::{build_service, Built, Family, NodeContext, ServicePort};
use crate::node;
use crate::source::{self, SourceSpec};
use crate::sync::{self, EventSink, SyncConfig};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

fn init_logging(s: &Settings) {
    let level = match s.verbosity {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KUBE_PROXY_RS_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "{level},kube_client=warn,kube_runtime=warn,hyper=warn,tower=warn,rustls=warn"
            ))
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if s.json_logs {
        b.json().init();
    } else {
        b.init();
    }
}

/// Render configs for the families to program on this node.
pub fn render_configs(s: &Settings, local_ips: &[std::net::IpAddr]) -> Vec<RenderConfig> {
    let mut out = Vec::new();
    for (family, on) in [(Family::V4, s.ipv4), (Family::V6, s.ipv6)] {
        if !on {
            continue;
        }
        let mut cfg = RenderConfig::new(family);
        cfg.cluster_cidrs = s
            .cluster_cidrs
            .iter()
            .filter(|n| Family::of_net(n) == family)
            .cloned()
            .collect();
        cfg.masquerade_all = s.masquerade_all;
        cfg.masquerade_bit = s.masquerade_bit;
        cfg.nodeport_addresses = s
            .nodeport_addresses
            .iter()
            .filter(|n| Family::of_net(n) == family)
            .cloned()
            .collect();
        cfg.node_ips = node::of_family(local_ips, family);
        cfg.localhost_nodeports = s.localhost_nodeports && family == Family::V4;
        out.push(cfg);
    }
    out
}

fn kernel_factory(s: &Settings) -> KernelFactory {
    let mut flavor = s.iptables_flavor;
    if flavor == IptablesFlavor::Auto {
        flavor = detect_flavor();
        if flavor != IptablesFlavor::Auto {
            tracing::info!(
                ?flavor,
                "following the iptables mode kubelet uses on this node"
            );
        }
    }
    Arc::new(move || Box::new(SystemIptables::new(flavor)) as Box<dyn Kernel>)
}

fn node_context(s: &Settings) -> NodeContext {
    NodeContext {
        node_name: s.node_name.clone(),
        zone: None,
        service_proxy_name: s.service_proxy_name.clone(),
    }
}

/// The sysctls a mode needs, as (key under /proc/sys, value, why).
fn node_sysctls(s: &Settings) -> Vec<(String, String, String)> {
    match s.mode {
        ProxyMode::Ipvs => crate::ipvs::sysctl::plan(
            crate::ipvs::sysctl::kernel_version(
                std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim(),
            ),
            s.strict_arp,
        )
        .into_iter()
        .map(|x| (x.key.to_string(), x.value.to_string(), x.why.to_string()))
        .collect(),
        ProxyMode::Iptables if s.localhost_nodeports && s.ipv4 => vec![(
            "net/ipv4/conf/all/route_localnet".into(),
            "1".into(),
            "NodePorts answer on 127.0.0.1".into(),
        )],
        ProxyMode::Iptables => vec![],
    }
}

/// The conntrack table size and timeouts, as upstream sets them at start
/// (a value that cannot be written is a warning, not a failure).
fn set_conntrack_limits(s: &Settings) {
    // The node's online CPUs, as upstream counts them: not this process's
    // CPU quota or affinity (a limited pod would size the node's table down).
    // SAFETY: sysconf only reads a system value.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpus = usize::try_from(online)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let writes = crate::ctlimits::plan(&s.conntrack, cpus);
    crate::ctlimits::apply(&writes, &crate::ctlimits::Roots::default());
}

/// `--init-only`: the node setup that needs write access to /proc/sys (a
/// privileged init container), so the long-running container can run with
/// NET_ADMIN and NET_RAW only: it then finds every value already set.
pub fn init_only(flags: &Flags) -> Result<()> {
    let s = flags.settings()?;
    init_logging(&s);
    if s.mode == ProxyMode::Ipvs {
        // Resolving the IPVS netlink family makes the kernel load ip_vs, which
        // is what creates the net.ipv4.vs.* sysctls set below.
        if let Err(e) = crate::ipvs::netlink::IpvsSocket::connect() {
            tracing::warn!(error = %format!("{e:#}"), "IPVS not available yet");
        }
    }
    for (key, value, why) in node_sysctls(&s) {
        node::set_sysctl(&key.replace('/', "."), &value)
            .with_context(|| format!("setting {key}={value}"))?;
        tracing::info!(sysctl = %key, value = %value, why = %why, "node setup");
    }
    set_conntrack_limits(&s);
    tracing::info!("node setup done (--init-only)");
    Ok(())
}

/// `--cleanup`: remove everything this proxy (or upstream kube-proxy) owns.
pub fn cleanup(flags: &Flags) -> Result<()> {
    let s = flags.settings()?;
    init_logging(&s);
    // Both modes' leftovers go, as upstream's --cleanup does (the IPVS
    // cleanup also removes every iptables-mode jump and chain).
    ipvs_backend(&s).cleanup()?;
    tracing::info!("removed all kube-proxy rules, chains, virtual servers, ipsets and kube-ipvs0");
    Ok(())
}

/// `render`: prints the payload for a dir: source and touches nothing.
pub fn render(args: &RenderArgs) -> Result<()> {
    let mut s = args.flags.settings()?;
    if let Some(n) = &args.node {
        s.node_name = n.to_lowercase();
    }
    let SourceSpec::Dir(dir) = &s.source else {
        bail!("render needs --source dir:PATH");
    };
    let local_ips = if s.mode == ProxyMode::Ipvs {
        node::local_addresses()
            .into_iter()
            .filter(crate::ipvs::link::usable_host_address)
            .collect()
    } else if s.nodeport_addresses.is_empty() {
        vec![]
    } else {
        node::local_addresses()
    };
    let (text, problems) = render_text(&s, dir, &local_ips);
    for p in problems {
        eprintln!("{p}");
    }
    print!("{text}");
    Ok(())
}

/// The IPVS backend's settings from the proxy's.
pub fn ipvs_settings(s: &Settings) -> crate::ipvs::IpvsSettings {
    crate::ipvs::IpvsSettings {
        scheduler: s.ipvs_scheduler.clone(),
        strict_arp: s.strict_arp,
        exclude_cidrs: s.ipvs_exclude_cidrs.clone(),
        nodeport_addresses: s.nodeport_addresses.clone(),
        nodeport_primary: s.nodeport_primary,
        glue: render_configs(s, &[])
            .into_iter()
            .map(|c| crate::ipvs::glue::GlueConfig {
                family: c.family,
                masquerade_all: c.masquerade_all,
                cluster_cidr: c.cluster_cidrs.first().copied(),
                masquerade_bit: c.masquerade_bit,
                random_fully: c.random_fully,
            })
            .collect(),
        drain_timeout: Duration::from_secs(15 * 60),
        drain_check: Duration::from_secs(2),
        sysctl_root: "/proc/sys".into(),
    }
}

fn ipvs_backend(s: &Settings) -> crate::ipvs::IpvsBackend {
    use crate::ipvs::{apply::SystemIpset, link::SystemLink, netlink::IpvsSocket};
    crate::ipvs::IpvsBackend::new(
        ipvs_settings(s),
        Arc::new(|| {
            Ok(Box::new(IpvsSocket::connect()?) as Box<dyn crate::ipvs::netlink::IpvsKernel>)
        }),
        Arc::new(|| Box::new(SystemLink) as Box<dyn crate::ipvs::link::LinkKernel>),
        kernel_factory(s),
        Box::new(SystemIpset::default()),
    )
}

/// The service ports the objects in `dir` yield, and the problems found.
pub fn load_ports(s: &Settings, dir: &std::path::Path) -> (Vec<ServicePort>, Vec<String>) {
    let (services, slices, errors) = source::dir::load_once(dir);
    let mut problems: Vec<String> = errors.into_iter().map(|e| format!("error: {e}")).collect();
    let ctx = node_context(s);
    let mut store = source::Store::default();
    store.apply(source::Update::ReplaceServices(services));
    store.apply(source::Update::ReplaceSlices(slices));
    let mut ports: Vec<ServicePort> = Vec::new();
    let keys: Vec<_> = store.service_keys().cloned().collect();
    for key in keys {
        let built = store.service(&key).expect("listed key").and_then(|svc| {
            let slices = store.slices_of(&key)?;
            build_service(&svc, &crate::sync::model::refs(&slices), &ctx)
        });
        match built {
            Ok(out) => {
                problems.extend(out.warnings.into_iter().map(|w| format!("warning: {w}")));
                if let Built::Ports(p) = out.built {
                    ports.extend(p);
                }
            }
            Err(e) => problems.push(format!("error: {e}; skipped")),
        }
    }
    ports.sort_by(|a, b| a.key.cmp(&b.key));
    (ports, problems)
}

/// What `render` prints for the objects in `dir`, and the problems found
/// (each naming its object). Pure apart from reading `dir`.
pub fn render_text(
    s: &Settings,
    dir: &std::path::Path,
    local_ips: &[std::net::IpAddr],
) -> (String, Vec<String>) {
    let (ports, problems) = load_ports(s, dir);
    if s.mode == ProxyMode::Ipvs {
        let text = crate::ipvs::render::render(&ports, &ipvs_settings(s), local_ips);
        return (text, problems);
    }
    let mut out = String::new();
    for cfg in render_configs(s, local_ips) {
        let fam: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| p.key.family == cfg.family)
            .collect();
        if cfg.family == Family::V6 && fam.is_empty() {
            continue;
        }
        let tool = if cfg.family == Family::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        out.push_str(&format!("# {tool}-restore --noflush payload\n"));
        out.push_str(&render_full(&fam, &cfg));
        out.push_str(&crate::iptables::apply::describe_jumps(tool, &jumps()));
    }
    (out, problems)
}

/// The daemon.
pub fn daemon(flags: &Flags) -> Result<()> {
    let s = flags.settings()?;
    init_logging(&s);
    let mode = match s.mode {
        ProxyMode::Iptables => "iptables",
        ProxyMode::Ipvs => "ipvs",
    };
    tracing::info!(
        mode,
        node = %s.node_name,
        cluster_cidrs = ?s.cluster_cidrs,
        min_sync_period = ?s.min_sync_period,
        sync_period = ?s.sync_period,
        source = ?s.source,
        "starting kube-proxy-rs"
    );
    if s.mode == ProxyMode::Iptables && s.localhost_nodeports && s.ipv4 {
        if let Err(e) = node::set_sysctl("net.ipv4.conf.all.route_localnet", "1") {
            tracing::warn!(error = %e, "cannot enable route_localnet; NodePorts on 127.0.0.1 will not work");
        }
    }
    set_conntrack_limits(&s);
    let backend: Box<dyn Backend> = match s.mode {
        ProxyMode::Iptables => {
            let local_ips = node::local_addresses();
            let mut iptables = IptablesBackend::new(
                kernel_factory(&s),
                render_configs(&s, &local_ips),
                s.max_payload_lines,
            );
            iptables.nodeport_primary = s.nodeport_primary;
            Box::new(iptables)
        }
        ProxyMode::Ipvs => {
            if let Err(e) = crate::ipvs::netlink::IpvsSocket::connect() {
                tracing::error!(error = %format!("{e:#}"), "IPVS is not usable on this node; syncs will fail until it is");
            }
            Box::new(ipvs_backend(&s))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shared = Arc::new(Shared {
        health: Health::new(2 * s.sync_period),
        metrics: Metrics::new(),
        proxy_mode: mode,
    });
    rt.block_on(async move {
        for (addr, router, what) in [
            (s.healthz_bind_address, http::health_router(shared.clone()), "healthz"),
            (s.metrics_bind_address, http::metrics_router(shared.clone()), "metrics"),
        ] {
            let Some(addr) = addr else { continue };
            if let Err(e) = http::serve(addr, router, what).await {
                if s.bind_address_hard_fail {
                    bail!("cannot bind the {what} server on {addr}: {e}");
                }
                tracing::error!(%addr, error = %e, "cannot bind the {what} server; continuing without it");
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        let mut events = None;
        match &s.source {
            SourceSpec::Dir(d) => {
                tokio::spawn(source::dir::run(d.clone(), s.node_name.clone(), Duration::from_millis(500), tx));
            }
            SourceSpec::ApiServer => {
                let client = kube_client(&s).await?;
                events = Some(event_sink(client.clone(), &s.node_name));
                tokio::spawn(source::kube::run(client, s.service_proxy_name.clone(), s.node_name.clone(), tx));
            }
        }
        let cfg = SyncConfig {
            min_sync_period: s.min_sync_period,
            sync_period: s.sync_period,
            ..Default::default()
        };
        sync::run(backend, rx, node_context(&s), cfg, shared, events, shutdown_signal()).await;
        Ok::<(), anyhow::Error>(())
    })?;
    // Exit without waiting for watch tasks: rules stay as they are.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Posts Warning events about this node (e.g. sync failures), off the sync loop.
fn event_sink(client: kube::Client, node_name: &str) -> EventSink {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "kube-proxy-rs".into(),
            instance: Some(node_name.to_string()),
        },
    );
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node_name.to_string()),
        ..Default::default()
    };
    Arc::new(move |reason: &'static str, note: String| {
        let recorder = recorder.clone();
        let reference = reference.clone();
        tokio::spawn(async move {
            let ev = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "SyncProxyRules".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "could not publish event");
            }
        });
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting, rules stay in place"),
        _ = int.recv() => tracing::info!("SIGINT: exiting, rules stay in place"),
    }
}

async fn kube_client(s: &Settings) -> Result<kube::Client> {
    let mut config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and no in-cluster config found")?,
    };
    if let Some(m) = &s.master {
        config.cluster_url = m
            .parse()
            .with_context(|| format!("invalid --master {m:?}"))?;
    }
    kube::Client::try_from(config).context("building the API client")
}
