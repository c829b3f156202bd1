//! The IPVS backend in a real kernel with IPVS: Debian's kernel under QEMU
//! (scripts/qemu), with the host filesystem shared in. The one test,
//! `ipvs_suite_in_qemu_guest`, boots the guest once and runs this same test
//! binary there, where the test runs the guest cases (`GUEST_CASES`, plain
//! functions: not tests of their own, so a host run lists nothing skipped)
//! by name, each in its own thread, and prints one line per case; the host
//! side then checks that every case it asked for reported `ok`. Each case
//! builds its own network-namespace lab inside the guest, starts the real
//! binary with `--proxy-mode ipvs` against a `dir:` source and sends real
//! traffic. `KPRS_GUEST_CASES=name,name` runs only those.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn in_guest() -> bool {
    std::env::var("KPRS_IN_GUEST").as_deref() == Ok("1")
}

/// The cases that run inside the guest, by name.
const GUEST_CASES: &[(&str, fn())] = &[
    (
        "guest_traffic_reaches_every_endpoint_through_every_vip",
        guest_traffic_reaches_every_endpoint_through_every_vip,
    ),
    (
        "guest_removed_endpoint_drains_then_goes",
        guest_removed_endpoint_drains_then_goes,
    ),
    (
        "guest_strict_arp_repair_and_cleanup",
        guest_strict_arp_repair_and_cleanup,
    ),
    (
        "guest_restart_under_load_drops_nothing",
        guest_restart_under_load_drops_nothing,
    ),
    ("guest_follows_the_api_server", guest_follows_the_api_server),
];

/// The case that needs the host's control plane.
const NEEDS_CONTROL_PLANE: &str = "guest_follows_the_api_server";

/// How a guest case reports, one line each on the console: `KPRS-GUEST-CASE
/// <name> <ok|FAILED|SKIPPED|UNKNOWN>`.
const REPORT: &str = "KPRS-GUEST-CASE";

/// The case names asked for: `KPRS_GUEST_CASES` (comma separated), or all.
fn wanted_cases() -> Vec<String> {
    match std::env::var("KPRS_GUEST_CASES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        _ => GUEST_CASES.iter().map(|(n, _)| n.to_string()).collect(),
    }
}

/// Inside the guest: runs each wanted case in its own thread (as libtest
/// would), reports it by name, and fails if any did not pass.
fn run_guest_cases() {
    let mut bad = vec![];
    for name in wanted_cases() {
        let outcome = match GUEST_CASES.iter().find(|(n, _)| *n == name) {
            None => "UNKNOWN",
            Some((_, case)) => {
                let skips = support::skips();
                println!("--- guest case {name}");
                let started = Instant::now();
                let result = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(case)
                    .unwrap()
                    .join();
                println!(
                    "--- guest case {name} took {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                match result {
                    Err(_) => "FAILED",
                    Ok(()) if support::skips() > skips => "SKIPPED",
                    Ok(()) => "ok",
                }
            }
        };
        println!("{REPORT} {name} {outcome}");
        if outcome != "ok" {
            bad.push(format!("{name}: {outcome}"));
        }
    }
    assert!(bad.is_empty(), "guest cases did not pass: {bad:?}");
}

/// What the guest reported for each case, from its console.
fn reported(console: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in console.lines() {
        // Anywhere in the line: libtest's `test NAME ... ` may precede it.
        let mut words = l
            .trim_end_matches('\r')
            .split_whitespace()
            .skip_while(|w| *w != REPORT);
        if words.next() == Some(REPORT) {
            if let (Some(name), Some(outcome)) = (words.next(), words.next()) {
                out.entry(name.to_string())
                    .or_default()
                    .push(outcome.to_string());
            }
        }
    }
    out
}

/// Each case asked for that did not report `ok` exactly once (missing,
/// FAILED, SKIPPED, UNKNOWN, repeated), and any reported but not asked for.
fn not_ok(cases: &[String], console: &str) -> Vec<String> {
    let got = reported(console);
    let mut problems = vec![];
    for case in cases {
        match got.get(case).map(Vec::as_slice) {
            Some([one]) if one == "ok" => {}
            Some(outcomes) => problems.push(format!("{case}: {}", outcomes.join(", "))),
            None => problems.push(format!("{case}: no report")),
        }
    }
    for extra in got.keys().filter(|n| !cases.contains(n)) {
        problems.push(format!("{extra}: reported but not asked for"));
    }
    problems
}

#[test]
fn ipvs_suite_in_qemu_guest() {
    if in_guest() {
        require_kernel!();
        run_guest_cases();
        return;
    }
    require_kernel!();
    let exe = std::env::current_exe().unwrap();
    let mut cases = wanted_cases();
    // A real API server on the host for the guest's apiserver-source case
    // (reached from the guest at 10.0.2.2): without one (not built) that case
    // is left out, printed as a skip (a failure in CI as root).
    let cp = if cases.iter().any(|c| c == NEEDS_CONTROL_PLANE) {
        match ControlPlane::start(false) {
            Ok(cp) => Some(cp),
            Err(why) => {
                support::skip(&format!("{NEEDS_CONTROL_PLANE}: {why}"));
                cases.retain(|c| c != NEEDS_CONTROL_PLANE);
                None
            }
        }
    } else {
        None
    };
    let cp_env = cp
        .as_ref()
        .map(|cp| format!("KPRS_GUEST_CP={}:{}", path_str(cp.dir.path()), cp.port))
        .unwrap_or_else(|| "KPRS_GUEST_CP=".into());
    let ci = format!("CI={}", std::env::var("CI").unwrap_or_default());
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(root().join("scripts/qemu/run.sh"))
        .args(["--timeout", "1500", "--mem", "2048", "--"])
        .args(["env", "KPRS_IN_GUEST=1", "RUST_BACKTRACE=1", &cp_env, &ci])
        .arg(format!("KPRS_GUEST_CASES={}", cases.join(",")))
        .arg(&exe)
        .args([
            "ipvs_suite_in_qemu_guest",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().unwrap_or(-1);
    if code == 77 {
        support::skip(
            "the QEMU lab is not installed (scripts/qemu/install.sh); IPVS tests did not run",
        );
        return;
    }
    // The guest's test output, without the kernel's boot noise.
    for l in console.lines().filter(|l| !l.starts_with('[')) {
        println!("guest| {l}");
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("guest run took {:.0}s", started.elapsed().as_secs_f64());
    // Counted by name: every case asked for reported ok, once.
    let problems = not_ok(&cases, &console);
    assert!(
        problems.is_empty(),
        "guest cases (exit {code}): {problems:?}"
    );
    assert_eq!(code, 0, "IPVS tests failed in the guest (exit {code})");
    println!(
        "guest cases ok by name ({}): {}",
        cases.len(),
        cases.join(", ")
    );
}

fn ipvsadm(lab: &Lab) -> String {
    let out = lab.in_ns(&lab.node, &["ipvsadm", "-Ln"]);
    assert!(
        out.status.success(),
        "ipvsadm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Addresses on kube-ipvs0 (empty when the link is missing).
fn ipvs0(lab: &Lab) -> BTreeSet<String> {
    let out = lab.in_ns(
        &lab.node,
        &["ip", "-o", "addr", "show", "dev", "kube-ipvs0"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

fn sysctl(lab: &Lab, key: &str) -> String {
    let out = lab.in_ns(&lab.node, &["sysctl", "-n", key]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Lines of `ipvsadm -Ln` under the virtual server `vip` (its real servers).
fn real_servers(listing: &str, vip: &str) -> Vec<String> {
    let mut out = vec![];
    let mut inside = false;
    for l in listing.lines() {
        if !l.starts_with("  ->") {
            inside = l.split_whitespace().nth(1) == Some(vip);
            continue;
        }
        if inside {
            out.push(l.trim().to_string());
        }
    }
    out
}

fn web_objects() -> String {
    let mut objs = String::new();
    objs += &service("web", "{type: LoadBalancer, clusterIP: 10.96.0.10, externalIPs: [192.0.2.10], ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}")
        .replace("\n---\n", "\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}\n---\n");
    objs += &slice("web-1", "web", "[{name: http, port: 8080}]", &LOCAL3);
    objs
}

fn guest_traffic_reaches_every_endpoint_through_every_vip() {
    let mut lab = Lab::new();
    pods3(&mut lab);
    let mut objs = web_objects();
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
    objs += &service(
        "sticky",
        "{clusterIP: 10.96.0.30, sessionAffinity: ClientIP, ports: [{port: 80}]}",
    );
    objs += &slice("sticky-1", "sticky", "[{port: 8080}]", &LOCAL3);
    lab.write("objects.yaml", &objs);
    lab.start_proxy(&["--proxy-mode", "ipvs"]);
    wait_until("virtual servers programmed", WAIT, || {
        ipvsadm(&lab).contains("10.96.0.30:80") && ipvsadm(&lab).contains("198.51.100.10:80")
    });
    let listing = ipvsadm(&lab);
    println!("{listing}");
    for vip in [
        "10.96.0.10:80",
        "192.0.2.10:80",
        "198.51.100.10:80",
        "192.168.10.5:30080",
    ] {
        let rs = real_servers(&listing, vip);
        assert_eq!(rs.len(), 3, "{vip}: {rs:?}");
        assert!(
            rs.iter()
                .all(|r| r.contains("Masq") && r.split_whitespace().nth(3) == Some("1")),
            "{vip}: {rs:?}"
        );
    }
    assert!(listing.contains("UDP  10.96.0.53:53 rr"), "{listing}");
    assert!(
        listing.contains("TCP  10.96.0.30:80 rr persistent 10800"),
        "{listing}"
    );
    let want: BTreeSet<String> = [
        "10.96.0.10/32",
        "10.96.0.30/32",
        "10.96.0.53/32",
        "192.0.2.10/32",
        "198.51.100.10/32",
    ]
    .map(String::from)
    .into();
    assert_eq!(ipvs0(&lab), want, "kube-ipvs0 holds exactly the VIPs");
    let link = lab.in_ns(&lab.node, &["ip", "link", "show", "kube-ipvs0"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("state DOWN"),
        "left down like upstream"
    );

    // rr: every endpoint answers through every kind of VIP.
    let pods = ["pod0:8080", "pod1:8080", "pod2:8080"];
    for (ns, url) in [
        (lab.node.clone(), "http://10.96.0.10/"),
        (lab.client.clone(), "http://192.0.2.10/"),
        (lab.client.clone(), "http://198.51.100.10/"),
        (lab.client.clone(), "http://192.168.10.5:30080/"),
        (lab.pod_ns("pod0"), "http://10.96.0.10/"),
    ] {
        let hits = spread(&ns, url, 9);
        println!("{url} from {ns}: {hits:?}");
        at_least_each(&hits, &pods, 2);
    }
    let udp = udp_spread(&lab.client, "10.96.0.53", 53, 9);
    println!("UDP 10.96.0.53:53: {udp:?}");
    at_least_each(&udp, &["pod0:5353", "pod1:5353", "pod2:5353"], 1);
    let sticky = spread(&lab.client, "http://10.96.0.30/", 8);
    assert_eq!(
        sticky.len(),
        1,
        "ClientIP affinity: one endpoint: {sticky:?}"
    );
    assert_eq!(sysctl(&lab, "net.ipv4.vs.conntrack"), "1");
    assert_eq!(
        sysctl(&lab, "net.ipv4.conf.all.arp_ignore"),
        "0",
        "strictARP off leaves ARP alone"
    );
    let sets = String::from_utf8_lossy(
        &lab.in_ns(&lab.node, &["ipset", "list", "KUBE-CLUSTER-IP"])
            .stdout,
    )
    .into_owned();
    assert!(
        sets.contains("10.96.0.10,tcp:80") && sets.contains("10.96.0.53,udp:53"),
        "{sets}"
    );
}

fn guest_removed_endpoint_drains_then_goes() {
    let mut lab = Lab::new();
    pods3(&mut lab);
    lab.write("objects.yaml", &web_objects());
    // As the DaemonSet runs it: a privileged `--init-only`, then the proxy
    // with NET_ADMIN and NET_RAW only and /proc/sys read-only.
    let init = lab.in_ns(
        &lab.node,
        &[
            env!("CARGO_BIN_EXE_kube-proxy-rs"),
            "--proxy-mode",
            "ipvs",
            "--init-only",
        ],
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    lab.run_unprivileged();
    lab.start_proxy(&["--proxy-mode", "ipvs"]);
    wait_until("three real servers", WAIT, || {
        real_servers(&ipvsadm(&lab), "10.96.0.10:80").len() == 3
    });
    assert_eq!(
        lab.proxy_caps(),
        "0000000000003000",
        "NET_ADMIN and NET_RAW only"
    );
    // Hold one TCP connection open through the clusterIP for a while.
    let holder = Command::new("ip")
        .args(["netns", "exec", &lab.client, "python3", "-c"])
        .arg("import socket,time\ns=socket.create_connection(('10.96.0.10',80),timeout=5)\ntime.sleep(12)\ns.close()\n")
        .spawn()
        .unwrap();
    let mut busy = String::new();
    wait_until("the held connection shows in ipvsadm", WAIT, || {
        busy = real_servers(&ipvsadm(&lab), "10.96.0.10:80")
            .into_iter()
            .find(|r| r.split_whitespace().nth(4) == Some("1"))
            .and_then(|r| {
                r.split_whitespace()
                    .nth(1)
                    .map(|a| a.split(':').next().unwrap().to_string())
            })
            .unwrap_or_default();
        !busy.is_empty()
    });
    println!("connection held to {busy}");
    let keep: Vec<(&str, &str)> = LOCAL3
        .iter()
        .copied()
        .filter(|(ip, _)| *ip != busy)
        .collect();
    let mut objs = service("web", "{type: LoadBalancer, clusterIP: 10.96.0.10, externalIPs: [192.0.2.10], ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}")
        .replace("\n---\n", "\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}\n---\n");
    objs += &slice("web-1", "web", "[{name: http, port: 8080}]", &keep);
    lab.write("objects.yaml", &objs);
    let weight0 = format!("{busy}:8080");
    wait_until("the busy real server drains at weight 0", WAIT, || {
        real_servers(&ipvsadm(&lab), "10.96.0.10:80")
            .iter()
            .any(|r| r.contains(&weight0) && r.split_whitespace().nth(3) == Some("0"))
    });
    // Idle ones behind the other VIPs go at once.
    let ext = real_servers(&ipvsadm(&lab), "192.0.2.10:80");
    assert_eq!(ext.len(), 2, "{ext:?}");
    // New connections avoid it while it drains.
    let busy_pod = format!(
        "pod{}:8080",
        busy.rsplit('.').next().unwrap().parse::<u8>().unwrap() - 10
    );
    let hits = spread(&lab.node, "http://10.96.0.10/", 6);
    assert!(
        !hits.contains_key(&busy_pod),
        "{busy_pod} still got new connections: {hits:?}"
    );
    let mut holder = holder;
    let _ = holder.wait();
    wait_until("the drained real server is removed once idle", WAIT, || {
        !ipvsadm(&lab).contains(&weight0)
    });
    assert_eq!(real_servers(&ipvsadm(&lab), "10.96.0.10:80").len(), 2);
}

fn guest_strict_arp_repair_and_cleanup() {
    let mut lab = Lab::new();
    pods3(&mut lab);
    lab.write("objects.yaml", &web_objects());
    lab.start_proxy(&[
        "--proxy-mode",
        "ipvs",
        "--ipvs-strict-arp",
        "--sync-period",
        "3s",
    ]);
    wait_until("programmed", WAIT, || ipvs0(&lab).len() == 3);
    assert_eq!(sysctl(&lab, "net.ipv4.conf.all.arp_ignore"), "1");
    assert_eq!(sysctl(&lab, "net.ipv4.conf.all.arp_announce"), "2");
    // kube-ipvs0 deleted by hand: back, with its addresses, within a sync period or two.
    must(&["ip", "-n", &lab.node, "link", "del", "kube-ipvs0"]);
    let t = Instant::now();
    wait_until("kube-ipvs0 repaired", WAIT, || ipvs0(&lab).len() == 3);
    println!(
        "kube-ipvs0 deleted by hand: repaired after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    at_least_each(
        &spread(&lab.node, "http://10.96.0.10/", 6),
        &["pod0:8080", "pod1:8080", "pod2:8080"],
        1,
    );
    // A flushed nat table is repaired too.
    must(&[
        "ip", "netns", "exec", &lab.node, "iptables", "-t", "nat", "-F",
    ]);
    wait_until("nat rules repaired", WAIT, || {
        lab.save(false, "nat").contains("-j KUBE-SERVICES")
    });
    // SIGTERM leaves everything in place.
    lab.stop_proxy(false);
    assert_eq!(real_servers(&ipvsadm(&lab), "10.96.0.10:80").len(), 3);
    assert_eq!(ipvs0(&lab).len(), 3);
    // --cleanup removes every virtual server, kube-ipvs0, the ipsets and chains.
    let out = lab.in_ns(
        &lab.node,
        &[
            env!("CARGO_BIN_EXE_kube-proxy-rs"),
            "--proxy-mode",
            "ipvs",
            "--cleanup",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = ipvsadm(&lab);
    assert!(
        !listing.contains("TCP") && !listing.contains("UDP"),
        "{listing}"
    );
    let link = lab.in_ns(&lab.node, &["ip", "link", "show", "kube-ipvs0"]);
    assert!(!link.status.success(), "kube-ipvs0 is gone");
    let sets = String::from_utf8_lossy(&lab.in_ns(&lab.node, &["ipset", "list", "-n"]).stdout)
        .into_owned();
    assert!(!sets.contains("KUBE-"), "{sets}");
    for table in ["nat", "filter"] {
        let save = lab.save(false, table);
        assert!(!save.contains("KUBE-"), "{table}: {save}");
    }
}

fn guest_restart_under_load_drops_nothing() {
    let mut lab = Lab::new();
    pods3(&mut lab);
    lab.write("objects.yaml", &web_objects());
    lab.start_proxy(&["--proxy-mode", "ipvs"]);
    wait_until("programmed", WAIT, || {
        real_servers(&ipvsadm(&lab), "192.168.10.5:30080").len() == 3
    });
    let load = |ns: String, host: &'static str, port: &'static str| {
        std::thread::spawn(move || {
            let script = path_str(&root().join("scripts/loadgen.py"));
            let out = run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "python3",
                &script,
                host,
                port,
                "20",
                "12",
                "--timeout",
                "3",
            ]);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
    };
    let a = load(lab.pod_ns("pod1"), "10.96.0.10", "80");
    let b = load(lab.client.clone(), NODE_IP, "30080");
    let mut samples_without = 0;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        lab.stop_proxy(true);
        for _ in 0..4 {
            if real_servers(&ipvsadm(&lab), "10.96.0.10:80").len() != 3 || ipvs0(&lab).len() != 3 {
                samples_without += 1;
            }
        }
        lab.start_proxy(&["--proxy-mode", "ipvs"]);
        for _ in 0..6 {
            if real_servers(&ipvsadm(&lab), "10.96.0.10:80").len() != 3 {
                samples_without += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    println!("ipvs restart load, ClusterIP from a pod: {a}");
    println!("ipvs restart load, NodePort from the client: {b}");
    assert_eq!(
        samples_without, 0,
        "virtual servers or VIPs vanished during a restart"
    );
    for r in [&a, &b] {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        assert_eq!(v["attempted"], 240, "{r}");
        assert_eq!(v["failed"], 0, "{r}");
    }
}

/// ipvs mode against the host's real kube-apiserver (issue: e2e in the guest).
fn guest_follows_the_api_server() {
    let cp = std::env::var("KPRS_GUEST_CP").unwrap_or_default();
    let Some((dir, port)) = cp.rsplit_once(':') else {
        support::skip("no control plane on the host");
        return;
    };
    let port: u16 = port.parse().unwrap();
    let kubectl = |args: &[&str]| {
        let bin = std::fs::read_to_string(format!("{dir}/env"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("export KPRS_K8S_BIN=").map(str::to_string))
            .unwrap();
        let out = Command::new(format!("{bin}/kubectl"))
            .arg("--kubeconfig")
            .arg(format!("{dir}/guest.kubeconfig"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut lab = Lab::new();
    pods3(&mut lab);
    let objs = service(
        "apiweb",
        "{clusterIP: 10.96.0.70, ports: [{name: http, port: 80, targetPort: 8080}]}",
    ) + &slice(
        "apiweb-1",
        "apiweb",
        "[{name: http, port: 8080}]",
        &LOCAL3[..1],
    );
    lab.write("apiweb.yaml", &objs);
    kubectl(&["create", "namespace", "test"]);
    kubectl(&["apply", "-f", &path_str(&lab.objects.join("apiweb.yaml"))]);
    forward_into_netns_to(&lab.node.clone(), port, "10.0.2.2");
    let kubeconfig = format!("{dir}/admin.kubeconfig");
    lab.remove("apiweb.yaml");
    lab.start_proxy(&[
        "--proxy-mode",
        "ipvs",
        "--source",
        "apiserver",
        "--kubeconfig",
        &kubeconfig,
    ]);
    wait_until("virtual server from the API server", WAIT, || {
        real_servers(&ipvsadm(&lab), "10.96.0.70:80").len() == 1
    });
    assert_eq!(
        spread(&lab.node, "http://10.96.0.70/", 4).get("pod0:8080"),
        Some(&4)
    );
    // An update at the API server reaches IPVS.
    let objs = slice("apiweb-1", "apiweb", "[{name: http, port: 8080}]", &LOCAL3);
    lab.write("update.yaml", &objs);
    kubectl(&["apply", "-f", &path_str(&lab.objects.join("update.yaml"))]);
    lab.remove("update.yaml");
    wait_until("three real servers after the update", WAIT, || {
        real_servers(&ipvsadm(&lab), "10.96.0.70:80").len() == 3
    });
    at_least_each(
        &spread(&lab.node, "http://10.96.0.70/", 9),
        &["pod0:8080", "pod1:8080", "pod2:8080"],
        2,
    );
    kubectl(&["delete", "service", "apiweb", "-n", "test"]);
    wait_until("virtual server gone with the Service", WAIT, || {
        !ipvsadm(&lab).contains("10.96.0.70:80")
    });
    assert!(!ipvs0(&lab).contains("10.96.0.70/32"));
}

/// The host's by-name count: only an `ok` from every case asked for passes.
#[test]
fn guest_cases_are_counted_by_name() {
    let cases: Vec<String> = ["a", "b", "c"].map(String::from).into();
    let ok = format!("[  1.0] boot noise\ntest ipvs_suite_in_qemu_guest ... {REPORT} a ok\r\n{REPORT} b ok\n{REPORT} c ok\ntest result: ok. 1 passed\n");
    assert!(not_ok(&cases, &ok).is_empty());
    assert_eq!(
        not_ok(
            &cases,
            &format!("{REPORT} a ok\n{REPORT} b SKIPPED\n{REPORT} c FAILED\n")
        ),
        ["b: SKIPPED", "c: FAILED"]
    );
    assert_eq!(
        not_ok(
            &cases,
            &format!("{REPORT} a ok\n{REPORT} a ok\n{REPORT} c ok\n{REPORT} d ok\n")
        ),
        ["a: ok, ok", "b: no report", "d: reported but not asked for"]
    );
    // "5 passed" without the names is not a pass.
    assert_eq!(
        not_ok(&cases, "test result: ok. 5 passed; 0 failed\n"),
        ["a: no report", "b: no report", "c: no report"]
    );
    let every: Vec<String> = GUEST_CASES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(every.len(), 5, "the guest cases");
    assert_eq!(
        every.iter().collect::<BTreeSet<_>>().len(),
        every.len(),
        "unique names"
    );
}
