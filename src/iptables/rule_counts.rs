//! What the kernel should hold, as rule counts per chain, shared with the
//! periodic check that runs off the sync loop. Each entry remembers the sync
//! generation that last touched it (marked before a restore starts), so a
//! chain being rewritten while the check reads the kernel is never mistaken
//! for damage.

use super::names::ChainName;
use super::render::Table;
use super::state::Payload;
use crate::model::Family;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// A chain, by a 64-bit hash of its family, table and name: at 10,000
/// Services there are 60,000 chains, and names as keys took ~12 MB. Kept in
/// a `BTreeMap`, which grows a node at a time (a `HashMap` that size is half
/// empty after it doubles, and holds both tables while it does).
type Key = u64;

fn key(family: Family, table: Table, name: &str) -> Key {
    key_of(family, table, &ChainName::new(name))
}

fn key_of(family: Family, table: Table, name: &ChainName) -> Key {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (family, table, name).hash(&mut h);
    h.finish()
}

use crate::xtables::names::WRITTEN_BY_OTHERS;

#[derive(Debug, Clone, Copy)]
struct Entry {
    family: Family,
    table: Table,
    rules: u32,
    gen: u64,
}

#[derive(Debug, Default)]
pub struct Written {
    gen: u64,
    chains: BTreeMap<Key, Entry>,
}

pub type Shared = Arc<Mutex<Written>>;

/// What the check found wrong in one table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Damage {
    /// Chains whose rule count differs (flushed or edited by hand), by name.
    pub changed: Vec<String>,
    /// How many chains we wrote are gone from the kernel.
    pub missing: usize,
}

impl Damage {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.missing == 0
    }
}

impl Written {
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// A payload is about to be restored: its chains are in flux until
    /// `commit` or `forget`.
    pub fn begin(&mut self, family: Family, p: &Payload) {
        self.gen += 1;
        let gen = self.gen;
        for id in p.writes.iter().map(|(id, _, _)| id).chain(&p.deletes) {
            if let Some(e) = self.chains.get_mut(&key(family, id.0, &id.1)) {
                e.gen = gen;
            }
        }
    }

    /// A payload reached the kernel.
    pub fn commit(&mut self, family: Family, p: &Payload) {
        self.gen += 1;
        for ((table, name), _, n) in &p.writes {
            if WRITTEN_BY_OTHERS.contains(&name.as_str()) {
                continue;
            }
            let e = Entry {
                family,
                table: *table,
                rules: *n as u32,
                gen: self.gen,
            };
            self.chains.insert(key(family, *table, name), e);
        }
        for id in &p.deletes {
            self.chains.remove(&key(family, id.0, &id.1));
        }
    }

    /// A payload failed: its chains are in an unknown state until rewritten.
    pub fn forget(&mut self, family: Family, p: &Payload) {
        self.gen += 1;
        for (id, _, _) in &p.writes {
            self.chains.remove(&key(family, id.0, &id.1));
        }
    }

    /// Chains of `family`/`table` whose rule count in `counts` (from
    /// [`rule_counts`]) differs from what was written, or that are gone,
    /// among those nobody touched after generation `since` (read before the
    /// kernel was).
    pub fn damaged(&self, since: u64, family: Family, table: Table, counts: &Counts) -> Damage {
        let mut d = Damage::default();
        // Chains we wrote, not touched since, that the dump shows.
        let mut present = 0usize;
        for (name, n) in &counts.0 {
            if let Some(e) = self.chains.get(&key_of(family, table, name)) {
                if e.gen <= since {
                    present += 1;
                    if e.rules != *n {
                        d.changed.push(name.unpack());
                    }
                }
            }
        }
        let ours = self
            .chains
            .values()
            .filter(|e| e.family == family && e.table == table && e.gen <= since)
            .count();
        d.missing = ours.saturating_sub(present);
        d
    }
}

/// Rules per chain in one table's dump, by compact name: a nat table at
/// 10,000 Services has 60,000 chains (as `String` keys ~5 MB).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts(BTreeMap<ChainName, u32>);

impl Counts {
    /// Chains in the dump.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Rules of one chain, if the dump has it.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.0.get(&ChainName::new(name)).map(|n| *n as usize)
    }
}

/// Rules per chain in one table's `iptables-save` output; None when the
/// output is not a readable dump of that table (e.g. iptables-nft reporting
/// the table as incompatible), so nothing can be concluded.
pub fn rule_counts(table: Table, save: &str) -> Option<Counts> {
    let mut c = RuleCounter::new(table);
    save.lines().for_each(|l| c.feed(l));
    c.finish()
}

/// [`rule_counts`] fed one line at a time.
pub struct RuleCounter {
    header: String,
    seen_header: bool,
    incompatible: bool,
    counts: Counts,
}

impl RuleCounter {
    pub fn new(table: Table) -> Self {
        RuleCounter {
            header: format!("*{}", table.name()),
            seen_header: false,
            incompatible: false,
            counts: Counts::default(),
        }
    }

    pub fn feed(&mut self, line: &str) {
        if line == self.header {
            self.seen_header = true;
        } else if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                self.counts.0.entry(ChainName::new(name)).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            if let Some(name) = rest.split_whitespace().next() {
                *self.counts.0.entry(ChainName::new(name)).or_default() += 1;
            }
        }
        if line.contains("incompatible") {
            self.incompatible = true;
        }
    }

    pub fn finish(self) -> Option<Counts> {
        (self.seen_header && !self.incompatible).then_some(self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(writes: &[(&str, usize)], deletes: &[&str]) -> Payload {
        Payload {
            writes: writes
                .iter()
                .map(|(n, c)| ((Table::Nat, n.to_string()), 0, *c))
                .collect(),
            deletes: deletes
                .iter()
                .map(|n| (Table::Nat, n.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn flushed_or_deleted_chains_are_damage_rewrites_meanwhile_are_not() {
        let mut w = Written::default();
        w.commit(
            Family::V4,
            &payload(
                &[
                    ("KUBE-SVC-A", 2),
                    ("KUBE-SVC-B", 1),
                    ("KUBE-SVC-C", 0),
                    ("KUBE-FIREWALL", 0),
                ],
                &[],
            ),
        );
        let since = w.generation();
        // The kernel: A flushed by hand, B intact, C deleted by hand, kubelet
        // added a rule to the shared KUBE-FIREWALL.
        let save = "*nat\n:KUBE-SVC-A - [0:0]\n:KUBE-SVC-B - [0:0]\n:KUBE-FIREWALL - [0:0]\n-A KUBE-SVC-B -j KUBE-SEP-X\n-A KUBE-FIREWALL -j DROP\nCOMMIT\n";
        let counts = rule_counts(Table::Nat, save).unwrap();
        assert_eq!(
            w.damaged(since, Family::V4, Table::Nat, &counts),
            Damage {
                changed: vec!["KUBE-SVC-A".to_string()],
                missing: 1
            }
        );
        assert_eq!(counts.get("KUBE-SVC-B"), Some(1));
        assert_eq!(counts.get("KUBE-SVC-C"), None);
        assert!(w
            .damaged(since, Family::V4, Table::Filter, &counts)
            .is_empty());
        assert!(w.damaged(since, Family::V6, Table::Nat, &counts).is_empty());
        // A sync started rewriting A (and deleting C) while the check read
        // the kernel: not damage.
        w.begin(Family::V4, &payload(&[("KUBE-SVC-A", 3)], &["KUBE-SVC-C"]));
        assert!(w.damaged(since, Family::V4, Table::Nat, &counts).is_empty());
        w.commit(Family::V4, &payload(&[("KUBE-SVC-A", 3)], &["KUBE-SVC-C"]));
        assert!(w.damaged(since, Family::V4, Table::Nat, &counts).is_empty());
    }

    #[test]
    fn service_chains_are_checked_by_their_full_names() {
        let (svc, sep) = ("KUBE-SVC-ABCDEFGHIJKLMNOP", "KUBE-SEP-ABCDEFGHIJKLMNOP");
        let mut w = Written::default();
        w.commit(Family::V4, &payload(&[(svc, 1), (sep, 2)], &[]));
        let since = w.generation();
        let save = format!(
            "*nat\n:{svc} - [0:0]\n:{sep} - [0:0]\n-A {svc} -j {sep}\n-A {sep} -j DNAT\nCOMMIT\n"
        );
        let counts = rule_counts(Table::Nat, &save).unwrap();
        assert_eq!(counts.get(sep), Some(1));
        assert_eq!(
            w.damaged(since, Family::V4, Table::Nat, &counts),
            Damage {
                changed: vec![sep.to_string()],
                missing: 0
            }
        );
        // Same names in another table or family are other chains.
        assert!(w.damaged(since, Family::V6, Table::Nat, &counts).is_empty());
        assert!(w
            .damaged(since, Family::V4, Table::Filter, &counts)
            .is_empty());
    }

    #[test]
    fn unreadable_dumps_prove_nothing() {
        assert!(rule_counts(Table::Nat, "").is_none());
        assert!(rule_counts(
            Table::Nat,
            "# Table `nat' is incompatible, use 'nft' tool.\n"
        )
        .is_none());
        assert!(rule_counts(Table::Nat, "*filter\nCOMMIT\n").is_none());
        assert_eq!(rule_counts(Table::Nat, "*nat\nCOMMIT\n").unwrap().len(), 0);
    }
}
