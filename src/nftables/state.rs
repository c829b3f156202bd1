//! The desired ruleset of one family, kept incrementally (pure): every
//! element with the service ports that ask for it, the dispatch chains in
//! use, and the chains and sets of Services with session affinity. A sync
//! turns the service ports that changed into one nft transaction of element
//! deletes and adds; a full sync writes everything in one transaction that
//! also flushes what was there, so the kernel holds the old state or the
//! new one, never a mix and never nothing.

use super::elements::{contribution, Contribution, OwnedChain, OwnedSet};
use super::layout::{self, MapId, NftConfig, Pick, TABLE};
use crate::backend::Ports;
use crate::model::ServicePortKey;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Elements per `add element` / `delete element` command.
const ELEMENTS_PER_COMMAND: usize = 500;

/// (set or map, key).
type ElementKey = (MapId, String);

/// What one transaction changes, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The nft script (`nft -f -` input); empty when nothing changes.
    pub script: String,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_written: usize,
    pub chains_deleted: usize,
}

/// What the kernel's table holds (chains with rule counts, sets).
pub use crate::xtables::nft::TableListing as Listing;

/// The desired state of one family.
#[derive(Debug)]
pub struct FamilyState {
    pub cfg: NftConfig,
    /// Each service port's contribution, as planned last.
    ports: BTreeMap<ServicePortKey, Contribution>,
    /// Each element, with the value each service port asking for it wants;
    /// the kernel holds the first one's (two Services claiming one VIP
    /// tuple: the first by namespace/name wins, as in iptables mode).
    elements: BTreeMap<ElementKey, BTreeMap<ServicePortKey, Option<String>>>,
    /// Dispatch chains in the kernel (created on first use).
    dispatch: BTreeSet<(Pick, usize)>,
    /// Whether the kernel holds the fixed part as this state expects.
    primed: bool,
    /// Chains and sets no longer used, emptied, to delete by a later sync.
    doomed: BTreeMap<(String, Doomed), Instant>,
}

/// What a doomed name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Doomed {
    Chain,
    Set,
}

/// How long a chain or set stays after it was last used (see `doom`).
pub const DOOM_DELAY: Duration = Duration::from_secs(2);

fn programmed(owners: Option<&BTreeMap<ServicePortKey, Option<String>>>) -> Option<Option<String>> {
    owners.and_then(|o| o.values().next().cloned())
}

/// `{ k1 : v1, k2 : v2 }` commands for `verb` ("add"/"delete") on one map.
fn element_commands(
    out: &mut String,
    verb: &str,
    t: &str,
    map: MapId,
    items: &[(&str, Option<&str>)],
) {
    for chunk in items.chunks(ELEMENTS_PER_COMMAND) {
        let body: Vec<String> = chunk
            .iter()
            .map(|(k, v)| match v {
                Some(v) if verb == "add" => format!("{k} : {v}"),
                _ => k.to_string(),
            })
            .collect();
        let _ = writeln!(
            out,
            "{verb} element {t} {} {{ {} }}",
            map.name(),
            body.join(", ")
        );
    }
}

impl FamilyState {
    pub fn new(cfg: NftConfig) -> Self {
        FamilyState {
            cfg,
            ports: BTreeMap::new(),
            elements: BTreeMap::new(),
            dispatch: BTreeSet::new(),
            primed: false,
            doomed: BTreeMap::new(),
        }
    }

    fn table(&self) -> String {
        format!("{} {TABLE}", self.cfg.nf())
    }

    /// The next sync must be full (after a failure, or a config change).
    pub fn invalidate(&mut self) {
        self.primed = false;
    }

    pub fn primed(&self) -> bool {
        self.primed
    }

    /// Number of elements the kernel holds (when primed).
    pub fn element_count(&self) -> usize {
        self.elements.len()
    }

    fn owned_chains(&self) -> BTreeMap<&str, &OwnedChain> {
        self.ports
            .values()
            .flat_map(|c| &c.chains)
            .map(|c| (c.name.as_str(), c))
            .collect()
    }

    fn owned_sets(&self) -> BTreeMap<&str, &OwnedSet> {
        self.ports
            .values()
            .flat_map(|c| &c.sets)
            .map(|s| (s.name.as_str(), s))
            .collect()
    }

    fn forget(&mut self, key: &ServicePortKey) {
        if let Some(old) = self.ports.remove(key) {
            for e in old.elements {
                let k = (e.map, e.key);
                if let Some(owners) = self.elements.get_mut(&k) {
                    owners.remove(key);
                    if owners.is_empty() {
                        self.elements.remove(&k);
                    }
                }
            }
        }
    }

    fn learn(&mut self, key: &ServicePortKey, c: Contribution) {
        for e in &c.elements {
            self.elements
                .entry((e.map, e.key.clone()))
                .or_default()
                .insert(key.clone(), e.value.clone());
        }
        self.ports.insert(key.clone(), c);
    }

    /// Replaces the whole desired state with `ports` (of this family).
    fn rebuild(&mut self, ports: &Ports) {
        self.ports.clear();
        self.elements.clear();
        let fam = self.cfg.family();
        for (k, sp) in ports.iter().filter(|(k, _)| k.family == fam) {
            let c = contribution(sp, &self.cfg);
            self.learn(k, c);
        }
    }

    /// A full sync: the whole ruleset in one transaction. `existing` is what
    /// the kernel's table holds (None: no table); chains and sets nothing
    /// wants any more are deleted. `recreate` first deletes the table (after
    /// a failed sync, in case it holds something this version cannot add to).
    pub fn plan_full(
        &mut self,
        ports: &Ports,
        existing: Option<&Listing>,
        recreate: bool,
        now: Instant,
    ) -> Plan {
        self.rebuild(ports);
        let t = self.table();
        let mut p = Plan::default();
        let mut out = String::new();
        if recreate && existing.is_some() {
            let _ = writeln!(out, "delete table {t}");
        }
        if recreate || existing.is_none() {
            self.doomed.clear();
        }
        layout::fixed_commands(&self.cfg, &mut out);
        let fixed = layout::fixed_chain_names();
        p.chains_written += fixed.len();
        // Dispatch chains in use.
        let mut dispatch: BTreeSet<(Pick, usize)> = BTreeSet::new();
        for c in self.ports.values() {
            dispatch.extend(c.dispatch.iter().copied());
        }
        for (pick, n) in &dispatch {
            let name = pick.chain(*n);
            let _ = writeln!(out, "add chain {t} {name}");
            let _ = writeln!(out, "flush chain {t} {name}");
            for r in pick.rules(self.cfg.nf(), *n) {
                let _ = writeln!(out, "add rule {t} {name} {r}");
            }
            p.chains_written += 1;
        }
        // Affinity sets (their clients are kept when they exist) and chains.
        let sets = self.owned_sets();
        for s in sets.values() {
            let _ = writeln!(
                out,
                "add set {t} {} {}",
                s.name,
                set_definition(&self.cfg, s)
            );
        }
        let chains = self.owned_chains();
        let ordered: Vec<&OwnedChain> = self.ports.values().flat_map(|c| &c.chains).collect();
        for c in &ordered {
            let _ = writeln!(out, "add chain {t} {}", c.name);
            let _ = writeln!(out, "flush chain {t} {}", c.name);
        }
        for c in &ordered {
            for r in &c.rules {
                let _ = writeln!(out, "add rule {t} {} {r}", c.name);
            }
            p.chains_written += 1;
        }
        // Elements: the configuration's, then the Services'.
        let mut by_map: BTreeMap<MapId, Vec<(String, Option<String>)>> = BTreeMap::new();
        for (m, k) in layout::config_elements(&self.cfg) {
            by_map.entry(m).or_default().push((k, None));
        }
        for ((m, k), owners) in &self.elements {
            let v = owners.values().next().cloned().flatten();
            by_map.entry(*m).or_default().push((k.clone(), v));
        }
        for (m, items) in &by_map {
            let refs: Vec<(&str, Option<&str>)> = items
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            element_commands(&mut out, "add", &t, *m, &refs);
            p.elements_added += items.len();
        }
        // What an earlier run (or sync) left that nothing wants now: emptied
        // now, deleted by a later sync (see `doom`); what is wanted again is
        // no longer doomed.
        let chain_names: BTreeSet<String> = chains.keys().map(|c| c.to_string()).collect();
        let set_names: BTreeSet<String> = sets.keys().map(|s| s.to_string()).collect();
        let wanted = |c: &str| {
            fixed.contains(&c)
                || chain_names.contains(c)
                || Pick::parse_chain(c).is_some_and(|d| dispatch.contains(&d))
        };
        let fixed_sets: BTreeSet<&str> = MapId::all().iter().map(|m| m.name()).collect();
        self.doomed.retain(|(n, k), _| match k {
            Doomed::Chain => !wanted(n),
            Doomed::Set => !set_names.contains(n),
        });
        let mut doom: Vec<(String, Doomed)> = Vec::new();
        if let (Some(l), false) = (existing, recreate) {
            for c in l.chains.keys().filter(|c| !wanted(c)) {
                let _ = writeln!(out, "flush chain {t} {c}");
                doom.push((c.clone(), Doomed::Chain));
            }
            for s in l.sets.iter() {
                if !fixed_sets.contains(s.as_str()) && !set_names.contains(s) {
                    doom.push((s.clone(), Doomed::Set));
                }
            }
        }
        let mut due = String::new();
        self.delete_doomed(&mut due, &mut p, now);
        out.push_str(&due);
        for (name, kind) in doom {
            self.doom(&name, kind, now);
        }
        self.dispatch = dispatch;
        p.script = out;
        p
    }

    /// An incremental sync of the service ports in `changed` (others are
    /// as last planned). Call only when [`FamilyState::primed`].
    pub fn plan_changes(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        now: Instant,
    ) -> Plan {
        let fam = self.cfg.family();
        let changed: Vec<&ServicePortKey> = changed.iter().filter(|k| k.family == fam).collect();
        let mut p = Plan::default();
        let t = self.table();
        let mut out = String::new();
        // Chains and sets unused since an earlier sync: the kernel has let
        // go of them by now.
        self.delete_doomed(&mut out, &mut p, now);
        if changed.is_empty() {
            p.script = out;
            return p;
        }
        // The chains and sets of the changed ports only (their names are
        // the ports' own), before and after.
        let mut old_chains: BTreeMap<String, OwnedChain> = BTreeMap::new();
        let mut old_sets: BTreeMap<String, OwnedSet> = BTreeMap::new();
        // The elements these ports touch, and what the kernel holds for them.
        let mut touched: BTreeSet<ElementKey> = BTreeSet::new();
        let mut news: Vec<(&ServicePortKey, Contribution)> = Vec::new();
        for k in &changed {
            if let Some(old) = self.ports.get(*k) {
                touched.extend(old.elements.iter().map(|e| (e.map, e.key.clone())));
                old_chains.extend(old.chains.iter().map(|c| (c.name.clone(), c.clone())));
                old_sets.extend(old.sets.iter().map(|s| (s.name.clone(), s.clone())));
            }
            if let Some(sp) = ports.get(*k) {
                let c = contribution(sp, &self.cfg);
                touched.extend(c.elements.iter().map(|e| (e.map, e.key.clone())));
                news.push((k, c));
            }
        }
        let before: BTreeMap<&ElementKey, Option<Option<String>>> = touched
            .iter()
            .map(|k| (k, programmed(self.elements.get(k))))
            .collect();
        for k in &changed {
            self.forget(k);
        }
        let mut new_dispatch: Vec<(Pick, usize)> = Vec::new();
        let mut new_chains: Vec<OwnedChain> = Vec::new();
        let mut new_sets: BTreeMap<String, OwnedSet> = BTreeMap::new();
        for (k, c) in news {
            for d in &c.dispatch {
                if !self.dispatch.contains(d) && !new_dispatch.contains(d) {
                    new_dispatch.push(*d);
                }
            }
            new_chains.extend(c.chains.iter().cloned());
            new_sets.extend(c.sets.iter().map(|s| (s.name.clone(), s.clone())));
            self.learn(k, c);
        }
        // New chains and sets first: the elements below jump to them. A
        // doomed one that is wanted again is kept (flushed, then filled).
        for (pick, n) in &new_dispatch {
            let name = pick.chain(*n);
            self.doomed.remove(&(name.clone(), Doomed::Chain));
            let _ = writeln!(out, "add chain {t} {name}");
            let _ = writeln!(out, "flush chain {t} {name}");
            for r in pick.rules(self.cfg.nf(), *n) {
                let _ = writeln!(out, "add rule {t} {name} {r}");
            }
            self.dispatch.insert((*pick, *n));
            p.chains_written += 1;
        }
        // (A set's name includes its timeout: an existing one never changes.)
        for (name, s) in &new_sets {
            if !old_sets.contains_key(name) {
                self.doomed.remove(&(name.clone(), Doomed::Set));
                let _ = writeln!(out, "add set {t} {name} {}", set_definition(&self.cfg, s));
            }
        }
        let rewritten: Vec<&OwnedChain> = new_chains
            .iter()
            .filter(|c| old_chains.get(&c.name) != Some(*c))
            .collect();
        for c in &rewritten {
            self.doomed.remove(&(c.name.clone(), Doomed::Chain));
            let _ = writeln!(out, "add chain {t} {}", c.name);
            let _ = writeln!(out, "flush chain {t} {}", c.name);
        }
        for c in &rewritten {
            for r in &c.rules {
                let _ = writeln!(out, "add rule {t} {} {r}", c.name);
            }
            p.chains_written += 1;
        }
        // Elements whose programmed value changed: old ones out, new ones in.
        let mut dels: BTreeMap<MapId, Vec<(&str, Option<&str>)>> = BTreeMap::new();
        let mut adds: BTreeMap<MapId, Vec<(String, Option<String>)>> = BTreeMap::new();
        for (k, was) in &before {
            let now = programmed(self.elements.get(*k));
            if *was == now {
                continue;
            }
            if was.is_some() {
                dels.entry(k.0).or_default().push((k.1.as_str(), None));
                p.elements_deleted += 1;
            }
            if let Some(v) = now {
                adds.entry(k.0).or_default().push((k.1.clone(), v));
                p.elements_added += 1;
            }
        }
        for (m, items) in &dels {
            element_commands(&mut out, "delete", &t, *m, items);
        }
        for (m, items) in &adds {
            let refs: Vec<(&str, Option<&str>)> = items
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            element_commands(&mut out, "add", &t, *m, &refs);
        }
        // Chains and sets nothing uses any more: emptied now, deleted by a
        // later sync (see `doom`).
        let wanted: BTreeSet<&str> = new_chains.iter().map(|c| c.name.as_str()).collect();
        for name in old_chains.keys().filter(|n| !wanted.contains(n.as_str())) {
            let _ = writeln!(out, "flush chain {t} {name}");
            self.doom(name, Doomed::Chain, now);
        }
        for name in old_sets.keys().filter(|n| !new_sets.contains_key(*n)) {
            self.doom(name, Doomed::Set, now);
        }
        p.script = out;
        p
    }

    /// Marks a chain or set for deletion by a sync at least [`DOOM_DELAY`]
    /// later. Before Linux 6.2 the kernel lets go of a chain that map
    /// elements jumped to only a moment after the transaction that removed
    /// them, and deleting it in that transaction fails (EBUSY), as upstream
    /// kube-proxy notes; a set goes the same way for simplicity.
    fn doom(&mut self, name: &str, kind: Doomed, now: Instant) {
        self.doomed.entry((name.to_string(), kind)).or_insert(now);
    }

    /// Deletes what was doomed long enough ago (pick chains first: they
    /// jump to endpoint chains; sets last).
    fn delete_doomed(&mut self, out: &mut String, p: &mut Plan, now: Instant) {
        let t = self.table();
        let due: Vec<(String, Doomed)> = self
            .doomed
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= DOOM_DELAY)
            .map(|((n, k), _)| (n.clone(), *k))
            .collect();
        let rank = |n: &str, k: Doomed| match k {
            Doomed::Chain if n.starts_with("affinity-c-") || n.starts_with("affinity-l-") => 0,
            Doomed::Chain => 1,
            Doomed::Set => 2,
        };
        let mut due = due;
        due.sort_by_key(|(n, k)| rank(n, *k));
        for (name, kind) in due {
            match kind {
                Doomed::Chain => {
                    let _ = writeln!(out, "delete chain {t} {name}");
                    p.chains_deleted += 1;
                }
                Doomed::Set => {
                    let _ = writeln!(out, "delete set {t} {name}");
                }
            }
            self.doomed.remove(&(name, kind));
        }
    }

    /// When the next doomed chain or set may go (for a follow-up sync).
    pub fn next_doomed(&self) -> Option<Instant> {
        self.doomed.values().map(|at| *at + DOOM_DELAY).min()
    }

    /// After the kernel took a full sync's script.
    pub fn full_applied(&mut self) {
        self.primed = true;
    }

    /// What the kernel's table must show, for the periodic check.
    pub fn expected(&self) -> Expected {
        let mut chains: BTreeMap<String, usize> = layout::fixed_chains(&self.cfg)
            .into_iter()
            .map(|c| (c.name.to_string(), c.rules.len()))
            .collect();
        for (pick, n) in &self.dispatch {
            chains.insert(pick.chain(*n), pick.rules(self.cfg.nf(), *n).len());
        }
        for (name, c) in self.owned_chains() {
            chains.insert(name.to_string(), c.rules.len());
        }
        Expected {
            family: self.cfg.family(),
            chains,
        }
    }
}

/// What one family's table must show (chains and their rule counts, every
/// fixed set and map); reading it back lists no element, so the check
/// costs the same at any cluster size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub family: crate::model::Family,
    pub chains: BTreeMap<String, usize>,
}

impl Expected {
    /// Ok when `l` (the kernel's listing) holds everything expected.
    pub fn check(&self, l: &Listing) -> Result<(), String> {
        for (name, n) in &self.chains {
            match l.chains.get(name) {
                None => return Err(format!("chain {name} is missing")),
                Some(have) if have != n => {
                    return Err(format!("chain {name} has {have} rules, {n} expected"))
                }
                _ => {}
            }
        }
        for m in MapId::all() {
            if !l.sets.contains(m.name()) {
                return Err(format!("set {} is missing", m.name()));
            }
        }
        Ok(())
    }
}

fn set_definition(cfg: &NftConfig, s: &OwnedSet) -> String {
    let a = match cfg.family() {
        crate::model::Family::V4 => "ipv4_addr",
        crate::model::Family::V6 => "ipv6_addr",
    };
    format!(
        "{{ type {a}; flags dynamic,timeout; timeout {}s; }}",
        s.timeout
    )
}

#[cfg(test)]
mod tests;
