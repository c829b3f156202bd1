#!/usr/bin/env python3
"""Side-by-side benchmark in ipvs mode: kube-proxy-rs vs upstream kube-proxy
(same Kubernetes release), both inside Debian's kernel under QEMU (the host
kernel has no IPVS), against a real kube-apiserver on the host (the guest
reaches it at 10.0.2.2). Root only.

Usage: compare_ipvs.py [--sizes 1000,10000] [--endpoints 5] [--changes 30]
                       [--proxies rs,upstream] [--mem 4096] [--out bench/results]
                       [--cold-start-limit 900] [--suffix S]

The host starts the control plane and creates N Services x M endpoints (as
bench/compare.py), then boots one fresh guest per proxy and size (an empty
IPVS table; the proxy reaches the API server directly at 10.0.2.2). Measured
from outside the proxy:
  cold_start_s      (guest clock) process start -> /proc/net/ip_vs holds a TCP
                    virtual server on port 80 with M real servers for every
                    Service (examples/ipvs_probe `count`, polled every second)
                    and the ipsets KUBE-CLUSTER-IP and KUBE-LOOP-BACK hold an
                    entry per Service and per local endpoint (`ipset list -t`)
  latency_ms p50/p99  (host clock) EndpointSlice PUT sent by the host ->
                    a datagram from the guest's probe, which asks the kernel
                    over netlink every 0.5 ms whether the new endpoint is a real
                    server of the Service and sends the datagram the moment it
                    is (so the figure includes one UDP hop out of the guest);
                    over --changes changes, after 3 untimed warm-up changes
  put_rtt_p50_ms    the PUT's own round trip to the API server (on the host)
  after_answer_ms p50/p99  per change, latency minus the PUT's round trip: how
                    long after the API server answered the rule was in place
                    (watch delivery into the guest + the proxy + the UDP hop)
  watch_floor_ms p50/p99  after the timed changes, with the proxy stopped
                    (SIGSTOP), the same kind of change seen by a bare watcher
                    in the guest (ipvs_probe `watch`,
                    kube-rs like the proxy) that sends the new address back the
                    moment it decoded the event: PUT sent -> that datagram, the
                    delivery floor under any proxy's latency (API server, the
                    guest's network, one decode; nothing programmed)
  floor_ms p50/p99  ipvs_probe `floor`: one real server added to and removed
                    from a scratch virtual server over netlink (the kernel's
                    own cost of the change)
  cpu_s_per_1000_changes, peak_rss_mb  as in compare.py (read in the guest)
Both run with a minimum sync period of 0 (upstream: --ipvs-min-sync-period=0s,
ours: --min-sync-period 0s) and the rr scheduler. Times inside the guest are
software-emulated (QEMU TCG): compare the two proxies with each other, not with
the host's iptables figures.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

ROOT = compare.ROOT
PROBE = os.path.join(ROOT, "target/release/examples/ipvs_probe")
CACHE = os.environ.get("KPRS_CACHE", "/var/cache/kube-proxy-rs")
WARMUP = 3


def start_proxy(which, kubeconfig, log):
    if which == "rs":
        cmd = [os.path.join(ROOT, "target/release/kube-proxy-rs"), "--kubeconfig", kubeconfig,
               *(["--v", "4"] if os.environ.get("KPRS_BENCH_V", "1") >= "4" else []),
               "--hostname-override", "node-0", "--proxy-mode", "ipvs", "--min-sync-period", "0s",
               # As upstream below: the guest's conntrack settings stay as they are.
               "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
               "--conntrack-tcp-timeout-close-wait=0"]
    else:
        cmd = [f"{CACHE}/k8s/{compare.K8S_VERSION}/bin/kube-proxy", "--kubeconfig", kubeconfig,
               "--hostname-override", "node-0", "--proxy-mode", "ipvs", "--ipvs-min-sync-period=0s",
               "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
               "--conntrack-tcp-timeout-close-wait=0", f"--v={os.environ.get('KPRS_BENCH_V', '1')}"]
    return subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def probe(*args):
    return subprocess.Popen([PROBE, *map(str, args)], stdout=subprocess.PIPE, text=True)


def set_size(name):
    out = subprocess.run(["ipset", "list", "-t", name], capture_output=True, text=True).stdout
    m = re.search(r"Number of entries: (\d+)", out)
    return int(m.group(1)) if m else 0


def vip(i, m):
    return compare.objects(i, m)[0]["spec"]["clusterIP"]


def guest_one(which, n, m, kubeconfig, limit, ctrl):
    """Inside the guest: starts the proxy, times its cold start, then serves
    the host's driver over `ctrl` (a socket file): "wait VIP IP TOKEN" arms a
    probe that sends TOKEN to the host when IP becomes a real server of VIP;
    "begin" marks the start of the timed changes; "watch" ends them, stops
    the proxy (SIGSTOP) and starts a bare watcher (ipvs_probe `watch`) for
    the watch floor, answering "watching"; "done" answers the CPU, RSS and
    kernel floor figures as one JSON line."""
    logpath = os.path.join(tempfile.gettempdir(), f"{which}-{n}.log")
    log = open(logpath, "w")
    p = w = None
    # Endpoint e runs on node-(e % 3) (bench/gen_objects.py); this is node-0,
    # and KUBE-LOOP-BACK holds the node's own endpoints.
    local = sum(1 for e in range(m) if e % 3 == 0)
    try:
        t0 = time.monotonic()
        p = start_proxy(which, kubeconfig, log)
        while True:
            out = probe("count", 80, m).communicate()[0]
            full = int(re.search(r"full=(\d+)", out).group(1))
            # The sets the masquerade rules match must be filled too.
            done = full >= n and set_size("KUBE-CLUSTER-IP") >= n and set_size("KUBE-LOOP-BACK") >= n * local
            if done or p.poll() is not None or time.monotonic() - t0 > limit:
                break
            time.sleep(1)
        if p.poll() is not None:
            raise RuntimeError(f"{which} exited: " + open(logpath).read()[-2000:])
        if not done:
            rss, _ = compare.proc(p.pid)
            note = (f"after {limit} s: {full}/{n} virtual servers complete, KUBE-CLUSTER-IP "
                    f"{set_size('KUBE-CLUSTER-IP')}/{n}, KUBE-LOOP-BACK {set_size('KUBE-LOOP-BACK')}/{n * local}")
            ctrl.write(json.dumps({"cold_start_s": None, "note": note,
                                   "peak_rss_mb": round(rss, 1)}) + "\n")
            return
        ctrl.write(json.dumps({"cold_start_s": round(time.monotonic() - t0, 2)}) + "\n")
        ctrl.flush()
        w, cpu0, cpu1 = None, compare.proc(p.pid)[1], None
        for line in ctrl:
            cmd = line.split()
            if w is not None:
                w.kill()
                w.wait()
                w = None
            if cmd[0] == "wait":
                w = probe("wait", f"{cmd[1]}:80", cmd[2], 60000, f"10.0.2.2:{NOTIFY_PORT[0]}", cmd[3])
                ctrl.write(w.stdout.readline().strip() + "\n")
                ctrl.flush()
            elif cmd[0] == "begin":
                cpu0 = compare.proc(p.pid)[1]
            elif cmd[0] == "watch":
                # The CPU figure covers the timed changes only; the stopped
                # proxy leaves the guest to the watcher alone.
                cpu1 = compare.proc(p.pid)[1]
                os.kill(p.pid, signal.SIGSTOP)
                w = probe("watch", kubeconfig, compare.NS, f"10.0.2.2:{NOTIFY_PORT[0]}")
                ctrl.write(w.stdout.readline().strip() + "\n")
                ctrl.flush()
            elif cmd[0] == "done":
                os.kill(p.pid, signal.SIGCONT)
                rss, now = compare.proc(p.pid)
                cpu1 = now if cpu1 is None else cpu1
                fl = [float(x) for x in probe("floor", 20).communicate()[0].split()]
                ctrl.write(json.dumps({"cpu_s": cpu1 - cpu0, "peak_rss_mb": round(rss, 1),
                                       "floor_p50_ms": round(compare.percentile(fl, 50), 2),
                                       "floor_p99_ms": round(compare.percentile(fl, 99), 2)}) + "\n")
                ctrl.flush()
                break
    finally:
        if w is not None:
            w.kill()
            w.wait()
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        log.close()
        if os.environ.get("KPRS_BENCH_LOG"):
            for line in open(logpath, errors="replace").read().splitlines()[-int(os.environ["KPRS_BENCH_LOG"]):]:
                print(f"{which}: log: {line[:400]}", flush=True)


NOTIFY_PORT = [0]


def guest(a):
    import socket

    NOTIFY_PORT[0] = a.notify
    s = socket.create_connection(("10.0.2.2", a.ctrl), timeout=None)
    ctrl = s.makefile("rw")
    try:
        guest_one(a.proxies, a.n, a.endpoints, os.path.join(a.cp, "guest.kubeconfig"),
                  a.cold_start_limit, ctrl)
    except Exception as e:  # reported to the host, which records it
        ctrl.write(json.dumps({"cold_start_s": None, "note": f"failed: {e}"[:300]}) + "\n")
    ctrl.flush()
    s.close()


def judge(rows):
    if compare.judged(rows) is None:
        return []
    n, rs, up = compare.judged(rows)
    lines = [f"Targets at {n} Services (ipvs, in the guest):"]
    if rs.get("latency_p99_ms") is None:
        return lines + [f"- not judged ({rs.get('note', 'no kube-proxy-rs figures')})"]
    ok = rs["latency_p99_ms"] <= 10
    lines.append(f"- {'PASS' if ok else 'FAIL'}: p99 <= 10 ms ({rs['latency_p99_ms']} ms; "
                 f"upstream {up.get('latency_p99_ms', 'n/a')} ms; the PUT alone: "
                 f"{rs['put_rtt_p50_ms']} ms)")
    ok = rs["after_answer_p99_ms"] <= 10
    lines.append(f"- {'PASS' if ok else 'FAIL'}: p99 after the API server answered <= 10 ms "
                 f"({rs['after_answer_p99_ms']} ms; upstream {up.get('after_answer_p99_ms', 'n/a')} ms)")
    if up.get("latency_p50_ms") is not None:
        lines.append(f"- p50 {rs['latency_p50_ms']} ms vs upstream {up['latency_p50_ms']} ms; "
                     f"cold start {rs['cold_start_s']} s vs {up['cold_start_s']} s")
    return lines


def drive(api, conn, udp, n, m, changes, run):
    """On the host: the timed EndpointSlice changes. Latency = PUT sent ->
    the guest's probe datagram received, both on the host's clock."""
    ctrl = conn.makefile("rw")
    rec = json.loads(ctrl.readline())
    if rec.get("cold_start_s") is None:
        return rec
    lat, rtt, after, missed = [], [], [], 0
    # The first WARMUP changes are not timed (both proxies): they open
    # sockets and fault in code paths a long-running proxy has warm.
    for k in range(-WARMUP, changes):
        if k == 0:
            ctrl.write("begin\n")
        i = (k * 7919) % n
        new_ip = f"10.{200 + run}.{(k + WARMUP) // 250}.{(k + WARMUP) % 250 + 1}"
        path = f"/apis/discovery.k8s.io/v1/namespaces/{compare.NS}/endpointslices/svc-{i}-abcde"
        sl = api.call("GET", path)
        sl["endpoints"][0]["addresses"] = [new_ip]
        ctrl.write(f"wait {vip(i, m)} {new_ip} {k}\n")
        ctrl.flush()
        armed = ctrl.readline().strip()
        if armed != "armed":
            raise RuntimeError(f"probe for {new_ip}: {armed!r}")
        t = time.monotonic()
        api.call("PUT", path, sl)
        answered = time.monotonic()
        took = None
        udp.settimeout(60)
        try:
            while took is None:
                if udp.recv(64).decode() == str(k):
                    took = (time.monotonic() - t) * 1000
        except TimeoutError:
            took = 60000.0
        if k >= 0:
            missed += took >= 60000.0
            lat.append(took)
            rtt.append((answered - t) * 1000)
            after.append(took - rtt[-1])
        if os.environ.get("KPRS_BENCH_LOG"):
            print(f"change {k}: {took:.1f} ms (PUT answered after {(answered - t) * 1000:.1f} ms)", flush=True)
        time.sleep(0.2)
    watch = watch_floor(api, ctrl, udp, n, m, changes, run)
    ctrl.write("done\n")
    ctrl.flush()
    g = json.loads(ctrl.readline())
    rec.update(watch)
    rec["latency_p50_ms"] = round(compare.percentile(lat, 50), 1)
    rec["latency_p99_ms"] = round(compare.percentile(lat, 99), 1)
    rec["put_rtt_p50_ms"] = round(compare.percentile(rtt, 50), 1)
    rec["after_answer_p50_ms"] = round(compare.percentile(after, 50), 1)
    rec["after_answer_p99_ms"] = round(compare.percentile(after, 99), 1)
    rec["cpu_s_per_1000_changes"] = round(g.pop("cpu_s") * 1000 / changes, 1)
    rec.update(g)
    notes = [f"{missed} changes not seen within 60 s" if missed else None,
             rec.pop("watch_floor_note", None) and f"watch floor: {watch['watch_floor_note']}"]
    if any(notes):
        rec["note"] = "; ".join(n for n in notes if n)
    return rec


def watch_floor(api, ctrl, udp, n, m, changes, run):
    """On the host, after the timed changes (the proxy stopped with SIGSTOP
    meanwhile): the same kind of EndpointSlice change, but seen by a bare
    watcher in the guest (ipvs_probe `watch`) that sends the new address
    back the moment the event is decoded. PUT sent -> that datagram is what
    the API server, the guest's network and a watch decode cost before any
    proxy can act: the floor under the latency above."""
    ctrl.write("watch\n")
    ctrl.flush()
    none = {"watch_floor_p50_ms": None, "watch_floor_p99_ms": None}
    if ctrl.readline().strip() != "watching":
        return none
    lat, missed = [], 0
    for k in range(-WARMUP, changes):
        i = (k * 7919 + n // 2) % n
        new_ip = f"10.{210 + run}.{(k + WARMUP) // 250}.{(k + WARMUP) % 250 + 1}"
        path = f"/apis/discovery.k8s.io/v1/namespaces/{compare.NS}/endpointslices/svc-{i}-abcde"
        try:
            sl = api.call("GET", path)
            sl["endpoints"][0]["addresses"] = [new_ip]
            t = time.monotonic()
            api.call("PUT", path, sl)
        except Exception as e:  # the timed figures above stand
            return {**none, "watch_floor_note": f"failed: {e}"[:200]}
        took = None
        udp.settimeout(10)
        try:
            while took is None:
                if udp.recv(64).decode() == new_ip:
                    took = (time.monotonic() - t) * 1000
        except TimeoutError:
            took = None
        if k >= 0:
            if took is None:
                missed += 1
            else:
                lat.append(took)
        if os.environ.get("KPRS_BENCH_LOG"):
            print(f"watch floor {k}: {took} ms", flush=True)
        time.sleep(0.2)
    if not lat:
        return {**none, "watch_floor_note": f"{missed} changes not seen within 10 s"}
    rec = {"watch_floor_p50_ms": round(compare.percentile(lat, 50), 1),
           "watch_floor_p99_ms": round(compare.percentile(lat, 99), 1)}
    if missed:
        rec["watch_floor_note"] = f"{missed} changes not seen within 10 s"
    return rec


def guest_run(a, n, cpdir, run, which, machine, records):
    """Boots the guest for one proxy at one size, drives its changes from
    the host and adds its records."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    # Cold start, the timed changes (60 s each at worst), the watch floor's
    # (10 s each at worst), and boot.
    budget = a.cold_start_limit + (a.changes + WARMUP) * (62 + 11) + 300
    cmd = ["bash", os.path.join(ROOT, "scripts/qemu/run.sh"), "--timeout", str(budget),
           "--mem", str(a.mem), "--", sys.executable, os.path.abspath(__file__), "--in-guest",
           "--cp", cpdir, "--n", str(n), "--endpoints", str(a.endpoints), "--proxies", which,
           "--cold-start-limit", str(a.cold_start_limit),
           "--ctrl", str(server.getsockname()[1]), "--notify", str(udp.getsockname()[1])]
    # Debugging aids passed into the guest: KPRS_BENCH_LOG=N prints the last N
    # lines of the proxy's log; KPRS_BENCH_V sets the proxies' verbosity.
    cmd[cmd.index("--") + 1:cmd.index("--") + 1] = [
        "env", *(f"{k}={os.environ[k]}" for k in ("KPRS_BENCH_LOG", "KPRS_BENCH_V") if k in os.environ)]
    g = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace", cwd=ROOT)

    def echo():
        for line in g.stdout:
            if line.startswith(("rs:", "upstream:", "run.sh")):
                print(line.rstrip(), flush=True)

    threading.Thread(target=echo, daemon=True).start()
    server.settimeout(budget)
    try:
        conn, _ = server.accept()
        conn.settimeout(None)
        rec = drive(compare.Api(cpdir), conn, udp, n, a.endpoints, a.changes, run)
    except Exception as e:
        rec = {"cold_start_s": None, "note": f"failed: {e}"[:300]}
    g.wait()
    print(f"N={n} {which}: {rec}", flush=True)
    records += compare.as_records(rec, which, "ipvs", n, a.endpoints, machine)


def main():
    ap = compare.common_args(cold_start_limit=900)
    ap.add_argument("--mem", type=int, default=4096, help="guest memory (MB)")
    ap.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cp", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ctrl", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--notify", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.in_guest:
        return guest(a)
    compare.prepare(build=("cargo", "build", "--release", "--quiet", "--bin", "kube-proxy-rs",
                           "--example", "ipvs_probe"))
    compare.sh(["bash", os.path.join(ROOT, "scripts/qemu/install.sh")])
    kv = open(os.path.join(CACHE, "qemu/KERNEL_VERSION")).read().strip()
    machine = (f"host {os.cpu_count()} cores; QEMU TCG guest, 2 vCPUs, {a.mem} MB, kernel {kv}")
    records = []
    for n in [int(x) for x in a.sizes.split(",")]:
        cpdir = tempfile.mkdtemp(prefix="kprs-bench-cp-")
        compare.sh(["bash", os.path.join(ROOT, "scripts/k8s/controlplane.sh"), "start", cpdir])
        try:
            t = time.monotonic()
            compare.create_all(compare.Api(cpdir), n, a.endpoints)
            print(f"N={n}: created {n} Services + slices in {time.monotonic() - t:.0f}s", flush=True)
            # One fresh guest per proxy: each starts from an empty IPVS table and
            # reaches the API server directly (no relay in the timed path).
            for run, which in enumerate(a.proxies.split(","), 1):
                guest_run(a, n, cpdir, run, which, machine, records)
        finally:
            subprocess.run(["bash", os.path.join(ROOT, "scripts/k8s/controlplane.sh"), "stop", cpdir])
    compare.write_results(
        records, os.path.join(a.out, f"compare-ipvs{a.suffix}"),
        f"{time.strftime('%Y-%m-%d')}, {machine}, Kubernetes {compare.K8S_VERSION}, "
        f"{a.endpoints} endpoints per Service, {a.changes} changes per size",
        ["cold_start_s", "latency_p50_ms", "latency_p99_ms", "put_rtt_p50_ms", "after_answer_p50_ms", "after_answer_p99_ms", "watch_floor_p50_ms", "watch_floor_p99_ms", "floor_p50_ms", "floor_p99_ms",
         "cpu_s_per_1000_changes", "peak_rss_mb", "note"], judge)


if __name__ == "__main__":
    main()
