//! The sync loop: takes source updates, keeps the model current, and asks the
//! backend to apply what changed, coalescing bursts (`--min-sync-period`),
//! re-checking the kernel every `--sync-period`, retrying failures with backoff.

pub mod conntrack;
pub mod model;

use crate::backend::{Backend, ScanResult, SyncStats};
use crate::hcnode::{self, HcServers};
use crate::http::Shared;
use crate::metrics::{PolicyLabel, TableLabel};
use crate::model::{categorize, NodeContext, ServicePortKey};
use crate::source::{Kind, SourceMsg, Store, Update};
use model::{ModelCache, PortChange};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Annotation with the time of the change that triggered an EndpointSlice update.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Publishes a Warning event about this node (reason, message).
pub type EventSink = Arc<dyn Fn(&'static str, String) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// Rewrite everything this often even if nothing seems changed.
    pub full_resync_period: Duration,
    /// Delete stale UDP conntrack entries after syncs.
    pub conntrack: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_resync_period: Duration::from_secs(3600),
            conntrack: true,
        }
    }
}

/// Big syncs and scans free large buffers; hand them back to the OS so RSS
/// reflects what is in use (glibc keeps freed heap otherwise).
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Backoff after `failures` consecutive failed syncs.
pub fn backoff(failures: u32, min_sync_period: Duration) -> Duration {
    let base = Duration::from_millis(500).max(min_sync_period);
    let exp = base.saturating_mul(1 << failures.min(6));
    exp.min(Duration::from_secs(30))
}

struct Loop {
    backend: Box<dyn Backend>,
    cfg: SyncConfig,
    store: Store,
    model: ModelCache,
    synced: HashSet<Kind>,
    pending: BTreeSet<ServicePortKey>,
    changes: Vec<PortChange>,
    need_full: bool,
    cleanup_pending: bool,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    not_before: Instant,
    failures: u32,
    scanned: bool,
    shared: Arc<Shared>,
    hc: HcServers,
    /// Trigger times of changes not yet in the kernel.
    triggers: Vec<SystemTime>,
    pending_services: usize,
    pending_endpoints: usize,
    events: Option<EventSink>,
    /// A sync the backend asked for (see `Backend::follow_up`).
    wake_at: Option<Instant>,
    /// Services changed by a listing still in progress.
    deferred: BTreeSet<crate::model::ServiceKey>,
}

impl Loop {
    fn ready(&self) -> bool {
        self.synced.contains(&Kind::Services) && self.synced.contains(&Kind::EndpointSlices)
    }

    fn has_work(&self) -> bool {
        self.ready()
            && (self.need_full
                || self.cleanup_pending
                || !self.pending.is_empty()
                || self.wake_at.is_some())
    }

    fn deadline(&self) -> Instant {
        let after_min = self
            .last_sync
            .map(|t| t + self.cfg.min_sync_period)
            .unwrap_or_else(Instant::now);
        let d = after_min.max(self.not_before);
        match self.wake_at {
            Some(w) if !self.need_full && !self.cleanup_pending && self.pending.is_empty() => {
                d.max(w)
            }
            _ => d,
        }
    }

    fn take(&mut self, msg: SourceMsg) {
        match msg {
            SourceMsg::Synced(k) => {
                self.synced.insert(k);
            }
            SourceMsg::Node(info) => {
                self.shared.health.set_node_eligible(info.eligible);
                if self.backend.set_primary_ips(&info.primary_ips) {
                    tracing::info!(ips = ?info.primary_ips, "node primary IPs changed; NodePorts follow them");
                    self.need_full = true;
                }
                if self.model.node.zone != info.zone {
                    tracing::info!(zone = ?info.zone, "node zone changed; recomputing topology-aware services");
                    self.model.node.zone = info.zone;
                    let all: BTreeSet<_> = self.store.service_keys().cloned().collect();
                    self.rebuild(&all);
                }
            }
            SourceMsg::Update(u) => {
                let is_slice = matches!(
                    u,
                    Update::Slice(_)
                        | Update::SliceDeleted(_)
                        | Update::ReplaceSlices(_)
                        | Update::ListBegin(Kind::EndpointSlices)
                        | Update::ListDone(Kind::EndpointSlices)
                );
                // Trigger times of slices that are listed (at start or after
                // a relist) are not changes this proxy waited for.
                let trigger = match &u {
                    Update::Slice(s) if !self.store.listing_kind(Kind::EndpointSlices) => s
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
                    _ => None,
                };
                let dirty = self.store.apply(u);
                tracing::debug!(slice = is_slice, services = dirty.len(), "update received");
                if !dirty.is_empty() {
                    self.triggers.extend(trigger);
                    let m = &self.shared.metrics;
                    if is_slice {
                        m.endpoint_changes.inc_by(dirty.len() as u64);
                        self.pending_endpoints += dirty.len();
                    } else {
                        m.service_changes.inc_by(dirty.len() as u64);
                        self.pending_services += dirty.len();
                    }
                    m.endpoint_changes_pending
                        .set(self.pending_endpoints as i64);
                    m.service_changes_pending.set(self.pending_services as i64);
                }
                // While a listing streams in, the Services it changes are
                // rebuilt once at its end: the model (and so every sync,
                // periodic ones included) keeps the last consistent state
                // instead of a mix of old and new objects, and a Service with
                // many slices is not rebuilt once per slice.
                self.deferred.extend(dirty);
                if self.store.listing() || self.deferred.is_empty() {
                    return;
                }
                let dirty = std::mem::take(&mut self.deferred);
                self.rebuild(&dirty);
            }
        }
    }

    fn rebuild(&mut self, dirty: &BTreeSet<crate::model::ServiceKey>) {
        {
            {
                let r = self.model.rebuild(&self.store, dirty);
                for e in &r.errors {
                    tracing::error!("{e}");
                }
                for w in &r.warnings {
                    tracing::warn!("{w}");
                }
                if !r.changed.is_empty() {
                    let now = SystemTime::now();
                    self.shared.health.queued(now);
                    self.shared.metrics.last_queued_timestamp.set(unix(now));
                }
                self.pending.extend(r.changed);
                if self.cfg.conntrack {
                    self.changes.extend(r.changes);
                }
            }
        }
    }

    /// Metrics, health and health-check servers after a successful sync.
    fn after_success(&mut self, stats: &SyncStats, took: Duration) {
        let now = SystemTime::now();
        self.shared.health.updated(now);
        let m = &self.shared.metrics;
        m.sync_duration.observe(took.as_secs_f64());
        if stats.full {
            m.full_sync_duration.observe(took.as_secs_f64());
        } else {
            m.partial_sync_duration.observe(took.as_secs_f64());
        }
        m.last_sync_timestamp.set(unix(now));
        for (table, n) in &stats.table_rules {
            m.rules
                .get_or_create(&TableLabel {
                    table: table.clone(),
                })
                .set(*n as i64);
        }
        for t in self.triggers.drain(..) {
            if let Ok(d) = now.duration_since(t) {
                m.network_programming.observe(d.as_secs_f64());
            }
        }
        self.pending_services = 0;
        self.pending_endpoints = 0;
        m.endpoint_changes_pending.set(0);
        m.service_changes_pending.set(0);
        let ports = &self.model.ports;
        m.service_ports.set(ports.len() as i64);
        m.endpoints
            .get_or_create(&crate::metrics::BackendLabel {
                backend: self.backend.name().to_string(),
            })
            .set(ports.values().map(|p| p.endpoints.len() as i64).sum());
        let (mut internal, mut external) = (0, 0);
        // Only Local-policy ports can lack local endpoints: skip the rest cheaply.
        for sp in ports
            .values()
            .filter(|sp| sp.internal_policy_local || sp.external_local())
        {
            let c = categorize(sp);
            if c.has_any && c.local.is_empty() {
                internal += i64::from(sp.internal_policy_local);
                external += i64::from(sp.external_local());
            }
        }
        m.no_local_endpoints
            .get_or_create(&PolicyLabel {
                traffic_policy: "internal".into(),
            })
            .set(internal);
        m.no_local_endpoints
            .get_or_create(&PolicyLabel {
                traffic_policy: "external".into(),
            })
            .set(external);
        self.hc.apply(hcnode::desired(ports));
    }

    fn sync(&mut self) {
        let started = Instant::now();
        let full = self.need_full;
        self.wake_at = None;
        let result = tokio::task::block_in_place(|| {
            self.backend.sync(&self.model.ports, &self.pending, full)
        });
        self.last_sync = Some(Instant::now());
        match result {
            Ok(stats) => {
                if self.failures > 0 {
                    tracing::info!(failures = self.failures, "sync recovered");
                }
                self.failures = 0;
                tracing::info!(
                    backend = self.backend.name(),
                    full,
                    changed = self.pending.len(),
                    service_ports = self.model.ports.len(),
                    calls = stats.calls,
                    lines = stats.lines,
                    chains_written = stats.written,
                    chains_deleted = stats.deleted,
                    ms = started.elapsed().as_millis() as u64,
                    "synced"
                );
                self.after_success(&stats, started.elapsed());
                self.wake_at = self.backend.follow_up().map(|d| Instant::now() + d);
                self.pending.clear();
                self.need_full = false;
                self.cleanup_pending = false;
                if full {
                    self.last_full = self.last_sync;
                    release_freed_memory();
                }
                let flushes: Vec<_> = self
                    .changes
                    .drain(..)
                    .flat_map(|c| conntrack::flushes(&c))
                    .collect();
                if !flushes.is_empty() {
                    tokio::task::block_in_place(|| conntrack::run(&flushes));
                }
            }
            Err(e) => {
                self.failures += 1;
                self.shared.metrics.sync_failures.inc();
                if self.backend.name() == "iptables" {
                    self.shared.metrics.restore_failures.inc();
                }
                let wait = backoff(self.failures, self.cfg.min_sync_period);
                if self.failures == 1 {
                    if let Some(ev) = &self.events {
                        ev("SyncProxyRulesFailed", format!("kube-proxy-rs: {e:#}"));
                    }
                    tracing::error!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "sync failed; rules in the kernel are left as they were; retrying with a full sync");
                } else {
                    tracing::debug!(error = %format!("{e:#}"), failures = self.failures, "sync failed again");
                }
                self.need_full = true;
                self.not_before = Instant::now() + wait;
            }
        }
    }
}

/// Runs until `shutdown` resolves or the sources hang up.
pub async fn run(
    backend: Box<dyn Backend>,
    mut rx: mpsc::Receiver<SourceMsg>,
    node: NodeContext,
    cfg: SyncConfig,
    shared: Arc<Shared>,
    events: Option<EventSink>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut lp = Loop {
        backend,
        store: Store::default(),
        model: ModelCache::new(node),
        synced: HashSet::new(),
        pending: BTreeSet::new(),
        changes: Vec::new(),
        deferred: BTreeSet::new(),
        need_full: true,
        cleanup_pending: false,
        last_sync: None,
        last_full: None,
        not_before: Instant::now(),
        failures: 0,
        scanned: false,
        hc: HcServers::new(shared.clone()),
        shared,
        triggers: Vec::new(),
        pending_services: 0,
        pending_endpoints: 0,
        events,
        cfg,
        wake_at: None,
    };
    let mut tick = tokio::time::interval(lp.cfg.sync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut scan_rx: Option<oneshot::Receiver<anyhow::Result<ScanResult>>> = None;
    let mut verify_rx: Option<oneshot::Receiver<anyhow::Result<bool>>> = None;
    tokio::pin!(shutdown);
    loop {
        let deadline = tokio::time::Instant::from_std(lp.deadline());
        let work = lp.has_work();
        tokio::select! {
            _ = &mut shutdown => break,
            msg = rx.recv() => match msg {
                Some(m) => lp.take(m),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline), if work => {
                // Drain whatever else is already queued, then sync once.
                while let Ok(m) = rx.try_recv() {
                    lp.take(m);
                }
                lp.sync();
                if lp.failures == 0 && !lp.scanned {
                    lp.scanned = true;
                    if let Some(job) = lp.backend.scan_job() {
                        let (tx, r) = oneshot::channel();
                        std::thread::spawn(move || { let _ = tx.send(job()); });
                        scan_rx = Some(r);
                    }
                }
            }
            res = async { scan_rx.as_mut().unwrap().await }, if scan_rx.is_some() => {
                scan_rx = None;
                match res {
                    Ok(Ok(result)) => {
                        let stale = lp.backend.apply_scan(result);
                        release_freed_memory();
                        if stale {
                            tracing::info!("found rules left by an earlier run that no service owns; removing them");
                            lp.cleanup_pending = true;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "scan for stale rules failed"),
                    Err(_) => {}
                }
            }
            res = async { verify_rx.as_mut().unwrap().await }, if verify_rx.is_some() => {
                verify_rx = None;
                match res {
                    Ok(Ok(true)) | Err(_) => {}
                    Ok(Ok(false)) => lp.need_full = true,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "checking the kernel state failed");
                        lp.need_full = true;
                    }
                }
            }
            _ = tick.tick() => {
                if lp.ready() && lp.last_sync.is_some() && verify_rx.is_none() {
                    if let Some(job) = lp.backend.verify_job() {
                        let (tx, r) = oneshot::channel();
                        std::thread::spawn(move || { let _ = tx.send(job()); });
                        verify_rx = Some(r);
                    }
                }
                if lp.last_full.is_some_and(|t| t.elapsed() >= lp.cfg.full_resync_period) {
                    lp.need_full = true;
                }
            }
        }
    }
    tracing::info!("sync loop stopped; rules stay in place");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let m = Duration::from_secs(1);
        assert_eq!(backoff(1, m), Duration::from_secs(2));
        assert_eq!(backoff(2, m), Duration::from_secs(4));
        assert_eq!(backoff(20, m), Duration::from_secs(30));
        assert_eq!(backoff(1, Duration::ZERO), Duration::from_secs(1));
    }
}
