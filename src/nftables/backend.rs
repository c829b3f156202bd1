//! The nftables backend: per-family desired state ([`FamilyState`]), one
//! `nft -f -` transaction per sync for both families, the periodic check
//! of chains (not elements), and the removal of what other modes (or
//! upstream kube-proxy's nftables mode) left once ours is in place.

use super::layout::{nf_family, NftConfig, TABLE, UPSTREAM_TABLE};
use super::state::FamilyState;
use crate::backend::{Backend, Job, Ports, SyncError, SyncStats};
use crate::cli::Settings;
use crate::model::{Family, ServicePort, ServicePortKey};
use crate::node::{self, Sysctl};
use crate::xtables::nft::{
    delete_nft_tables, nft_tables_present, NftFactory, NftKernel, SystemNft,
};
use crate::xtables::{chains, names, Kernel, KernelFactory, Masquerade, Table};
use anyhow::Result;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The ruleset configs for the families to program on this node.
pub fn nft_configs(s: &Settings, local_ips: &[IpAddr]) -> Vec<NftConfig> {
    Masquerade::per_family(s)
        .into_iter()
        .map(|masq| {
            let family = masq.family;
            NftConfig {
                masq,
                nodeport_addresses: s
                    .nodeport_addresses
                    .iter()
                    .filter(|n| Family::of_net(n) == family)
                    .cloned()
                    .collect(),
                node_ips: node::of_family(local_ips, family),
                drop_invalid: !s.conntrack.tcp_be_liberal,
            }
        })
        .collect()
}

/// What other proxy modes left on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Families with upstream kube-proxy's nftables table.
    pub upstream_tables: Vec<Family>,
    /// Families with iptables- or ipvs-mode chains.
    pub xtables: Vec<Family>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.upstream_tables.is_empty() && self.xtables.is_empty()
    }
}

pub struct NftablesBackend {
    kernel: Box<dyn NftKernel>,
    factory: NftFactory,
    /// iptables, to remove other modes' chains (None: not on this node).
    ipt_factory: Option<KernelFactory>,
    families: Vec<FamilyState>,
    /// `--nodeport-addresses primary`: NodePorts follow the Node's primary IPs.
    pub nodeport_primary: bool,
    /// The last sync failed: the next full sync makes the tables anew.
    recreate: bool,
    /// Counts syncs: a periodic check that a sync overlapped says nothing.
    generation: Arc<AtomicU64>,
    leftovers: Leftovers,
}

impl NftablesBackend {
    pub fn new(
        factory: NftFactory,
        ipt_factory: Option<KernelFactory>,
        configs: Vec<NftConfig>,
    ) -> Self {
        NftablesBackend {
            kernel: factory(),
            factory,
            ipt_factory,
            families: configs.into_iter().map(FamilyState::new).collect(),
            nodeport_primary: false,
            recreate: false,
            generation: Arc::default(),
            leftovers: Leftovers::default(),
        }
    }

    fn sync_families(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let full = full || self.families.iter().any(|f| !f.primed());
        let mut stats = SyncStats {
            full,
            ..Default::default()
        };
        let mut script = String::new();
        let now = std::time::Instant::now();
        for st in &mut self.families {
            let plan = if full {
                let listing = self.kernel.list(st.cfg.family(), TABLE)?;
                st.plan_full(ports, listing.as_ref(), self.recreate, now)
            } else {
                st.plan_changes(ports, changed, now)
            };
            stats.written += plan.chains_written;
            stats.deleted += plan.chains_deleted;
            stats.lines += plan.elements_added + plan.elements_deleted;
            script.push_str(&plan.script);
        }
        if !script.is_empty() {
            self.kernel.apply(&script)?;
            stats.calls += 1;
        }
        if full {
            for st in &mut self.families {
                st.full_applied();
            }
            self.recreate = false;
        }
        stats.table_rules = self
            .families
            .iter()
            .map(|f| {
                (
                    format!("{}-elements", nf_family(f.cfg.family())),
                    f.element_count(),
                )
            })
            .collect();
        Ok(stats)
    }

    /// Removes what other modes left, now that our rules are in place.
    /// Each leftover is forgotten once removed; one that could not be is
    /// kept, warned about, and tried again after the next sync (our rules are
    /// in place either way: this is no sync failure).
    fn remove_leftovers(&mut self) {
        let kernel = &mut self.kernel;
        self.leftovers.upstream_tables.retain(|f| {
            tracing::info!(family = ?f, table = UPSTREAM_TABLE, "removing upstream kube-proxy's nftables table");
            let r = kernel.apply(&format!("delete table {} {UPSTREAM_TABLE}\n", nf_family(*f)));
            keep_on_error(r, "upstream kube-proxy's nftables table")
        });
        let Some(factory) = &self.ipt_factory else {
            self.leftovers.xtables.clear();
            return;
        };
        let mut ipt = factory();
        self.leftovers.xtables.retain(|f| {
            tracing::info!(family = ?f, "removing iptables/ipvs-mode chains left on this node");
            keep_on_error(
                chains::remove_for_takeover(ipt.as_mut(), *f),
                "iptables/ipvs-mode chains",
            )
        });
    }

    fn family_list(&self) -> Vec<Family> {
        self.families.iter().map(|f| f.cfg.family()).collect()
    }
}

/// True (keep it for another try) when removing a leftover failed.
fn keep_on_error(r: Result<()>, what: &str) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not remove {what} yet; trying again after the next sync");
            true
        }
    }
}

/// Whether `family` has iptables- or ipvs-mode chains: KUBE-SERVICES or
/// KUBE-PROXY-CANARY in nat (not KUBE-POSTROUTING: older kubelets write it).
fn has_xtables_leftovers(ipt: &mut dyn Kernel, family: Family) -> Result<bool> {
    if !ipt.available(family) {
        return Ok(false);
    }
    let found = chains::declared_chains_in(ipt, family, Table::Nat, |c| {
        c == names::KUBE_SERVICES || c == names::KUBE_PROXY_CANARY
    })?;
    Ok(!found.is_empty())
}

impl Backend for NftablesBackend {
    const MODE: &'static str = "nftables";
    type Scan = Leftovers;

    fn new(s: &Settings) -> Result<Self> {
        let local_ips = node::local_addresses();
        let ipt = crate::xtables::kernel::system_factory(s.iptables_flavor);
        let mut b = NftablesBackend::new(
            Arc::new(|| Box::new(SystemNft) as Box<dyn NftKernel>),
            Some(ipt),
            nft_configs(s, &local_ips),
        );
        b.nodeport_primary = s.nodeport_primary;
        Ok(b)
    }

    fn sync(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats, SyncError> {
        match self.sync_families(ports, changed, full) {
            Ok(stats) => {
                if !self.leftovers.is_empty() {
                    self.remove_leftovers();
                }
                Ok(stats)
            }
            Err(e) => {
                for st in &mut self.families {
                    st.invalidate();
                }
                self.recreate = true;
                Err(e.into())
            }
        }
    }

    fn verify_job(&self) -> Option<Job<bool>> {
        let factory = self.factory.clone();
        let expected: Vec<_> = self
            .families
            .iter()
            .filter(|f| f.primed())
            .map(|f| f.expected())
            .collect();
        let generation = self.generation.clone();
        let started = generation.load(Ordering::SeqCst);
        Some(Box::new(move || {
            let mut kernel = factory();
            let mut intact = true;
            for e in expected {
                let problem = match kernel.list(e.family, TABLE)? {
                    None => Some(format!("table {TABLE} is missing")),
                    Some(l) => e.check(&l).err(),
                };
                if let Some(p) = problem {
                    if generation.load(Ordering::SeqCst) != started {
                        // A sync ran meanwhile: what was expected moved.
                        return Ok(true);
                    }
                    tracing::warn!(family = ?e.family, problem = %p, "the nftables ruleset was changed by hand; rewriting");
                    intact = false;
                }
            }
            Ok(intact)
        }))
    }

    fn scan_job(&self) -> Option<Job<Leftovers>> {
        let factory = self.factory.clone();
        let ipt_factory = self.ipt_factory.clone();
        let families = self.family_list();
        Some(Box::new(move || {
            let mut kernel = factory();
            let mut found = Leftovers::default();
            for &f in &families {
                if kernel.list(f, UPSTREAM_TABLE)?.is_some() {
                    found.upstream_tables.push(f);
                }
            }
            if let Some(ipt_factory) = ipt_factory {
                let mut ipt = ipt_factory();
                for &f in &families {
                    match has_xtables_leftovers(ipt.as_mut(), f) {
                        Ok(true) => found.xtables.push(f),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!(error = %format!("{e:#}"), "cannot read iptables; not looking for other modes' chains")
                        }
                    }
                }
            }
            Ok(found)
        }))
    }

    fn apply_scan(&mut self, found: Leftovers) -> bool {
        let any = !found.is_empty();
        self.leftovers = found;
        any
    }

    fn set_primary_ips(&mut self, ips: &[IpAddr]) -> bool {
        if !self.nodeport_primary {
            return false;
        }
        let mut changed = false;
        for st in &mut self.families {
            let c = &mut st.cfg;
            if node::follow_primary(c.family(), ips, &mut c.nodeport_addresses, &mut c.node_ips) {
                st.invalidate();
                changed = true;
            }
        }
        changed
    }

    fn cleanup(&mut self) -> Result<()> {
        let found = nft_tables_present(self.kernel.as_mut(), &[Family::V4, Family::V6])?;
        delete_nft_tables(self.kernel.as_mut(), &found)
    }

    fn follow_up(&self) -> Option<std::time::Duration> {
        // Doomed chains and sets go by a later sync, with or without changes.
        let due = self.families.iter().filter_map(|f| f.next_doomed()).min()?;
        Some(due.saturating_duration_since(std::time::Instant::now()))
    }

    fn node_sysctls(_s: &Settings) -> Vec<Sysctl> {
        vec![]
    }

    fn prepare_node(_s: &Settings) {
        if let Err(e) = SystemNft.list(Family::V4, TABLE) {
            tracing::error!(error = %format!("{e:#}"), "nft is not usable on this node; syncs will fail until it is");
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
        let map: Ports = ports.iter().map(|p| (p.key.clone(), p.clone())).collect();
        let mut out = String::new();
        for cfg in nft_configs(s, local_ips) {
            let fam = cfg.family();
            if fam == Family::V6 && !ports.iter().any(|p| p.key.family == fam) {
                continue;
            }
            out.push_str(&format!("# nft -f - ({} {TABLE})\n", nf_family(fam)));
            out.push_str(
                &FamilyState::new(cfg)
                    .plan_full(&map, None, false, std::time::Instant::now())
                    .script,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests;
