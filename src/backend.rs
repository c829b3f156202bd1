//! The seam between the sync loop and a kernel backend: one backend per
//! process, chosen by `--proxy-mode` in [`crate::run`] (adding a backend is
//! one folder and one match arm there). The loop is generic over it.

use crate::cli::Settings;
use crate::model::{ServicePort, ServicePortKey};
use crate::node::Sysctl;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// Desired state by service port key.
pub type Ports = BTreeMap<ServicePortKey, ServicePort>;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub full: bool,
    /// Kernel calls made (e.g. restore payloads).
    pub calls: usize,
    /// Lines written (iptables) or objects changed.
    pub lines: usize,
    pub written: usize,
    pub deleted: usize,
    /// Rules (or objects) the backend owns per table, after the sync.
    pub table_rules: Vec<(String, usize)>,
}

/// What kind of failure a sync hit (metrics count some kinds apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Writing iptables rules failed (upstream's
    /// `kubeproxy_sync_proxy_rules_iptables_restore_failures_total`).
    IptablesRestore,
    /// Anything else.
    Other,
}

/// A failed sync: the kernel keeps what it held; the next sync is full.
#[derive(Debug)]
pub struct SyncError {
    pub kind: FailureKind,
    pub error: anyhow::Error,
}

impl SyncError {
    pub fn restore(error: anyhow::Error) -> Self {
        SyncError {
            kind: FailureKind::IptablesRestore,
            error,
        }
    }
}

impl From<anyhow::Error> for SyncError {
    fn from(error: anyhow::Error) -> Self {
        SyncError {
            kind: FailureKind::Other,
            error,
        }
    }
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Work that runs off the sync loop, on its own thread (it only reads the
/// kernel).
pub type Job<T> = Box<dyn FnOnce() -> anyhow::Result<T> + Send>;

pub trait Backend: Send + Sized + 'static {
    /// `--proxy-mode` value, also the `/proxyMode` answer and metric label.
    const MODE: &'static str;

    /// What a background scan of the kernel finds (see [`Backend::scan_job`]).
    type Scan: Send + 'static;

    /// The backend for these settings (it may probe the node's tools; it
    /// writes nothing).
    fn new(s: &Settings) -> anyhow::Result<Self>;

    /// Brings the kernel to `ports`. `changed` names the service ports that may
    /// differ since the last successful call; `full` rewrites everything.
    /// After an error the next call must be `full`.
    fn sync(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats, SyncError>;

    /// A check, run off the sync loop every `--sync-period`, that the kernel
    /// still holds what we wrote (jumps, base chains). It writes no rules
    /// (only the sync loop does); it answers `Ok(false)` when a full sync is
    /// needed to put things back.
    fn verify_job(&self) -> Option<Job<bool>>;

    /// A read-only kernel scan to run off the sync loop after the first sync.
    fn scan_job(&self) -> Option<Job<Self::Scan>>;

    /// Takes a scan's result; true when the next sync has cleanup to do.
    fn apply_scan(&mut self, found: Self::Scan) -> bool;

    /// The node's primary IPs changed (from its Node object). True when the
    /// rules depend on them, so the next sync must be full.
    fn set_primary_ips(&mut self, ips: &[IpAddr]) -> bool;

    /// Removes everything this proxy owns from the kernel.
    fn cleanup(&mut self) -> anyhow::Result<()>;

    /// After a successful sync: run another (incremental) sync after this
    /// delay even if nothing changes (e.g. real servers still draining).
    fn follow_up(&self) -> Option<Duration> {
        None
    }

    /// The sysctls this mode needs on the node (written by `--init-only`).
    fn node_sysctls(s: &Settings) -> Vec<Sysctl>;

    /// Best-effort node setup when the proxy starts (and before `--init-only`
    /// writes [`Backend::node_sysctls`]): e.g. make the kernel load the
    /// modules that create them. Failures are logged, not returned.
    fn prepare_node(_s: &Settings) {}

    /// The node addresses `render` passes to [`Backend::render`].
    fn render_addresses(s: &Settings) -> Vec<IpAddr>;

    /// What a first full sync of `ports` writes, as `render` prints it
    /// (pure: touches nothing).
    fn render(s: &Settings, ports: &[ServicePort], local_ips: &[IpAddr]) -> String;
}
