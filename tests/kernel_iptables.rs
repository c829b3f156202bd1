//! The iptables backend on the host kernel, with real TCP/UDP traffic between
//! network namespaces. Needs root; skips with a printed reason otherwise.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn traffic_reaches_pods_through_every_kind_of_vip() {
    require_kernel!();
    scenarios::every_kind_of_vip(&[]);
}

#[test]
fn policies_and_endpoint_conditions() {
    require_kernel!();
    scenarios::policies(&[]);
}

#[test]
fn dual_stack_programs_both_families() {
    require_kernel!();
    scenarios::dual_stack(&[], |lab| {
        assert!(lab.save(true, "nat").contains("[fd00:244:1::10]:8080"));
    });
}

#[test]
fn bad_input_is_skipped_and_named_once() {
    require_kernel!();
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    let good = service(
        "good",
        "{clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}",
    ) + &slice(
        "good-1",
        "good",
        "[{port: 8080}]",
        &[("10.244.1.10", NODE_NAME)],
    );
    lab.write("good.yaml", &good);
    let hostile =
        std::fs::read_to_string(root().join("tests/fixtures/hostile/objects.yaml")).unwrap();
    lab.write("hostile.yaml", &hostile);
    lab.write(
        "broken.yaml",
        "kind: Service\nmetadata: {name: x\n  spec: [\n",
    );
    lab.start_proxy(&[]);
    let node = lab.node.clone();
    wait_until("good answers", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok()
    });
    wait_until("hostile file's valid service programmed", WAIT, || {
        lab.save(false, "nat").contains("app/good:http cluster IP")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.proxy_running(), "bad input must not stop the proxy");
    let log = lab.log();
    for needle in [
        "broken.yaml: not valid YAML",
        "Service app/port-zero",
        "Service app/evil-ip",
        "EndpointSlice app/good-1: invalid address \"999.1.1.1\"",
    ] {
        assert_eq!(
            log.matches(&needle).count(),
            1,
            "{needle:?} logged once:\n{log}"
        );
    }
    // Nothing the objects smuggled reached the kernel.
    for table in ["nat", "filter"] {
        let dump = lab.save(false, table);
        assert!(!dump.contains("-A INPUT -j ACCEPT"), "{dump}");
        assert!(!dump.contains("evil"), "{dump}");
    }
    // A good edit still goes through afterwards.
    lab.write("good.yaml", &good.replace("10.96.0.10", "10.96.0.11"));
    wait_until("edited service answers", WAIT, || {
        curl(&node, "http://10.96.0.11/", 1).is_ok()
    });
}

#[test]
fn rendered_payloads_are_accepted_by_iptables_restore() {
    require_kernel!();
    let ns = format!("kprs{}render", std::process::id() % 100000);
    must(&["ip", "netns", "add", &ns]);
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let mut failures = vec![];
    for fixture in ["golden", "hostile"] {
        let src = format!(
            "dir:{}",
            root().join("tests/fixtures").join(fixture).display()
        );
        let out = run(&[
            bin,
            "render",
            "--proxy-mode",
            "iptables",
            "--source",
            &src,
            "--node",
            NODE_NAME,
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/48",
        ]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let (v4, v6) = match text.split_once("# ip6tables-restore --noflush payload\n") {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (text.clone(), String::new()),
        };
        for (tool, payload) in [("iptables-restore", v4), ("ip6tables-restore", v6)] {
            if payload.trim().is_empty() {
                continue;
            }
            let file = std::env::temp_dir().join(format!("{ns}-{fixture}-{tool}"));
            std::fs::write(&file, &payload).unwrap();
            let out = run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                tool,
                "--test",
                "--noflush",
                &path_str(&file),
            ]);
            if !out.status.success() {
                failures.push(format!(
                    "{fixture}/{tool}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let _ = std::fs::remove_file(file);
        }
    }
    let _ = run(&["ip", "netns", "del", &ns]);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn stale_udp_conntrack_entries_are_flushed() {
    require_kernel!();
    // The proxy deletes the entries over netlink: no conntrack tool needed.
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[5353]);
    lab.add_pod("pod1", 11, &[8080], &[5353]);
    let dns = |ep: &str| {
        service(
            "dns",
            "{clusterIP: 10.96.0.53, ports: [{port: 53, protocol: UDP}]}",
        ) + &slice(
            "dns-1",
            "dns",
            "[{port: 5353, protocol: UDP}]",
            &[(ep, NODE_NAME)],
        )
    };
    lab.write("dns.yaml", &dns("10.244.1.10"));
    lab.start_proxy(&[]);
    wait_until("UDP service answers", WAIT, || {
        scenarios::udp_from_port(&lab, "10.96.0.53", 53, 40000) == "pod0:5353"
    });
    // The flow 40000 -> VIP:53 is now tracked to pod0. Move the endpoint to pod1:
    // without the flush, the same flow would keep reaching pod0 (still alive).
    lab.write("dns.yaml", &dns("10.244.1.11"));
    wait_until("pod0 gone from the rules", WAIT, || {
        !lab.save(false, "nat").contains("10.244.1.10:5353")
    });
    wait_until(
        "same UDP flow now answered by pod1",
        Duration::from_secs(5),
        || scenarios::udp_from_port(&lab, "10.96.0.53", 53, 40000) == "pod1:5353",
    );
}

#[test]
fn no_service_takes_another_services_vip_and_a_freed_claim_moves() {
    require_kernel!();
    scenarios::vip_ownership(&[]);
}

#[test]
fn an_external_ip_on_a_node_address_is_refused_unless_allowed() {
    require_kernel!();
    scenarios::node_address_external_ip(&[], false);
    scenarios::node_address_external_ip(&[], true);
}
