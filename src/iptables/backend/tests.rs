//! The iptables backend against the shared fake kernel: what it writes,
//! when, and what it does after failures.

use super::*;
use crate::model::fixtures::{numbered as service_n, ports as ports_map};
use crate::xtables::fake::{FakeIptables, FakeState};
use std::sync::MutexGuard;

/// A fake kernel whose IPv6 tools do not work, with a stale service chain
/// from an earlier run in nat.
fn fake() -> FakeIptables {
    let f = FakeIptables::default();
    {
        let mut s = f.state();
        s.unavailable.insert(Family::V6);
        s.leftovers
            .push((Table::Nat, "KUBE-SVC-STALESTALESTALE1".into()));
    }
    f
}

fn backend(f: &FakeIptables) -> IptablesBackend {
    backend_lines(f, None)
}

fn backend_lines(f: &FakeIptables, max_lines: Option<usize>) -> IptablesBackend {
    IptablesBackend::new(
        f.factory(),
        vec![RenderConfig::new(Family::V4), RenderConfig::new(Family::V6)],
        max_lines,
    )
}

/// Marks every iptables-mode jump present (or none).
fn set_jumps(s: &mut MutexGuard<'_, FakeState>, present: bool) {
    s.jumps.clear();
    if present {
        s.add_jumps(&jumps::iptables_mode());
    }
}

fn jumps_present(s: &FakeState) -> bool {
    jumps::iptables_mode().iter().all(|j| s.has(j))
}

#[test]
fn missing_jumps_go_in_with_the_chains_of_a_full_sync() {
    let log = fake();
    let mut b = backend(&log);
    let ports = ports_map(vec![service_n(0, 1)]);
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    b.sync(&ports, &all, true).unwrap();
    let last = log.state().restores.last().unwrap().clone();
    let nat = &last[..last.find("*filter").unwrap()];
    let declared = nat.find(":KUBE-SERVICES - [0:0]").unwrap();
    let jump = nat
        .find("-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")
        .unwrap_or_else(|| panic!("{nat}"));
    assert!(declared < jump, "the chain first: {nat}");
    assert!(last.contains("-I FORWARD "), "{last}");
    // Present: nothing inserted, on a full sync or any other.
    set_jumps(&mut log.state(), true);
    b.sync(&ports, &BTreeSet::new(), true).unwrap();
    let last = log.state().restores.last().unwrap().clone();
    assert!(!last.contains("-I "), "{last}");
}

#[test]
fn a_failed_full_sync_still_puts_back_missing_jumps() {
    let log = fake();
    let mut b = backend(&log);
    let ports = ports_map(vec![service_n(0, 1)]);
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    set_jumps(&mut log.state(), true);
    b.sync(&ports, &all, true).unwrap();
    // A jump deleted by hand, and the full sync that follows fails: the
    // chains written before are reachable again meanwhile.
    set_jumps(&mut log.state(), false);
    log.state().fail_next = 1;
    assert!(b.sync(&ports, &BTreeSet::new(), true).is_err());
    assert!(jumps_present(&log.state()), "put back with -I");
}

#[test]
fn one_large_payload_goes_out_in_pieces_and_a_failed_one_is_forgotten() {
    // As with legacy iptables: the whole table in one payload.
    let ports = ports_map((0..1500).map(|i| service_n(i, 2)).collect());
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    let whole = fake();
    backend_lines(&whole, Some(usize::MAX))
        .sync(&ports, &all, true)
        .unwrap();
    let streamed = fake();
    streamed.state().streaming = true;
    let mut b = backend_lines(&streamed, Some(usize::MAX));
    let stats = b.sync(&ports, &all, true).unwrap();
    assert_eq!(stats.calls, 1);
    {
        let (w, s) = (whole.state(), streamed.state());
        assert_eq!(s.pieces.len(), 1);
        assert!(s.pieces[0] > 2, "{:?}", s.pieces);
        assert_eq!(s.restores, w.restores, "the same text, in pieces");
    }
    // The next full sync fails at its end: nothing is committed, and
    // the one after rewrites everything.
    streamed.state().fail_next = 1;
    assert!(b.sync(&ports, &BTreeSet::new(), true).is_err());
    assert_eq!(streamed.state().restores.len(), 1);
    let stats = b.sync(&ports, &BTreeSet::new(), false).unwrap();
    assert!(stats.written >= 1500 * 3, "every chain again: {stats:?}");
    assert_eq!(streamed.state().restores.len(), 2);
}

#[test]
fn failure_leaves_rules_and_next_sync_is_full() {
    let log = fake();
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
    log.state().fail_next = 1;
    let before = log.state().restores.len();
    assert!(b.sync(&ports, &[key.clone()].into(), false).is_err());
    assert_eq!(log.state().restores.len(), before, "no payload applied");
    // The retry (a full sync, as the loop asks) rewrites every chain.
    let stats = b.sync(&ports, &BTreeSet::new(), true).unwrap();
    let last = log.state().restores.last().unwrap().clone();
    assert!(
        last.contains(":KUBE-SERVICES - [0:0]") && stats.written > 10,
        "{stats:?}"
    );
}

#[test]
fn verify_reports_missing_jumps_and_scan_finds_stale_chains() {
    let log = fake();
    let mut b = backend(&log);
    let ports = ports_map(vec![service_n(0, 1)]);
    let all: BTreeSet<_> = ports.keys().cloned().collect();
    set_jumps(&mut log.state(), true);
    b.sync(&ports, &all, true).unwrap();
    assert!(b.verify_job().unwrap()().unwrap(), "jumps present: intact");
    set_jumps(&mut log.state(), false);
    assert!(
        !b.verify_job().unwrap()().unwrap(),
        "a missing jump asks for a full sync"
    );
    assert!(
        !jumps_present(&log.state()),
        "the check writes nothing: the full sync it asks for puts the jump back"
    );
    let job = b.scan_job().unwrap();
    assert!(b.apply_scan(job().unwrap()), "stale chain found");
    b.sync(&ports, &BTreeSet::new(), false).unwrap();
    let last = log.state().restores.last().unwrap().clone();
    assert!(last.contains("-X KUBE-SVC-STALESTALESTALE1"), "{last}");
}
