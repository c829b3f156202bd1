//! Desired vs last-applied: decides which chains a sync writes and deletes, and
//! splits the work into restore payloads. Pure; the applier feeds back success.
//!
//! Cost model (iptables-nft on the project machines): one restore costs time
//! quadratic in its own size and ~35 ms at minimum, independent of the table
//! already loaded. So a change rewrites only the chains whose rules changed,
//! and a full sync is cut into payloads of bounded size (legacy iptables
//! rewrites the whole table per restore, so there one payload is best).

use super::render::{
    render_fixed, render_service_port, shared_tail, Chain, RenderConfig, Shared, Table,
};
use crate::model::{ServicePort, ServicePortKey};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

pub type ChainId = (Table, String);

/// What one service port last rendered to, kept small: hashes of its own
/// chains, and its lines in the shared chains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Summary {
    owned: Vec<(String, u64)>,
    shared: Vec<(Shared, String)>,
}

/// One `iptables-restore --noflush` input and what it changes once it succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    pub text: String,
    pub lines: usize,
    /// Chains written: id, hash of the rules, number of rules.
    pub writes: Vec<(ChainId, u64, usize)>,
    pub deletes: Vec<ChainId>,
}

#[derive(Default)]
struct PayloadBuilder {
    chains: BTreeMap<Table, Vec<Chain>>,
    deletes: BTreeMap<Table, Vec<String>>,
    lines: usize,
    writes: Vec<(ChainId, u64, usize)>,
    delete_ids: Vec<ChainId>,
}

impl PayloadBuilder {
    fn write(&mut self, chain: Chain, hash: u64) {
        self.lines += chain.rules.len() + 1;
        self.writes
            .push(((chain.table, chain.name.clone()), hash, chain.rules.len()));
        self.chains.entry(chain.table).or_default().push(chain);
    }

    fn delete(&mut self, id: ChainId) {
        self.lines += 2;
        self.deletes.entry(id.0).or_default().push(id.1.clone());
        self.delete_ids.push(id);
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.delete_ids.is_empty()
    }

    fn finish(self) -> Payload {
        let mut text = String::new();
        for table in [Table::Filter, Table::Nat] {
            let chains = self.chains.get(&table).map(Vec::as_slice).unwrap_or(&[]);
            let deletes = self.deletes.get(&table).map(Vec::as_slice).unwrap_or(&[]);
            if chains.is_empty() && deletes.is_empty() {
                continue;
            }
            text.push('*');
            text.push_str(table.name());
            text.push('\n');
            for name in chains.iter().map(|c| &c.name).chain(deletes) {
                text.push(':');
                text.push_str(name);
                text.push_str(" - [0:0]\n");
            }
            for rule in chains.iter().flat_map(|c| &c.rules) {
                text.push_str(rule);
                text.push('\n');
            }
            for name in deletes {
                text.push_str("-X ");
                text.push_str(name);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
        }
        Payload {
            text,
            lines: self.lines,
            writes: self.writes,
            deletes: self.delete_ids,
        }
    }
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
    /// Most lines in one restore payload (`usize::MAX`: one payload).
    pub max_payload_lines: usize,
    summaries: BTreeMap<ServicePortKey, Summary>,
    /// Chain -> (hash of its rules, number of rules) as last written.
    applied: HashMap<ChainId, (u64, usize)>,
    /// Rules per table as last written (for metrics).
    rule_counts: BTreeMap<Table, usize>,
    /// Service chains found in the kernel that no service port owns.
    stale: BTreeSet<ChainId>,
    /// A payload failed: the next plan rewrites everything.
    force_full: bool,
}

impl Engine {
    pub fn new(cfg: RenderConfig, max_payload_lines: usize) -> Self {
        Engine {
            cfg,
            max_payload_lines,
            summaries: BTreeMap::new(),
            applied: HashMap::new(),
            rule_counts: BTreeMap::new(),
            stale: BTreeSet::new(),
            force_full: false,
        }
    }

    /// Chains we believe are in the kernel.
    pub fn applied_chains(&self) -> impl Iterator<Item = &ChainId> {
        self.applied.keys()
    }

    /// Rules per table as last written.
    pub fn rule_counts(&self) -> &BTreeMap<Table, usize> {
        &self.rule_counts
    }

    fn is_applied(&self, table: Table, name: &str, hash: u64) -> bool {
        self.applied.get(&(table, name.to_string())).map(|a| a.0) == Some(hash)
    }

    /// Number of service ports programmed.
    pub fn service_ports(&self) -> usize {
        self.summaries.len()
    }

    /// Records service chains seen in the kernel (e.g. left by an earlier run);
    /// those no service port owns are deleted by the next sync.
    pub fn note_existing(&mut self, existing: impl IntoIterator<Item = ChainId>) {
        let owned: HashSet<&str> = self
            .summaries
            .values()
            .flat_map(|s| s.owned.iter().map(|(n, _)| n.as_str()))
            .collect();
        for id in existing {
            if super::names::is_service_chain(&id.1) && !owned.contains(id.1.as_str()) {
                self.stale.insert(id);
            }
        }
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
        self.plan_each(ports, changed, full, &mut |p| {
            payloads.push(p.clone());
            None
        });
        payloads
    }

    /// Like [`Engine::plan`], but hands each payload to `emit` as soon as it
    /// is complete, so a full sync holds one payload at a time (at 10,000
    /// Services all payloads together are ~45 MB). `emit` answers whether
    /// the payload reached the kernel (then it is committed) or failed (then
    /// forgotten), or `None` to leave that to the caller.
    pub fn plan_each(
        &mut self,
        ports: &BTreeMap<ServicePortKey, ServicePort>,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
        emit: &mut dyn FnMut(&Payload) -> Option<bool>,
    ) {
        let mut emit = |engine: &mut Engine, p: Payload| match emit(&p) {
            Some(true) => engine.commit(&p),
            Some(false) => engine.forget(&p),
            None => {}
        };
        // Large cluster mode follows the whole model; a flip changes every
        // endpoint rule's comment, so it renders and writes everything.
        let flipped = super::large::update_mode(&mut self.cfg, ports);
        let full = full || flipped || std::mem::take(&mut self.force_full);
        let family = self.cfg.family;
        let mut known_before: HashSet<ChainId> = HashSet::new();
        let keys: Vec<ServicePortKey> = if full {
            known_before = self.applied.drain().map(|(k, _)| k).collect();
            self.rule_counts.clear();
            let mut all: BTreeSet<ServicePortKey> = self.summaries.keys().cloned().collect();
            all.extend(ports.keys().filter(|k| k.family == family).cloned());
            all.into_iter().collect()
        } else {
            changed
                .iter()
                .filter(|k| k.family == family)
                .cloned()
                .collect()
        };

        let mut cur = PayloadBuilder::default();
        for chain in render_fixed(&self.cfg) {
            let h = hash_rules(&chain.rules);
            if !self.is_applied(chain.table, &chain.name, h) {
                cur.write(chain, h);
            }
        }

        let mut shared_dirty = full;
        let mut deletes: Vec<ChainId> = Vec::new();
        let mut desired_owned: HashSet<String> = HashSet::new();
        for key in keys {
            let old = self.summaries.remove(&key);
            let Some(sp) = ports.get(&key) else {
                if let Some(old) = old {
                    shared_dirty |= !old.shared.is_empty();
                    deletes.extend(old.owned.into_iter().map(|(n, _)| (Table::Nat, n)));
                }
                continue;
            };
            let frag = render_service_port(sp, &self.cfg);
            let mut summary = Summary {
                owned: Vec::with_capacity(frag.chains.len()),
                shared: frag.shared,
            };
            for chain in frag.chains {
                let h = hash_rules(&chain.rules);
                summary.owned.push((chain.name.clone(), h));
                desired_owned.insert(chain.name.clone());
                if !self.is_applied(chain.table, &chain.name, h) {
                    cur.write(chain, h);
                }
            }
            if let Some(old) = old {
                shared_dirty |= old.shared != summary.shared;
                for (name, _) in old.owned {
                    if !summary.owned.iter().any(|(n, _)| *n == name) {
                        deletes.push((Table::Nat, name));
                    }
                }
            } else {
                shared_dirty |= !summary.shared.is_empty();
            }
            self.summaries.insert(key, summary);
            if cur.lines >= self.max_payload_lines {
                emit(self, std::mem::take(&mut cur).finish());
            }
        }

        for s in Shared::ALL {
            let id = (s.table(), s.chain().to_string());
            if !shared_dirty && self.applied.contains_key(&id) {
                continue;
            }
            let mut rules: Vec<String> = self
                .summaries
                .values()
                .flat_map(|sum| {
                    sum.shared
                        .iter()
                        .filter(|(k, _)| *k == s)
                        .map(|(_, r)| r.clone())
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

        if full {
            // Chains we wrote before that nothing owns any more.
            for id in known_before {
                let fixed_or_shared = !super::names::is_service_chain(&id.1);
                if !fixed_or_shared && !desired_owned.contains(&id.1) {
                    deletes.push(id);
                }
            }
        }
        let owned_now: HashSet<&str> = if self.stale.is_empty() {
            HashSet::new()
        } else {
            self.summaries
                .values()
                .flat_map(|s| s.owned.iter().map(|(n, _)| n.as_str()))
                .collect()
        };
        let stale: Vec<ChainId> = std::mem::take(&mut self.stale)
            .into_iter()
            .filter(|id| !owned_now.contains(id.1.as_str()))
            .collect();
        deletes.extend(stale);
        deletes.sort();
        deletes.dedup();
        for id in deletes {
            cur.delete(id);
        }
        if !cur.is_empty() {
            emit(self, cur.finish());
        }
    }

    /// The payload reached the kernel.
    pub fn commit(&mut self, p: &Payload) {
        for (id, h, n) in &p.writes {
            if let Some((_, old)) = self.applied.insert(id.clone(), (*h, *n)) {
                *self.rule_counts.entry(id.0).or_default() -= old;
            }
            *self.rule_counts.entry(id.0).or_default() += n;
        }
        for id in &p.deletes {
            if let Some((_, old)) = self.applied.remove(id) {
                *self.rule_counts.entry(id.0).or_default() -= old;
            }
        }
    }

    /// A payload failed: forget everything it touched and rewrite everything
    /// next time (the kernel may hold less than we thought).
    pub fn forget(&mut self, p: &Payload) {
        self.force_full = true;
        for (id, _, _) in &p.writes {
            if let Some((_, old)) = self.applied.remove(id) {
                *self.rule_counts.entry(id.0).or_default() -= old;
            }
        }
        for id in &p.deletes {
            self.stale.insert(id.clone());
        }
    }
}
