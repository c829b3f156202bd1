//! The sync loop: takes source updates, keeps the model current, and asks the
//! backend to apply what changed. When to sync is [`schedule`]'s (pure), what
//! to tell the outside is [`report`]'s; the loop is the wiring between them,
//! the sources, the backend and the background checks.

pub mod model;
pub mod report;
pub mod schedule;

use crate::backend::{Backend, Job};
use crate::conntrack::{cleanup as conntrack, reconcile::Targets, worker};
use crate::http::Shared;
use crate::model::NodeContext;
use crate::source::{Kind, SourceMsg, Store, Update};
use model::{ModelCache, PortChange};
use report::Reporter;
pub use report::{EventObject, EventSink};
use schedule::Schedule;
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as Clock;

/// Annotation with the time of the change that triggered an EndpointSlice update.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// Rewrite everything this often even if nothing seems changed.
    pub full_resync_period: Duration,
    /// Delete stale UDP conntrack entries after syncs.
    pub conntrack: bool,
    /// Reads this node's own addresses (at start and every `sync_period`):
    /// an externalIP on one of them is not programmed unless
    /// `allow_node_ip_external_ips`. None: only the Node object's addresses.
    pub node_addresses: Option<fn() -> Vec<IpAddr>>,
    /// `--allow-node-ip-external-ips`.
    pub allow_node_ip_external_ips: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_resync_period: Duration::from_secs(3600),
            conntrack: true,
            node_addresses: None,
            allow_node_ip_external_ips: false,
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

/// Runs `f`, which blocks (kernel calls), without stalling the runtime's
/// other tasks where the runtime allows it (a multi-threaded one).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs a job on its own thread; its result arrives on the receiver.
fn spawn_job<T: Send + 'static>(job: Job<T>) -> oneshot::Receiver<anyhow::Result<T>> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job());
    });
    rx
}

struct Loop<B: Backend> {
    backend: B,
    cfg: SyncConfig,
    store: Store,
    model: ModelCache,
    synced: HashSet<Kind>,
    schedule: Schedule,
    /// UDP service ports changed since the last sync (conntrack cleanup).
    changes: Vec<PortChange>,
    /// Deletes stale UDP conntrack entries off the loop (`cfg.conntrack`).
    cleaner: Option<worker::Cleaner>,
    /// Whether the startup reconcile of conntrack entries was handed over.
    reconciled: bool,
    /// Whether the leftover scan has been started.
    scanned: bool,
    report: Reporter,
    /// Services changed by a listing still in progress.
    deferred: BTreeSet<crate::model::ServiceKey>,
    /// This node's addresses: on its interfaces, and in its Node object.
    interface_ips: BTreeSet<IpAddr>,
    node_object_ips: BTreeSet<IpAddr>,
}

impl<B: Backend> Loop<B> {
    fn take(&mut self, msg: SourceMsg) {
        match msg {
            SourceMsg::Synced(k) => {
                self.synced.insert(k);
                if self.synced.contains(&Kind::Services)
                    && self.synced.contains(&Kind::EndpointSlices)
                {
                    self.schedule.set_ready();
                }
            }
            SourceMsg::Node(info) => {
                self.report.shared().health.set_node_eligible(info.eligible);
                let ips: BTreeSet<IpAddr> = info.addresses.iter().copied().collect();
                if ips != self.node_object_ips {
                    self.node_object_ips = ips;
                    self.node_addresses_changed();
                }
                if self.backend.set_primary_ips(&info.primary_ips) {
                    tracing::info!(ips = ?info.primary_ips, "node primary IPs changed; NodePorts follow them");
                    self.schedule.request_full();
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
                    self.report.changes_received(is_slice, dirty.len(), trigger);
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

    /// Re-reads this node's interface addresses (when a reader is set).
    fn read_interface_addresses(&mut self) {
        let Some(read) = self.cfg.node_addresses else {
            return;
        };
        let ips: BTreeSet<IpAddr> = blocking(read).into_iter().collect();
        if ips != self.interface_ips {
            self.interface_ips = ips;
            self.node_addresses_changed();
        }
    }

    fn node_addresses_changed(&mut self) {
        let all = self
            .interface_ips
            .union(&self.node_object_ips)
            .copied()
            .collect();
        let r = self.model.set_node_addresses(all);
        tracing::debug!(addresses = ?self.model.node_addresses(), "node addresses");
        self.take_rebuild(r);
    }

    fn rebuild(&mut self, dirty: &BTreeSet<crate::model::ServiceKey>) {
        let r = self.model.rebuild(&self.store, dirty);
        self.take_rebuild(r);
    }

    fn take_rebuild(&mut self, r: model::Rebuild) {
        for e in &r.errors {
            tracing::error!("{e}; skipped (previous rules, if any, kept)");
        }
        for w in &r.warnings {
            tracing::warn!("{w}");
        }
        self.report.vip_conflicts(
            &self.model.node.node_name,
            &r.conflicts,
            &r.resolved,
            self.model.refused_counts(),
        );
        if !r.changed.is_empty() {
            self.report.queued();
        }
        self.schedule.changed(r.changed);
        if self.cfg.conntrack {
            self.changes.extend(r.changes);
        }
    }

    fn sync(&mut self) {
        let started = Instant::now();
        let due = self.schedule.due();
        let result = blocking(|| self.backend.sync(&self.model.ports, &due.changed, due.full));
        match result {
            Ok(stats) => {
                if self.schedule.failures() > 0 {
                    tracing::info!(failures = self.schedule.failures(), "sync recovered");
                }
                tracing::info!(
                    backend = B::MODE,
                    full = due.full,
                    changed = due.changed.len(),
                    service_ports = self.model.ports.len(),
                    calls = stats.calls,
                    lines = stats.lines,
                    chains_written = stats.written,
                    chains_deleted = stats.deleted,
                    ms = started.elapsed().as_millis() as u64,
                    "synced"
                );
                self.report
                    .synced(&stats, started.elapsed(), &self.model.ports);
                self.schedule
                    .succeeded(Clock::now(), &due, self.backend.follow_up());
                if due.full {
                    release_freed_memory();
                }
                self.hand_over_conntrack();
            }
            Err(e) => {
                let wait = self.schedule.failed(Clock::now());
                self.report.failed(&e, self.schedule.failures(), wait);
            }
        }
    }

    /// After a successful sync: the stale UDP conntrack entries its changes
    /// call for go to the cleaner, which deletes them off this loop. The
    /// first sync hands over the startup reconcile instead of its changes
    /// (every port is new then, and only entries to endpoints that are not
    /// current are stale: flows to current endpoints survive a restart).
    fn hand_over_conntrack(&mut self) {
        let Some(cleaner) = &self.cleaner else {
            self.changes.clear();
            return;
        };
        let mut work = worker::Work::default();
        if self.reconciled {
            work.flushes = self
                .changes
                .drain(..)
                .flat_map(|c| conntrack::flushes(&c))
                .collect();
        } else {
            self.reconciled = true;
            self.changes.clear();
            work.reconcile = Some(Targets::of(&self.model.ports));
        }
        cleaner.submit(work);
    }
}

/// Runs until `shutdown` resolves or the sources hang up.
pub async fn run<B: Backend>(
    backend: B,
    mut rx: mpsc::Receiver<SourceMsg>,
    node: NodeContext,
    cfg: SyncConfig,
    shared: Arc<Shared>,
    events: Option<EventSink>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut model = ModelCache::new(node);
    model.allow_node_ip_external_ips(cfg.allow_node_ip_external_ips);
    let mut lp = Loop {
        backend,
        store: Store::default(),
        model,
        synced: HashSet::new(),
        schedule: Schedule::new(Clock::now(), cfg.min_sync_period, cfg.full_resync_period),
        changes: Vec::new(),
        cleaner: cfg.conntrack.then(worker::Cleaner::spawn),
        reconciled: false,
        deferred: BTreeSet::new(),
        scanned: false,
        report: Reporter::new(shared, events, B::MODE),
        cfg,
        interface_ips: BTreeSet::new(),
        node_object_ips: BTreeSet::new(),
    };
    lp.read_interface_addresses();
    let mut tick = tokio::time::interval(lp.cfg.sync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut scan_rx: Option<oneshot::Receiver<anyhow::Result<B::Scan>>> = None;
    let mut verify_rx: Option<oneshot::Receiver<anyhow::Result<bool>>> = None;
    tokio::pin!(shutdown);
    loop {
        let next = lp.schedule.next_sync(Clock::now());
        tokio::select! {
            _ = &mut shutdown => break,
            msg = rx.recv() => match msg {
                Some(m) => lp.take(m),
                None => break,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Clock::now)), if next.is_some() => {
                // Drain whatever else is already queued, then sync once.
                while let Ok(m) = rx.try_recv() {
                    lp.take(m);
                }
                lp.sync();
                if lp.schedule.failures() == 0 && !lp.scanned {
                    lp.scanned = true;
                    scan_rx = lp.backend.scan_job().map(spawn_job);
                }
            }
            res = async { scan_rx.as_mut().unwrap().await }, if scan_rx.is_some() => {
                scan_rx = None;
                match res {
                    Ok(Ok(found)) => {
                        let stale = lp.backend.apply_scan(found);
                        release_freed_memory();
                        if stale {
                            tracing::info!("found rules left by an earlier run that no service owns; removing them");
                            lp.schedule.request_cleanup();
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
                    Ok(Ok(false)) => lp.schedule.request_full(),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "checking the kernel state failed");
                        lp.schedule.request_full();
                    }
                }
            }
            _ = tick.tick() => {
                lp.read_interface_addresses();
                if lp.schedule.ready() && lp.schedule.started() && verify_rx.is_none() {
                    verify_rx = lp.backend.verify_job().map(spawn_job);
                }
                lp.schedule.tick(Clock::now());
            }
        }
    }
    tracing::info!("sync loop stopped; rules stay in place");
}

#[cfg(test)]
mod tests;
