//! Another process holding the xtables lock (its own test binary: holding the
//! host-wide lock must not slow other tests). Legacy iptables takes the lock;
//! iptables-nft does not, so the test runs the legacy backend.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn a_held_xtables_lock_delays_syncs_without_breaking_anything() {
    require_kernel!();
    let usable = run(&[
        "sh",
        "-c",
        "command -v flock && command -v iptables-legacy-restore && iptables-legacy-save -t nat",
    ]);
    if !usable.status.success() {
        support::skip("flock or iptables-legacy not usable here");
        return;
    }
    let mut lab = Lab::new();
    lab.flavor = "-legacy".into();
    lab.add_pod("pod0", 10, &[8080], &[]);
    lab.add_pod("pod1", 11, &[8080], &[]);
    let web = |eps: &[(&str, &str)]| {
        service(
            "web",
            "{clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}",
        ) + &slice("web-1", "web", "[{port: 8080}]", eps)
    };
    lab.write("web.yaml", &web(&[("10.244.1.10", NODE_NAME)]));
    lab.start_proxy(&["--iptables-backend", "legacy"]);
    let node = lab.node.clone();
    wait_until("ClusterIP answers", Duration::from_secs(15), || {
        curl(&node, "http://10.96.0.10/", 1).is_ok()
    });
    let failures_before = metric(
        &node,
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    );

    // Another process takes the lock for 12 s; meanwhile pod1 joins.
    let held = Instant::now();
    let mut holder = Command::new("flock")
        .args(["/run/xtables.lock", "sleep", "12"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.write(
        "web.yaml",
        &web(&[("10.244.1.10", NODE_NAME), ("10.244.1.11", NODE_NAME)]),
    );
    // Traffic keeps flowing on the rules already in place.
    let (mut tried, mut failed) = (0, 0);
    while held.elapsed() < Duration::from_secs(10) {
        tried += 1;
        if curl(&node, "http://10.96.0.10/", 1).is_err() {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = holder.wait();
    wait_until(
        "pod1 answers once the lock is free",
        Duration::from_secs(40),
        || spread(&node, "http://10.96.0.10/", 6).contains_key("pod1:8080"),
    );
    let applied_after = held.elapsed();
    let failures = metric(
        &node,
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    ) - failures_before;
    // The recovery is logged just after the restore that let pod1 in.
    wait_until("the recovery is logged", Duration::from_secs(5), || {
        lab.log().contains("sync recovered")
    });
    let log = lab.log();
    let episodes = log
        .matches("sync failed; rules in the kernel are left as they were")
        .count();
    println!(
        "xtables lock held 12 s: {tried} requests meanwhile, {failed} failed; {failures} failed restores counted; logged {episodes} time(s); change applied {:.1}s after the lock was taken",
        applied_after.as_secs_f64()
    );
    assert_eq!(failed, 0, "existing rules keep working");
    assert!(failures >= 1.0, "the failed syncs are counted");
    assert_eq!(episodes, 1, "one error per episode, not per retry:\n{log}");
}
