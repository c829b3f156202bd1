//! What the kernel should hold, as rule counts per chain, shared with the
//! periodic check that runs off the sync loop. Each entry remembers the sync
//! generation that last touched it (marked before a restore starts), so a
//! chain being rewritten while the check reads the kernel is never mistaken
//! for damage.

use super::render::Table;
use super::state::{ChainId, Payload};
use crate::model::Family;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

type Key = (Family, ChainId);

/// Chains other software also writes (kubelet, older kubelets, the host
/// firewall): their rule counts are not ours to check.
const SHARED: [&str; 5] = [
    "KUBE-FIREWALL",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    "KUBE-KUBELET-CANARY",
];

#[derive(Debug, Default)]
pub struct Written {
    gen: u64,
    chains: HashMap<Key, (usize, u64)>,
}

pub type Shared = Arc<Mutex<Written>>;

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
            if let Some(e) = self.chains.get_mut(&(family, id.clone())) {
                e.1 = gen;
            }
        }
    }

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

    /// Chains of `family`/`table` whose rule count in `counts` (from
    /// [`rule_counts`]) differs from what was written, among those nobody
    /// touched after generation `since` (read before the kernel was).
    pub fn damaged(
        &self,
        since: u64,
        family: Family,
        table: Table,
        counts: &BTreeMap<String, usize>,
    ) -> Vec<String> {
        let mut out: Vec<String> = self
            .chains
            .iter()
            .filter(|((f, (t, name)), (n, g))| {
                *f == family
                    && *t == table
                    && *g <= since
                    && !SHARED.contains(&name.as_str())
                    && counts.get(name) != Some(n)
            })
            .map(|((_, (_, name)), _)| name.clone())
            .collect();
        out.sort();
        out
    }
}

/// Rules per chain in one table's `iptables-save` output; None when the
/// output is not a readable dump of that table (e.g. iptables-nft reporting
/// the table as incompatible), so nothing can be concluded.
pub fn rule_counts(table: Table, save: &str) -> Option<BTreeMap<String, usize>> {
    if !save.lines().any(|l| l == format!("*{}", table.name())) || save.contains("incompatible") {
        return None;
    }
    let mut counts = BTreeMap::new();
    for line in save.lines() {
        if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                counts.entry(name.to_string()).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            if let Some(name) = rest.split_whitespace().next() {
                *counts.entry(name.to_string()).or_default() += 1;
            }
        }
    }
    Some(counts)
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
            vec!["KUBE-SVC-A", "KUBE-SVC-C"]
        );
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
