//! The seam between the sync loop and a kernel backend (iptables, ipvs, later nftables).

use crate::model::{ServicePort, ServicePortKey};
use anyhow::Result;
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

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

/// Output of a background scan of the kernel (e.g. chains left by an earlier run).
pub type ScanResult = Box<dyn Any + Send>;
/// A scan that can run off the sync loop (it only reads the kernel).
pub type ScanJob = Box<dyn FnOnce() -> Result<ScanResult> + Send>;
/// A kernel check that can run off the sync loop.
pub type VerifyJob = Box<dyn FnOnce() -> Result<bool> + Send>;

pub trait Backend: Send {
    fn name(&self) -> &'static str;

    /// Brings the kernel to `ports`. `changed` names the service ports that may
    /// differ since the last successful call; `full` rewrites everything.
    /// After an error the next call must be `full`.
    fn sync(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats>;

    /// A check, run off the sync loop every `--sync-period`, that the kernel
    /// still holds what we wrote (jumps, base chains). It writes no rules
    /// (only the sync loop does); it answers `Ok(false)` when a full sync is
    /// needed to put things back.
    fn verify_job(&self) -> Option<VerifyJob>;

    /// A read-only kernel scan to run off the sync loop after the first sync.
    fn scan_job(&self) -> Option<ScanJob>;

    /// Takes a scan's result; true when the next sync has cleanup to do.
    fn apply_scan(&mut self, result: ScanResult) -> bool;

    /// The node's primary IPs changed (from its Node object). True when the
    /// rules depend on them, so the next sync must be full.
    fn set_primary_ips(&mut self, ips: &[std::net::IpAddr]) -> bool;

    /// Removes everything this proxy owns from the kernel.
    fn cleanup(&mut self) -> Result<()>;

    /// After a successful sync: run another (incremental) sync after this
    /// delay even if nothing changes (e.g. real servers still draining).
    fn follow_up(&self) -> Option<std::time::Duration> {
        None
    }
}
