//! The iptables backend on the host kernel, with real TCP/UDP traffic between
//! network namespaces. Needs root; skips with a printed reason otherwise.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn traffic_reaches_pods_through_every_kind_of_vip() {
    require_kernel!();
    let mut lab = Lab::new();
    pods3(&mut lab);
    let mut objs = String::new();
    objs += &service("web", "{type: LoadBalancer, clusterIP: 10.96.0.10, externalIPs: [192.0.2.10], ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}")
        .replace("\n---\n", "\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}\n---\n");
    objs += &slice("web-1", "web", "[{name: http, port: 8080}]", &LOCAL3);
    objs += &service(
        "dns",
        "{clusterIP: 10.96.0.53, ports: [{name: dns, port: 53, protocol: UDP}]}",
    );
    objs += &slice(
        "dns-1",
        "dns",
        "[{name: dns, port: 5353, protocol: UDP}]",
        &LOCAL3,
    );
    objs += &service("empty", "{clusterIP: 10.96.0.20, ports: [{port: 80}]}");
    objs += &service(
        "sticky",
        "{clusterIP: 10.96.0.30, sessionAffinity: ClientIP, ports: [{port: 80}]}",
    );
    objs += &slice("sticky-1", "sticky", "[{port: 8080}]", &LOCAL3);
    objs += &service("solo", "{clusterIP: 10.96.0.40, ports: [{port: 80}]}");
    objs += &slice(
        "solo-1",
        "solo",
        "[{port: 8080}]",
        &[("10.244.1.10", NODE_NAME)],
    );
    objs += &service(
        "named",
        "{clusterIP: 10.96.0.50, ports: [{name: web, port: 80, targetPort: web-port}]}",
    );
    objs += &slice(
        "named-a",
        "named",
        "[{name: web, port: 8080}]",
        &[("10.244.1.10", NODE_NAME), ("10.244.1.11", NODE_NAME)],
    );
    objs += &slice(
        "named-b",
        "named",
        "[{name: web, port: 9090}]",
        &[("10.244.1.12", NODE_NAME)],
    );
    objs += &service("local", "{type: NodePort, clusterIP: 10.96.0.60, externalTrafficPolicy: Local, ports: [{port: 80, nodePort: 30081}]}");
    objs += &slice(
        "local-1",
        "local",
        "[{port: 8080}]",
        &[("10.244.1.10", NODE_NAME), ("10.244.9.9", "node-b")],
    );
    lab.write("objects.yaml", &objs);
    lab.start_proxy(&[]);

    let node = lab.node.clone();
    wait_until("ClusterIP answers", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok()
    });

    // ClusterIP from the node: spread over all three pods (expected 20 each).
    let hits = spread(&node, "http://10.96.0.10/", 60);
    eprintln!("ClusterIP from node, 60 requests: {hits:?}");
    at_least_each(&hits, &["pod0:8080", "pod1:8080", "pod2:8080"], 5);

    // ClusterIP from a pod.
    let pod1 = lab.pod_ns("pod1");
    let hits = spread(&pod1, "http://10.96.0.10/", 30);
    at_least_each(&hits, &["pod0:8080", "pod1:8080", "pod2:8080"], 1);

    // NodePort, externalIP and LoadBalancer IP from the external client.
    let client = lab.client.clone();
    for url in [
        format!("http://{NODE_IP}:30080/"),
        "http://192.0.2.10/".into(),
        "http://198.51.100.10/".into(),
    ] {
        let hits = spread(&client, &url, 30);
        eprintln!("{url} from client, 30 requests: {hits:?}");
        at_least_each(&hits, &["pod0:8080", "pod1:8080", "pod2:8080"], 1);
    }
    // Cluster policy: the pod sees the node (SNAT), not the client.
    let body = curl(&client, &format!("http://{NODE_IP}:30080/"), 2).unwrap();
    assert!(
        body.ends_with(BRIDGE_IP),
        "expected SNAT to the node: {body}"
    );

    // UDP over the ClusterIP.
    let hits = udp_spread(&node, "10.96.0.53", 53, 30);
    eprintln!("UDP ClusterIP, 30 queries: {hits:?}");
    assert_eq!(hits.get("timeout"), None, "{hits:?}");
    assert!(hits.len() >= 2, "UDP should spread: {hits:?}");

    // No endpoints: refused at once (REJECT), not a timeout.
    assert_eq!(curl(&node, "http://10.96.0.20/", 3), Err(7));
    assert_eq!(curl(&pod1, "http://10.96.0.20/", 3), Err(7));

    // Session affinity: every request lands on the same pod.
    let hits = spread(&node, "http://10.96.0.30/", 20);
    assert_eq!(hits.len(), 1, "sessionAffinity ClientIP: {hits:?}");

    // Hairpin: a pod reaching itself through its own service.
    let pod0 = lab.pod_ns("pod0");
    assert_eq!(
        spread(&pod0, "http://10.96.0.40/", 5).get("pod0:8080"),
        Some(&5)
    );

    // Named targetPort resolving to 8080 on some pods and 9090 on another.
    let hits = spread(&node, "http://10.96.0.50/", 60);
    eprintln!("named targetPort, 60 requests: {hits:?}");
    at_least_each(&hits, &["pod0:8080", "pod1:8080", "pod2:9090"], 5);

    // externalTrafficPolicy Local: only the local endpoint, client IP kept.
    for _ in 0..20 {
        let body = curl(&client, &format!("http://{NODE_IP}:30081/"), 2).unwrap();
        assert_eq!(body, format!("pod0:8080 {CLIENT_IP}"), "eTP Local");
    }
    assert!(lab.proxy_running());
}

#[test]
fn dual_stack_programs_both_families() {
    require_kernel!();
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    lab.add_pod("pod1", 11, &[8080], &[]);
    let mut objs = service("dual", "{clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10, \"fd00:96::10\"], ipFamilies: [IPv4, IPv6], type: NodePort, ports: [{port: 80, targetPort: 8080, nodePort: 30090}]}");
    objs += &slice(
        "dual-4",
        "dual",
        "[{port: 8080}]",
        &[("10.244.1.10", NODE_NAME), ("10.244.1.11", NODE_NAME)],
    );
    objs += &slice(
        "dual-6",
        "dual",
        "[{port: 8080}]",
        &[("fd00:244:1::10", NODE_NAME), ("fd00:244:1::11", NODE_NAME)],
    );
    lab.write("dual.yaml", &objs);
    lab.start_proxy(&[]);
    let node = lab.node.clone();
    wait_until("IPv6 ClusterIP answers", WAIT, || {
        curl(&node, "http://[fd00:96::10]/", 1).is_ok()
    });
    at_least_each(
        &spread(&node, "http://[fd00:96::10]/", 30),
        &["pod0:8080", "pod1:8080"],
        3,
    );
    at_least_each(
        &spread(&node, "http://10.96.0.10/", 30),
        &["pod0:8080", "pod1:8080"],
        3,
    );
    let client = lab.client.clone();
    let body = curl(&client, &format!("http://[{NODE_IP6}]:30090/"), 2).unwrap();
    assert!(body.starts_with("pod"), "{body}");
    assert!(lab.save(true, "nat").contains("[fd00:244:1::10]:8080"));
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

/// One UDP query from a fixed source port (so conntrack sees one flow).
fn udp_from_port(lab: &Lab, ip: &str, port: u16, sport: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{sport}))\ns.settimeout(1)\ntry:\n  s.sendto(b'q',('{ip}',{port})); print(s.recvfrom(200)[0].decode().split()[0])\nexcept OSError: print('timeout')\n"
    );
    let out = lab.in_ns(&lab.node, &["python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn stale_udp_conntrack_entries_are_flushed() {
    require_kernel!();
    if run(&["sh", "-c", "command -v conntrack"]).status.code() != Some(0) {
        support::skip("conntrack tool not installed (run scripts/setup.sh)");
        return;
    }
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
        udp_from_port(&lab, "10.96.0.53", 53, 40000) == "pod0:5353"
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
        || udp_from_port(&lab, "10.96.0.53", 53, 40000) == "pod1:5353",
    );
}
