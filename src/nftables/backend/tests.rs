//! The nftables backend against a fake `nft`: one transaction per sync,
//! full after a failure (the table made anew), the periodic check, other
//! modes' leftovers removed after ours are in, cleanup.

use super::*;
use crate::model::fixtures::{endpoint, numbered, ports as ports_map};
use crate::xtables::fake::FakeIptables;
use crate::xtables::nft::TableListing as Listing;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
struct World {
    scripts: Vec<String>,
    fail_next: usize,
    /// Tables by (family, name), as read back.
    tables: BTreeMap<(Family, String), Listing>,
}

#[derive(Clone, Default)]
struct FakeNft(Arc<Mutex<World>>);

impl NftKernel for FakeNft {
    fn apply(&mut self, script: &str) -> Result<()> {
        let mut w = self.0.lock().unwrap();
        if w.fail_next > 0 {
            w.fail_next -= 1;
            anyhow::bail!("nft -f failed: Error: Could not process rule");
        }
        for l in script.lines() {
            if let Some(rest) = l.strip_prefix("delete table ") {
                let (f, t) = rest.split_once(' ').unwrap();
                let f = if f == "ip" { Family::V4 } else { Family::V6 };
                w.tables.remove(&(f, t.to_string()));
            }
        }
        w.scripts.push(script.to_string());
        // What the table holds now, listed as `nft -t` would.
        for f in [Family::V4, Family::V6] {
            let prefix = format!("add rule {} {TABLE} ", nf_family(f));
            let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for l in w.scripts.concat().lines() {
                if l.starts_with(&format!("delete table {} {TABLE}", nf_family(f))) {
                    chains.clear();
                } else if let Some(rest) =
                    l.strip_prefix(&format!("add chain {} {TABLE} ", nf_family(f)))
                {
                    chains
                        .entry(rest.split(' ').next().unwrap().into())
                        .or_default();
                } else if let Some(rest) =
                    l.strip_prefix(&format!("flush chain {} {TABLE} ", nf_family(f)))
                {
                    chains.entry(rest.into()).or_default().clear();
                } else if let Some(rest) =
                    l.strip_prefix(&format!("delete chain {} {TABLE} ", nf_family(f)))
                {
                    chains.remove(rest);
                } else if let Some(rest) = l.strip_prefix(&prefix) {
                    let (c, r) = rest.split_once(' ').unwrap();
                    chains.entry(c.into()).or_default().push(r.into());
                }
            }
            if chains.is_empty() {
                continue;
            }
            let l = Listing {
                chains: chains.iter().map(|(c, r)| (c.clone(), r.len())).collect(),
                sets: super::super::layout::MapId::ALL
                    .iter()
                    .map(|m| m.name().to_string())
                    .collect(),
            };
            w.tables.insert((f, TABLE.to_string()), l);
        }
        Ok(())
    }

    fn list(&mut self, family: Family, table: &str) -> Result<Option<Listing>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .tables
            .get(&(family, table.to_string()))
            .cloned())
    }
}

fn backend(nft: &FakeNft, ipt: Option<&FakeIptables>) -> NftablesBackend {
    let n = nft.clone();
    let mut v4 = NftConfig::new(Family::V4);
    v4.masq.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    NftablesBackend::new(
        Arc::new(move || Box::new(n.clone()) as Box<dyn NftKernel>),
        ipt.map(|i| i.factory()),
        vec![v4, NftConfig::new(Family::V6)],
    )
}

#[test]
fn one_transaction_per_sync_and_only_elements_for_an_endpoint_change() {
    let nft = FakeNft::default();
    let mut b = backend(&nft, None);
    let mut ports = ports_map((0..3).map(|i| numbered(i, 2)).collect());
    let stats = b.sync(&ports, &BTreeSet::new(), true).unwrap();
    assert!(stats.full && stats.calls == 1);
    let key = ports.keys().next().unwrap().clone();
    ports.get_mut(&key).unwrap().endpoints[0] = endpoint("10.5.5.5", 8080);
    let stats = b.sync(&ports, &[key.clone()].into(), false).unwrap();
    assert!(
        !stats.full && stats.calls == 1 && stats.written == 0,
        "{stats:?}"
    );
    let w = nft.0.lock().unwrap();
    assert_eq!(w.scripts.len(), 2);
    assert!(
        w.scripts[1].lines().all(|l| l.contains(" element ")),
        "{}",
        w.scripts[1]
    );
    // Both families in the first transaction.
    assert!(w.scripts[0].contains("add table ip6 kube-proxy-rs"));
}

#[test]
fn after_a_failure_the_next_sync_is_full_and_makes_the_table_anew() {
    let nft = FakeNft::default();
    let mut b = backend(&nft, None);
    let mut ports = ports_map(vec![numbered(0, 1)]);
    b.sync(&ports, &BTreeSet::new(), true).unwrap();
    let key = ports.keys().next().unwrap().clone();
    ports
        .get_mut(&key)
        .unwrap()
        .endpoints
        .push(endpoint("10.5.5.5", 8080));
    nft.0.lock().unwrap().fail_next = 1;
    assert!(b.sync(&ports, &[key.clone()].into(), false).is_err());
    // Even asked for an incremental sync, it writes everything.
    let stats = b.sync(&ports, &BTreeSet::new(), false).unwrap();
    assert!(stats.full);
    let w = nft.0.lock().unwrap();
    let last = w.scripts.last().unwrap();
    assert!(
        last.starts_with("delete table ip kube-proxy-rs\n"),
        "{last}"
    );
    assert!(last.contains("10.5.5.5 . 8080"));
}

#[test]
fn the_periodic_check_finds_a_flushed_chain_and_a_deleted_table() {
    let nft = FakeNft::default();
    let mut b = backend(&nft, None);
    let ports = ports_map(vec![numbered(0, 2)]);
    b.sync(&ports, &BTreeSet::new(), true).unwrap();
    assert!(b.verify_job().unwrap()().unwrap(), "intact");
    {
        let mut w = nft.0.lock().unwrap();
        let t = w.tables.get_mut(&(Family::V4, TABLE.to_string())).unwrap();
        *t.chains.get_mut("nat-prerouting").unwrap() = 0;
    }
    assert!(!b.verify_job().unwrap()().unwrap(), "a flushed base chain");
    b.sync(&ports, &BTreeSet::new(), true).unwrap();
    assert!(b.verify_job().unwrap()().unwrap());
    nft.0.lock().unwrap().tables.clear();
    assert!(!b.verify_job().unwrap()().unwrap(), "the table is gone");
}

#[test]
fn leftovers_of_other_modes_go_after_ours_are_in() {
    let nft = FakeNft::default();
    let ipt = FakeIptables::default();
    ipt.state().unavailable.insert(Family::V6);
    ipt.state().restores.push(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-ABCDEFGHIJKLMNOP\nCOMMIT\n".into(),
    );
    nft.0
        .lock()
        .unwrap()
        .tables
        .insert((Family::V4, UPSTREAM_TABLE.to_string()), Listing::default());
    let mut b = backend(&nft, Some(&ipt));
    let ports = ports_map(vec![numbered(0, 1)]);
    b.sync(&ports, &BTreeSet::new(), true).unwrap();
    let found = b.scan_job().unwrap()().unwrap();
    assert_eq!(found.upstream_tables, [Family::V4]);
    assert_eq!(found.xtables, [Family::V4]);
    assert!(b.apply_scan(found));
    b.sync(&ports, &BTreeSet::new(), false).unwrap();
    let w = nft.0.lock().unwrap();
    assert!(w
        .scripts
        .iter()
        .any(|s| s == "delete table ip kube-proxy\n"));
    assert!(!w
        .tables
        .contains_key(&(Family::V4, UPSTREAM_TABLE.to_string())));
    let last = ipt.state().restores.last().unwrap().clone();
    assert!(
        last.contains("-X KUBE-SVC-ABCDEFGHIJKLMNOP") && last.contains("-X KUBE-SERVICES"),
        "{last}"
    );
}

#[test]
fn cleanup_deletes_our_tables_and_upstreams() {
    let nft = FakeNft::default();
    let mut b = backend(&nft, None);
    b.sync(&ports_map(vec![numbered(0, 1)]), &BTreeSet::new(), true)
        .unwrap();
    nft.0
        .lock()
        .unwrap()
        .tables
        .insert((Family::V6, UPSTREAM_TABLE.to_string()), Listing::default());
    b.cleanup().unwrap();
    let w = nft.0.lock().unwrap();
    assert!(w.tables.is_empty(), "{:?}", w.tables.keys());
}

#[test]
fn primary_node_ips_restrict_nodeports_and_force_a_full_sync() {
    let nft = FakeNft::default();
    let mut b = backend(&nft, None);
    b.nodeport_primary = true;
    let mut sp = numbered(0, 1);
    sp.node_port = Some(30080);
    let ports = ports_map(vec![sp]);
    b.sync(&ports, &BTreeSet::new(), true).unwrap();
    assert!(b.set_primary_ips(&["192.168.10.5".parse().unwrap()]));
    assert!(
        !b.set_primary_ips(&["192.168.10.5".parse().unwrap()]),
        "no change"
    );
    let stats = b.sync(&ports, &BTreeSet::new(), false).unwrap();
    assert!(stats.full);
    let w = nft.0.lock().unwrap();
    let last = w.scripts.last().unwrap();
    assert!(
        last.contains("ip daddr @nodeport-ips jump nodeports-check"),
        "{last}"
    );
    assert!(last.contains("add element ip kube-proxy-rs nodeport-ips { 192.168.10.5 }"));
}
