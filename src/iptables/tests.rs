//! Unit tests of chain naming, rendering details and the diffing engine.

use super::names::*;
use super::render::*;
use super::state::Engine;
use crate::model::*;
use std::collections::BTreeSet;

use crate::model::fixtures::{
    endpoint as ep, numbered as service_n, ports as ports_map, service_port as sp,
};

#[test]
fn chain_names_follow_upstream_hashing() {
    // base32(sha256("ns1/svc1:p80" + "tcp"))[..16], as upstream computes it.
    let s = sp(
        "ns1",
        "svc1",
        "p80",
        Protocol::Tcp,
        "172.30.0.41",
        80,
        vec![ep("10.180.0.1", 80)],
    );
    let names = ServiceChains::of(&s);
    assert_eq!(names.svc, "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(names.ext, "KUBE-EXT-XPGD46QRK7WJZT7O");
    assert_eq!(names.fw, "KUBE-FW-XPGD46QRK7WJZT7O");
    assert_eq!(names.svl, "KUBE-SVL-XPGD46QRK7WJZT7O");
    assert_eq!(
        endpoint_chain(&s, &s.endpoints[0]),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
    // Protocol is part of the hash, so TCP and UDP of one port differ.
    let u = sp(
        "ns1",
        "svc1",
        "p80",
        Protocol::Udp,
        "172.30.0.41",
        80,
        vec![],
    );
    assert_ne!(ServiceChains::of(&u).svc, names.svc);
    for n in [&names.svc, &names.ext, &names.fw, &names.svl] {
        assert!(
            n.len() <= 28,
            "iptables chain names are at most 28 characters: {n}"
        );
    }
}

#[test]
fn probabilities_cascade_for_1_to_10_endpoints() {
    for n in 1..=10usize {
        let eps: Vec<Endpoint> = (0..n)
            .map(|i| ep(&format!("10.0.0.{}", i + 1), 80))
            .collect();
        let s = sp("ns", "s", "", Protocol::Tcp, "10.96.0.1", 80, eps);
        let f = render_service_port(&s, &RenderConfig::new(Family::V4));
        let svc = f
            .chains
            .iter()
            .find(|c| c.name.starts_with("KUBE-SVC-"))
            .unwrap();
        assert_eq!(svc.rules.len(), n);
        for (i, rule) in svc.rules.iter().enumerate() {
            if i + 1 < n {
                let want = format!("--probability {:.10} ", 1.0 / (n - i) as f64);
                assert!(rule.contains(&want), "n={n} i={i}: {rule}");
            } else {
                assert!(
                    !rule.contains("statistic"),
                    "last rule is unconditional: {rule}"
                );
            }
        }
        let seps = f
            .chains
            .iter()
            .filter(|c| c.name.starts_with("KUBE-SEP-"))
            .count();
        assert_eq!(seps, n);
    }
    assert_eq!(probability(3), "0.3333333333");
    assert_eq!(probability(2), "0.5000000000");
    assert_eq!(probability(1), "1.0000000000");
}

#[test]
fn engine_writes_only_what_changed() {
    let mut ports = ports_map((0..3).map(|i| service_n(i, 2)).collect());
    let mut e = Engine::new(RenderConfig::new(Family::V4), usize::MAX);
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    let first = e.plan(&ports, &all, true);
    assert_eq!(first.len(), 1);
    let text = &first[0].text;
    assert!(text.contains(":KUBE-SERVICES - [0:0]") && text.contains(":KUBE-MARK-MASQ - [0:0]"));
    e.commit(&first[0]);

    // Nothing changed: nothing to do.
    assert!(e.plan(&ports, &BTreeSet::new(), false).is_empty());

    // One endpoint replaced: its SVC chain, the new SEP chain, and a delete.
    let key = ports.keys().next().unwrap().clone();
    let p = ports.get_mut(&key).unwrap();
    let old_sep = endpoint_chain(p, &p.endpoints[1]);
    p.endpoints[1] = ep("10.9.9.9", 8080);
    let new_sep = endpoint_chain(p, &p.endpoints[1]);
    let plan = e.plan(&ports, &[key.clone()].into(), false);
    assert_eq!(plan.len(), 1);
    let t = &plan[0].text;
    assert!(t.starts_with("*nat\n"), "filter untouched:\n{t}");
    assert!(
        !t.contains("KUBE-SERVICES"),
        "shared chains untouched:\n{t}"
    );
    assert!(t.contains(&format!(":{new_sep} - [0:0]")));
    assert!(t.contains(&format!("-X {old_sep}\n")));
    assert_eq!(plan[0].writes.len(), 2, "{t}");
    e.commit(&plan[0]);

    // The service goes away: its chains are deleted, KUBE-SERVICES rewritten.
    ports.remove(&key);
    let plan = e.plan(&ports, &[key].into(), false);
    let t = &plan[0].text;
    assert!(t.contains(":KUBE-SERVICES - [0:0]"));
    assert_eq!(t.matches("-X KUBE-").count(), 3, "SVC + 2 SEP:\n{t}");
    e.commit(&plan[0]);
    assert!(e.plan(&ports, &BTreeSet::new(), false).is_empty());
}

#[test]
fn engine_splits_big_syncs_and_keeps_dependencies_in_order() {
    let ports = ports_map((0..400).map(|i| service_n(i, 5)).collect());
    let mut e = Engine::new(RenderConfig::new(Family::V4), 1000);
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    let plan = e.plan(&ports, &all, true);
    assert!(plan.len() > 5, "{} payloads", plan.len());
    for p in &plan[..plan.len() - 1] {
        assert!(p.lines < 1000 + 30, "payload of {} lines", p.lines);
        assert!(
            !p.text.contains(":KUBE-SERVICES "),
            "shared chains come last"
        );
    }
    assert!(plan.last().unwrap().text.contains(":KUBE-SERVICES "));
    // Every chain a rule jumps to is declared in the same or an earlier payload.
    let mut declared: BTreeSet<String> = ["KUBE-MARK-MASQ", "KUBE-NODEPORTS"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for p in &plan {
        for l in p.text.lines() {
            if let Some(c) = l.strip_prefix(':') {
                declared.insert(c.split(' ').next().unwrap().to_string());
            }
        }
        for l in p.text.lines().filter(|l| l.starts_with("-A ")) {
            if let Some(t) = l.split(" -j ").nth(1) {
                let t = t.split(' ').next().unwrap();
                if t.starts_with("KUBE-") {
                    assert!(declared.contains(t), "{t} used before declared");
                }
            }
        }
    }
}

#[test]
fn a_full_sync_deletes_written_chains_nothing_owns() {
    let ports = ports_map(vec![service_n(1, 2)]);
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    let mut e = Engine::new(RenderConfig::new(Family::V4), usize::MAX);
    let first = e.plan(&ports, &all, true);
    e.commit(&first[0]);
    let owned: Vec<String> = first[0]
        .writes
        .iter()
        .map(|(id, _, _)| id.1.clone())
        .filter(|n| is_service_chain(n))
        .collect();
    assert_eq!(owned.len(), 3, "{owned:?}");
    // Chains the engine once wrote that no service port owns now (as if a
    // delete had been lost): a service chain in nat whose name packs, one
    // whose name does not, and a fixed chain, which is never deleted.
    let orphans = [
        (Table::Nat, "KUBE-SEP-ZZZZZZZZZZZZZZZZ".to_string()),
        (Table::Nat, "KUBE-SEP-SHORT".to_string()),
        (Table::Filter, "KUBE-SVC-ZZZZZZZZZZZZZZZZ".to_string()),
    ];
    e.commit(&super::state::Payload {
        writes: orphans.iter().map(|id| (id.clone(), 1, 1)).collect(),
        ..Default::default()
    });
    // An incremental sync with nothing changed leaves them alone ...
    assert!(e.plan(&ports, &BTreeSet::new(), false).is_empty());
    // ... a full one rewrites everything owned and deletes exactly them.
    let plan = e.plan(&ports, &BTreeSet::new(), true);
    assert_eq!(plan.len(), 1);
    let mut want = orphans.to_vec();
    want.sort();
    assert_eq!(plan[0].deletes, want);
    for name in &owned {
        assert!(plan[0].text.contains(&format!(":{name} - [0:0]")), "{name}");
    }
    e.commit(&plan[0]);
    assert!(e.plan(&ports, &BTreeSet::new(), true)[0].deletes.is_empty());
}

#[test]
fn engine_rewrites_after_failure_and_removes_stale_chains() {
    let ports = ports_map(vec![service_n(1, 1)]);
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    let mut e = Engine::new(RenderConfig::new(Family::V4), usize::MAX);
    let plan = e.plan(&ports, &all, true);
    e.forget(&plan[0]);
    // Nothing was committed, so everything is planned again.
    let again = e.plan(&ports, &BTreeSet::new(), false);
    assert_eq!(again[0].writes.len(), plan[0].writes.len());
    e.commit(&again[0]);
    // Chains found in the kernel that no service owns are deleted next time.
    e.note_existing([
        (Table::Nat, "KUBE-SVC-AAAAAAAAAAAAAAAA".to_string()),
        (
            Table::Nat,
            ServiceChains::of(&ports.values().next().unwrap().clone()).svc,
        ),
        (Table::Nat, "KUBE-KUBELET-CANARY".to_string()),
    ]);
    assert!(e.has_stale());
    let plan = e.plan(&ports, &BTreeSet::new(), false);
    assert_eq!(plan.len(), 1);
    assert_eq!(
        plan[0].deletes,
        vec![(Table::Nat, "KUBE-SVC-AAAAAAAAAAAAAAAA".to_string())]
    );
}

#[test]
fn nodeport_addresses_select_node_ips() {
    let mut cfg = RenderConfig::new(Family::V4);
    assert!(shared_tail(Shared::NatServices, &cfg)[0].contains("--dst-type LOCAL"));
    cfg.nodeport_addresses = vec!["192.168.5.0/24".parse().unwrap()];
    cfg.node_ips = vec!["192.168.5.7".parse().unwrap(), "10.0.0.1".parse().unwrap()];
    let tail = shared_tail(Shared::NatServices, &cfg);
    assert_eq!(tail.len(), 1);
    assert!(
        tail[0].contains("-d 192.168.5.7 -j KUBE-NODEPORTS"),
        "{}",
        tail[0]
    );
    assert!(shared_tail(Shared::NatNodePorts, &cfg).is_empty());
}

#[test]
fn every_jump_target_exists_for_all_policy_combinations() {
    for (itp, etp) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut local = ep("10.244.1.10", 8080);
        local.is_local = true;
        let mut p = sp(
            "ns",
            "web",
            "",
            Protocol::Tcp,
            "10.96.0.10",
            80,
            vec![local, ep("10.244.2.10", 8080)],
        );
        p.node_port = Some(30080);
        p.internal_policy_local = itp;
        p.external_policy_local = etp;
        let mut cfg = RenderConfig::new(Family::V4);
        cfg.masq.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        let f = render_service_port(&p, &cfg);
        let declared: BTreeSet<&str> = f.chains.iter().map(|c| c.name.as_str()).collect();
        let rules = f
            .chains
            .iter()
            .flat_map(|c| c.rules.iter())
            .chain(f.shared.iter().map(|(_, r)| r));
        for r in rules {
            if let Some(t) = r.split(" -j ").nth(1).map(|t| t.split(' ').next().unwrap()) {
                if is_service_chain(t) {
                    assert!(
                        declared.contains(t),
                        "itp={itp} etp={etp}: {t} not declared, used by {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn nft_payloads_grow_with_the_square_root_of_the_model() {
    use super::backend::nft_payload_lines;
    assert_eq!(nft_payload_lines(0), 1200);
    assert_eq!(nft_payload_lines(1000), 1200);
    assert_eq!(nft_payload_lines(10_000), 2500);
    assert_eq!(nft_payload_lines(30_000), 4330);
    assert_eq!(nft_payload_lines(1_000_000), 8000);
}
