//! A test lab of network namespaces on the host kernel: one node with pods on
//! a bridge (each pod runs scripts/echo_server.py answering its own name) and an
//! external client on a second link. Traffic stays inside these namespaces.
#![allow(dead_code)]

pub mod netns;
pub mod rules;
pub mod scenarios;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const NODE_IP: &str = "192.168.10.5";
pub const NODE_IP6: &str = "fd00:10::5";
pub const CLIENT_IP: &str = "192.168.10.100";
pub const BRIDGE_IP: &str = "10.244.1.1";
pub const NODE_NAME: &str = "node-a";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Running as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// CI (`CI=true` in the environment) as root: every lab can and must run
/// there, so a test that cannot run is a failure, never a skip.
pub fn skips_fail() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    ci && is_root()
}

static SKIPS: AtomicUsize = AtomicUsize::new(0);

/// Something a test wanted to run cannot run here, for `why`. In CI as root
/// this fails the test (panics with the reason); elsewhere it prints
/// `SKIPPED: why` and the caller leaves that part out (usually: returns).
pub fn skip(why: &str) {
    if skips_fail() {
        panic!("CI=true as root: tests must not skip, but this one would: {why}");
    }
    SKIPS.fetch_add(1, Ordering::SeqCst);
    eprintln!("SKIPPED: {why}");
}

/// How many times [`skip`] let something be left out in this process.
pub fn skips() -> usize {
    SKIPS.load(Ordering::SeqCst)
}

/// Why kernel tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("not root: network namespace tests need root".into());
    }
    for tool in ["ip", "iptables-restore", "curl", "python3"] {
        if !have(tool) {
            return Some(format!("{tool} not installed (run scripts/setup.sh)"));
        }
    }
    None
}

/// `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Returns early from a test when kernel tests cannot run: with the printed
/// reason, or (in CI as root) failing with it.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(why) = support::skip_reason() {
            support::skip(&why);
            return;
        }
    };
}

/// Returns early from a test when `$check` (an `Option<String>` reason) says it
/// cannot run here: printed, or (in CI as root) a failure.
#[macro_export]
macro_rules! require {
    ($check:expr) => {
        if let Some(why) = $check {
            support::skip(&why);
            return;
        }
    };
}

/// Why the legacy iptables tools cannot be used here, if they cannot.
pub fn legacy_iptables_unusable() -> Option<String> {
    let ok = run(&[
        "sh",
        "-c",
        "command -v iptables-legacy && command -v iptables-legacy-restore && iptables-legacy-save -t nat",
    ])
    .status
    .success();
    (!ok).then(|| "iptables-legacy not usable here".to_string())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

pub fn must(cmd: &[&str]) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Lab {
    pub prefix: String,
    pub node: String,
    pub client: String,
    pods: BTreeMap<String, String>,
    children: Vec<Child>,
    proxy: Option<Child>,
    pub dir: tempfile::TempDir,
    pub objects: PathBuf,
    /// Extra iptables flavor prefix for iptables-save ("" or "-legacy").
    pub flavor: String,
    /// Command put in front of the proxy inside the node namespace.
    pub proxy_wrapper: Vec<String>,
}

impl Lab {
    pub fn new() -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("kprs{}x{n}", std::process::id() % 100000);
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects");
        std::fs::create_dir(&objects).unwrap();
        let lab = Lab {
            node: format!("{prefix}-node"),
            client: format!("{prefix}-ext"),
            prefix,
            pods: BTreeMap::new(),
            children: vec![],
            proxy: None,
            dir,
            objects,
            flavor: String::new(),
            proxy_wrapper: vec![],
        };
        let (node, client) = (lab.node.as_str(), lab.client.as_str());
        for ns in [node, client] {
            must(&["ip", "netns", "add", ns]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for cmd in [
            "ip link add br0 type bridge",
            "ip addr add 10.244.1.1/24 dev br0",
            "ip addr add fd00:244:1::1/64 dev br0 nodad",
            "ip link set br0 up",
            "sysctl -qw net.ipv4.ip_forward=1",
            "sysctl -qw net.ipv6.conf.all.forwarding=1",
        ] {
            lab.node_sh(cmd);
        }
        // br_netfilter: bridged pod-to-pod replies must see conntrack (un-DNAT).
        for s in [
            "net.bridge.bridge-nf-call-iptables=1",
            "net.bridge.bridge-nf-call-ip6tables=1",
        ] {
            let _ = run(&["ip", "netns", "exec", node, "sysctl", "-qw", s]);
        }
        must(&[
            "ip", "link", "add", "ext0", "netns", node, "type", "veth", "peer", "name", "eth0",
            "netns", client,
        ]);
        for cmd in [
            "ip addr add 192.168.10.5/24 dev ext0",
            "ip addr add fd00:10::5/64 dev ext0 nodad",
            "ip link set ext0 up",
            "ip route add default via 192.168.10.100",
            "ip -6 route add default via fd00:10::100",
        ] {
            lab.node_sh(cmd);
        }
        for cmd in [
            "ip addr add 192.168.10.100/24 dev eth0",
            "ip addr add fd00:10::100/64 dev eth0 nodad",
            "ip link set eth0 up",
            "ip route add default via 192.168.10.5",
            "ip -6 route add default via fd00:10::5",
        ] {
            must(&["ip", "netns", "exec", client, "sh", "-c", cmd]);
        }
        lab
    }

    fn node_sh(&self, cmd: &str) {
        must(&["ip", "netns", "exec", &self.node, "sh", "-c", cmd]);
    }

    /// Adds a pod `name` with IPv4 10.244.1.<host> (and fd00:244:1::<host>)
    /// serving TCP `tcp` ports and UDP `udp` ports.
    pub fn add_pod(&mut self, name: &str, host: u8, tcp: &[u16], udp: &[u16]) -> String {
        let ns = format!("{}-{name}", self.prefix);
        let ip = format!("10.244.1.{host}");
        let veth = format!("veth{host}");
        must(&["ip", "netns", "add", &ns]);
        must(&[
            "ip", "link", "add", &veth, "netns", &self.node, "type", "veth", "peer", "name",
            "eth0", "netns", &ns,
        ]);
        // Hairpin mode, as kubelet sets it: a pod reaching itself via a VIP.
        self.node_sh(&format!(
            "ip link set {veth} master br0 up && bridge link set dev {veth} hairpin on"
        ));
        for cmd in [
            "ip link set lo up".to_string(),
            format!("ip addr add {ip}/24 dev eth0"),
            format!("ip addr add fd00:244:1::{host}/64 dev eth0 nodad"),
            "ip link set eth0 up".to_string(),
            "ip route add default via 10.244.1.1".to_string(),
            "ip -6 route add default via fd00:244:1::1".to_string(),
        ] {
            must(&["ip", "netns", "exec", &ns, "sh", "-c", &cmd]);
        }
        let join = |p: &[u16]| {
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let script = root().join("scripts/echo_server.py");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "python3"])
            .arg(&script)
            .args([name, &join(tcp), "--udp", &join(udp)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.pods.insert(name.to_string(), ns);
        // Wait until it answers on its first TCP port (bounded).
        if let Some(p) = tcp.first() {
            let url = format!("http://{ip}:{p}/");
            let node = self.node.clone();
            wait_until(&format!("{name} serving"), Duration::from_secs(10), || {
                curl(&node, &url, 1).is_ok()
            });
        }
        ip
    }

    pub fn pod_ns(&self, name: &str) -> String {
        self.pods[name].clone()
    }

    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.objects.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.objects.join(file)).unwrap();
    }

    pub fn remove(&self, file: &str) {
        let _ = std::fs::remove_file(self.objects.join(file));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the real binary in the node namespace against the dir: source.
    pub fn start_proxy(&mut self, extra: &[&str]) {
        self.start_proxy_env(extra, &[]);
    }

    /// Same, with extra environment variables (e.g. a PATH with fault injectors).
    pub fn start_proxy_env(&mut self, extra: &[&str], envs: &[(&str, String)]) {
        assert!(self.proxy.is_none(), "proxy already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let src = format!("dir:{}", self.objects.display());
        // The dir: source unless the caller names another.
        let source: &[&str] = if extra.contains(&"--source") {
            &[]
        } else {
            &["--source", &src]
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .args(&self.proxy_wrapper)
            .arg(env!("CARGO_BIN_EXE_kube-proxy-rs"))
            .args(source)
            .args(["--hostname-override", NODE_NAME])
            .args([
                "--cluster-cidr",
                "10.244.0.0/16,fd00:244::/48",
                "--min-sync-period",
                "0s",
            ])
            .args(extra)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proxy = Some(child);
    }

    /// Stops the proxy with SIGKILL (`kill = true`) or SIGTERM; returns its exit status code.
    pub fn stop_proxy(&mut self, kill: bool) -> Option<i32> {
        let mut child = self.proxy.take()?;
        let sig = if kill { "-KILL" } else { "-TERM" };
        let _ = run(&["kill", sig, &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxy did not exit within 10s of {sig}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fault injection: a PATH whose `iptables-restore` fails while the returned
    /// flag file exists (and runs the real one otherwise).
    pub fn restore_fault_injector(&self) -> (PathBuf, String) {
        let fake = self.dir.path().join("bin");
        std::fs::create_dir_all(&fake).unwrap();
        let flag = self.dir.path().join("fail-restores");
        let real = must(&["sh", "-c", "command -v iptables-restore"])
            .trim()
            .to_string();
        let script = format!(
            "#!/bin/sh\n[ -e {} ] && {{ echo 'injected failure' >&2; exit 1; }}\nexec {real} \"$@\"\n",
            flag.display()
        );
        std::fs::write(fake.join("iptables-restore"), script).unwrap();
        must(&["chmod", "+x", &path_str(&fake.join("iptables-restore"))]);
        let path = format!(
            "{}:{}",
            fake.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        (flag, path)
    }

    /// Runs the proxy as the DaemonSet's main container does: its own mount
    /// namespace with /proc/sys read-only, and only NET_ADMIN and NET_RAW.
    pub fn run_unprivileged(&mut self) {
        self.proxy_wrapper = [
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount -o bind,ro /proc/sys /proc/sys && exec setpriv --bounding-set -all,+net_admin,+net_raw --inh-caps -all -- \"$0\" \"$@\"",
        ]
        .map(String::from)
        .to_vec();
    }

    /// The running proxy's process id (the wrappers exec it).
    pub fn proxy_pid(&self) -> u32 {
        self.proxy.as_ref().expect("proxy running").id()
    }

    /// The proxy's effective capabilities (`CapEff` from /proc).
    pub fn proxy_caps(&self) -> String {
        let pid = self.proxy.as_ref().expect("proxy running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn proxy_running(&mut self) -> bool {
        match &mut self.proxy {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn save(&self, v6: bool, table: &str) -> String {
        let bin = format!(
            "{}{}-save",
            if v6 { "ip6tables" } else { "iptables" },
            self.flavor
        );
        must(&["ip", "netns", "exec", &self.node, &bin, "-t", table])
    }

    pub fn in_ns(&self, ns: &str, cmd: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(cmd);
        run(&full)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(secs) = std::env::var("KPRS_DEBUG_PAUSE")
                .ok()
                .and_then(|s| s.parse().ok())
            {
                eprintln!("KPRS_DEBUG_PAUSE: lab {} kept for {secs}s", self.prefix);
                std::thread::sleep(Duration::from_secs(secs));
            }
        }
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.pods.values().chain([&self.node, &self.client]) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        if std::thread::panicking() {
            eprintln!("--- proxy log ---\n{}", self.log());
        }
    }
}

/// curl from a namespace: Ok(body) or Err(curl exit code: 7 refused, 28 timeout).
pub fn curl(ns: &str, url: &str, timeout_s: u32) -> Result<String, i32> {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "-g",
        "--max-time",
        &timeout_s.to_string(),
        url,
    ]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(out.status.code().unwrap_or(-1))
    }
}

/// GET from a namespace: (HTTP status, body); status 0 when nothing answered.
pub fn http_get(ns: &str, url: &str) -> (u16, String) {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "-g",
        "--max-time",
        "2",
        "-w",
        "\n%{http_code}",
        url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `n` requests; returns how often each answer's first word ("pod:port") came back.
pub fn spread(ns: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut hits = BTreeMap::new();
    for _ in 0..n {
        let who = match curl(ns, url, 2) {
            Ok(body) => body.split_whitespace().next().unwrap_or("").to_string(),
            Err(code) => format!("error-{code}"),
        };
        *hits.entry(who).or_insert(0) += 1;
    }
    hits
}

/// `n` UDP queries, each from a fresh socket; answers' first words counted.
pub fn udp_spread(ns: &str, ip: &str, port: u16, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        "import socket,sys\nfam=socket.AF_INET6 if ':' in '{ip}' else socket.AF_INET\nfor _ in range({n}):\n  s=socket.socket(fam,socket.SOCK_DGRAM); s.settimeout(1)\n  try:\n    s.sendto(b'q',('{ip}',{port})); print(s.recvfrom(200)[0].decode().split()[0])\n  except OSError: print('timeout')\n  s.close()\n"
    );
    let out = run(&["ip", "netns", "exec", ns, "python3", "-c", &script]);
    let mut hits = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        *hits.entry(l.to_string()).or_insert(0) += 1;
    }
    hits
}

/// Polls `f` until it holds, for at most `limit`; panics naming `what` otherwise.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Service manifest.
pub fn service(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: test}}\nspec: {spec}\n---\n")
}

/// An EndpointSlice manifest; `endpoints` are (ip, node) pairs.
pub fn slice(name: &str, service: &str, ports: &str, endpoints: &[(&str, &str)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(ip, node)| {
            format!("- {{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{ready: true}}}}")
        })
        .collect();
    let family = if endpoints.first().is_some_and(|(ip, _)| ip.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: test, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: {ports}\nendpoints:\n{}\n---\n",
        eps.join("\n")
    )
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Makes `127.0.0.1:port` inside namespace `ns` reach `127.0.0.1:port` of the
/// test's own namespace (where the API server listens), like a node reaching its
/// control plane. A listener thread binds inside `ns`, then serves from here.
pub fn forward_into_netns(ns: &str, port: u16) {
    forward_into_netns_to(ns, port, "127.0.0.1");
}

/// Same, with the outside end at `host:port` (a QEMU guest reaches the host's
/// loopback at 10.0.2.2).
pub fn forward_into_netns_to(ns: &str, port: u16, host: &'static str) {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    let target = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        // SAFETY: setns on this thread only, with valid namespace fds.
        unsafe { assert_eq!(libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET), 0) };
        let listener = TcpListener::bind(("127.0.0.1", port));
        unsafe { assert_eq!(libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET), 0) };
        let listener = listener.unwrap();
        tx.send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(inbound) = conn else { continue };
            let Ok(outbound) = TcpStream::connect((host, port)) else {
                continue;
            };
            let (mut a, mut b) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
            });
            let (mut a, mut b) = (outbound, inbound);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    rx.recv().unwrap();
}

/// A control plane from scripts/k8s (etcd + kube-apiserver on loopback).
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub server: String,
    pub port: u16,
    pub bin: PathBuf,
}

impl ControlPlane {
    /// Err (with the reason) only when the binaries are not built
    /// (scripts/k8s/build.sh): callers skip, which fails in CI as root. Any
    /// other failure to start is a broken lab and fails the test here.
    pub fn start(with_controller_manager: bool) -> Result<ControlPlane, String> {
        let dir = tempfile::tempdir().unwrap();
        let script = root().join("scripts/k8s/controlplane.sh");
        let mut args = vec![path_str(&script), "start".into(), path_str(dir.path())];
        if with_controller_manager {
            args.push("--with-controller-manager".into());
        }
        let out = Command::new("bash")
            .args(&args)
            .env("KPRS_NO_BUILD", "1")
            .output()
            .unwrap();
        let said = || {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        if out.status.code() == Some(77) {
            return Err(format!("no control plane: {}", said().trim()));
        }
        if !out.status.success() {
            // Stop whatever did start before failing.
            let _ = Command::new("bash")
                .arg(&script)
                .arg("stop")
                .arg(dir.path())
                .output();
            panic!(
                "the control plane is built but did not start ({}): {}",
                out.status,
                said()
            );
        }
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .unwrap()
                .to_string()
        };
        let server = get("KPRS_APISERVER");
        let port = server.rsplit(':').next().unwrap().parse().unwrap();
        Ok(ControlPlane {
            server,
            port,
            bin: PathBuf::from(get("KPRS_K8S_BIN")),
            dir,
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// kubectl with the admin credentials.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubeconfig for the same server with another bearer token.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let admin = text
            .lines()
            .find_map(|l| l.split("token: \"").nth(1))
            .unwrap()
            .trim_end_matches("\"}");
        std::fs::write(&path, text.replace(admin, token)).unwrap();
        path
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let script = root().join("scripts/k8s/controlplane.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// Three pods, 10.244.1.10-12, serving TCP 8080 and 9090 and UDP 5353.
pub fn pods3(lab: &mut Lab) {
    lab.add_pod("pod0", 10, &[8080, 9090], &[5353]);
    lab.add_pod("pod1", 11, &[8080, 9090], &[5353]);
    lab.add_pod("pod2", 12, &[8080, 9090], &[5353]);
}

/// The three pods of [`pods3`], all on this node.
pub const LOCAL3: [(&str, &str); 3] = [
    ("10.244.1.10", NODE_NAME),
    ("10.244.1.11", NODE_NAME),
    ("10.244.1.12", NODE_NAME),
];

/// Every named answer came back at least `min` times, and nothing else did.
pub fn at_least_each(hits: &BTreeMap<String, usize>, names: &[&str], min: usize) {
    for n in names {
        let got = hits.get(*n).copied().unwrap_or(0);
        assert!(
            got >= min,
            "{n} answered {got} times (want >= {min}): {hits:?}"
        );
    }
    let total: usize = hits.values().sum();
    let known: usize = names
        .iter()
        .map(|n| hits.get(*n).copied().unwrap_or(0))
        .sum();
    assert_eq!(known, total, "unexpected answers: {hits:?}");
}

/// One metric's value (summed over labels) from the proxy's /metrics in `ns`.
pub fn metric(ns: &str, name: &str) -> f64 {
    let (code, body) = http_get(ns, "http://127.0.0.1:10249/metrics");
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
