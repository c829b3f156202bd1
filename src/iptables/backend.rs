//! The iptables backend: per-family engines + the applier.

use super::names::{is_service_chain, ChainName};
use super::payload::PayloadSize;
use super::render::{RenderConfig, Table};
use super::state::{render_full, Engine};
use crate::backend::{Backend, Job, Ports, SyncError, SyncStats};
use crate::cli::Settings;
use crate::model::{Family, ServicePort, ServicePortKey};
use crate::node::{self, Sysctl};
use crate::xtables::chains::declared_chain;
use crate::xtables::nft::{nft_leftovers, remove_leftover_tables, system_nft, NftFactory};
use crate::xtables::{chains, jumps, Kernel, KernelFactory, Masquerade};
use anyhow::Result;
use std::collections::BTreeSet;
use std::net::IpAddr;
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

/// Render configs for the families to program on this node.
pub fn render_configs(s: &Settings, local_ips: &[IpAddr]) -> Vec<RenderConfig> {
    Masquerade::per_family(s)
        .into_iter()
        .map(|masq| {
            let family = masq.family;
            RenderConfig {
                masq,
                nodeport_addresses: s
                    .nodeport_addresses
                    .iter()
                    .filter(|n| Family::of_net(n) == family)
                    .cloned()
                    .collect(),
                node_ips: node::of_family(local_ips, family),
                localhost_nodeports: s.localhost_nodeports && family == Family::V4,
                ..RenderConfig::new(family)
            }
        })
        .collect()
}

/// `iptables.localhostNodePorts`: NodePorts answer on 127.0.0.1.
const ROUTE_LOCALNET: Sysctl = Sysctl {
    key: "net/ipv4/conf/all/route_localnet",
    value: "1",
    why: "NodePorts answer on 127.0.0.1",
};

pub struct IptablesBackend {
    kernel: Arc<Mutex<Box<dyn Kernel>>>,
    factory: KernelFactory,
    engines: Vec<Engine>,
    /// `--nodeport-addresses primary`: NodePorts follow the Node's primary IPs.
    pub nodeport_primary: bool,
    /// nft, to remove nftables mode's tables when taking a node over (None:
    /// not looked for).
    pub nft: Option<NftFactory>,
    /// nftables tables found by the scan, removed after the next sync.
    nft_leftovers: Vec<(Family, &'static str)>,
    /// Rule counts per chain as written, for the periodic check.
    written: super::rule_counts::Shared,
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
            if kernel.available(cfg.family()) {
                engines.push(Engine::with_payload_size(cfg, size));
            } else {
                tracing::warn!(family = ?cfg.family(), "iptables tools for this family do not work here; family not programmed");
            }
        }
        IptablesBackend {
            kernel: Arc::new(Mutex::new(kernel)),
            factory,
            engines,
            nodeport_primary: false,
            nft: None,
            nft_leftovers: vec![],
            written: Default::default(),
        }
    }

    pub fn families(&self) -> Vec<Family> {
        self.engines.iter().map(|e| e.cfg.family()).collect()
    }
}

impl IptablesBackend {
    fn sync_families(
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
            let family = engine.cfg.family();
            let mut missing = Vec::new();
            if full {
                // Checked before the payloads, while a cold node's tables
                // are still small; the missing ones go in with the chains.
                for j in jumps::iptables_mode() {
                    if !kernel.has_jump(family, &j)? {
                        missing.push(j);
                    }
                }
                engine.queue_jumps(missing.clone());
            }
            let mut feed = super::restore_stream::RestoreStream::new(
                &mut **kernel,
                family,
                &self.written,
                &mut stats,
            );
            engine.plan_each(ports, changed, full, &mut feed);
            if let Some(e) = feed.failure {
                // The chains written before are still in place: traffic
                // reaches them again through the jumps while the sync retries.
                jumps::put_back(&mut **kernel, family, &missing);
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
}

impl Backend for IptablesBackend {
    const MODE: &'static str = "iptables";
    /// nat service chains left by an earlier run, by compact name (60,000
    /// at 10,000 Services), and nftables mode's tables.
    type Scan = (Vec<(Family, ChainName)>, Vec<(Family, &'static str)>);

    fn new(s: &Settings) -> Result<Self> {
        let local_ips = node::local_addresses();
        let mut b = IptablesBackend::new(
            crate::xtables::kernel::system_factory(s.iptables_flavor),
            render_configs(s, &local_ips),
            s.max_payload_lines,
        );
        b.nodeport_primary = s.nodeport_primary;
        b.nft = Some(system_nft());
        Ok(b)
    }

    fn sync(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats, SyncError> {
        let stats = self
            .sync_families(ports, changed, full)
            .map_err(SyncError::restore)?;
        remove_leftover_tables(&self.nft, &mut self.nft_leftovers)?;
        Ok(stats)
    }

    fn verify_job(&self) -> Option<Job<bool>> {
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
                    let mut counter = super::rule_counts::RuleCounter::new(table);
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
                intact &= jumps::jumps_intact(kernel.as_mut(), family, &jumps::iptables_mode())?;
            }
            Ok(intact)
        }))
    }

    fn scan_job(&self) -> Option<Job<Self::Scan>> {
        let factory = self.factory.clone();
        let nft = self.nft.clone();
        let families = self.families();
        Some(Box::new(move || {
            let tables = nft_leftovers(nft, &families);
            let mut kernel = factory();
            let mut found: Vec<(Family, ChainName)> = Vec::new();
            for family in families {
                kernel.save_each(family, Table::Nat, &mut |l| {
                    if let Some(c) = declared_chain(l).filter(|c| is_service_chain(c)) {
                        found.push((family, ChainName::new(c)));
                    }
                })?;
            }
            Ok((found, tables))
        }))
    }

    fn apply_scan(&mut self, (found, tables): Self::Scan) -> bool {
        let mut any = !tables.is_empty();
        self.nft_leftovers = tables;
        for engine in &mut self.engines {
            let fam = engine.cfg.family();
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
            let c = &mut engine.cfg;
            changed |=
                node::follow_primary(c.family(), ips, &mut c.nodeport_addresses, &mut c.node_ips);
        }
        changed
    }

    fn cleanup(&mut self) -> Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        for engine in &self.engines {
            chains::remove_all(kernel.as_mut(), engine.cfg.family())?;
        }
        Ok(())
    }

    fn node_sysctls(s: &Settings) -> Vec<Sysctl> {
        if s.localhost_nodeports && s.ipv4 {
            vec![ROUTE_LOCALNET]
        } else {
            vec![]
        }
    }

    fn prepare_node(s: &Settings) {
        for sysctl in Self::node_sysctls(s) {
            if let Err(e) = node::set_sysctl(&sysctl.key.replace('/', "."), sysctl.value) {
                tracing::warn!(error = %e, "cannot enable route_localnet; NodePorts on 127.0.0.1 will not work");
            }
        }
    }

    fn render_addresses(s: &Settings) -> Vec<IpAddr> {
        if s.nodeport_addresses.is_empty() {
            vec![]
        } else {
            node::local_addresses()
        }
    }

    fn render(s: &Settings, ports: &[ServicePort], local_ips: &[IpAddr]) -> String {
        let mut out = String::new();
        for cfg in render_configs(s, local_ips) {
            let fam: Vec<&ServicePort> = ports
                .iter()
                .filter(|p| p.key.family == cfg.family())
                .collect();
            if cfg.family() == Family::V6 && fam.is_empty() {
                continue;
            }
            let tool = if cfg.family() == Family::V4 {
                "iptables"
            } else {
                "ip6tables"
            };
            out.push_str(&format!("# {tool}-restore --noflush payload\n"));
            out.push_str(&render_full(&fam, &cfg));
            out.push_str(&jumps::describe(tool, &jumps::iptables_mode()));
        }
        out
    }
}

#[cfg(test)]
mod tests;
