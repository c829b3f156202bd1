//! The imperative shell: wires settings, sources, backend and sync loop.

use crate::backend::Backend;
use crate::cli::{Flags, ProxyMode, RenderArgs, Settings};
use crate::health::Health;
use crate::http::{self, Shared};
use crate::iptables::IptablesBackend;
use crate::ipvs::IpvsBackend;
use crate::metrics::Metrics;
use crate::model::ownership::{Ownership, Rank};
use crate::model::{build_service, Built, NodeContext, ServicePort};
use crate::nftables::NftablesBackend;
use crate::node;
use crate::source::{self, SourceSpec};
use crate::sync::{self, EventObject, EventSink, SyncConfig};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Something to do with the backend of a mode (Rust closures cannot be
/// generic, so each use is a small type).
trait WithBackend {
    type Out;
    fn run<B: Backend>(self) -> Self::Out;
}

/// The one place a `--proxy-mode` picks its backend.
fn with_backend<W: WithBackend>(mode: ProxyMode, w: W) -> W::Out {
    match mode {
        ProxyMode::Iptables => w.run::<IptablesBackend>(),
        ProxyMode::Ipvs => w.run::<IpvsBackend>(),
        ProxyMode::Nftables => w.run::<NftablesBackend>(),
    }
}

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

fn node_context(s: &Settings) -> NodeContext {
    NodeContext {
        node_name: s.node_name.clone(),
        zone: None,
        service_proxy_name: s.service_proxy_name.clone(),
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
    let writes = crate::conntrack::limits::plan(&s.conntrack, cpus);
    crate::conntrack::limits::apply(&writes, &crate::conntrack::limits::Roots::default());
}

/// `--init-only`: the node setup that needs write access to /proc/sys (a
/// privileged init container), so the long-running container can run with
/// NET_ADMIN and NET_RAW only: it then finds every value already set.
pub fn init_only(flags: &Flags) -> Result<()> {
    struct InitOnly<'a>(&'a Settings);
    impl WithBackend for InitOnly<'_> {
        type Out = Result<()>;
        fn run<B: Backend>(self) -> Result<()> {
            B::prepare_node(self.0);
            for s in B::node_sysctls(self.0) {
                node::set_sysctl(&s.key.replace('/', "."), s.value)
                    .with_context(|| format!("setting {}={}", s.key, s.value))?;
                tracing::info!(sysctl = %s.key, value = %s.value, why = %s.why, "node setup");
            }
            Ok(())
        }
    }
    let s = flags.settings()?;
    init_logging(&s);
    with_backend(s.mode, InitOnly(&s))?;
    set_conntrack_limits(&s);
    tracing::info!("node setup done (--init-only)");
    Ok(())
}

/// `--cleanup`: remove everything this proxy (or upstream kube-proxy) owns.
pub fn cleanup(flags: &Flags) -> Result<()> {
    struct Cleanup<'a>(&'a Settings);
    impl WithBackend for Cleanup<'_> {
        type Out = Result<()>;
        fn run<B: Backend>(self) -> Result<()> {
            B::new(self.0)?.cleanup()
        }
    }
    let s = flags.settings()?;
    init_logging(&s);
    // Every mode's leftovers go, whatever the mode, as upstream's --cleanup
    // does (ipvs mode's cleanup also removes every iptables-mode jump and
    // chain: they reference each other).
    for mode in [ProxyMode::Ipvs, ProxyMode::Iptables, ProxyMode::Nftables] {
        with_backend(mode, Cleanup(&s))?;
    }
    tracing::info!("removed all kube-proxy rules, chains, virtual servers, ipsets and kube-ipvs0");
    Ok(())
}

/// `render`: prints the payload for a dir: source and touches nothing.
pub fn render(args: &RenderArgs) -> Result<()> {
    struct Addresses<'a>(&'a Settings);
    impl WithBackend for Addresses<'_> {
        type Out = Vec<std::net::IpAddr>;
        fn run<B: Backend>(self) -> Self::Out {
            B::render_addresses(self.0)
        }
    }
    let mut s = args.flags.settings()?;
    if let Some(n) = &args.node {
        s.node_name = n.to_lowercase();
    }
    let SourceSpec::Dir(dir) = &s.source else {
        bail!("render needs --source dir:PATH");
    };
    let local_ips = with_backend(s.mode, Addresses(&s));
    let (text, problems) = render_text(&s, dir, &local_ips, &node::own_addresses());
    for p in problems {
        eprintln!("{p}");
    }
    print!("{text}");
    Ok(())
}

/// The service ports the objects in `dir` yield on a node with addresses
/// `node_ips` (externalIP and LoadBalancer IP claims decided as the daemon
/// decides them), and the problems found.
pub fn load_ports(
    s: &Settings,
    dir: &std::path::Path,
    node_ips: &[std::net::IpAddr],
) -> (Vec<ServicePort>, Vec<String>) {
    let (services, slices, errors) = source::dir::load_once(dir);
    let mut problems: Vec<String> = errors.into_iter().map(|e| format!("error: {e}")).collect();
    let ctx = node_context(s);
    let mut store = source::Store::default();
    store.apply(source::Update::ReplaceServices(services));
    store.apply(source::Update::ReplaceSlices(slices));
    let mut ports: Vec<(ServicePort, Rank)> = Vec::new();
    let keys: Vec<_> = store.service_keys().cloned().collect();
    for key in keys {
        let built = store.service(&key).expect("listed key").and_then(|svc| {
            let slices = store.slices_of(&key)?;
            let b = build_service(&svc, &crate::sync::model::refs(&slices), &ctx)?;
            Ok((b, Rank::of(&svc.metadata)))
        });
        match built {
            Ok((out, rank)) => {
                problems.extend(out.warnings.into_iter().map(|w| format!("warning: {w}")));
                if let Built::Ports(p) = out.built {
                    ports.extend(p.into_iter().map(|p| (p, rank.clone())));
                }
            }
            Err(e) => problems.push(format!("error: {e}; skipped")),
        }
    }
    let mut owners = Ownership::new(s.allow_node_ip_external_ips);
    owners.set_node_ips(node_ips.iter().copied().collect(), &mut Default::default());
    for c in owners.settle_all(&mut ports) {
        problems.push(format!("warning: {}", c.message()));
    }
    let mut ports: Vec<ServicePort> = ports.into_iter().map(|(p, _)| p).collect();
    ports.sort_by(|a, b| a.key.cmp(&b.key));
    (ports, problems)
}

/// What `render` prints for the objects in `dir`, and the problems found
/// (each naming its object). `local_ips` are the backend's node addresses
/// (NodePorts), `node_ips` the node's own addresses externalIPs may not
/// take. Pure apart from reading `dir`.
pub fn render_text(
    s: &Settings,
    dir: &std::path::Path,
    local_ips: &[std::net::IpAddr],
    node_ips: &[std::net::IpAddr],
) -> (String, Vec<String>) {
    struct Render<'a>(&'a Settings, &'a [ServicePort], &'a [std::net::IpAddr]);
    impl WithBackend for Render<'_> {
        type Out = String;
        fn run<B: Backend>(self) -> String {
            B::render(self.0, self.1, self.2)
        }
    }
    let (ports, problems) = load_ports(s, dir, node_ips);
    (with_backend(s.mode, Render(s, &ports, local_ips)), problems)
}

/// The daemon.
pub fn daemon(flags: &Flags) -> Result<()> {
    struct Daemon(Settings);
    impl WithBackend for Daemon {
        type Out = Result<()>;
        fn run<B: Backend>(self) -> Result<()> {
            serve::<B>(self.0)
        }
    }
    let s = flags.settings()?;
    init_logging(&s);
    with_backend(s.mode, Daemon(s))
}

fn serve<B: Backend>(s: Settings) -> Result<()> {
    tracing::info!(
        mode = B::MODE,
        node = %s.node_name,
        cluster_cidrs = ?s.cluster_cidrs,
        min_sync_period = ?s.min_sync_period,
        sync_period = ?s.sync_period,
        source = ?s.source,
        "starting kube-proxy-rs"
    );
    B::prepare_node(&s);
    set_conntrack_limits(&s);
    let backend = B::new(&s)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shared = Arc::new(Shared {
        health: Health::new(2 * s.sync_period),
        metrics: Metrics::new(),
        proxy_mode: B::MODE,
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
            node_addresses: Some(node::own_addresses),
            allow_node_ip_external_ips: s.allow_node_ip_external_ips,
            ..Default::default()
        };
        sync::run(backend, rx, node_context(&s), cfg, shared, events, shutdown_signal()).await;
        Ok::<(), anyhow::Error>(())
    })?;
    // Exit without waiting for watch tasks: rules stay as they are.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Posts Warning events about this node (e.g. sync failures) or about a
/// Service (e.g. a refused externalIP), off the sync loop.
fn event_sink(client: kube::Client, node_name: &str) -> EventSink {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "kube-proxy-rs".into(),
            instance: Some(node_name.to_string()),
        },
    );
    let node = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node_name.to_string()),
        ..Default::default()
    };
    Arc::new(
        move |about: EventObject, reason: &'static str, note: String| {
            let recorder = recorder.clone();
            let (reference, action) = match about {
                EventObject::Node => (node.clone(), "SyncProxyRules"),
                EventObject::Service { key, uid } => (
                    k8s_openapi::api::core::v1::ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Service".into()),
                        namespace: Some(key.namespace),
                        name: Some(key.name),
                        uid,
                        ..Default::default()
                    },
                    "ProgramVIP",
                ),
            };
            tokio::spawn(async move {
                let ev = Event {
                    type_: EventType::Warning,
                    reason: reason.into(),
                    note: Some(note.chars().take(1000).collect()),
                    action: action.into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::debug!(error = %e, "could not publish event");
                }
            });
        },
    )
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
