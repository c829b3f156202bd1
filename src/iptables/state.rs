//! Desired vs last-applied: decides which chains a sync writes and deletes, and
//! splits the work into restore payloads. Pure; the applier feeds back success.
//!
//! Cost model (iptables-nft on the project machines): one restore costs time
//! quadratic in its own size and ~35 ms at minimum, independent of the table
//! already loaded. So a change rewrites only the chains whose rules changed,
//! and a full sync is cut into payloads of bounded size (legacy iptables
//! rewrites the whole table per restore, so there one payload is best).

use super::names::{is_service_chain, ChainName as Name, PackedName};
use super::render::{
    render_fixed, render_service_port, shared_tail, Chain, RenderConfig, Shared, Table,
};
use crate::model::{ServicePort, ServicePortKey};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

pub use super::payload::{ChainId, Payload, PayloadSink};
use super::payload::{PayloadBuilder, PayloadSize, STREAM_BYTES};

/// What one service port last rendered to, kept small: hashes of its own
/// (nat) chains, and its lines in the shared chains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Summary {
    owned: Box<[(Name, u64)]>,
    shared: Box<[(Shared, Box<str>)]>,
}

impl Summary {
    fn owns(&self, name: &Name) -> bool {
        self.owned.iter().any(|(n, _)| n == name)
    }
}

/// The chains the service ports own now.
fn owned_names(summaries: &BTreeMap<ServicePortKey, Summary>) -> HashSet<&Name> {
    summaries
        .values()
        .flat_map(|s| s.owned.iter().map(|(n, _)| n))
        .collect()
}

/// Hash of a chain's rules and their number, as last written; 4-byte
/// aligned so that an entry of [`Applied`] takes 24 bytes, not 32.
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: [u32; 2],
    rules: u32,
}

impl Slot {
    fn new(hash: u64, rules: usize) -> Slot {
        Slot {
            hash: [hash as u32, (hash >> 32) as u32],
            rules: rules as u32,
        }
    }

    fn hash(self) -> u64 {
        u64::from(self.hash[0]) | u64::from(self.hash[1]) << 32
    }
}

/// Chain -> [`Slot`] as last written. The per-service chains (60,000 at
/// 10,000 Services) are keyed by their packed names: with `String` keys in a
/// `HashMap` this took ~8 MB there, now ~2 MB. A `BTreeMap` because it
/// grows a node at a time (a `HashMap` that size is half empty after it
/// doubles, and holds both tables while it does).
#[derive(Debug, Default)]
struct Applied {
    /// nat chains whose names pack.
    packed: BTreeMap<PackedName, Slot>,
    /// All others (the fixed and shared chains).
    other: HashMap<ChainId, Slot>,
}

impl Applied {
    fn packed_key(table: Table, name: &str) -> Option<PackedName> {
        if table == Table::Nat {
            PackedName::of(name)
        } else {
            None
        }
    }

    fn get(&self, table: Table, name: &str) -> Option<Slot> {
        match Self::packed_key(table, name) {
            Some(k) => self.packed.get(&k).copied(),
            None => self.other.get(&(table, name.to_string())).copied(),
        }
    }

    fn insert(&mut self, id: &ChainId, v: Slot) -> Option<Slot> {
        match Self::packed_key(id.0, &id.1) {
            Some(k) => self.packed.insert(k, v),
            None => self.other.insert(id.clone(), v),
        }
    }

    fn remove(&mut self, id: &ChainId) -> Option<Slot> {
        match Self::packed_key(id.0, &id.1) {
            Some(k) => self.packed.remove(&k),
            None => self.other.remove(id),
        }
    }
}

/// The payload a first full sync of these service ports of `cfg.family()`
/// writes, as one payload: what `render` prints. Large cluster mode is
/// decided from `ports`, as a sync decides it. The jumps from the built-in
/// chains are not in it (a sync adds those the kernel lacks).
pub fn render_full(ports: &[&ServicePort], cfg: &RenderConfig) -> String {
    let ports: BTreeMap<ServicePortKey, ServicePort> = ports
        .iter()
        .filter(|p| p.key.family == cfg.family())
        .map(|p| (p.key.clone(), (*p).clone()))
        .collect();
    let all: BTreeSet<ServicePortKey> = ports.keys().cloned().collect();
    let mut engine = Engine::new(cfg.clone(), usize::MAX);
    engine
        .plan(&ports, &all, true)
        .into_iter()
        .map(|p| p.text)
        .collect()
}

fn hash_rules(rules: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

/// Per-family iptables state: what the kernel holds (as far as we wrote it)
/// and what each service port contributes.
pub struct Engine {
    pub cfg: RenderConfig,
    /// Most lines in one restore payload.
    pub payload_size: PayloadSize,
    summaries: BTreeMap<ServicePortKey, Summary>,
    applied: Applied,
    /// Rules per table as last written (for metrics).
    rule_counts: BTreeMap<Table, usize>,
    /// Service chains found in the kernel that no service port owns.
    stale: BTreeSet<ChainId>,
    /// A payload failed: the next plan rewrites everything.
    force_full: bool,
    /// Jumps from built-in chains to write with the next plan's last payload.
    jumps: Vec<crate::xtables::Jump>,
}

impl Engine {
    /// `max_payload_lines`: `usize::MAX` for one payload per sync.
    pub fn new(cfg: RenderConfig, max_payload_lines: usize) -> Self {
        Self::with_payload_size(cfg, PayloadSize::Fixed(max_payload_lines))
    }

    pub fn with_payload_size(cfg: RenderConfig, payload_size: PayloadSize) -> Self {
        Engine {
            cfg,
            payload_size,
            summaries: BTreeMap::new(),
            applied: Applied::default(),
            rule_counts: BTreeMap::new(),
            stale: BTreeSet::new(),
            force_full: false,
            jumps: Vec::new(),
        }
    }

    /// Rules per table as last written.
    pub fn rule_counts(&self) -> &BTreeMap<Table, usize> {
        &self.rule_counts
    }

    fn is_applied(&self, table: Table, name: &str, hash: u64) -> bool {
        self.applied.get(table, name).map(Slot::hash) == Some(hash)
    }

    /// Number of service ports programmed.
    pub fn service_ports(&self) -> usize {
        self.summaries.len()
    }

    /// Records service chains seen in the kernel (e.g. left by an earlier run);
    /// those no service port owns are deleted by the next sync.
    pub fn note_existing(&mut self, existing: impl IntoIterator<Item = ChainId>) {
        let owned = owned_names(&self.summaries);
        for id in existing {
            if is_service_chain(&id.1) && !owned.contains(&Name::new(&id.1)) {
                self.stale.insert(id);
            }
        }
    }

    /// Jumps into our chains that the kernel lacks: the next plan inserts
    /// them in its last payload, after the chains they jump to. (Inserting
    /// each with its own `iptables -I` after a full sync cost ~0.6 s apiece
    /// with legacy iptables at 10,000 Services: each rewrites the table.)
    pub fn queue_jumps(&mut self, jumps: Vec<crate::xtables::Jump>) {
        self.jumps = jumps;
    }

    pub fn has_stale(&self) -> bool {
        !self.stale.is_empty()
    }

    /// Plans a sync. `ports` is the whole desired state (all families; other
    /// families are skipped); `changed` names the service ports that may differ
    /// from the last plan. `full` rewrites every chain regardless of what we
    /// believe the kernel holds.
    pub fn plan(
        &mut self,
        ports: &BTreeMap<ServicePortKey, ServicePort>,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Vec<Payload> {
        let mut payloads = Vec::new();
        self.plan_each(ports, changed, full, &mut |p: &Payload| {
            payloads.push(p.clone());
            None
        });
        payloads
    }

    /// Like [`Engine::plan`], but hands each payload to `sink` as soon as it
    /// is complete (and, when the sink streams, the start of a large one
    /// while it is being planned), so a full sync holds at most one payload
    /// at a time. The sink answers whether the payload reached the kernel
    /// (then it is committed) or failed (then forgotten), or `None` to leave
    /// that to the caller.
    pub fn plan_each(
        &mut self,
        ports: &BTreeMap<ServicePortKey, ServicePort>,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
        sink: &mut dyn PayloadSink,
    ) {
        let streams = sink.streams();
        let emit = |engine: &mut Engine, sink: &mut dyn PayloadSink, p: Payload| match sink.done(&p)
        {
            Some(true) => engine.commit(&p),
            Some(false) => engine.forget(&p),
            None => {}
        };
        // Large cluster mode follows the whole model; a flip changes every
        // endpoint rule's comment, so it renders and writes everything.
        let flipped = super::large::update_mode(&mut self.cfg, ports);
        // Taken in every case: a full sync also settles a pending forced one.
        let forced = std::mem::take(&mut self.force_full);
        let full = full || flipped || forced;
        let family = self.cfg.family();
        // A full sync: the service chains written before (to delete those
        // nothing owns any more), and the service ports that are gone.
        let mut known_packed: Vec<PackedName> = Vec::new();
        let mut known_other: Vec<ChainId> = Vec::new();
        let mut gone: Vec<ServicePortKey> = Vec::new();
        if full {
            let before = std::mem::take(&mut self.applied);
            known_packed = before.packed.into_keys().collect();
            known_other = before.other.into_keys().collect();
            self.rule_counts.clear();
            gone = self
                .summaries
                .keys()
                .filter(|k| !ports.contains_key(k))
                .cloned()
                .collect();
        }
        let keys: Vec<&ServicePortKey> = if full {
            let mut all: Vec<&ServicePortKey> = ports
                .keys()
                .filter(|k| k.family == family)
                .chain(&gone)
                .collect();
            all.sort();
            all
        } else {
            changed.iter().filter(|k| k.family == family).collect()
        };

        let max_lines = self.payload_size.lines(ports.len());
        let mut cur = PayloadBuilder::default();
        for chain in render_fixed(&self.cfg) {
            let h = hash_rules(&chain.rules);
            if !self.is_applied(chain.table, &chain.name, h) {
                cur.write(chain, h);
            }
        }
        cur.end_block();

        let mut shared_dirty = full;
        let mut deletes: Vec<ChainId> = Vec::new();
        for key in keys {
            let old = self.summaries.remove_entry(key);
            let Some(sp) = ports.get(key) else {
                if let Some((_, old)) = old {
                    shared_dirty |= !old.shared.is_empty();
                    deletes.extend(old.owned.iter().map(|(n, _)| (Table::Nat, n.unpack())));
                }
                continue;
            };
            let frag = render_service_port(sp, &self.cfg);
            let mut owned = Vec::with_capacity(frag.chains.len());
            for chain in frag.chains {
                let h = hash_rules(&chain.rules);
                owned.push((Name::new(&chain.name), h));
                if !self.is_applied(chain.table, &chain.name, h) {
                    cur.write(chain, h);
                }
            }
            let summary = Summary {
                owned: owned.into_boxed_slice(),
                shared: frag
                    .shared
                    .into_iter()
                    .map(|(s, r)| (s, r.into_boxed_str()))
                    .collect(),
            };
            let key = match old {
                Some((key, old)) => {
                    shared_dirty |= old.shared != summary.shared;
                    for (name, _) in old.owned.iter() {
                        if !summary.owns(name) {
                            deletes.push((Table::Nat, name.unpack()));
                        }
                    }
                    key
                }
                None => {
                    shared_dirty |= !summary.shared.is_empty();
                    key.clone()
                }
            };
            self.summaries.insert(key, summary);
            cur.end_block();
            if cur.lines >= max_lines {
                emit(self, sink, std::mem::take(&mut cur).finish());
            } else if streams {
                if let Some(text) = cur.streamable(STREAM_BYTES) {
                    sink.stream(&text);
                }
            }
        }

        for s in Shared::ALL {
            let id = (s.table(), s.chain().to_string());
            if !shared_dirty && self.applied.get(id.0, &id.1).is_some() {
                continue;
            }
            let mut rules: Vec<String> = self
                .summaries
                .values()
                .flat_map(|sum| {
                    sum.shared
                        .iter()
                        .filter(|(k, _)| *k == s)
                        .map(|(_, r)| r.to_string())
                })
                .collect();
            rules.extend(shared_tail(s, &self.cfg));
            let h = hash_rules(&rules);
            if !self.is_applied(id.0, &id.1, h) {
                cur.write(
                    Chain {
                        table: id.0,
                        name: id.1,
                        rules,
                    },
                    h,
                );
            }
        }

        // Service chains we wrote before that nothing owns any more (after a
        // full sync the summaries hold exactly what was rendered).
        known_other.retain(|id| is_service_chain(&id.1));
        if !known_packed.is_empty() || !known_other.is_empty() {
            let owned = owned_names(&self.summaries);
            for p in known_packed {
                if !owned.contains(&Name::Packed(p)) {
                    deletes.push((Table::Nat, p.unpack()));
                }
            }
            for id in known_other {
                if !owned.contains(&Name::new(&id.1)) {
                    deletes.push(id);
                }
            }
        }
        let stale: Vec<ChainId> = if self.stale.is_empty() {
            Vec::new()
        } else {
            let owned = owned_names(&self.summaries);
            std::mem::take(&mut self.stale)
                .into_iter()
                .filter(|id| !owned.contains(&Name::new(&id.1)))
                .collect()
        };
        deletes.extend(stale);
        deletes.sort();
        deletes.dedup();
        for id in deletes {
            cur.delete(id);
        }
        for j in std::mem::take(&mut self.jumps) {
            cur.insert(j.table, &j.insert_line());
        }
        if !cur.is_empty() {
            emit(self, sink, cur.finish());
        }
    }

    /// The payload reached the kernel.
    pub fn commit(&mut self, p: &Payload) {
        for (id, h, n) in &p.writes {
            if let Some(old) = self.applied.insert(id, Slot::new(*h, *n)) {
                *self.rule_counts.entry(id.0).or_default() -= old.rules as usize;
            }
            *self.rule_counts.entry(id.0).or_default() += n;
        }
        for id in &p.deletes {
            if let Some(old) = self.applied.remove(id) {
                *self.rule_counts.entry(id.0).or_default() -= old.rules as usize;
            }
        }
    }

    /// A payload failed: forget everything it touched and rewrite everything
    /// next time (the kernel may hold less than we thought).
    pub fn forget(&mut self, p: &Payload) {
        self.force_full = true;
        for (id, _, _) in &p.writes {
            if let Some(old) = self.applied.remove(id) {
                *self.rule_counts.entry(id.0).or_default() -= old.rules as usize;
            }
        }
        for id in &p.deletes {
            self.stale.insert(id.clone());
        }
    }
}
