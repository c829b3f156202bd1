//! What the kernel should hold, as rule counts per chain, shared with the
//! periodic check that runs off the sync loop. Each entry remembers the sync
//! generation that wrote it, so a chain rewritten while the check was reading
//! the kernel is not mistaken for damage.

use super::render::Table;
use super::state::{ChainId, Payload};
use crate::model::Family;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

type Key = (Family, ChainId);

#[derive(Debug, Default, Clone)]
pub struct Written {
    gen: u64,
    chains: HashMap<Key, (usize, u64)>,
}

pub type Shared = Arc<Mutex<Written>>;

impl Written {
    /// A payload reached the kernel.
    pub fn commit(&mut self, family: Family, p: &Payload) {
        self.gen += 1;
        for (id, _, n) in &p.writes {
            self.chains.insert((family, id.clone()), (*n, self.gen));
        }
        for id in &p.deletes {
            self.chains.remove(&(family, id.clone()));
        }
    }

    /// A payload failed: its chains are in an unknown state until rewritten.
    pub fn forget(&mut self, family: Family, p: &Payload) {
        self.gen += 1;
        for (id, _, _) in &p.writes {
            self.chains.remove(&(family, id.clone()));
        }
    }

    pub fn snapshot(&self) -> Written {
        self.clone()
    }

    /// Chains of `family`/`table` whose rule count in `save` (iptables-save
    /// output) differs from what was written, and that nobody rewrote since
    /// `self` (a snapshot) was taken.
    pub fn damaged(&self, now: &Written, family: Family, table: Table, save: &str) -> Vec<String> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for line in save.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                if let Some(name) = rest.split_whitespace().next() {
                    counts.entry(name).or_default();
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                if let Some(name) = rest.split_whitespace().next() {
                    *counts.entry(name).or_default() += 1;
                }
            }
        }
        let mut out = Vec::new();
        for ((f, (t, name)), (n, _)) in &self.chains {
            if *f != family || *t != table || counts.get(name.as_str()) == Some(n) {
                continue;
            }
            let unchanged = now
                .chains
                .get(&(*f, (*t, name.clone())))
                .is_some_and(|(_, g)| *g <= self.gen);
            if unchanged {
                out.push(name.clone());
            }
        }
        out.sort();
        out
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
                &[("KUBE-SVC-A", 2), ("KUBE-SVC-B", 1), ("KUBE-SVC-C", 0)],
                &[],
            ),
        );
        let snap = w.snapshot();
        // The kernel: A flushed by hand, B intact, C deleted by hand.
        let save = ":KUBE-SVC-A - [0:0]\n:KUBE-SVC-B - [0:0]\n-A KUBE-SVC-B -j KUBE-SEP-X\n";
        assert_eq!(
            snap.damaged(&w, Family::V4, Table::Nat, save),
            vec!["KUBE-SVC-A", "KUBE-SVC-C"]
        );
        assert!(snap.damaged(&w, Family::V4, Table::Filter, save).is_empty());
        assert!(snap.damaged(&w, Family::V6, Table::Nat, save).is_empty());
        // A sync rewrote A (and deleted C) while the check read the kernel.
        w.commit(Family::V4, &payload(&[("KUBE-SVC-A", 3)], &["KUBE-SVC-C"]));
        assert!(snap.damaged(&w, Family::V4, Table::Nat, save).is_empty());
    }
}
