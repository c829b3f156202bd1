#!/usr/bin/env python3
"""Where the iptables-nft commit floor comes from (root only).

Usage: nft_floor.py [--sizes 1000,10000] [--reps 10] [--out bench/results]

For each N: a fresh network namespace, where kube-proxy-rs programs N Services
x 5 endpoints from generated files (--source dir:, no API server) and is
stopped once KUBE-SERVICES jumps to all of them (the rules stay). Then, with
the same bare restore of one KUBE-SVC chain and its 5 KUBE-SEP chains that
bench/compare.py calls the floor:
  hooked_ms p50/p99    as the proxy left the table: KUBE-SERVICES reachable
                       from the nat hooks (PREROUTING, OUTPUT)
  unhooked_ms p50/p99  after the jumps from PREROUTING and OUTPUT to
                       KUBE-SERVICES are deleted: the same rules, no longer
                       reachable from a hooked base chain
  perf                 where the hooked restores spend their CPU (perf record
                       -g of those restores; self time of the top symbols,
                       the table lists the kernel's)
Results: bench/results/nft-floor.{json,md}.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

ROOT = compare.ROOT
M = 5


def program(netns, n, workdir):
    """kube-proxy-rs writes N Services into the namespace and is stopped."""
    objs = os.path.join(workdir, "objects")
    compare.sh([sys.executable, os.path.join(ROOT, "bench/gen_objects.py"), str(n), str(M), objs])
    log = open(os.path.join(workdir, "proxy.log"), "w")
    p = subprocess.Popen(["ip", "netns", "exec", netns, os.path.join(ROOT, "target/release/kube-proxy-rs"),
                          "--source", f"dir:{objs}", "--hostname-override", "node-0",
                          "--proxy-mode", "iptables", "--iptables-backend", "nft"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    t = time.monotonic()
    try:
        while len(compare.service_jumps(netns, "nft")) < n:
            if p.poll() is not None:
                raise RuntimeError("kube-proxy-rs exited: " + open(log.name).read()[-2000:])
            if time.monotonic() - t > 600:
                raise RuntimeError(f"not programmed after 600 s (see {log.name})")
            time.sleep(1)
    finally:
        p.kill()
        p.wait()
    return time.monotonic() - t


def restores(netns, chain, reps, large):
    times = []
    for r in range(reps):
        text = compare.floor_payload(chain, r, M, large)
        t = time.monotonic()
        subprocess.run(["ip", "netns", "exec", netns, "iptables-nft-restore", "--noflush"],
                       input=text, text=True, check=True)
        times.append((time.monotonic() - t) * 1000)
    return times


def perf_top(netns, chain, reps, large, workdir, top=8):
    """Self-time share of the top kernel symbols over `reps` hooked restores."""
    script = os.path.join(workdir, "restores.sh")
    with open(script, "w") as fh:
        for r in range(reps):
            payload = os.path.join(workdir, f"payload-{r}.txt")
            with open(payload, "w") as p:
                p.write(compare.floor_payload(chain, r + 1000, M, large))
            fh.write(f"ip netns exec {netns} iptables-nft-restore --noflush < {payload}\n")
    data = os.path.join(workdir, "perf.data")
    rec = subprocess.run(["perf", "record", "-q", "-g", "-o", data, "--", "sh", script],
                         capture_output=True, text=True)
    if rec.returncode != 0:
        return [{"symbol": f"perf record failed: {rec.stderr.strip()[:200]}", "percent": None}]
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol",
                          "--stdio", "-g", "none", "--percent-limit", "1"],
                         capture_output=True, text=True).stdout
    out = []
    for line in rep.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+\[([k.])\]\s+(\S+)", line)
        if m:
            out.append({"symbol": m.group(3), "kernel": m.group(2) == "k", "percent": float(m.group(1))})
    return out[:top]


def one(n, reps):
    netns = f"kprs-nftfloor-{os.getpid()}"
    workdir = tempfile.mkdtemp(prefix="kprs-nftfloor-")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        took = program(netns, n, workdir)
        chain = compare.service_jumps(netns, "nft")[n // 2].split("-j ")[-1].strip()
        large = n * M > 1000
        hooked = restores(netns, chain, reps, large)
        perf = perf_top(netns, chain, reps, large, workdir)
        for hook in ("PREROUTING", "OUTPUT"):
            subprocess.run(["ip", "netns", "exec", netns, "iptables-nft", "-t", "nat", "-D", hook,
                            "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
                           check=True)
        unhooked = restores(netns, chain, reps, large)
    finally:
        subprocess.run(["ip", "netns", "del", netns])
    rec = {"services": n, "programmed_s": round(took, 1),
           "hooked_p50_ms": round(compare.percentile(hooked, 50), 1),
           "hooked_p99_ms": round(compare.percentile(hooked, 99), 1),
           "unhooked_p50_ms": round(compare.percentile(unhooked, 50), 1),
           "unhooked_p99_ms": round(compare.percentile(unhooked, 99), 1),
           "perf": perf, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(rec), flush=True)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    a = ap.parse_args()
    compare.prepare()
    machine = (f"{os.cpu_count()} cores, kernel {platform.release()}, "
               f"{compare.sh(['iptables-nft', '--version']).strip()}")
    recs = [one(int(n), a.reps) for n in a.sizes.split(",")]
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, "nft-floor")
    with open(stem + ".json", "w") as fh:
        json.dump({"machine": machine, "records": recs}, fh, indent=1)
    md = [f"{time.strftime('%Y-%m-%d')}, {machine}, {M} endpoints per Service, {a.reps} restores each\n",
          "| services | hooked p50 ms | hooked p99 ms | unhooked p50 ms | unhooked p99 ms | top kernel symbols (self %) |",
          "|---|---|---|---|---|---|"]
    for r in recs:
        top = ", ".join(f"{p['symbol']} {p['percent']}" for p in r["perf"] if p.get("kernel"))
        md.append(f"| {r['services']} | {r['hooked_p50_ms']} | {r['hooked_p99_ms']} | "
                  f"{r['unhooked_p50_ms']} | {r['unhooked_p99_ms']} | {top} |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
