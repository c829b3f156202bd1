//! The IPVS backend: keeps the desired state incrementally ([`Aggregate`]),
//! diffs it against what it last saw in the kernel, and applies only the
//! difference: ipset entries, kube-ipvs0 addresses, virtual/real servers,
//! and (when a set becomes empty or non-empty) the small iptables payload.

use super::desired::{diff, Current, Desired, Draining, IpvsConfig, Op};
use super::ipset::apply::IpsetKernel;
use super::ipset::{self, SetKind};
use super::iptables_rules;
use super::link::LinkKernel;
use super::netlink::IpvsKernel;
use super::state::{Aggregate, Touched};
use super::sysctl;
use super::wire::ServiceId;
use crate::backend::{Backend, Job, Ports, SyncError, SyncStats};
use crate::cli::Settings;
use crate::model::ServicePort;
use crate::model::{Family, ServicePortKey};
use crate::node::Sysctl;
use crate::xtables::nft::{nft_leftovers, remove_leftover_tables, system_nft, NftFactory};
use crate::xtables::{chains, jumps, Kernel, KernelFactory, Masquerade};
use anyhow::{Context, Result};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens the IPVS netlink socket (lazily: a node without IPVS fails its
/// syncs with a clear error instead of crashing at start).
pub type IpvsFactory = Arc<dyn Fn() -> Result<Box<dyn IpvsKernel>> + Send + Sync>;
pub type LinkFactory = Arc<dyn Fn() -> Box<dyn LinkKernel> + Send + Sync>;

/// Settings of the IPVS backend.
#[derive(Debug, Clone)]
pub struct IpvsSettings {
    pub scheduler: String,
    pub strict_arp: bool,
    /// `ipvs.excludeCIDRs`: virtual servers there are never touched.
    pub exclude_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`; empty: every address of the node.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--nodeport-addresses primary`: the Node object's primary IPs.
    pub nodeport_primary: bool,
    /// One per enabled family: how its iptables rules masquerade.
    pub families: Vec<Masquerade>,
    /// TCP real servers still carrying connections are deleted after this.
    pub drain_timeout: Duration,
    /// How often draining real servers are checked.
    pub drain_check: Duration,
    /// Where sysctls live (normally /proc/sys; a tempdir in tests).
    pub sysctl_root: std::path::PathBuf,
}

impl IpvsSettings {
    /// The IPVS backend's settings from the proxy's.
    pub fn of(s: &Settings) -> Self {
        IpvsSettings {
            scheduler: s.ipvs_scheduler.clone(),
            strict_arp: s.strict_arp,
            exclude_cidrs: s.ipvs_exclude_cidrs.clone(),
            nodeport_addresses: s.nodeport_addresses.clone(),
            nodeport_primary: s.nodeport_primary,
            families: Masquerade::per_family(s),
            drain_timeout: Duration::from_secs(15 * 60),
            drain_check: Duration::from_secs(2),
            sysctl_root: "/proc/sys".into(),
        }
    }
}

/// Ours: a virtual server of an enabled family outside excludeCIDRs (as
/// upstream, every other virtual server of the family is the proxy's).
pub fn owned(families: &[Family], exclude: &[IpNet], id: &ServiceId) -> bool {
    families.contains(&id.family()) && !exclude.iter().any(|n| n.contains(&id.addr))
}

pub struct IpvsBackend {
    s: IpvsSettings,
    cfg: IpvsConfig,
    ipvs_factory: IpvsFactory,
    ipvs: Option<Box<dyn IpvsKernel>>,
    link_factory: LinkFactory,
    link: Box<dyn LinkKernel>,
    ipt_factory: KernelFactory,
    ipt: Box<dyn Kernel>,
    ipset: Box<dyn IpsetKernel>,
    agg: Aggregate,
    /// The kernel's virtual servers as last listed and since changed by us.
    current: BTreeMap<ServiceId, Current>,
    /// kube-ipvs0 addresses as last listed and since changed by us.
    bound: BTreeSet<IpAddr>,
    /// ipset entries as last read and since written, per family.
    sets: BTreeMap<Family, ipset::SetEntries>,
    /// The iptables payload last applied, per family.
    rules_applied: BTreeMap<Family, String>,
    /// Whether falling back from netlink to `ipset restore` was logged.
    ipset_fallback_warned: bool,
    draining: Draining,
    primed: bool,
    sysctls_done: bool,
    primary_ips: Vec<IpAddr>,
    /// nft, to remove nftables mode's tables when taking a node over (None:
    /// not looked for).
    pub nft: Option<NftFactory>,
    /// nftables tables found by the scan, removed after the next sync.
    nft_leftovers: Vec<(Family, &'static str)>,
}

impl IpvsBackend {
    pub fn new(
        s: IpvsSettings,
        ipvs_factory: IpvsFactory,
        link_factory: LinkFactory,
        ipt_factory: KernelFactory,
        ipset: Box<dyn IpsetKernel>,
    ) -> Self {
        let mut s = s;
        let cfg = IpvsConfig {
            scheduler: s.scheduler.clone(),
            node_ips: vec![],
            drain_timeout: s.drain_timeout,
            host_addresses: BTreeSet::new(),
            primary_ips: vec![],
        };
        let mut ipt = ipt_factory();
        // A family whose iptables tools do not work here is skipped (as in
        // iptables mode) rather than failing every sync.
        s.families.retain(|g| {
            let ok = ipt.available(g.family);
            if !ok {
                tracing::warn!(family = ?g.family, "iptables tools for this family do not work on this node; not programming it");
            }
            ok
        });
        IpvsBackend {
            link: link_factory(),
            ipt,
            s,
            cfg,
            ipvs_factory,
            ipvs: None,
            link_factory,
            ipt_factory,
            ipset,
            agg: Aggregate::default(),
            current: BTreeMap::new(),
            bound: BTreeSet::new(),
            sets: BTreeMap::new(),
            rules_applied: BTreeMap::new(),
            ipset_fallback_warned: false,
            draining: Draining::new(),
            primed: false,
            sysctls_done: false,
            primary_ips: vec![],
            nft: None,
            nft_leftovers: vec![],
        }
    }

    fn families(&self) -> Vec<Family> {
        self.s.families.iter().map(|g| g.family).collect()
    }

    fn ipvs(&mut self) -> Result<&mut Box<dyn IpvsKernel>> {
        if self.ipvs.is_none() {
            self.ipvs = Some((self.ipvs_factory)()?);
        }
        Ok(self.ipvs.as_mut().expect("just set"))
    }

    fn apply_sysctls(&mut self) -> Result<()> {
        if self.sysctls_done {
            return Ok(());
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let plan = sysctl::plan(sysctl::kernel_version(release.trim()), self.s.strict_arp);
        // A value that drifted while /proc/sys is read-only (an unprivileged
        // container after --init-only) must not stop every sync: say so once.
        let changed = match sysctl::apply(&self.s.sysctl_root, &plan) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot set the IPVS sysctls (run --init-only with privilege, or set them on the node); continuing");
                self.sysctls_done = true;
                return Ok(());
            }
        };
        for (key, old) in &changed {
            let s = plan.iter().find(|s| s.key == key).expect("planned");
            tracing::info!(sysctl = %key, from = %old, to = s.value, why = s.why, "set sysctl");
        }
        if !self.s.strict_arp {
            tracing::info!("ipvs.strictARP is off: arp_ignore/arp_announce left as they are");
        }
        self.sysctls_done = true;
        Ok(())
    }

    fn node_ips(&self, host: &BTreeSet<IpAddr>) -> Vec<IpAddr> {
        if self.s.nodeport_primary {
            return self.primary_ips.clone();
        }
        host.iter()
            .filter(|ip| {
                self.s.nodeport_addresses.is_empty()
                    || self.s.nodeport_addresses.iter().any(|n| n.contains(*ip))
            })
            .copied()
            .collect()
    }

    /// Re-reads the kernel and rebuilds the desired state from all ports.
    fn prime(&mut self, ports: &Ports) -> Result<Touched> {
        self.apply_sysctls()?;
        if self.link.ensure_link()? {
            tracing::info!(
                link = super::link::DUMMY_LINK,
                "created the dummy link for service addresses"
            );
        }
        let host = self.link.host_addresses()?;
        self.cfg.node_ips = self.node_ips(&host);
        self.cfg.host_addresses = host;
        self.agg.clear();
        let fams = self.families();
        let mut t = Touched::default();
        for (k, sp) in ports.iter().filter(|(k, _)| fams.contains(&k.family)) {
            t.merge(self.agg.set(k, Some(sp), &self.cfg));
        }
        self.current = self.ipvs()?.list()?;
        // Only this proxy's families are ours (a single-stack proxy leaves the
        // other family's addresses alone).
        self.bound = self
            .link
            .addresses()?
            .into_iter()
            .filter(|a| fams.contains(&Family::of(a)))
            .collect();
        let save = self.ipset.save()?;
        for f in self.families() {
            self.sets.insert(f, ipset::parse_save(f, &save));
        }
        t.services.extend(self.current.keys().cloned());
        t.addresses.extend(self.bound.iter().copied());
        Ok(t)
    }

    /// Full syncs `ipset restore` every set (creating missing ones);
    /// incremental syncs send their few entry changes over netlink in one
    /// batch, falling back to the restore text when the sets are missing or
    /// netlink is unusable.
    fn sync_ipsets(&mut self, t: &Touched, full: bool) -> Result<usize> {
        let mut ops = Vec::new();
        let mut changes = 0;
        let mut written = Vec::new();
        for f in self.families() {
            let applied = self.sets.entry(f).or_default();
            let (from, to) = if full {
                (applied.clone(), self.agg.entries(f))
            } else {
                // Only what this sync touched, so a change costs O(change).
                let mut from = ipset::SetEntries::new();
                let mut to = ipset::SetEntries::new();
                let agg = &self.agg;
                let touched = t
                    .entries
                    .iter()
                    .filter(|(ef, _, _)| *ef == f)
                    .map(|e| (e.1, e.2.clone(), agg.wants_entry(e)))
                    .chain(
                        t.addresses
                            .iter()
                            .filter(|a| Family::of(a) == f)
                            .map(|a| (SetKind::IpvsIps, a.to_string(), agg.wants_address(a))),
                    );
                for (k, e, wanted) in touched {
                    if applied.get(&k).is_some_and(|s| s.contains(&e)) {
                        from.entry(k).or_default().insert(e.clone());
                    }
                    if wanted {
                        to.entry(k).or_default().insert(e);
                    }
                }
                (from, to)
            };
            let fops = ipset::entry_ops(f, &from, &to);
            if !fops.is_empty() || full {
                changes += fops.len();
                ops.extend(fops);
                written.push((f, from, to));
            }
        }
        if written.is_empty() {
            return Ok(0);
        }
        let text = || -> String {
            written
                .iter()
                .map(|(f, from, to)| ipset::restore_text(*f, from, to))
                .collect()
        };
        if full {
            self.ipset.restore(&text())?;
        } else {
            // The fallback also adds back every entry the families want: a
            // set found missing (deleted by hand) was recreated empty, and
            // our record still lists what it held.
            let agg = &self.agg;
            let fallback = || -> String {
                let mut t = text();
                for (f, _, _) in &written {
                    t.push_str(&ipset::restore_text(
                        *f,
                        &ipset::SetEntries::new(),
                        &agg.entries(*f),
                    ));
                }
                t
            };
            let warned = &mut self.ipset_fallback_warned;
            super::ipset::apply::change_or_restore(self.ipset.as_mut(), &ops, fallback, warned)?;
        }
        for (f, from, to) in written {
            let applied = self.sets.entry(f).or_default();
            if full {
                *applied = to;
                continue;
            }
            for (k, es) in from {
                if let Some(set) = applied.get_mut(&k) {
                    for e in es {
                        set.remove(&e);
                    }
                }
            }
            for (k, es) in to {
                applied.entry(k).or_default().extend(es);
            }
        }
        Ok(changes)
    }

    fn sync_iptables_rules(&mut self, full: bool) -> Result<usize> {
        let mut calls = 0;
        for g in self.s.families.clone() {
            let f = g.family;
            let text = iptables_rules::render(&g, &self.agg.nonempty(f), &self.agg.out_filter(f));
            if !full && self.rules_applied.get(&f) == Some(&text) {
                continue;
            }
            self.ipt
                .restore(f, &text)
                .context("writing the IPVS-mode iptables rules")?;
            calls += 1;
            if full {
                for j in jumps::ipvs_mode() {
                    self.ipt.ensure_jump(f, &j)?;
                }
            }
            self.rules_applied.insert(f, text);
        }
        Ok(calls)
    }

    fn sync_inner(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats> {
        let full = full || !self.primed;
        let mut t = if full {
            self.prime(ports)?
        } else {
            let fams = self.families();
            let mut t = Touched::default();
            for k in changed.iter().filter(|k| fams.contains(&k.family)) {
                t.merge(self.agg.set(k, ports.get(k), &self.cfg));
            }
            t
        };
        // Draining real servers are looked at again on every sync.
        t.services
            .extend(self.draining.keys().map(|(id, _, _)| id.clone()));
        let mut stats = SyncStats {
            full,
            ..Default::default()
        };
        // 1. Sets first, so the rules match the VIPs as they appear.
        stats.lines += self.sync_ipsets(&t, full)?;
        stats.calls += self.sync_iptables_rules(full)?;
        // 2. Bind new addresses.
        let (mut bind, mut unbind) = (vec![], vec![]);
        for a in &t.addresses {
            match (self.agg.wants_address(a), self.bound.contains(a)) {
                (true, false) => bind.push(*a),
                (false, true) => unbind.push(*a),
                _ => {}
            }
        }
        // One rtnetlink socket for all of them (a cold start binds every VIP).
        self.link.add_addresses(&bind)?;
        stats.written += bind.len();
        self.bound.extend(bind);
        // 3. Virtual and real servers: what serves new traffic (new virtual
        // and real servers, raised weights) first; then, with connection
        // counts read from the kernel, what goes or drains. A new endpoint
        // takes traffic without waiting for that read.
        let desired = Desired {
            services: t
                .services
                .iter()
                .filter_map(|id| self.agg.service(id).map(|s| (id.clone(), s.clone())))
                .collect(),
            addresses: BTreeSet::new(),
        };
        if full {
            // The counts were just read with the whole table: one plan, in
            // the same order.
            let mut draining = std::mem::take(&mut self.draining);
            let mut ops = self.plan(&t.services, &desired, &mut draining);
            self.draining = draining;
            ops.sort_by_key(|op| !op.serves_more());
            self.apply_ops(&ops, &mut stats)?;
        } else {
            let growing: Vec<Op> = {
                let mut scratch = self.draining.clone();
                self.plan(&t.services, &desired, &mut scratch)
                    .into_iter()
                    .filter(Op::serves_more)
                    .collect()
            };
            self.apply_ops(&growing, &mut stats)?;
            self.refresh_leaving(&t.services)?;
            let mut draining = std::mem::take(&mut self.draining);
            let rest = self.plan(&t.services, &desired, &mut draining);
            self.draining = draining;
            self.apply_ops(&rest, &mut stats)?;
        }
        // Forget drains whose real server is gone however it went (deleted by
        // hand, its virtual server replaced or excluded): no endless follow-ups.
        let cur = &self.current;
        self.draining.retain(|(id, addr, port), _| {
            cur.get(id).is_some_and(|c| {
                c.dests
                    .iter()
                    .any(|(d, _)| d.addr == *addr && d.port == *port && d.weight == 0)
            })
        });
        // 4. Unbind addresses nobody uses any more (after their services went).
        self.link.del_addresses(&unbind)?;
        stats.deleted += unbind.len();
        for a in unbind {
            self.bound.remove(&a);
        }
        let dests: usize = self.current.values().map(|c| c.dests.len()).sum();
        stats.table_rules = vec![
            ("ipvs_services".into(), self.current.len()),
            ("ipvs_destinations".into(), dests),
            ("kube_ipvs0_addresses".into(), self.bound.len()),
        ];
        self.primed = true;
        Ok(stats)
    }
}

impl Backend for IpvsBackend {
    const MODE: &'static str = "ipvs";
    /// nftables mode's tables on this node.
    type Scan = Vec<(Family, &'static str)>;

    fn new(s: &Settings) -> Result<Self> {
        use super::{ipset::apply::SystemIpset, link::SystemLink, netlink::IpvsSocket};
        let mut b = IpvsBackend::new(
            IpvsSettings::of(s),
            Arc::new(|| Ok(Box::new(IpvsSocket::connect()?) as Box<dyn IpvsKernel>)),
            Arc::new(|| Box::new(SystemLink) as Box<dyn LinkKernel>),
            crate::xtables::kernel::system_factory(s.iptables_flavor),
            Box::new(SystemIpset::default()),
        );
        b.nft = Some(system_nft());
        Ok(b)
    }

    fn sync(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats, SyncError> {
        let r = self.sync_inner(ports, changed, full);
        if r.is_ok() {
            remove_leftover_tables(&self.nft, &mut self.nft_leftovers)?;
        }
        if r.is_err() {
            // Re-read everything next time; drop a socket that may be broken.
            self.primed = false;
            self.ipvs = None;
            // The jumps into our chains, if one went missing, are put back
            // now rather than after a sync that succeeds.
            for g in &self.s.families {
                jumps::put_back(self.ipt.as_mut(), g.family, &jumps::ipvs_mode());
            }
        }
        Ok(r?)
    }

    fn verify_job(&self) -> Option<Job<bool>> {
        let link_factory = self.link_factory.clone();
        let ipt_factory = self.ipt_factory.clone();
        let families = self.families();
        let expected = self.bound.clone();
        let host = self.cfg.host_addresses.clone();
        let primed = self.primed;
        Some(Box::new(move || {
            let mut intact = true;
            let mut link = link_factory();
            // New or gone node addresses change NodePort virtual servers and
            // which VIPs are bound: re-read everything.
            if primed && link.host_addresses()? != host {
                tracing::info!("the node's addresses changed; resyncing");
                intact = false;
            }
            let have = link.addresses()?;
            if !expected.is_subset(&have) || (have.is_empty() && link.ensure_link()?) {
                tracing::warn!(
                    link = super::link::DUMMY_LINK,
                    "service addresses are missing from the dummy link; repairing"
                );
                intact = false;
            }
            let mut ipt = ipt_factory();
            for f in families {
                intact &= jumps::jumps_intact(ipt.as_mut(), f, &jumps::ipvs_mode())?;
            }
            Ok(intact)
        }))
    }

    fn scan_job(&self) -> Option<Job<Self::Scan>> {
        let nft = self.nft.clone()?;
        let families = self.families();
        Some(Box::new(move || Ok(nft_leftovers(Some(nft), &families))))
    }

    fn apply_scan(&mut self, found: Self::Scan) -> bool {
        let any = !found.is_empty();
        self.nft_leftovers = found;
        any
    }

    fn set_primary_ips(&mut self, ips: &[IpAddr]) -> bool {
        if self.primary_ips == ips {
            return false;
        }
        self.primary_ips = ips.to_vec();
        self.cfg.primary_ips = ips.to_vec();
        // NodePort addresses (with `primary`) and the node's own access to
        // load balancers with source ranges depend on them.
        true
    }

    fn cleanup(&mut self) -> Result<()> {
        let families = self.families();
        let exclude = self.s.exclude_cidrs.clone();
        let ipvs = match self.ipvs.take() {
            Some(k) => Some(k),
            None => (self.ipvs_factory)().ok(),
        };
        cleanup(
            ipvs,
            self.link.as_mut(),
            self.ipt.as_mut(),
            self.ipset.as_mut(),
            &families,
            &exclude,
        )
    }

    fn follow_up(&self) -> Option<Duration> {
        (!self.draining.is_empty()).then_some(self.s.drain_check)
    }

    fn node_sysctls(s: &Settings) -> Vec<Sysctl> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        sysctl::plan(sysctl::kernel_version(release.trim()), s.strict_arp)
    }

    fn prepare_node(_s: &Settings) {
        // Resolving the IPVS netlink family makes the kernel load ip_vs, which
        // is what creates the net.ipv4.vs.* sysctls.
        if let Err(e) = super::netlink::IpvsSocket::connect() {
            tracing::error!(error = %format!("{e:#}"), "IPVS is not usable on this node; syncs will fail until it is");
        }
    }

    fn render_addresses(_s: &Settings) -> Vec<IpAddr> {
        crate::node::local_addresses()
            .into_iter()
            .filter(super::link::usable_host_address)
            .collect()
    }

    fn render(s: &Settings, ports: &[ServicePort], local_ips: &[IpAddr]) -> String {
        super::render::render(ports, &IpvsSettings::of(s), local_ips)
    }
}

/// Removes what either mode owns: virtual servers of the given families (but
/// not in excludeCIDRs), kube-ipvs0, every KUBE- jump and chain of both
/// modes, and the ipsets.
pub fn cleanup(
    ipvs: Option<Box<dyn IpvsKernel>>,
    link: &mut dyn LinkKernel,
    ipt: &mut dyn Kernel,
    ipset: &mut dyn IpsetKernel,
    families: &[Family],
    exclude: &[IpNet],
) -> Result<()> {
    match ipvs {
        Some(mut k) => {
            for id in k.list()?.into_keys() {
                if owned(families, exclude, &id) {
                    k.apply(&Op::DelService(id))?;
                }
            }
        }
        None => tracing::info!("no IPVS in this kernel: no virtual servers to remove"),
    }
    link.delete_link()?;
    for &f in families {
        if !ipt.available(f) {
            continue;
        }
        // Both modes' jumps and chains go together.
        chains::remove_all(ipt, f)?;
    }
    let existing = ipset.names().unwrap_or_default();
    let mut destroy = String::new();
    for &f in families {
        for n in ipset::owned_names(f) {
            if existing.contains(&n) {
                destroy.push_str(&format!("destroy {n}\n"));
            }
        }
    }
    if !destroy.is_empty() {
        ipset.restore(&destroy)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

mod servers;
