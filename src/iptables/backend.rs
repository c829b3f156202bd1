//! The iptables backend: per-family engines + the applier.

use super::apply::{declared_chain, declared_chains_in, Kernel};
use super::names::{self, is_service_chain, ChainName};
use super::payload::PayloadSize;
use super::render::{jumps, RenderConfig, Table};
use super::state::Engine;
use crate::backend::{Backend, Ports, ScanJob, ScanResult, SyncStats, VerifyJob};
use crate::model::{Family, ServicePortKey};
use anyhow::Result;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Lines per restore payload with iptables-nft at 10,000 service ports; the
/// size grows with the square root of the model (see [`nft_payload_lines`]).
/// Each call costs time quadratic in its own size, and also fetches the
/// table's chain list, which grows with the table: small payloads pay that
/// fetch too often in a large table, big ones pay the quadratic term.
/// Measured first full sync, via the API server on the project machine:
/// 10,000 x 5 endpoints (220k lines): 1200 lines per call 4.1 s, 2500
/// 4.0 s, 3500 4.1 s, 5000 4.0 s (flat); 30,000 x 5 (660k lines): 1200 31.2 s,
/// 2100 24.8 s, 3000 21.6 s, 5000 20.3 s, 8000 20.3 s.
pub const NFT_PAYLOAD_LINES: usize = 2500;

/// Payload lines with iptables-nft for a model of `service_ports` (both
/// families together: a dual-stack model gets ~1.4x the size per family).
pub fn nft_payload_lines(service_ports: usize) -> usize {
    let scale = (service_ports as f64 / 10_000.0).sqrt();
    ((NFT_PAYLOAD_LINES as f64 * scale) as usize).clamp(1200, 8000)
}

/// Builds a fresh kernel handle for background scans.
pub type KernelFactory = Arc<dyn Fn() -> Box<dyn Kernel> + Send + Sync>;

pub struct IptablesBackend {
    kernel: Arc<Mutex<Box<dyn Kernel>>>,
    factory: KernelFactory,
    engines: Vec<Engine>,
    /// `--nodeport-addresses primary`: NodePorts follow the Node's primary IPs.
    pub nodeport_primary: bool,
    /// Rule counts per chain as written, for the periodic check.
    written: super::written::Shared,
}

impl IptablesBackend {
    /// `configs`: one render config per family to program (families whose
    /// tools do not work on this host are dropped with a warning).
    /// `max_lines` overrides the payload size (default: one payload with
    /// legacy iptables, [`nft_payload_lines`] with iptables-nft).
    pub fn new(
        factory: KernelFactory,
        configs: Vec<RenderConfig>,
        max_lines: Option<usize>,
    ) -> Self {
        let mut kernel = factory();
        let legacy = kernel.is_legacy();
        let size = match max_lines {
            Some(n) => PayloadSize::Fixed(n),
            None if legacy => PayloadSize::Fixed(usize::MAX),
            None => PayloadSize::Scaled(nft_payload_lines),
        };
        tracing::info!(legacy, payload_lines = ?size, "iptables backend");
        let mut engines = Vec::new();
        for cfg in configs {
            if kernel.available(cfg.family) {
                engines.push(Engine::with_payload_size(cfg, size));
            } else {
                tracing::warn!(family = ?cfg.family, "iptables tools for this family do not work here; family not programmed");
            }
        }
        IptablesBackend {
            kernel: Arc::new(Mutex::new(kernel)),
            factory,
            engines,
            nodeport_primary: false,
            written: Default::default(),
        }
    }

    pub fn families(&self) -> Vec<Family> {
        self.engines.iter().map(|e| e.cfg.family).collect()
    }
}

impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn sync(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats> {
        let mut stats = SyncStats {
            full,
            ..Default::default()
        };
        let mut kernel = self.kernel.lock().unwrap();
        for engine in &mut self.engines {
            let family = engine.cfg.family;
            let mut missing = Vec::new();
            if full {
                // Checked before the payloads, while a cold node's tables
                // are still small; the missing ones go in with the chains.
                for j in jumps() {
                    if !kernel.has_jump(family, &j)? {
                        missing.push(j);
                    }
                }
                engine.queue_jumps(missing.clone());
            }
            let mut feed = super::feed::Feed::new(&mut **kernel, family, &self.written, &mut stats);
            engine.plan_each(ports, changed, full, &mut feed);
            if let Some(e) = feed.failure {
                // The chains written before are still in place: traffic
                // reaches them again through the jumps, one -I each, while
                // the sync retries (a jump whose chain is gone fails here
                // and waits for a sync that succeeds).
                for j in &missing {
                    if let Err(je) = kernel.ensure_jump(family, j) {
                        tracing::debug!(error = %format!("{je:#}"), from = j.from, "jump not put back yet");
                    }
                }
                return Err(e);
            }
        }
        let mut totals: std::collections::BTreeMap<&str, usize> = Default::default();
        for engine in &self.engines {
            for (t, n) in engine.rule_counts() {
                *totals.entry(t.name()).or_default() += n;
            }
        }
        stats.table_rules = totals
            .into_iter()
            .map(|(t, n)| (t.to_string(), n))
            .collect();
        Ok(stats)
    }

    fn verify_job(&self) -> Option<VerifyJob> {
        let factory = self.factory.clone();
        let families = self.families();
        let written = self.written.clone();
        Some(Box::new(move || {
            let mut kernel = factory();
            let mut intact = true;
            // Chains flushed or deleted by hand: compare rule counts.
            for &family in &families {
                for table in [Table::Nat, Table::Filter] {
                    let since = written.lock().unwrap().generation();
                    let mut counter = super::written::RuleCounter::new(table);
                    kernel.save_each(family, table, &mut |l| counter.feed(l))?;
                    let Some(counts) = counter.finish() else {
                        tracing::debug!(
                            ?family,
                            table = table.name(),
                            "iptables-save output unreadable; chain check skipped"
                        );
                        continue;
                    };
                    let damaged = written
                        .lock()
                        .unwrap()
                        .damaged(since, family, table, &counts);
                    if !damaged.is_empty() {
                        tracing::warn!(
                            ?family,
                            table = table.name(),
                            changed = damaged.changed.len(),
                            missing = damaged.missing,
                            first_changed =
                                damaged.changed.first().map(String::as_str).unwrap_or("-"),
                            "kube-proxy chains were changed or deleted by hand; rewriting"
                        );
                        intact = false;
                    }
                }
            }
            for family in families {
                intact &= super::apply::jumps_intact(kernel.as_mut(), family, &jumps())?;
            }
            Ok(intact)
        }))
    }

    fn scan_job(&self) -> Option<ScanJob> {
        let factory = self.factory.clone();
        let families = self.families();
        Some(Box::new(move || {
            let mut kernel = factory();
            // nat service chains, by compact name (60,000 at 10,000 Services).
            let mut found: Vec<(Family, ChainName)> = Vec::new();
            for family in families {
                kernel.save_each(family, Table::Nat, &mut |l| {
                    if let Some(c) = declared_chain(l).filter(|c| is_service_chain(c)) {
                        found.push((family, ChainName::new(c)));
                    }
                })?;
            }
            Ok(Box::new(found) as ScanResult)
        }))
    }

    fn apply_scan(&mut self, result: ScanResult) -> bool {
        let Ok(found) = result.downcast::<Vec<(Family, ChainName)>>() else {
            return false;
        };
        let mut any = false;
        for engine in &mut self.engines {
            let fam = engine.cfg.family;
            engine.note_existing(
                found
                    .iter()
                    .filter(|(f, _)| *f == fam)
                    .map(|(_, name)| (Table::Nat, name.unpack())),
            );
            any |= engine.has_stale();
        }
        any
    }

    fn set_primary_ips(&mut self, ips: &[std::net::IpAddr]) -> bool {
        if !self.nodeport_primary {
            return false;
        }
        let mut changed = false;
        for engine in &mut self.engines {
            let fam = engine.cfg.family;
            let mine: Vec<std::net::IpAddr> = ips
                .iter()
                .filter(|ip| Family::of(ip) == fam)
                .cloned()
                .collect();
            let nets: Vec<ipnet::IpNet> = mine.iter().map(|ip| ipnet::IpNet::from(*ip)).collect();
            if engine.cfg.nodeport_addresses != nets {
                for ip in &mine {
                    if !engine.cfg.node_ips.contains(ip) {
                        engine.cfg.node_ips.push(*ip);
                    }
                }
                engine.cfg.nodeport_addresses = nets;
                changed = true;
            }
        }
        changed
    }

    fn cleanup(&mut self) -> Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        for engine in &self.engines {
            cleanup_family(kernel.as_mut(), engine.cfg.family)?;
        }
        Ok(())
    }
}

/// Chains this proxy owns outright (never kubelet's KUBE-KUBELET-CANARY etc.).
pub fn owned_chain(name: &str) -> bool {
    is_service_chain(name)
        || [
            names::KUBE_SERVICES,
            names::KUBE_EXTERNAL_SERVICES,
            names::KUBE_NODEPORTS,
            names::KUBE_POSTROUTING,
            names::KUBE_MARK_MASQ,
            names::KUBE_FORWARD,
            names::KUBE_PROXY_FIREWALL,
            names::KUBE_FIREWALL,
            names::KUBE_PROXY_CANARY,
        ]
        .contains(&name)
}

/// Removes the jumps, then flushes and deletes every owned chain of one family.
pub fn cleanup_family(kernel: &mut dyn Kernel, family: Family) -> Result<()> {
    for j in jumps() {
        kernel.delete_jump(family, &j)?;
    }
    delete_chains(kernel, family, |_, c| owned_chain(c))
}

/// Flushes and deletes, in one restore, every chain of `family` that `ours`
/// claims (by table and name) and the kernel has.
pub fn delete_chains(
    kernel: &mut dyn Kernel,
    family: Family,
    ours: impl Fn(Table, &str) -> bool,
) -> Result<()> {
    let mut payload = String::new();
    for table in [Table::Filter, Table::Nat] {
        let chains = declared_chains_in(kernel, family, table, |c| ours(table, c))?;
        if chains.is_empty() {
            continue;
        }
        payload.push_str(&format!("*{}\n", table.name()));
        for c in &chains {
            payload.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            payload.push_str(&format!("-X {c}\n"));
        }
        payload.push_str("COMMIT\n");
    }
    if !payload.is_empty() {
        kernel.restore(family, &payload)?;
    }
    Ok(())
}
