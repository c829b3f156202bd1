//! What the sync loop tells the outside: metrics, `/healthz` and `/livez`
//! state, the health-check node port servers, and Warning events on
//! failures and on refused VIP claims. The loop calls it; it decides nothing
//! about scheduling.

use crate::backend::{FailureKind, Ports, SyncError, SyncStats};
use crate::health::node_ports::{self, HcServers};
use crate::http::Shared;
use crate::metrics::{BackendLabel, PolicyLabel, ReasonLabel, TableLabel};
use crate::model::categorize;
use crate::model::ownership::{Conflict, Refusal, RefusedCounts};
use crate::model::{ServiceKey, ServicePortKey};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The object a Warning event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventObject {
    /// This node (sync failures).
    Node,
    /// A Service (e.g. one whose externalIP is not programmed). With its UID
    /// when known: `kubectl describe` lists the events matching it.
    Service {
        key: ServiceKey,
        uid: Option<String>,
    },
}

/// Publishes a Warning event (object, reason, message).
pub type EventSink = Arc<dyn Fn(EventObject, &'static str, String) + Send + Sync>;

/// Event reason of a refused externalIP/LoadBalancer IP claim.
pub const VIP_CONFLICT_REASON: &str = "VIPConflict";

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub struct Reporter {
    shared: Arc<Shared>,
    hc: HcServers,
    events: Option<EventSink>,
    /// `--proxy-mode`, the label of the endpoint count.
    mode: &'static str,
    /// Trigger times of changes not yet in the kernel.
    triggers: Vec<SystemTime>,
    pending_services: usize,
    pending_endpoints: usize,
}

impl Reporter {
    pub fn new(shared: Arc<Shared>, events: Option<EventSink>, mode: &'static str) -> Self {
        Reporter {
            hc: HcServers::new(shared.clone()),
            shared,
            events,
            mode,
            triggers: Vec::new(),
            pending_services: 0,
            pending_endpoints: 0,
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// `dirty` Services changed by one update (of slices or of Services),
    /// with the update's trigger time if it carries one.
    pub fn changes_received(&mut self, slices: bool, dirty: usize, trigger: Option<SystemTime>) {
        self.triggers.extend(trigger);
        let m = &self.shared.metrics;
        if slices {
            m.endpoint_changes.inc_by(dirty as u64);
            self.pending_endpoints += dirty;
        } else {
            m.service_changes.inc_by(dirty as u64);
            self.pending_services += dirty;
        }
        m.endpoint_changes_pending
            .set(self.pending_endpoints as i64);
        m.service_changes_pending.set(self.pending_services as i64);
    }

    /// The model changed: a sync is queued.
    pub fn queued(&self) {
        let now = SystemTime::now();
        self.shared.health.queued(now);
        self.shared.metrics.last_queued_timestamp.set(unix(now));
    }

    /// Metrics, health and health-check servers after a successful sync.
    pub fn synced(&mut self, stats: &SyncStats, took: Duration, ports: &Ports) {
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
        m.service_ports.set(ports.len() as i64);
        m.endpoints
            .get_or_create(&BackendLabel {
                backend: self.mode.to_string(),
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
        self.hc.apply(node_ports::desired(ports));
    }

    /// A failed sync (the `failures`-th in a row; the next try in `wait`).
    pub fn failed(&self, e: &SyncError, failures: u32, wait: Duration) {
        let m = &self.shared.metrics;
        m.sync_failures.inc();
        if e.kind == FailureKind::IptablesRestore {
            m.restore_failures.inc();
        }
        if failures == 1 {
            if let Some(ev) = &self.events {
                ev(
                    EventObject::Node,
                    "SyncProxyRulesFailed",
                    format!("kube-proxy-rs: {e}"),
                );
            }
            tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "sync failed; rules in the kernel are left as they were; retrying with a full sync");
        } else {
            tracing::debug!(error = %e, failures, "sync failed again");
        }
    }

    /// Claims newly refused (one warning line and one Warning event on the
    /// losing Service each), claims programmed again, and the gauge of
    /// refused claims.
    pub fn vip_conflicts(
        &self,
        node: &str,
        conflicts: &[Conflict],
        resolved: &[(ServicePortKey, Refusal)],
        counts: RefusedCounts,
    ) {
        for c in conflicts {
            let msg = c.message();
            tracing::warn!(reason = c.refusal.reason.label(), "{msg}");
            if let Some(ev) = &self.events {
                let key = ServiceKey {
                    namespace: c.loser.name.namespace.clone(),
                    name: c.loser.name.name.clone(),
                };
                ev(
                    EventObject::Service {
                        key,
                        uid: c.rank.uid.clone(),
                    },
                    VIP_CONFLICT_REASON,
                    format!("kube-proxy-rs on node {node}: {msg}"),
                );
            }
        }
        for (k, r) in resolved {
            tracing::info!(
                "Service {}/{}{}: {} {} is programmed now",
                k.name.namespace,
                k.name.name,
                if k.name.port.is_empty() {
                    String::new()
                } else {
                    format!(" (port {})", k.name.port)
                },
                r.kind,
                r.vip
            );
        }
        for (reason, n) in counts.by_label() {
            self.shared
                .metrics
                .vip_conflicts
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .set(n as i64);
        }
    }
}
