#!/usr/bin/env python3
"""Soak: churns endpoints of N Services for a bounded time and records the
proxy's RSS and CPU over time. Root only; everything happens inside a fresh
network namespace that is deleted at the end.

Usage: soak.py [--services 10000] [--endpoints 5] [--seconds 300]
               [--interval 2] [--files-per-cycle 1] [--mode iptables|ipvs]
               [--out bench/results]

Each cycle rewrites --files-per-cycle object files (100 Services each) with a
new endpoint set whose size alternates between M and M-2 (endpoints added and
removed), then samples /proc/PID. The report (JSON + Markdown) gives RSS after
warm-up (the first 20% of the run, at least one full rotation of the files)
and at the end, the least-squares RSS slope per
cycle after warm-up, and CPU seconds.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_objects  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    for p in ("target/release/kube-proxy-rs", "target/debug/kube-proxy-rs"):
        path = os.path.join(ROOT, p)
        if os.path.exists(path):
            return path
    sys.exit("build first: cargo build --release")


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(f[11]) + int(f[12])) / tick
    return rss, cpu


def slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--files-per-cycle", type=int, default=1)
    ap.add_argument("--mode", default="iptables")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak.py needs root (network namespace)")
    ns = f"kprs-soak-{os.getpid()}"
    work = tempfile.mkdtemp(prefix="kprs-soak-")
    objs = os.path.join(work, "objects")
    os.makedirs(objs)
    per_file = 100
    nfiles = (a.services + per_file - 1) // per_file
    for f in range(nfiles):
        with open(os.path.join(objs, f"services-{f:05d}.yaml"), "w") as fh:
            for i in range(f * per_file, min((f + 1) * per_file, a.services)):
                fh.write(gen_objects.service_yaml("bench", i, a.endpoints))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    log = open(os.path.join(work, "proxy.log"), "w")
    proxy = subprocess.Popen(
        ["ip", "netns", "exec", ns, binary(), "--proxy-mode", a.mode,
         "--source", f"dir:{objs}", "--hostname-override", "node-0",
         "--min-sync-period", "1s", "--metrics-bind-address", "", "--healthz-bind-address", ""],
        stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    samples = []
    try:
        start = time.time()
        # Warm start: wait for the first full sync (bounded).
        while time.time() - start < 600:
            with open(os.path.join(work, "proxy.log")) as fh:
                if "full=true" in fh.read():
                    break
            if proxy.poll() is not None:
                sys.exit(f"proxy exited: see {work}/proxy.log")
            time.sleep(0.5)
        first_sync = time.time() - start
        t0 = time.time()
        cycle = 0
        while time.time() - t0 < a.seconds:
            cycle += 1
            for k in range(a.files_per_cycle):
                f = (cycle * a.files_per_cycle + k) % nfiles
                m = a.endpoints if cycle % 2 else max(1, a.endpoints - 2)
                tmp = os.path.join(objs, f".tmp-{f}")
                with open(tmp, "w") as fh:
                    for i in range(f * per_file, min((f + 1) * per_file, a.services)):
                        fh.write(gen_objects.service_yaml("bench", i, m, version=cycle))
                os.replace(tmp, os.path.join(objs, f"services-{f:05d}.yaml"))
            time.sleep(a.interval)
            rss, cpu = proc_sample(proxy.pid)
            samples.append({"t": round(time.time() - t0, 2), "cycle": cycle, "rss_kb": rss, "cpu_s": round(cpu, 2)})
    finally:
        proxy.kill()
        proxy.wait()
        subprocess.run(["ip", "netns", "del", ns])
    # Warm-up: the first 20 % of the run, and at least one full rotation (every
    # file rewritten once), after which the set of objects has its final shape.
    warm = min(len(samples) - 1, max(1, len(samples) // 5, nfiles // a.files_per_cycle)) if samples else 0
    post = samples[warm:]
    rss_slope = slope([s["cycle"] for s in post], [s["rss_kb"] for s in post])
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, kernel {platform.release()}",
        "mode": a.mode,
        "services": a.services,
        "endpoints": a.endpoints,
        "seconds": a.seconds,
        "cycles": len(samples),
        "services_changed_per_cycle": a.files_per_cycle * per_file,
        "first_full_sync_s": round(first_sync, 1),
        "rss_after_warmup_kb": samples[warm - 1]["rss_kb"] if samples else None,
        "rss_end_kb": samples[-1]["rss_kb"] if samples else None,
        "rss_max_kb": max((s["rss_kb"] for s in samples), default=None),
        "rss_slope_kb_per_cycle": round(rss_slope, 2),
        "cpu_s_total": samples[-1]["cpu_s"] if samples else None,
        "samples": samples,
    }
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"soak-{a.mode}-{a.services}")
    with open(stem + ".json", "w") as fh:
        json.dump(report, fh, indent=1)
    md = (
        f"| mode | services x endpoints | run | cycles (services changed each) | RSS after warm-up | RSS end | RSS max | slope after warm-up | CPU |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| {a.mode} | {a.services} x {a.endpoints} | {a.seconds} s | {len(samples)} ({a.files_per_cycle * per_file}) | "
        f"{report['rss_after_warmup_kb'] / 1024:.0f} MB | {report['rss_end_kb'] / 1024:.0f} MB | {report['rss_max_kb'] / 1024:.0f} MB | "
        f"{rss_slope:+.1f} KB/cycle | {report['cpu_s_total']} s |\n"
    )
    with open(stem + ".md", "w") as fh:
        fh.write(f"Soak {report['date']} on {report['machine']}\n\n" + md)
    print(md)
    print(f"report: {stem}.json / .md; proxy log kept in {work}/proxy.log")
    shutil.rmtree(objs, ignore_errors=True)


if __name__ == "__main__":
    main()
