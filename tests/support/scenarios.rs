//! Scenarios every proxy mode must pass alike: the same objects, the same
//! probes, the same answers (run by kernel_iptables.rs and kernel_nftables.rs).

use super::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// Every kind of VIP with real TCP and UDP: ClusterIP from the node and a
/// pod, NodePort, externalIP and LoadBalancer IP from outside, SNAT with
/// Cluster policy, UDP, REJECT without endpoints, session affinity,
/// hairpin, a named targetPort, externalTrafficPolicy Local.
pub fn every_kind_of_vip(mode: &[&str]) {
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
    lab.start_proxy(mode);

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

/// A dual-stack Service answers on both families; `programmed_v6` checks
/// the mode's own dump for the IPv6 endpoint.
pub fn dual_stack(mode: &[&str], programmed_v6: impl Fn(&Lab)) {
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
    lab.start_proxy(mode);
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
    programmed_v6(&lab);
}

/// Requests to `url` from `ns` every 20 ms for `secs` seconds, on a thread
/// of their own: (answered, failed).
pub fn probe(ns: &str, url: &str, secs: u64) -> std::thread::JoinHandle<(usize, usize)> {
    let (ns, url) = (ns.to_string(), url.to_string());
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, 0);
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            match curl(&ns, &url, 2) {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    })
}

/// A NodePort Service over three pods, programmed by the proxy started
/// with `from`; then, with requests from outside every 20 ms, the proxy is
/// stopped and started again with `to`, until `gone` says the first mode's
/// rules were removed. No request may fail.
pub fn switch_modes(from: &[&str], to: &[&str], gone: impl Fn(&Lab) -> bool) -> Lab {
    let mut lab = Lab::new();
    pods3(&mut lab);
    lab.write(
        "web.yaml",
        &(service(
            "web",
            "{type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}",
        ) + &slice("web-1", "web", "[{port: 8080}]", &LOCAL3)),
    );
    lab.start_proxy(from);
    let node = lab.node.clone();
    wait_until("the first mode answers", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok()
    });
    let prober = probe(&lab.client, &format!("http://{NODE_IP}:30080/"), 10);
    std::thread::sleep(Duration::from_secs(1));
    lab.stop_proxy(false);
    lab.start_proxy(to);
    wait_until("the first mode's rules removed", WAIT, || gone(&lab));
    let (ok, failed) = prober.join().unwrap();
    eprintln!("NodePort through the switch {from:?} -> {to:?}: {ok} answered, {failed} failed");
    assert!(ok > 50, "{ok}");
    assert_eq!(failed, 0);
    assert!(curl(&node, "http://10.96.0.10/", 2).is_ok());
    lab
}

/// Policies and endpoint conditions, with traffic: internalTrafficPolicy
/// Local (local endpoint only; none local: dropped), externalTrafficPolicy
/// Local with no local endpoint (external traffic dropped, the ClusterIP
/// still served), terminating endpoints used when no endpoint is ready,
/// ten replicas spread over, an ExternalName Service ignored, and
/// masqueradeAll (a pod's request to a ClusterIP arrives from the node).
pub fn policies(mode: &[&str]) {
    let mut lab = Lab::new();
    pods3(&mut lab);
    let term = |ip: &str, ready: bool| {
        format!(
            "- {{addresses: [\"{ip}\"], nodeName: {NODE_NAME}, conditions: {{ready: {ready}, serving: true, terminating: {}}}}}",
            !ready
        )
    };
    let mut objs = String::new();
    objs += &service("itl", "{clusterIP: 10.96.0.70, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080}]}");
    objs += &slice(
        "itl-1",
        "itl",
        "[{port: 8080}]",
        &[("10.244.1.10", NODE_NAME), ("10.244.1.11", "node-b")],
    );
    objs += &service("itl-none", "{clusterIP: 10.96.0.71, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080}]}");
    objs += &slice(
        "itl-none-1",
        "itl-none",
        "[{port: 8080}]",
        &[("10.244.1.11", "node-b")],
    );
    objs += &service("etl-none", "{type: NodePort, clusterIP: 10.96.0.72, externalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080, nodePort: 30072}]}");
    objs += &slice(
        "etl-none-1",
        "etl-none",
        "[{port: 8080}]",
        &[("10.244.1.11", "node-b")],
    );
    objs += &service(
        "term",
        "{clusterIP: 10.96.0.73, ports: [{port: 80, targetPort: 8080}]}",
    );
    objs += &format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: term-1, namespace: test, labels: {{kubernetes.io/service-name: term}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{}\n{}\n- {{addresses: [\"10.244.1.12\"], nodeName: {NODE_NAME}, conditions: {{ready: false, serving: false, terminating: true}}}}\n---\n",
        term("10.244.1.10", false),
        term("10.244.1.11", false)
    );
    objs += &service(
        "ten",
        "{clusterIP: 10.96.0.74, ports: [{name: web, port: 80, targetPort: web}]}",
    );
    objs += &slice("ten-a", "ten", "[{name: web, port: 8080}]", &LOCAL3);
    objs += &slice("ten-b", "ten", "[{name: web, port: 9090}]", &LOCAL3);
    objs += &slice(
        "ten-c",
        "ten",
        "[{name: web, port: 8080}]",
        &[
            ("10.244.1.13", NODE_NAME),
            ("10.244.1.14", NODE_NAME),
            ("10.244.1.15", NODE_NAME),
            ("10.244.1.16", NODE_NAME),
        ],
    );
    objs += &service("ext", "{type: ExternalName, externalName: example.invalid}");
    objs += &service(
        "web",
        "{clusterIP: 10.96.0.75, ports: [{port: 80, targetPort: 8080}]}",
    );
    objs += &slice("web-1", "web", "[{port: 8080}]", &LOCAL3[..1]);
    lab.write("objects.yaml", &objs);
    // Four more pods for the ten replicas (10.244.1.13-16).
    for (i, host) in (13..=16).enumerate() {
        lab.add_pod(&format!("pod{}", 3 + i), host, &[8080], &[]);
    }
    lab.start_proxy(mode);
    let node = lab.node.clone();
    wait_until("the services answer", WAIT, || {
        curl(&node, "http://10.96.0.75/", 1).is_ok()
    });
    // internalTrafficPolicy Local: only the local endpoint; none: dropped.
    assert_eq!(
        spread(&node, "http://10.96.0.70/", 20).get("pod0:8080"),
        Some(&20)
    );
    assert_eq!(
        curl(&node, "http://10.96.0.71/", 2),
        Err(28),
        "ITP Local, no local endpoint"
    );
    // externalTrafficPolicy Local, no local endpoint: NodePort dropped from
    // outside, the ClusterIP (Cluster policy) still answered.
    assert_eq!(
        curl(&lab.client, &format!("http://{NODE_IP}:30072/"), 2),
        Err(28)
    );
    assert_eq!(
        spread(&node, "http://10.96.0.72/", 5).get("pod1:8080"),
        Some(&5)
    );
    // No endpoint ready: the serving terminating ones, not the others.
    let hits = spread(&node, "http://10.96.0.73/", 30);
    at_least_each(&hits, &["pod0:8080", "pod1:8080"], 3);
    // Ten replicas: every one answers.
    let hits = spread(&node, "http://10.96.0.74/", 200);
    eprintln!("ten replicas, 200 requests: {hits:?}");
    at_least_each(
        &hits,
        &[
            "pod0:8080",
            "pod1:8080",
            "pod2:8080",
            "pod0:9090",
            "pod1:9090",
            "pod2:9090",
            "pod3:8080",
            "pod4:8080",
            "pod5:8080",
            "pod6:8080",
        ],
        1,
    );
    // A pod keeps its address through a ClusterIP (it is in --cluster-cidr) ...
    let pod1 = lab.pod_ns("pod1");
    let body = curl(&pod1, "http://10.96.0.75/", 2).unwrap();
    assert_eq!(
        body, "pod0:8080 10.244.1.11",
        "no masquerade for pod traffic"
    );
    // ... unless every ClusterIP request is masqueraded.
    lab.stop_proxy(false);
    let mut all: Vec<&str> = mode.to_vec();
    all.push("--masquerade-all");
    lab.start_proxy(&all);
    wait_until("masqueradeAll in effect", WAIT, || {
        curl(&pod1, "http://10.96.0.75/", 1).is_ok_and(|b| b == format!("pod0:8080 {BRIDGE_IP}"))
    });
    assert!(lab.proxy_running());
    assert!(!lab.log().contains("ExternalName"), "{}", lab.log());
}

/// A Service manifest in any namespace, with extra metadata (e.g. its
/// creationTimestamp) and an optional status.
fn service_in(ns: &str, name: &str, meta: &str, spec: &str, status: &str) -> String {
    let status = if status.is_empty() {
        String::new()
    } else {
        format!("status: {status}\n")
    };
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}{meta}}}\nspec: {spec}\n{status}---\n")
}

/// An EndpointSlice of Service ns/service with ready endpoints on this node.
fn slice_in(ns: &str, service: &str, ports: &str, ips: &[&str]) -> String {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!(
                "- {{addresses: [\"{ip}\"], nodeName: {NODE_NAME}, conditions: {{ready: true}}}}"
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: {ports}\nendpoints:\n{}\n---\n",
        eps.join("\n")
    )
}

/// Only these answers came back (each at least once), and no timeouts.
fn only(hits: &BTreeMap<String, usize>, names: &[&str], what: &str) {
    eprintln!("{what}: {hits:?}");
    at_least_each(hits, names, 1);
}

/// VIP ownership (issue 16), with traffic:
/// 1. `a-tenant/evil` (older than kube-dns, and sorting before kube-system)
///    claims kube-dns's ClusterIP as externalIP on 53/UDP: DNS queries from
///    the node, a pod and outside still reach only kube-dns's pods. (evil
///    has two endpoints: nftables mode's one-endpoint dispatch chain does
///    not DNAT UDP with nft 1.0.6, a separate bug.)
/// 2. Two Services claim 192.0.2.10:80/TCP: the older (shop/old) answers
///    though shop/new sorts first; a third shares the IP on port 81 (MetalLB
///    allow-shared-ip) and keeps it. Deleting shop/old hands the claim to
///    shop/new.
///
/// Refused claims are logged naming both Services and counted in
/// kube_proxy_rs_vip_conflicts.
pub fn vip_ownership(mode: &[&str]) {
    let mut lab = Lab::new();
    pods3(&mut lab);
    lab.add_pod("pod3", 13, &[8080], &[5353]);
    const OLD: &str = ", creationTimestamp: \"2020-01-01T00:00:00Z\", uid: u-old";
    const NEW: &str = ", creationTimestamp: \"2024-01-01T00:00:00Z\", uid: u-new";
    let dns = service_in(
        "kube-system",
        "kube-dns",
        NEW,
        "{clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}",
        "",
    ) + &slice_in(
        "kube-system",
        "kube-dns",
        "[{name: dns, port: 5353, protocol: UDP}]",
        &["10.244.1.10", "10.244.1.11"],
    );
    let evil = service_in(
        "a-tenant",
        "evil",
        OLD,
        "{clusterIP: 10.96.5.5, externalIPs: [10.96.0.10], ports: [{name: dns, port: 53, protocol: UDP}]}",
        "",
    ) + &slice_in(
        "a-tenant",
        "evil",
        "[{name: dns, port: 5353, protocol: UDP}]",
        &["10.244.1.12", "10.244.1.13"],
    );
    let claim = |name: &str, meta: &str, cip: &str, ep: &str, port: u16| {
        service_in(
            "shop",
            name,
            meta,
            &format!(
                "{{clusterIP: {cip}, externalIPs: [192.0.2.10], ports: [{{port: 80, targetPort: {port}}}]}}"
            ),
            "",
        ) + &slice_in("shop", name, &format!("[{{port: {port}}}]"), &[ep])
    };
    let shared = service_in(
        "shop",
        "shared",
        NEW,
        "{type: LoadBalancer, clusterIP: 10.96.6.3, ports: [{port: 81, targetPort: 8080, nodePort: 30081}]}",
        "{loadBalancer: {ingress: [{ip: 192.0.2.10}]}}",
    ) + &slice_in("shop", "shared", "[{port: 8080}]", &["10.244.1.11"]);
    lab.write("dns.yaml", &dns);
    lab.write("evil.yaml", &evil);
    lab.write(
        "new.yaml",
        &claim("new", NEW, "10.96.6.1", "10.244.1.12", 9090),
    );
    lab.write(
        "old.yaml",
        &claim("old", OLD, "10.96.6.2", "10.244.1.10", 8080),
    );
    lab.write("shared.yaml", &shared);
    lab.start_proxy(mode);

    let node = lab.node.clone();
    let client = lab.client.clone();
    let pod1 = lab.pod_ns("pod1");
    // evil and shop/new are programmed (their ClusterIPs answer), so their
    // claims were decided too.
    wait_until("evil's ClusterIP answers", WAIT, || {
        udp_spread(&node, "10.96.5.5", 53, 1)
            .keys()
            .any(|k| k == "pod2:5353" || k == "pod3:5353")
    });
    wait_until("shop/new's ClusterIP answers", WAIT, || {
        curl(&node, "http://10.96.6.1/", 1).is_ok()
    });

    // 1. DNS is not stolen, from anywhere.
    for (who, ns) in [("node", &node), ("pod1", &pod1), ("client", &client)] {
        let hits = udp_spread(ns, "10.96.0.10", 53, 30);
        only(
            &hits,
            &["pod0:5353", "pod1:5353"],
            &format!("DNS from {who}"),
        );
    }

    // 2. The older claim answers; the shared IP's other port too.
    let hits = spread(&client, "http://192.0.2.10/", 20);
    only(
        &hits,
        &["pod0:8080"],
        "192.0.2.10:80 with shop/old and shop/new",
    );
    let hits = spread(&client, "http://192.0.2.10:81/", 10);
    only(&hits, &["pod1:8080"], "192.0.2.10:81 (shared IP)");
    let log = lab.log();
    for needle in [
        "Service a-tenant/evil (port dns): externalIP 10.96.0.10:53/UDP not programmed: it is the ClusterIP of Service kube-system/kube-dns",
        "Service shop/new: externalIP 192.0.2.10:80/TCP not programmed: Service shop/old claimed it earlier",
    ] {
        assert_eq!(log.matches(needle).count(), 1, "{needle:?} once:\n{log}");
    }
    assert_eq!(metric(&node, "kube_proxy_rs_vip_conflicts"), 2.0);

    // The winner goes: the claim moves to shop/new.
    lab.remove("old.yaml");
    wait_until("192.0.2.10:80 answered by shop/new", WAIT, || {
        curl(&client, "http://192.0.2.10/", 1).is_ok_and(|b| b.starts_with("pod2:9090"))
    });
    let hits = spread(&client, "http://192.0.2.10/", 20);
    only(
        &hits,
        &["pod2:9090"],
        "192.0.2.10:80 after shop/old is deleted",
    );
    let hits = spread(&client, "http://192.0.2.10:81/", 10);
    only(&hits, &["pod1:8080"], "192.0.2.10:81 still");
    let hits = udp_spread(&node, "10.96.0.10", 53, 20);
    only(&hits, &["pod0:5353", "pod1:5353"], "DNS still");
    assert_eq!(metric(&node, "kube_proxy_rs_vip_conflicts"), 1.0);
    assert!(lab.proxy_running());
}

/// An externalIP on the node's own address, on a port the node itself
/// serves: not programmed (the node keeps answering) unless `allow`
/// (`--allow-node-ip-external-ips`), when the Service takes it.
pub fn node_address_external_ip(mode: &[&str], allow: bool) {
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    // The node's own server on 7070 (all its addresses).
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Killed(
        std::process::Command::new("ip")
            .args(["netns", "exec", &lab.node, "python3"])
            .arg(root().join("scripts/echo_server.py"))
            .args(["node", "7070", "--bind", "0.0.0.0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let node = lab.node.clone();
    let client = lab.client.clone();
    let own = format!("http://{NODE_IP}:7070/");
    wait_until("the node's own server answers", WAIT, || {
        curl(&client, &own, 1).is_ok_and(|b| b.starts_with("node:7070"))
    });
    lab.write(
        "grab.yaml",
        &(service(
            "grab",
            &format!("{{clusterIP: 10.96.0.70, externalIPs: [{NODE_IP}, 192.0.2.70], ports: [{{port: 7070, targetPort: 8080}}]}}"),
        ) + &slice("grab-1", "grab", "[{port: 8080}]", &[("10.244.1.10", NODE_NAME)])),
    );
    let mut args = mode.to_vec();
    if allow {
        args.push("--allow-node-ip-external-ips");
    }
    lab.start_proxy(&args);
    // Its other externalIP answers: the Service is programmed.
    wait_until("grab's other externalIP answers", WAIT, || {
        curl(&client, "http://192.0.2.70:7070/", 1).is_ok_and(|b| b.starts_with("pod0:8080"))
    });
    let want = if allow { "pod0:8080" } else { "node:7070" };
    for (who, ns) in [("client", &client), ("node", &node)] {
        let hits = spread(ns, &own, 10);
        only(&hits, &[want], &format!("{NODE_IP}:7070 from {who}"));
    }
    if !allow {
        let log = lab.log();
        let needle = format!("Service test/grab: externalIP {NODE_IP}:7070/TCP not programmed: {NODE_IP} is an address of this node");
        assert_eq!(log.matches(&needle).count(), 1, "{needle:?} once:\n{log}");
        assert_eq!(metric(&node, "kube_proxy_rs_vip_conflicts"), 1.0);
    }
    assert!(lab.proxy_running());
}

/// One UDP query from a fixed source port (so conntrack sees one flow).
pub fn udp_from_port(lab: &Lab, ip: &str, port: u16, sport: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{sport}))\ns.settimeout(1)\ntry:\n  s.sendto(b'q',('{ip}',{port})); print(s.recvfrom(200)[0].decode().split()[0])\nexcept OSError: print('timeout')\n"
    );
    let out = lab.in_ns(&lab.node, &["python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
