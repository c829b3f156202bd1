//! Unit tests of chain naming, rendering details and the diffing engine.

use super::names::*;
use super::render::*;
use super::state::Engine;
use crate::model::*;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::fixtures::{endpoint as ep, service_port as sp};

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

fn ports_map(list: Vec<ServicePort>) -> BTreeMap<ServicePortKey, ServicePort> {
    list.into_iter().map(|p| (p.key.clone(), p)).collect()
}

fn service_n(i: usize, endpoints: usize) -> ServicePort {
    let eps = (0..endpoints)
        .map(|e| ep(&format!("10.{}.{}.{}", 1 + i / 250, i % 250, e + 1), 8080))
        .collect();
    sp(
        "bench",
        &format!("svc-{i}"),
        "http",
        Protocol::Tcp,
        &format!("10.96.{}.{}", i / 250, i % 250 + 1),
        80,
        eps,
    )
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

mod backend_with_fake_kernel {
    use super::*;
    use crate::backend::Backend;
    use crate::iptables::apply::Kernel;
    use crate::iptables::backend::IptablesBackend;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log {
        restores: Vec<String>,
        fail_next: usize,
        jumps_present: bool,
        /// Take payloads in pieces, as the real applier does.
        streaming: bool,
        /// Pieces received before each payload's end.
        pieces: Vec<usize>,
    }

    /// A payload arriving in pieces; handled as a whole at its end.
    struct Pieces(Arc<Mutex<Log>>, String, usize);

    impl crate::iptables::apply::RestoreInput for Pieces {
        fn write(&mut self, text: &str) {
            assert!(!text.contains("COMMIT"), "no COMMIT before the end");
            self.1.push_str(text);
            self.2 += 1;
        }
        fn finish(self: Box<Self>, rest: &str) -> anyhow::Result<()> {
            let mut fake = Fake(self.0.clone());
            fake.0.lock().unwrap().pieces.push(self.2);
            fake.restore(Family::V4, &(self.1 + rest))
        }
    }

    struct Fake(Arc<Mutex<Log>>);

    impl Fake {
        fn dump(&self, _: Family, table: Table) -> String {
            // The kernel as the restores left it (chain -> rules), plus a
            // stale chain from an earlier run in nat.
            let l = self.0.lock().unwrap();
            let mut chains: std::collections::BTreeMap<String, usize> = Default::default();
            let mut current = String::new();
            for payload in &l.restores {
                for line in payload.lines() {
                    if let Some(t) = line.strip_prefix('*') {
                        current = t.to_string();
                    } else if current != table.name() {
                    } else if let Some(c) = line.strip_prefix(':') {
                        chains.insert(c.split(' ').next().unwrap().to_string(), 0);
                    } else if let Some(c) = line.strip_prefix("-A ") {
                        *chains
                            .entry(c.split(' ').next().unwrap().to_string())
                            .or_default() += 1;
                    } else if let Some(c) = line.strip_prefix("-X ") {
                        chains.remove(c.trim());
                    }
                }
            }
            if table == Table::Nat {
                chains
                    .entry("KUBE-SVC-STALESTALESTALE1".into())
                    .or_default();
            }
            let mut out = format!("*{}\n", table.name());
            for c in chains.keys() {
                out.push_str(&format!(":{c} - [0:0]\n"));
            }
            for (c, n) in &chains {
                for _ in 0..*n {
                    out.push_str(&format!("-A {c} -j RETURN\n"));
                }
            }
            out.push_str("COMMIT\n");
            out
        }
    }

    impl Kernel for Fake {
        fn restore(&mut self, _: Family, payload: &str) -> anyhow::Result<()> {
            let mut l = self.0.lock().unwrap();
            if l.fail_next > 0 {
                l.fail_next -= 1;
                anyhow::bail!("iptables-restore: line 2 failed");
            }
            l.restores.push(payload.to_string());
            Ok(())
        }
        fn restore_begin(
            &mut self,
            _: Family,
        ) -> anyhow::Result<Option<Box<dyn crate::iptables::apply::RestoreInput>>> {
            let streaming = self.0.lock().unwrap().streaming;
            Ok(streaming.then(|| {
                Box::new(Pieces(self.0.clone(), String::new(), 0))
                    as Box<dyn crate::iptables::apply::RestoreInput>
            }))
        }
        fn save_each(
            &mut self,
            f: Family,
            table: Table,
            each: &mut dyn FnMut(&str),
        ) -> anyhow::Result<()> {
            self.dump(f, table).lines().for_each(each);
            Ok(())
        }
        fn has_jump(&mut self, _: Family, _: &Jump) -> anyhow::Result<bool> {
            Ok(self.0.lock().unwrap().jumps_present)
        }
        fn ensure_jump(&mut self, _: Family, _: &Jump) -> anyhow::Result<bool> {
            let mut l = self.0.lock().unwrap();
            let missing = !l.jumps_present;
            l.jumps_present = true;
            Ok(missing)
        }
        fn delete_jump(&mut self, _: Family, _: &Jump) -> anyhow::Result<()> {
            Ok(())
        }
        fn available(&mut self, f: Family) -> bool {
            f == Family::V4
        }
        fn is_legacy(&mut self) -> bool {
            false
        }
    }

    fn backend(log: &Arc<Mutex<Log>>) -> IptablesBackend {
        backend_lines(log, None)
    }

    fn backend_lines(log: &Arc<Mutex<Log>>, max_lines: Option<usize>) -> IptablesBackend {
        let l = log.clone();
        IptablesBackend::new(
            Arc::new(move || Box::new(Fake(l.clone())) as Box<dyn Kernel>),
            vec![RenderConfig::new(Family::V4), RenderConfig::new(Family::V6)],
            max_lines,
        )
    }

    #[test]
    fn missing_jumps_go_in_with_the_chains_of_a_full_sync() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut b = backend(&log);
        let ports = ports_map(vec![service_n(0, 1)]);
        let all: BTreeSet<_> = ports.keys().cloned().collect();
        b.sync(&ports, &all, true).unwrap();
        let last = log.lock().unwrap().restores.last().unwrap().clone();
        let nat = &last[..last.find("*filter").unwrap()];
        let declared = nat.find(":KUBE-SERVICES - [0:0]").unwrap();
        let jump = nat
            .find("-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")
            .unwrap_or_else(|| panic!("{nat}"));
        assert!(declared < jump, "the chain first: {nat}");
        assert!(last.contains("-I FORWARD "), "{last}");
        // Present: nothing inserted, on a full sync or any other.
        log.lock().unwrap().jumps_present = true;
        b.sync(&ports, &BTreeSet::new(), true).unwrap();
        let last = log.lock().unwrap().restores.last().unwrap().clone();
        assert!(!last.contains("-I "), "{last}");
    }

    #[test]
    fn a_failed_full_sync_still_puts_back_missing_jumps() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut b = backend(&log);
        let ports = ports_map(vec![service_n(0, 1)]);
        let all: BTreeSet<_> = ports.keys().cloned().collect();
        log.lock().unwrap().jumps_present = true;
        b.sync(&ports, &all, true).unwrap();
        // A jump deleted by hand, and the full sync that follows fails: the
        // chains written before are reachable again meanwhile.
        log.lock().unwrap().jumps_present = false;
        log.lock().unwrap().fail_next = 1;
        assert!(b.sync(&ports, &BTreeSet::new(), true).is_err());
        assert!(log.lock().unwrap().jumps_present, "put back with -I");
    }

    #[test]
    fn one_large_payload_goes_out_in_pieces_and_a_failed_one_is_forgotten() {
        // As with legacy iptables: the whole table in one payload.
        let ports = ports_map((0..1500).map(|i| service_n(i, 2)).collect());
        let all: BTreeSet<_> = ports.keys().cloned().collect();
        let whole = Arc::new(Mutex::new(Log::default()));
        backend_lines(&whole, Some(usize::MAX))
            .sync(&ports, &all, true)
            .unwrap();
        let streamed = Arc::new(Mutex::new(Log {
            streaming: true,
            ..Default::default()
        }));
        let mut b = backend_lines(&streamed, Some(usize::MAX));
        let stats = b.sync(&ports, &all, true).unwrap();
        assert_eq!(stats.calls, 1);
        {
            let (w, s) = (whole.lock().unwrap(), streamed.lock().unwrap());
            assert_eq!(s.pieces.len(), 1);
            assert!(s.pieces[0] > 2, "{:?}", s.pieces);
            assert_eq!(s.restores, w.restores, "the same text, in pieces");
        }
        // The next full sync fails at its end: nothing is committed, and
        // the one after rewrites everything.
        streamed.lock().unwrap().fail_next = 1;
        assert!(b.sync(&ports, &BTreeSet::new(), true).is_err());
        assert_eq!(streamed.lock().unwrap().restores.len(), 1);
        let stats = b.sync(&ports, &BTreeSet::new(), false).unwrap();
        assert!(stats.written >= 1500 * 3, "every chain again: {stats:?}");
        assert_eq!(streamed.lock().unwrap().restores.len(), 2);
    }

    #[test]
    fn failure_leaves_rules_and_next_sync_is_full() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut b = backend(&log);
        assert_eq!(
            b.families(),
            vec![Family::V4],
            "v6 tools unavailable: skipped"
        );
        let mut ports = ports_map((0..3).map(|i| service_n(i, 2)).collect());
        let all: BTreeSet<_> = ports.keys().cloned().collect();
        let stats = b.sync(&ports, &all, true).unwrap();
        assert!(stats.full && stats.calls >= 1);

        // An endpoint change whose restore fails: error out, nothing deleted.
        let key = ports.keys().next().unwrap().clone();
        ports.get_mut(&key).unwrap().endpoints.pop();
        log.lock().unwrap().fail_next = 1;
        let before = log.lock().unwrap().restores.len();
        assert!(b.sync(&ports, &[key.clone()].into(), false).is_err());
        assert_eq!(
            log.lock().unwrap().restores.len(),
            before,
            "no payload applied"
        );
        // The retry (a full sync, as the loop asks) rewrites every chain.
        let stats = b.sync(&ports, &BTreeSet::new(), true).unwrap();
        let last = log.lock().unwrap().restores.last().unwrap().clone();
        assert!(
            last.contains(":KUBE-SERVICES - [0:0]") && stats.written > 10,
            "{stats:?}"
        );
    }

    #[test]
    fn verify_reports_missing_jumps_and_scan_finds_stale_chains() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut b = backend(&log);
        let ports = ports_map(vec![service_n(0, 1)]);
        let all: BTreeSet<_> = ports.keys().cloned().collect();
        log.lock().unwrap().jumps_present = true;
        b.sync(&ports, &all, true).unwrap();
        assert!(b.verify_job().unwrap()().unwrap(), "jumps present: intact");
        log.lock().unwrap().jumps_present = false;
        assert!(
            !b.verify_job().unwrap()().unwrap(),
            "a missing jump asks for a full sync"
        );
        assert!(
            !log.lock().unwrap().jumps_present,
            "the check writes nothing: the full sync it asks for puts the jump back"
        );
        let job = b.scan_job().unwrap();
        assert!(b.apply_scan(job().unwrap()), "stale chain found");
        b.sync(&ports, &BTreeSet::new(), false).unwrap();
        let last = log.lock().unwrap().restores.last().unwrap().clone();
        assert!(last.contains("-X KUBE-SVC-STALESTALESTALE1"), "{last}");
    }
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
        let f = render_service_port(
            &p,
            &RenderConfig {
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                ..RenderConfig::new(Family::V4)
            },
        );
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
