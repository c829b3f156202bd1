#!/usr/bin/env python3
"""The UDP conntrack flush before and after (root only).

Usage: conntrack_flush.py [--reps 3] [--out bench/results]

Each run: a fresh network namespace with a veth whose far side answers
nothing (static neighbours), an iptables DNAT rule sending UDP to the
service IPs on to one endpoint (10.0.0.2:5353), and the UDP timeout raised
to 600 s so no entry expires during a run. 10,000 real UDP flows are sent
through the rule (one socket per flow, distinct source ports), `conntrack -C`
checks they are all tracked, and examples/conntrack_flush.rs (release build)
deletes the entries DNATed to the endpoint through the service IPs -- the
filters a removed endpoint calls for:
  old   one `conntrack -D -f ipv4 -p udp --orig-dst VIP --dst-nat EP` process
        per service IP, in turn, as the sync loop ran them before (it waited
        for all of them)
  new   the cleaner's pass: one netlink dump of the UDP entries, the filters
        matched in memory, one batch of netlink deletes (200 per send); the
        sync loop's own share is building the work and handing it to the
        cleaner thread
`conntrack -C` then checks that no entry is left. Scenarios:
  one VIP          10,000 flows to 10.96.0.53:53 (one filter)
  1,000 ext. IPs   10 flows to each of 1,000 service IPs (1,000 filters: a
                   UDP Service with 1,000 externalIPs losing an endpoint)
Results: bench/results/conntrack-flush.{json,md} (--render rewrites the .md
from the .json).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target/release/examples/conntrack_flush")
ENDPOINT = "10.0.0.2"
SPORT0 = 20000

SCENARIOS = [
    # name, service IPs, flows per service IP
    ("one VIP", ["10.96.0.53"], 10000),
    ("1,000 external IPs", [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(1000)], 10),
]

SETUP = [
    "ip link set lo up",
    "ip link add d0 type veth peer name d1",
    "ip addr add 10.0.0.1/24 dev d0",
    "ip link set d0 up",
    "ip link set d1 up",
    f"ip neigh add {ENDPOINT} lladdr 02:00:00:00:00:02 dev d0",
    f"ip route add default via {ENDPOINT}",
    "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600",
    f"iptables -t nat -A OUTPUT -d 10.96.0.53 -p udp --dport 53 -j DNAT --to-destination {ENDPOINT}:5353",
    f"iptables -t nat -A OUTPUT -d 198.18.0.0/16 -p udp --dport 53 -j DNAT --to-destination {ENDPOINT}:5353",
]

SENDER = """
import socket, sys
vips = sys.stdin.read().split()
n, sport0 = int(sys.argv[1]), int(sys.argv[2])
for vip in vips:
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", sport0 + i))
        s.sendto(b"q", (vip, 53))
        s.close()
"""


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def count(ns):
    return int(sh(["ip", "netns", "exec", ns, "conntrack", "-C"]).strip())


def one_run(mode, vips, per_vip, rep):
    ns = f"kprs-ctbench-{os.getpid()}-{rep}"
    sh(["ip", "netns", "add", ns])
    try:
        for c in SETUP:
            sh(["ip", "netns", "exec", ns, "sh", "-c", c])
        t = time.monotonic()
        sh(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, str(per_vip), str(SPORT0)],
           input="\n".join(vips))
        populate_s = time.monotonic() - t
        want = len(vips) * per_vip
        have = count(ns)
        if have != want:
            raise RuntimeError(f"{have} entries tracked, {want} flows sent")
        out = json.loads(sh(["ip", "netns", "exec", ns, PROBE, mode, ENDPOINT], input="\n".join(vips)))
        left = count(ns)
        if left != 0:
            raise RuntimeError(f"{mode}: {left} of {want} entries left after the flush")
        out.update(entries=want, left=left, populate_s=round(populate_s, 2))
        return out
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json in --out")
    a = ap.parse_args()
    if a.render:
        with open(os.path.join(a.out, "conntrack-flush.json")) as f:
            render(json.load(f), a.out)
        return
    if os.geteuid() != 0:
        sys.exit("root needed (network namespaces, conntrack)")
    subprocess.run(["cargo", "build", "--release", "--example", "conntrack_flush"], cwd=ROOT, check=True)
    machine = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "conntrack_tool": sh(["conntrack", "--version"]).strip(),
        "load_average_at_start": os.getloadavg(),
    }
    results = []
    for name, vips, per_vip in SCENARIOS:
        row = {"scenario": name, "service_ips": len(vips), "entries": len(vips) * per_vip}
        for mode in ["old", "new"]:
            runs = []
            for rep in range(a.reps):
                r = one_run(mode, vips, per_vip, rep)
                print(f"{name} {mode} #{rep + 1}: {r}", flush=True)
                runs.append(r)
            row[mode] = {
                "runs": runs,
                "median_ms": statistics.median(r["ms"] for r in runs),
                "median_loop_blocked_ms": statistics.median(r["loop_blocked_ms"] for r in runs),
            }
        row["speedup"] = row["old"]["median_ms"] / row["new"]["median_ms"]
        results.append(row)
    machine["load_average_at_end"] = os.getloadavg()
    doc = {"method": __doc__.strip(), "reps": a.reps, "machine": machine, "results": results}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "conntrack-flush.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    render(doc, a.out)


def render(doc, out):
    machine, results = doc["machine"], doc["results"]
    lines = [
        "# UDP conntrack flush: `conntrack -D` processes vs one netlink dump + batch delete",
        "",
        f"Linux {machine['kernel']}, {machine['cpus']} CPUs, {machine['conntrack_tool']}; "
        f"median of {doc['reps']} runs, each in a fresh network namespace "
        f"(load average {machine['load_average_at_start'][0]:.1f} at start, shared machine). "
        "Method: `bench/conntrack_flush.py` (docstring); raw runs: `conntrack-flush.json`.",
        "",
        "| scenario | entries | filters | before: `conntrack -D` processes | after: netlink pass | speedup | sync loop blocked before | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {r['entries']:,} | {r['service_ips']:,} | "
            f"{r['old']['median_ms']:,.0f} ms | {r['new']['median_ms']:,.1f} ms | "
            f"{r['speedup']:,.1f}x | {r['old']['median_loop_blocked_ms']:,.0f} ms | "
            f"{r['new']['median_loop_blocked_ms'] * 1000:,.0f} µs |"
        )
    lines += [
        "",
        "Every run checked with `conntrack -C`: all entries tracked before, none left after.",
        "The netlink pass runs on the cleaner thread; the sync loop only builds the work and",
        "sends it over a channel (the last column).",
        "",
    ]
    with open(os.path.join(out, "conntrack-flush.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
