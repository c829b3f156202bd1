#!/usr/bin/env python3
"""Side-by-side benchmark: kube-proxy-rs vs upstream kube-proxy (same Kubernetes
release, built by scripts/k8s/build.sh), iptables mode, against a real
kube-apiserver (scripts/k8s/controlplane.sh). Root only. Each proxy runs alone
(one after the other, same cluster state) in its own network namespace, so
neither touches the host's rules and they do not compete for the 2 cores.

Usage: compare.py [--sizes 1000,10000] [--endpoints 5] [--changes 30]
                  [--proxies rs,upstream] [--out bench/results]
                  [--iptables nft|legacy] [--cold-start-limit 1800]
                  [--changes-limit SECONDS] [--quiet-load LOAD --quiet-wait SECONDS]

Per proxy x size it measures, from outside the proxy:
  cold_start_s      process start -> KUBE-SERVICES holds a jump for every
                    Service (`iptables -t nat -S KUBE-SERVICES`, polled every
                    0.1 s; the kernel refuses a jump to a chain that does not
                    exist, so each jump proves its KUBE-SVC chain and what that
                    jumps to are in place). A full `iptables-save` costs ~1.5 s
                    at 10,000 Services and would blur the figure.
  latency_ms p50/p99  EndpointSlice PUT sent to the API server -> the new
                    endpoint's rule is in the kernel (`iptables -t nat -S <its
                    KUBE-SVC chain>`, polled every 5 ms), over --changes changes.
                    With --iptables legacy that poll reads the whole table under
                    the xtables lock (0.2 s at 10,000 Services) and so delays
                    the restore it waits for; there the slice is cut to the new
                    endpoint alone and the change is seen by traffic: a new TCP
                    connection to the VIP every 2 ms, which only the new
                    endpoint (an address on lo with a listener) accepts
  floor_ms p50/p99  bare `iptables-restore --noflush` of one rewritten KUBE-SVC
                    chain and its KUBE-SEP chains at that size (the physical floor)
  cpu_s_per_1000_changes  CPU seconds the proxy used during the changes, x 1000/changes
  peak_rss_mb       VmHWM of the proxy over the whole run
  first_packet_first_ms / first_packet_last_ms  median TCP connect time (new
                    connection, so the first packet walks KUBE-SERVICES) to the
                    Service whose rule is first in KUBE-SERVICES and to the one
                    whose rule is last; both pointed at one local listener, one
                    client alternating between the two, 1,000 connects each
  cpu_with_children_s_per_1000_changes  (JSON only) the same, plus the CPU of
                    the proxy's iptables-restore processes
  put_rtt_p50_ms    (JSON only) the PUT's own round trip, part of the latency
Both run with --min-sync-period 0s (upstream: --iptables-min-sync-period=0s).
Results: JSON (one record per proxy x mode x N x metric), a Markdown table and,
when matplotlib is available, a PNG chart of latency vs N.
"""
import argparse
import concurrent.futures
import json
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_objects  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSION = "v1.33.13"
NS = "bench"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


class Api:
    def __init__(self, cpdir):
        env = open(os.path.join(cpdir, "env")).read()
        self.server = re.search(r"KPRS_APISERVER=(\S+)", env).group(1)
        self.token = open(os.path.join(cpdir, "tokens.csv")).readline().split(",")[0]
        self.ctx = ssl.create_default_context(cafile=os.path.join(cpdir, "ca.crt"))
        self.port = int(self.server.rsplit(":", 1)[1])

    def call(self, method, path, body=None, ctype="application/json"):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", ctype)
        with urllib.request.urlopen(req, context=self.ctx, timeout=60) as r:
            return json.loads(r.read() or b"{}")


def objects(i, m, version=0):
    """Service i and its slice as dicts (from the same generator as bench/)."""
    import yaml

    docs = [d for d in yaml.safe_load_all(gen_objects.service_yaml(NS, i, m, version)) if d]
    # 10.100.0.1 onwards: clear of 10.96.0.1, which the API server gives the
    # `kubernetes` Service.
    docs[0]["spec"]["clusterIP"] = f"10.{100 + (i + 1) // 65536}.{(i + 1) // 256 % 256}.{(i + 1) % 256}"
    return docs[0], docs[1]


def create_all(api, n, m):
    api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    # Upstream waits for its Node object; a real cluster has one.
    api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"}})
    # ... and its InternalIP, as kubelet would report it.
    api.call("PATCH", "/api/v1/nodes/node-0/status",
             {"status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.1"}]}},
             ctype="application/merge-patch+json")

    def one(i):
        svc, sl = objects(i, m)
        api.call("POST", f"/api/v1/namespaces/{NS}/services", svc)
        api.call("POST", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices", sl)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(one, range(n)))


def socat_forward(netns, port, target="127.0.0.1"):
    """Makes target:port (seen from this process' namespace) reachable at
    127.0.0.1:port inside netns."""
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
         f"EXEC:nsenter --net=/proc/{os.getpid()}/ns/net socat STDIO TCP\\:{target}\\:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def proc(pid, children=False):
    """Peak RSS (MB) and CPU seconds of the process; with children, plus the
    CPU of the children it has waited for (its nft / iptables-restore runs)."""
    st = open(f"/proc/{pid}/status").read()
    hwm = int(re.search(r"VmHWM:\s+(\d+)", st).group(1))
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in f[11:15 if children else 13])
    return hwm / 1024, ticks / os.sysconf("SC_CLK_TCK")


def ipt(flavor, tool):
    return {"nft": f"iptables-nft{tool}", "legacy": f"iptables-legacy{tool}"}[flavor]


def legacy_path():
    """A directory whose iptables* are iptables-legacy, for upstream kube-proxy,
    which runs whatever `iptables` is on its PATH (its image's wrapper picks
    the host's mode the same way)."""
    d = os.path.join(tempfile.gettempdir(), "kprs-bench-legacy-bin")
    os.makedirs(d, exist_ok=True)
    multi = shutil.which("xtables-legacy-multi")
    for fam in ("iptables", "ip6tables"):
        for tool in ("", "-save", "-restore"):
            link = os.path.join(d, fam + tool)
            if not os.path.islink(link):
                os.symlink(multi, link)
    return d


def start_proxy(which, netns, kubeconfig, flavor, log):
    if which == "rs":
        binary = os.path.join(ROOT, "target/release/kube-proxy-rs")
        cmd = [binary, "--kubeconfig", kubeconfig, "--hostname-override", "node-0",
               "--proxy-mode", "iptables", "--iptables-backend", flavor, "--min-sync-period", "0s",
               # As upstream below: the node's conntrack settings stay as they are.
               "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
               "--conntrack-tcp-timeout-close-wait=0"]
    else:
        binary = f"/var/cache/kube-proxy-rs/k8s/{K8S_VERSION}/bin/kube-proxy"
        cmd = [binary, "--kubeconfig", kubeconfig, "--hostname-override", "node-0",
               "--proxy-mode", "iptables", "--iptables-min-sync-period=0s",
               "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
               "--conntrack-tcp-timeout-close-wait=0", "--v=1"]
        if flavor == "legacy":
            cmd = ["env", f"PATH={legacy_path()}:{os.environ['PATH']}"] + cmd
    return subprocess.Popen(["ip", "netns", "exec", netns] + cmd, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)


def service_jumps(netns, flavor):
    """Rules of KUBE-SERVICES that jump to a Service's chain, in order."""
    out = subprocess.run(["ip", "netns", "exec", netns, ipt(flavor, ""), "-t", "nat", "-S", "KUBE-SERVICES"],
                         capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if " cluster IP" in l and "-j KUBE-SVC-" in l]


def save_nat(netns, flavor):
    return subprocess.run(["ip", "netns", "exec", netns, ipt(flavor, "-save"), "-t", "nat"],
                          capture_output=True, text=True).stdout


def svc_chain(save, i):
    m = re.search(rf'--comment "{NS}/svc-{i}:http cluster IP".*-j (KUBE-SVC-\S+)', save)
    return m.group(1) if m else None


def sep_targets(netns, flavor, chain):
    out = subprocess.run(["ip", "netns", "exec", netns, ipt(flavor, ""), "-t", "nat", "-S", chain],
                         capture_output=True, text=True).stdout
    return sorted(re.findall(r"-j (KUBE-SEP-\S+)", out))


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def floor_payload(chain, r, m, large):
    """The floor's restore text for run r: `chain` rewritten to jump to m
    fresh KUBE-SEP chains (two sets, alternating); without comments past
    1,000 endpoints, as both proxies write them then."""
    c = "" if large else "-m comment --comment floor "
    lines = ["*nat", f":{chain} - [0:0]"]
    for e in range(m):
        sep = f"KUBE-SEP-FLOOR{r % 2}{e}"
        lines.insert(2, f":{sep} - [0:0]")
        lines.append(f"-A {sep} -p tcp {c}-j DNAT --to-destination 10.250.{r % 250}.{e + 1}:8080")
        lines.append(f"-A {chain} {c}-m statistic --mode random --probability 0.2 -j {sep}")
    lines.append("COMMIT\n")
    return "\n".join(lines)


def floor_ms(netns, flavor, chain, i, m, large, reps=10):
    """Bare restore of one KUBE-SVC chain + its KUBE-SEP chains (the floor)."""
    times = []
    for r in range(reps):
        text = floor_payload(chain, r, m, large)
        t = time.monotonic()
        subprocess.run(["ip", "netns", "exec", netns, ipt(flavor, "-restore"), "--noflush"],
                       input=text, text=True, check=True)
        times.append((time.monotonic() - t) * 1000)
    return times


RUNS = [0]


def route_for_vips(netns):
    """A route for the Service IPs (the namespace has only lo): a veth pair
    inside the namespace carries the default route; DNAT then turns the
    packet around to a local listener (traffic to other endpoints goes
    nowhere: nothing answers ARP for the gateway)."""
    if "kprsfp0" in sh(["ip", "-n", netns, "link"]):
        return
    for cmd in (["link", "add", "kprsfp0", "type", "veth", "peer", "name", "kprsfp1"],
                ["link", "set", "kprsfp0", "up"], ["link", "set", "kprsfp1", "up"],
                ["addr", "add", "10.253.0.1/30", "dev", "kprsfp0"],
                ["route", "replace", "default", "via", "10.253.0.2", "dev", "kprsfp0", "onlink"]):
        sh(["ip", "-n", netns] + cmd)


# Legacy detection by traffic: new connections to the VIP every 2 ms; only
# the new endpoint (bound on lo, with a listener) accepts, the old ones are
# unreachable. Prints "armed" after the first failed try, "found" on success.
TRAFFIC_PROBE = """
import socket, sys, time
vip, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
def once():
    s = socket.socket(); s.settimeout(0.002)
    try:
        s.connect((vip, 80)); return True
    except OSError:
        return False
    finally:
        s.close()
if once():
    print("present", flush=True); sys.exit()
print("armed", flush=True)
while time.monotonic() < end:
    if once():
        print("found", flush=True); sys.exit()
print("timeout", flush=True)
"""

LISTENER = ("import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.bind((\"\",8080));s.listen(512)\nwhile True:\n c,_=s.accept();c.close()")


def vip_of(save, i):
    line = re.search(rf'^-A KUBE-SERVICES .*"{NS}/svc-{i}:http cluster IP".*$', save, re.M).group(0)
    return re.search(r"-d (\S+?)(/32)? ", line).group(1)


def first_packet(netns, api, picks, reps=1000):
    """Median connect time to each picked Service ({"first": (i, vip),
    "last": (i, vip)}), all sent to one listener at 10.254.0.1:8080 in the
    namespace. One client alternates between the VIPs, so both medians see
    the same machine (the host is shared)."""
    route_for_vips(netns)
    sh(["ip", "-n", netns, "addr", "replace", "10.254.0.1/32", "dev", "lo"])
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c",
         "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
         "s.bind(('10.254.0.1',8080));s.listen(512)\nwhile True:\n c,_=s.accept();c.close()"])
    out = {}
    try:
        for where, (i, vip) in picks.items():
            path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/svc-{i}-abcde"
            sl = api.call("GET", path)
            sl["endpoints"] = [{"addresses": ["10.254.0.1"], "conditions": {"ready": True}}]
            api.call("PUT", path, sl)
        # Client: a new connection each time (the first packet of each is
        # dispatched by the rules); a rule not yet in place shows as
        # refused/timeouts. The first fifth of each list is warm-up.
        client = ("import socket,sys,time,statistics\n"
                  "vips=sys.argv[2:];n=int(sys.argv[1]);ok={v:[] for v in vips};t_end=time.time()+60\n"
                  "while min(map(len,ok.values()))<n and time.time()<t_end:\n"
                  " for v in vips:\n"
                  "  s=socket.socket();s.settimeout(1)\n"
                  "  t=time.perf_counter()\n"
                  "  try:\n   s.connect((v,80));ok[v].append(time.perf_counter()-t)\n"
                  "  except OSError:\n   time.sleep(0.05)\n"
                  "  s.close()\n"
                  "for v in vips:\n"
                  " l=ok[v];print(statistics.median(l[len(l)//5:])*1000 if len(l)>=n else -1)\n")
        got = sh(["ip", "netns", "exec", netns, sys.executable, "-c", client, str(reps),
                  *[vip for _, vip in picks.values()]]).split()
        for where, ms in zip(picks, got):
            out[f"first_packet_{where}_ms"] = round(float(ms), 3) if float(ms) >= 0 else None
    finally:
        server.kill()
    return out


class Iptables:
    """A proxy in iptables mode as this script measures it (run_one drives
    it): how it starts, when it is programmed (a jump in KUBE-SERVICES per
    Service), how a change is seen, its floor, its first and last Service."""

    poll_s = 0.1

    def __init__(self, which, flavor, netns, n, m):
        self.which, self.flavor, self.netns, self.n, self.m = which, flavor, netns, n, m
        self.tag = which
        self.proxy = "kube-proxy-rs" if which == "rs" else "kube-proxy"
        self.mode = f"iptables-{flavor}"
        # iptables-legacy: `iptables -S <chain>` reads and parses the whole
        # table (0.2 s at 10,000 Services) under the xtables lock, so polling
        # with it delays the very restore it waits for. There the slice keeps
        # only the new endpoint and new connections to the VIP show when the
        # rule takes traffic. Legacy rewrites the whole table per restore.
        self.by_traffic = flavor == "legacy"
        # Processes started in the namespace for the measurement.
        self.helpers = []
        self.save = ""

    def start(self, kubeconfig, log):
        return start_proxy(self.which, self.netns, kubeconfig, self.flavor, log)

    def programmed(self):
        return len(service_jumps(self.netns, self.flavor)) >= self.n

    def progress(self):
        return f"{len(service_jumps(self.netns, self.flavor))}/{self.n} Services"

    def ready(self, api):
        self.save = save_nat(self.netns, self.flavor)

    def begin_changes(self):
        if self.by_traffic:
            route_for_vips(self.netns)
            self.helpers.append(subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-c", LISTENER]))

    def service(self, k, run):
        i = (k * 7919) % self.n
        # Cut to one endpoint below: each run takes other Services, so every
        # proxy measures the same 5 -> 1 change.
        return (i + run * 104729) % self.n if self.by_traffic else i

    def arm(self, i, new_ip, sl):
        """Before slice `sl` (its endpoint 0 now new_ip) is PUT: gets ready
        to see the change; returns wait(deadline) -> seen."""
        if self.by_traffic:
            sl["endpoints"] = sl["endpoints"][:1]
            sh(["ip", "-n", self.netns, "addr", "add", f"{new_ip}/32", "dev", "lo"])
            probe = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-c", TRAFFIC_PROBE,
                                      vip_of(self.save, i), "60"], stdout=subprocess.PIPE, text=True)
            self.helpers.append(probe)
            armed = probe.stdout.readline().strip()
            if armed != "armed":
                raise RuntimeError(f"traffic probe for svc-{i}: {armed!r}")

            def seen(deadline):
                found = probe.stdout.readline().strip() == "found"
                probe.wait()
                return found
            return seen
        # Upstream leaves comments out past 1,000 endpoints, so the change
        # is seen as a new set of KUBE-SEP jumps in the service's chain.
        chain = svc_chain(self.save, i)
        before = sep_targets(self.netns, self.flavor, chain)

        def polled(deadline):
            while time.monotonic() < deadline:
                if sep_targets(self.netns, self.flavor, chain) != before:
                    return True
                time.sleep(0.005)
            return False
        return polled

    def floor(self, api):
        return floor_ms(self.netns, self.flavor, svc_chain(self.save, 1), 1, self.m, self.n * self.m > 1000)

    def picks(self):
        """The Services whose rules are first and last in KUBE-SERVICES."""
        picks = {}
        jumps = service_jumps(self.netns, self.flavor)
        for where, line in (("first", jumps[0]), ("last", jumps[-1])):
            m_ = re.search(rf'{NS}/svc-(\d+):http cluster IP', line)
            vip = re.search(r"-d (\S+?)(/32)? ", line).group(1)
            picks[where] = (int(m_.group(1)), vip)
        return picks

    def extras(self):
        return {}

    def close(self):
        for h in self.helpers:
            if h.poll() is None:
                h.kill()
                h.wait()
        self.helpers = []


def wait_quiet(load, most):
    """Waits up to `most` seconds for the 1-minute load average to fall
    below `load` (the host may be shared); returns the load at the end."""
    t = time.monotonic()
    while os.getloadavg()[0] >= load and time.monotonic() - t < most:
        time.sleep(5)
    return os.getloadavg()[0]


def run_one(make, n, changes, api, kubeconfig, workdir, limit, quiet=(None, 0), changes_limit=None):
    """One proxy x size run, measured from outside the proxy; `make(netns)`
    gives the mode object (see Iptables) for the fresh namespace. With
    quiet=(load, seconds), waits first for the host to be that quiet; with
    changes_limit (seconds), stops making changes after that long."""
    if quiet[0]:
        print(f"load {wait_quiet(*quiet):.2f} at start", flush=True)
    RUNS[0] += 1
    netns = f"kprs-bench-{RUNS[0]}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    fwd = socat_forward(netns, api.port)
    mode = make(netns)
    log = open(os.path.join(workdir, f"{mode.tag}-{n}.log"), "w")
    rec = {}
    p = None
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        p = mode.start(kubeconfig, log)
        done = False
        while time.monotonic() - t0 <= limit:
            if mode.programmed():
                done = time.monotonic() - t0 <= limit
                break
            if p.poll() is not None:
                raise SystemExit(f"{mode.tag} exited; see {log.name}")
            time.sleep(mode.poll_s)
        if not done:
            # Reported as not reached: no latency figures from a half-programmed table.
            rec["cold_start_s"] = None
            rec["note"] = f"not fully programmed after {limit} s ({mode.progress()})"
            rec["peak_rss_mb"] = round(proc(p.pid)[0], 1)
            return rec
        rec["cold_start_s"] = round(time.monotonic() - t0, 2)
        mode.ready(api)
        time.sleep(3)
        mode.begin_changes()
        # Programming latency: replace one endpoint of service i, wait for it.
        lat, rtt, missed = [], [], 0
        load0 = os.getloadavg()[0]
        _, cpu0 = proc(p.pid)
        _, cpu0_all = proc(p.pid, children=True)
        t_changes = time.monotonic()
        for k in range(changes):
            if changes_limit and k and time.monotonic() - t_changes > changes_limit:
                rec["note"] = f"{k} of {changes} changes made within {changes_limit} s"
                break
            i = mode.service(k, RUNS[0])
            # Unique per run: the proxies share the cluster, and a PUT that
            # changes nothing produces no event.
            new_ip = f"10.{200 + RUNS[0]}.{k // 250}.{k % 250 + 1}"
            path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/svc-{i}-abcde"
            sl = api.call("GET", path)
            sl["endpoints"][0]["addresses"] = [new_ip]
            seen = mode.arm(i, new_ip, sl)
            t = time.monotonic()
            api.call("PUT", path, sl)
            rtt.append((time.monotonic() - t) * 1000)
            missed += not seen(t + 60)
            lat.append((time.monotonic() - t) * 1000)
            rec.setdefault("latency_samples_ms", []).append(round(lat[-1], 1))
            time.sleep(0.2)
        mode.close()
        # The host may be shared: how busy it was around the changes.
        rec["loadavg_1m_changes"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        if missed:
            rec["note"] = " ".join(filter(None, [rec.get("note"), f"{missed} changes not seen within 60 s"]))
        rss, cpu1 = proc(p.pid)
        _, cpu1_all = proc(p.pid, children=True)
        rec["latency_p50_ms"] = round(percentile(lat, 50), 1)
        rec["latency_p99_ms"] = round(percentile(lat, 99), 1)
        # The PUT's own round trip (API server and etcd), inside the latency.
        rec["put_rtt_p50_ms"] = round(percentile(rtt, 50), 1)
        rec["cpu_s_per_1000_changes"] = round((cpu1 - cpu0) * 1000 / len(lat), 1)
        rec["cpu_with_children_s_per_1000_changes"] = round((cpu1_all - cpu0_all) * 1000 / len(lat), 1)
        rec["peak_rss_mb"] = round(rss, 1)
        fl = mode.floor(api)
        rec["floor_p50_ms"] = round(percentile(fl, 50), 1)
        rec["floor_p99_ms"] = round(percentile(fl, 99), 1)
        rec.update(first_packet(netns, api, mode.picks()))
        rec.update(mode.extras())
    finally:
        mode.close()
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        fwd.kill()
        subprocess.run(["ip", "netns", "del", netns])
    return rec


def judged(rows):
    """The size the targets are judged at (10,000, else the largest measured)
    and both proxies' figures there; None when nothing was measured."""
    sizes = sorted({n for n, _ in rows})
    if not sizes:
        return None
    n = 10000 if 10000 in sizes else sizes[-1]
    return n, rows.get((n, "kube-proxy-rs"), {}), rows.get((n, "kube-proxy"), {})


def common_args(cold_start_limit):
    """The options both comparison scripts take."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--proxies", default="rs,upstream")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--suffix", default="", help="appended to the result files' names")
    ap.add_argument("--cold-start-limit", type=int, default=cold_start_limit,
                    help="seconds a proxy may take to program everything before it is reported as not done")
    ap.add_argument("--quiet-load", type=float, default=0,
                    help="before each proxy's run, wait until the 1-minute load average is below this (0: do not wait)")
    ap.add_argument("--quiet-wait", type=int, default=600, help="... for at most this many seconds")
    ap.add_argument("--changes-limit", type=int, default=0,
                    help="stop making changes after this many seconds (0: make them all)")
    return ap


def targets(rows):
    """The issue's targets at the largest size measured, as pass/fail lines."""
    if judged(rows) is None:
        return []
    n, rs, up = judged(rows)
    checks = []

    def check(name, ok, detail):
        checks.append(f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})")

    for r in (rs, up):
        if r and r.get("cold_start_s") is None:
            return [f"Targets at {n} Services: not judged ({r.get('note', 'incomplete run')})"]

    if rs:
        check("p50 <= 1.5 x bare restore", rs["latency_p50_ms"] <= 1.5 * rs["floor_p50_ms"],
              f"{rs['latency_p50_ms']} ms vs floor {rs['floor_p50_ms']} ms")
        check("p99 <= 3 x bare restore", rs["latency_p99_ms"] <= 3 * rs["floor_p50_ms"],
              f"{rs['latency_p99_ms']} ms vs floor {rs['floor_p50_ms']} ms")
        check("cold start <= 10 s", rs["cold_start_s"] <= 10, f"{rs['cold_start_s']} s")
    if rs and up:
        check("p50 >= 10x better than upstream", up["latency_p50_ms"] >= 10 * rs["latency_p50_ms"],
              f"{up['latency_p50_ms']} vs {rs['latency_p50_ms']} ms")
        check("cold start >= 10x faster than upstream", up["cold_start_s"] >= 10 * rs["cold_start_s"],
              f"{up['cold_start_s']} vs {rs['cold_start_s']} s")
        check("peak RSS <= 1/4 of upstream", rs["peak_rss_mb"] * 4 <= up["peak_rss_mb"],
              f"{rs['peak_rss_mb']} vs {up['peak_rss_mb']} MB")
        check("CPU per 1,000 changes <= 1/10 of upstream",
              rs["cpu_s_per_1000_changes"] * 10 <= up["cpu_s_per_1000_changes"],
              f"{rs['cpu_s_per_1000_changes']} vs {up['cpu_s_per_1000_changes']} s")
    return [f"Targets at {n} Services:"] + checks


def prepare(build=("cargo", "build", "--release", "--quiet")):
    """Root check, the tools and Python modules the benchmark uses, our
    release build and upstream's binaries (built once per machine)."""
    if os.geteuid() != 0:
        sys.exit(f"{os.path.basename(sys.argv[0])} needs root")
    for tool, pkg in (("socat", "socat"), ("nsenter", "util-linux")):
        if not shutil.which(tool):
            subprocess.run(["apt-get", "install", "-y", "-qq", pkg], check=True)
    for mod, pkg in (("yaml", "pyyaml"), ("matplotlib", "matplotlib")):
        try:
            __import__(mod)
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", pkg], check=True)
    sh(list(build), cwd=ROOT)
    sh(["bash", os.path.join(ROOT, "scripts/k8s/build.sh")])


def clusters(sizes, m):
    """For each size, a fresh control plane holding n Services x m
    endpoints: yields (n, api, its directory); stopped after each."""
    for n in sizes:
        cpdir = tempfile.mkdtemp(prefix="kprs-bench-cp-")
        sh(["bash", os.path.join(ROOT, "scripts/k8s/controlplane.sh"), "start", cpdir])
        try:
            api = Api(cpdir)
            t = time.monotonic()
            create_all(api, n, m)
            print(f"N={n}: created {n} Services + slices in {time.monotonic() - t:.0f}s", flush=True)
            yield n, api, cpdir
        finally:
            subprocess.run(["bash", os.path.join(ROOT, "scripts/k8s/controlplane.sh"), "stop", cpdir])


def main():
    ap = common_args(cold_start_limit=1800)
    ap.add_argument("--iptables", default="nft")
    ap.add_argument("--keep-other-proxies", action="store_true",
                    help="keep the result file's records of proxies not run this time (each record carries its date)")
    a = ap.parse_args()
    prepare()
    machine = f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB, kernel {platform.release()}, {sh([ipt(a.iptables, ''), '--version']).strip()}"
    records = []
    for n, api, cpdir in clusters([int(x) for x in a.sizes.split(",")], a.endpoints):
        kubeconfig = os.path.join(cpdir, "admin.kubeconfig")
        for which in a.proxies.split(","):
            rec = run_one(lambda netns: Iptables(which, a.iptables, netns, n, a.endpoints), n, a.changes,
                          api, kubeconfig, cpdir, a.cold_start_limit, (a.quiet_load, a.quiet_wait),
                          a.changes_limit)
            print(f"N={n} {which}: {rec}", flush=True)
            records += as_records(rec, which, f"iptables-{a.iptables}", n, a.endpoints, machine)
    stem = os.path.join(a.out, f"compare-iptables-{a.iptables}{a.suffix}")
    if a.keep_other_proxies and os.path.exists(stem + ".json"):
        ran = {"kube-proxy-rs" if w == "rs" else "kube-proxy" for w in a.proxies.split(",")}
        records = [r for r in json.load(open(stem + ".json")) if r["proxy"] not in ran] + records
    write_results(records, stem,
                  f"{time.strftime('%Y-%m-%d')}, {machine}, Kubernetes {K8S_VERSION}, {a.endpoints} endpoints per Service, {a.changes} changes per size",
                  METRICS, targets)


METRICS = ["cold_start_s", "latency_p50_ms", "latency_p99_ms", "floor_p50_ms", "floor_p99_ms",
           "cpu_s_per_1000_changes", "peak_rss_mb", "first_packet_first_ms", "first_packet_last_ms", "note"]


def as_records(rec, which, mode, n, m, machine):
    """One JSON record per metric of one proxy x mode x N run."""
    return [{"proxy": "kube-proxy-rs" if which == "rs" else "kube-proxy", "mode": mode,
             "services": n, "endpoints": m, "metric": metric, "value": value, "machine": machine,
             "kubernetes": K8S_VERSION, "date": time.strftime("%Y-%m-%d")} for metric, value in rec.items()]


def write_results(records, stem, header, metrics, judge, by_mode=False):
    """JSON (the records as they are), a Markdown table with the targets'
    verdicts (judge(rows) -> lines) and a PNG chart of latency vs N. Rows
    are per proxy, or with by_mode per proxy and mode ("kube-proxy nftables")."""
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(stem + ".json", "w") as fh:
        json.dump(records, fh, indent=1)
    rows = {}
    for r in records:
        row = rows.setdefault((r["services"], f"{r['proxy']} {r['mode']}" if by_mode else r["proxy"]), {})
        row[r["metric"]] = r["value"]
        row["date"] = r["date"]
    metrics = [*metrics, "date"]
    md = [header + "\n",
          "| services | proxy | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for (n, proxy), v in sorted(rows.items()):
        md.append(f"| {n} | {proxy} | " + " | ".join("" if v.get(k) is None else str(v[k]) for k in metrics) + " |")
    md += ["", *judge(rows)]
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for proxy in sorted({p for _, p in rows}):
            ns_ = sorted(n for n, p in rows if p == proxy)
            for key, style in (("latency_p50_ms", "-o"), ("latency_p99_ms", "--x")):
                pts = [(n, rows[(n, proxy)][key]) for n in ns_ if rows[(n, proxy)].get(key) is not None]
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=f"{proxy} {key[8:11]}")
        if not ax.lines:
            print("no latency figures: no chart")
            plt.close(fig)
            return
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Services (x5 endpoints)")
        ax.set_ylabel("programming latency (ms)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=110)
    except ImportError:
        print("matplotlib not installed: no chart (pip install matplotlib)")

if __name__ == "__main__":
    main()
