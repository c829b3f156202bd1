//! ipset entry changes over netfilter netlink against the host kernel, in a
//! fresh network namespace: every set type this proxy creates, both
//! families, checked with `ipset save` inside that namespace.

mod support;

use kube_proxy_rs::ipvs::ipset::apply::{IpsetKernel, SystemIpset};
use kube_proxy_rs::ipvs::ipset::wire::{EntryOp, SetType};
use kube_proxy_rs::ipvs::ipset::{self, SetEntries, SetKind};
use kube_proxy_rs::model::Family;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Instant;

fn works(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces and ipsets need root".into());
    }
    if !works(&["ipset", "--version"]) {
        return Some("the ipset tool is not installed".into());
    }
    if !works(&["ip", "-V"]) {
        return Some("ip (iproute2) is not installed".into());
    }
    None
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("kprs-ipsetnl-{}", std::process::id());
        assert!(works(&["ip", "netns", "add", &name]), "ip netns add {name}");
        Netns(name)
    }

    /// Runs `f` on a thread that has joined the namespace: its sockets and
    /// the processes it starts (`ipset`) live there.
    fn run(&self, f: impl FnOnce() + Send + 'static) {
        let path = format!("/var/run/netns/{}", self.0);
        let r = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: a valid namespace descriptor; only this thread moves.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join();
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = works(&["ip", "netns", "del", &self.0]);
    }
}

fn entries(list: &[(SetKind, &[&str])]) -> SetEntries {
    list.iter()
        .map(|(k, es)| (*k, es.iter().map(|e| e.to_string()).collect()))
        .collect()
}

fn ops(from: &[&SetEntries; 2], to: &[&SetEntries; 2]) -> Vec<EntryOp> {
    let mut out = ipset::entry_ops(Family::V4, from[0], to[0]);
    out.extend(ipset::entry_ops(Family::V6, from[1], to[1]));
    out
}

fn saved(sys: &mut SystemIpset) -> [SetEntries; 2] {
    let text = sys.save().unwrap();
    [
        ipset::parse_save(Family::V4, &text),
        ipset::parse_save(Family::V6, &text),
    ]
}

fn body() {
    let mut sys = SystemIpset::default();
    assert!(sys.names().unwrap().is_empty(), "a fresh namespace");
    let empty = SetEntries::new();
    let mut create = ipset::restore_text(Family::V4, &empty, &empty);
    create.push_str(&ipset::restore_text(Family::V6, &empty, &empty));
    create.push_str("create KPRS-SMALL-PORTS bitmap:port range 1000-2000\n");
    sys.restore(&create).unwrap();

    let v4 = entries(&[
        (SetKind::LoopBack, &["10.1.2.3,tcp:8080,10.1.2.3"]),
        (
            SetKind::ClusterIp,
            &["10.96.0.1,tcp:80", "10.96.0.10,udp:53"],
        ),
        (SetKind::NodePortSctp, &["192.168.10.5,sctp:30300"]),
        (
            SetKind::LoadBalancerSourceCidr,
            &[
                "10.96.0.5,tcp:80,192.168.0.0/16",
                "10.96.0.5,tcp:80,10.0.0.7",
            ],
        ),
        (
            SetKind::LoadBalancerSourceIp,
            &["10.96.0.5,tcp:80,192.168.10.5"],
        ),
        (SetKind::NodePortTcp, &["30080"]),
        (SetKind::HealthCheckNodePort, &["31000"]),
        (SetKind::IpvsIps, &["10.96.0.1", "10.96.0.5"]),
    ]);
    let v6 = entries(&[
        (SetKind::LoopBack, &["fd00::5,tcp:8080,fd00::5"]),
        (SetKind::ClusterIp, &["fd00::1,tcp:80"]),
        (
            SetKind::LoadBalancerSourceCidr,
            &["fd00::9,udp:443,fd00:1::/64"],
        ),
        (SetKind::NodePortUdp, &["30053"]),
        (SetKind::IpvsIps, &["fd00::1"]),
    ]);
    let add = ops(&[&empty, &empty], &[&v4, &v6]);
    assert!(add
        .iter()
        .any(|o| o.set_type == SetType::BitmapPort && o.family == Family::V6));
    sys.change(&add).unwrap();
    assert_eq!(saved(&mut sys), [v4.clone(), v6.clone()]);
    sys.change(&add).expect("adding twice is not an error");
    assert_eq!(saved(&mut sys), [v4.clone(), v6.clone()]);

    let mut v4b = v4.clone();
    v4b.get_mut(&SetKind::ClusterIp)
        .unwrap()
        .remove("10.96.0.10,udp:53");
    v4b.remove(&SetKind::NodePortTcp);
    let mut v6b = v6.clone();
    v6b.remove(&SetKind::LoopBack);
    let del = ops(&[&v4, &v6], &[&v4b, &v6b]);
    assert_eq!(del.len(), 3);
    sys.change(&del).unwrap();
    assert_eq!(saved(&mut sys), [v4b.clone(), v6b.clone()]);
    sys.change(&del)
        .expect("deleting a missing entry is not an error");
    assert_eq!(saved(&mut sys), [v4b.clone(), v6b.clone()]);

    // A missing set: restore (which creates sets) may still do it.
    let mut missing = add[0].clone();
    missing.set = "KPRS-NO-SUCH-SET".into();
    let e = sys.change(&[missing]).unwrap_err();
    assert!(e.fallback, "{e}");
    assert!(e.msg.contains("KPRS-NO-SUCH-SET"), "{e}");
    // The kernel refuses: the error names set and entry; no fallback.
    let out_of_range = EntryOp {
        add: true,
        set: "KPRS-SMALL-PORTS".into(),
        set_type: SetType::BitmapPort,
        family: Family::V4,
        entry: "30080".into(),
    };
    let ok_port = EntryOp {
        entry: "1500".into(),
        ..out_of_range.clone()
    };
    let e = sys.change(&[ok_port.clone(), out_of_range]).unwrap_err();
    assert!(!e.fallback, "{e}");
    assert!(
        e.msg.contains("add KPRS-SMALL-PORTS 30080") && e.msg.contains("IPSET_ERR_BITMAP_RANGE"),
        "{e}"
    );
    assert!(!e.msg.contains("1500"), "only the failed entry: {e}");
    assert!(sys.save().unwrap().contains("add KPRS-SMALL-PORTS 1500"));

    // More than one send's worth in one call.
    let many: Vec<String> = (0..600)
        .map(|i| format!("10.97.{}.{},tcp:80", i / 250, i % 250))
        .collect();
    let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let big = entries(&[(SetKind::ClusterIp, &refs)]);
    let t = Instant::now();
    sys.change(&ipset::entry_ops(Family::V4, &empty, &big))
        .unwrap();
    eprintln!("600 entries in one change: {:?}", t.elapsed());
    let got = saved(&mut sys);
    assert_eq!(got[0][&SetKind::ClusterIp].len(), 600 + 1);
    sys.change(&ipset::entry_ops(Family::V4, &big, &empty))
        .unwrap();
    assert_eq!(saved(&mut sys), [v4b.clone(), v6b.clone()]);

    // What an incremental sync of one new local endpoint costs.
    let one = EntryOp {
        add: true,
        set: "KUBE-LOOP-BACK".into(),
        set_type: SetType::HashIpPortIp,
        family: Family::V4,
        entry: "10.244.1.11,tcp:8080,10.244.1.11".into(),
    };
    let mut took = Vec::new();
    for i in 0..400 {
        let o = EntryOp {
            add: i % 2 == 0,
            ..one.clone()
        };
        let t = Instant::now();
        sys.change(&[o]).unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "one entry over netlink: p50 {:?}, p99 {:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
}

#[test]
fn entry_changes_over_netlink_in_a_namespace() {
    if let Some(why) = skip_reason() {
        support::skip(&why);
        return;
    }
    let ns = Netns::new();
    ns.run(body);
}
