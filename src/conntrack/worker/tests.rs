//! The cleaner's pass over a fake table, and the thread's coalescing.

use super::*;
use crate::conntrack::wire::{Tuple, UDP};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn entry(odst: &str, sport: u16, dport: u16, rsrc: &str) -> Entry {
    let src = if odst.contains(':') {
        "fd00::7"
    } else {
        "10.244.1.7"
    };
    let t = |src: &str, dst: &str, sport, dport| Tuple {
        src: ip(src),
        dst: ip(dst),
        proto: UDP,
        sport,
        dport,
    };
    Entry {
        orig: t(src, odst, sport, dport),
        reply: t(rsrc, src, 5353, sport),
        zone: 0,
        id: Some(sport as u32),
        status: 0,
    }
}

/// A conntrack table in memory that records what was asked of it.
#[derive(Default)]
struct Fake {
    entries: Vec<Entry>,
    dumps: Vec<Family>,
    delete_calls: usize,
    /// Dumps wait for this to be dropped (the first pass "takes long").
    gate: Option<mpsc::Receiver<()>>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Fake>>);

impl Table for Shared {
    fn dump_udp(&mut self, family: Family, f: &mut dyn FnMut(Entry)) -> Result<usize> {
        let gate = self.0.lock().unwrap().gate.take();
        if let Some(g) = gate {
            let _ = g.recv();
        }
        let mut s = self.0.lock().unwrap();
        s.dumps.push(family);
        let mine: Vec<Entry> = s
            .entries
            .iter()
            .filter(|e| e.family() == family)
            .copied()
            .collect();
        mine.iter().for_each(|e| f(*e));
        Ok(mine.len())
    }

    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted> {
        let mut s = self.0.lock().unwrap();
        s.delete_calls += 1;
        let before = s.entries.len();
        s.entries.retain(|e| !entries.contains(e));
        let deleted = before - s.entries.len();
        Ok(Deleted {
            deleted,
            gone: entries.len() - deleted,
        })
    }
}

fn table() -> (Shared, Vec<Entry>) {
    let entries = vec![
        entry("10.96.0.53", 1, 53, "10.244.1.10"), // to the removed endpoint
        entry("192.0.2.53", 2, 53, "10.244.1.10"), // same, via an external IP
        entry("10.96.0.53", 3, 53, "10.244.1.11"), // to a current endpoint
        entry("192.168.10.5", 4, 30053, "10.244.1.10"), // NodePort, removed endpoint
        entry("10.96.0.60", 5, 53, "10.96.0.60"),  // before that VIP had endpoints
        entry("fd00:96::53", 6, 53, "fd00::10"),
    ];
    let t = Shared::default();
    t.0.lock().unwrap().entries = entries.clone();
    (t, entries)
}

fn removed_endpoint() -> BTreeSet<Flush> {
    let ep = ip("10.244.1.10");
    BTreeSet::from([
        Flush::ToEndpoint {
            service_ip: ip("10.96.0.53"),
            endpoint: ep,
        },
        Flush::ToEndpoint {
            service_ip: ip("192.0.2.53"),
            endpoint: ep,
        },
        Flush::ToNodePortEndpoint {
            family: Family::V4,
            port: 30053,
            endpoint: ep,
        },
    ])
}

#[test]
fn one_dump_per_family_and_one_batch_of_deletes() {
    let (mut t, all) = table();
    let work = Work {
        flushes: removed_endpoint(),
        reconcile: None,
    };
    let r = pass(&mut t, &work).unwrap();
    let s = t.0.lock().unwrap();
    assert_eq!(s.dumps, [Family::V4], "no IPv6 work, no IPv6 dump");
    assert_eq!(s.delete_calls, 1);
    assert_eq!(s.entries, [all[2], all[4], all[5]]);
    assert_eq!(
        r,
        Report {
            dumps: 1,
            seen: 5,
            flushed: 3,
            stale: 0,
            deleted: Deleted {
                deleted: 3,
                gone: 0
            }
        }
    );
}

#[test]
fn nothing_matched_means_no_delete_call() {
    let (mut t, _) = table();
    let work = Work {
        flushes: BTreeSet::from([Flush::ToServiceIp {
            ip: ip("10.96.0.99"),
            port: 53,
        }]),
        reconcile: None,
    };
    assert_eq!(pass(&mut t, &work).unwrap().deleted, Deleted::default());
    assert_eq!(t.0.lock().unwrap().delete_calls, 0);
}

#[test]
fn the_reconcile_and_the_filters_share_the_dump() {
    let (mut t, all) = table();
    let mut targets = Targets::default();
    targets
        .vips
        .insert((ip("10.96.0.60"), 53), [ip("10.244.1.12")].into());
    targets
        .vips
        .insert((ip("fd00:96::53"), 53), [ip("fd00::10")].into());
    let work = Work {
        flushes: removed_endpoint(),
        reconcile: Some(targets),
    };
    let r = pass(&mut t, &work).unwrap();
    let s = t.0.lock().unwrap();
    assert_eq!(s.dumps, [Family::V4, Family::V6]);
    assert_eq!(s.delete_calls, 1, "the IPv6 entry is current: no delete");
    assert_eq!(s.entries, [all[2], all[5]]);
    assert_eq!((r.flushed, r.stale, r.deleted.deleted), (3, 1, 4));
}

#[test]
fn work_merges() {
    let mut a = Work {
        flushes: removed_endpoint(),
        reconcile: Some(Targets::default()),
    };
    let f = Flush::ToServiceIp {
        ip: ip("10.96.0.60"),
        port: 53,
    };
    a.merge(Work {
        flushes: BTreeSet::from([f.clone()]),
        reconcile: None,
    });
    assert_eq!(a.flushes.len(), 4);
    assert!(a.flushes.contains(&f));
    assert!(a.reconcile.is_some(), "kept when later work has none");
    assert!(Work::default().is_empty());
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn submitting_never_waits_and_what_queues_during_a_pass_becomes_one_pass() {
    let (t, all) = table();
    let (release, gate) = mpsc::channel::<()>();
    t.0.lock().unwrap().gate = Some(gate);
    let opened = Arc::new(Mutex::new(0));
    let cleaner = {
        let (t, opened) = (t.clone(), opened.clone());
        Cleaner::spawn_with(move || {
            *opened.lock().unwrap() += 1;
            Ok(Box::new(t.clone()) as Box<dyn Table + Send>)
        })
    };
    let one = |f: Flush| Work {
        flushes: BTreeSet::from([f]),
        reconcile: None,
    };
    // The first pass blocks in its dump; three more submissions meanwhile
    // return at once.
    let started = Instant::now();
    cleaner.submit(one(Flush::ToServiceIp {
        ip: ip("10.96.0.99"),
        port: 53,
    }));
    wait_for("the first pass to start", || {
        t.0.lock().unwrap().gate.is_none()
    });
    for f in removed_endpoint() {
        cleaner.submit(one(f));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(release);
    wait_for("the merged pass", || t.0.lock().unwrap().dumps.len() == 2);
    drop(cleaner);
    let s = t.0.lock().unwrap();
    assert_eq!(s.dumps, [Family::V4, Family::V4], "two passes, not four");
    assert_eq!(s.delete_calls, 1);
    assert_eq!(s.entries, [all[2], all[4], all[5]]);
    assert_eq!(*opened.lock().unwrap(), 1, "the socket is kept");
}

#[test]
fn a_failed_pass_is_retried_alone_then_given_up() {
    let (t, all) = table();
    let attempts = Arc::new(Mutex::new(0));
    let cleaner = {
        let (t, attempts) = (t.clone(), attempts.clone());
        Cleaner::spawn_with(move || {
            let mut n = attempts.lock().unwrap();
            *n += 1;
            if *n == 1 {
                anyhow::bail!("no conntrack netlink here");
            }
            Ok(Box::new(t.clone()) as Box<dyn Table + Send>)
        })
    };
    let work = Work {
        flushes: removed_endpoint(),
        reconcile: None,
    };
    // The first attempt fails; the retry (0.5 s later, 20 ms in tests)
    // succeeds with no new work submitted.
    cleaner.submit(work.clone());
    wait_for("the retry", || t.0.lock().unwrap().delete_calls == 1);
    assert_eq!(*attempts.lock().unwrap(), 2);
    assert_eq!(t.0.lock().unwrap().entries, [all[2], all[4], all[5]]);
    drop(cleaner);

    // A table that never opens: tried 1 + RETRIES times, then left.
    let attempts = Arc::new(Mutex::new(0));
    let cleaner = {
        let attempts = attempts.clone();
        Cleaner::spawn_with(move || {
            *attempts.lock().unwrap() += 1;
            anyhow::bail!("no conntrack netlink here")
        })
    };
    cleaner.submit(work);
    wait_for("every retry", || *attempts.lock().unwrap() == 1 + RETRIES);
    std::thread::sleep(retry_delay(RETRIES) * 2);
    assert_eq!(*attempts.lock().unwrap(), 1 + RETRIES, "given up");
}
