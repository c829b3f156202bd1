#!/usr/bin/env python3
"""What the nftables layout's operations cost on this kernel (root only).

Usage: nft_layout.py [--sizes 1000,10000,30000] [--reps 30] [--out bench/results]

For each N: N Services x 5 endpoints are generated (bench/gen_objects.py),
`kube-proxy-rs render --proxy-mode nftables` prints the full-sync script
the daemon would load, and in a fresh network namespace this measures:
  cold_one_tx_s        that script in one `nft -f` (what a cold start does)
  cold_split_s         the same in transactions of 5,000 elements each
                       (fixed part first), added up
  full_again_s         the script again over the loaded table (a full
                       sync: flush and rewrite in one transaction)
  data_change_ms       p50/p99 of one Service's 5 endpoints replaced
                       (5 element deletes + 5 adds in cluster-eps-tcp, one
                       `nft -f`): what an endpoint change costs
  verdict_change_ms    p50/p99 of one Service's group moved to another
                       dispatch chain (delete + add in the verdict map
                       cluster-groups): what an endpoint *count* change
                       adds
  noop_ms              p50/p99 of an `nft -f` that changes nothing (`add
                       table`): process start and cache fetch, the part an
                       in-process netlink batch would save
  list_terse_ms        p50 of `nft -t list table` (what a periodic check
                       through nft would cost: nft fetches every element)
  list_netlink_ms      p50 of the same read over netlink without elements
                       (examples/nft_list.rs: what the backend does)
Results: bench/results/nft-layout.{json,md}.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/kube-proxy-rs")
PROBE = os.path.join(ROOT, "target/release/examples/nft_list")
T = "ip kube-proxy-rs"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def nft(ns, script):
    t0 = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ip(base, i):
    return f"{base + i // 65536}.{(i // 256) % 256}.{i % 256}"


def split(script, per=5000):
    """The script as transactions: the fixed part, then elements in chunks."""
    fixed, elements = [], []
    for line in script.splitlines():
        (elements if line.startswith("add element") else fixed).append(line)
    parts, cur, count = ["\n".join(fixed) + "\n"], [], 0
    for line in elements:
        head, body = line.split("{", 1)
        items = body.rstrip("}").strip().split(", ")
        for it in items:
            cur.append(f"{head}{{ {it} }}")
            count += 1
            if count % per == 0:
                parts.append("\n".join(cur) + "\n")
                cur = []
    if cur:
        parts.append("\n".join(cur) + "\n")
    return parts


def one_size(n, reps):
    work = tempfile.mkdtemp(prefix=f"nftlayout{n}-")
    objs = os.path.join(work, "objects")
    sh([sys.executable, os.path.join(ROOT, "bench/gen_objects.py"), str(n), "5", objs])
    script = subprocess.run(
        [BIN, "render", "--proxy-mode", "nftables", "--source", f"dir:{objs}",
         "--node", "node-0", "--ip-families", "ipv4", "--cluster-cidr", "10.128.0.0/9"],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    ns = f"kprsnl{os.getpid()}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    sh(["ip", "netns", "add", ns])
    try:
        r = {"services": n, "endpoints_per_service": 5,
             "script_lines": script.count("\n")}
        r["cold_one_tx_s"] = round(nft(ns, script), 3)
        r["full_again_s"] = round(nft(ns, script), 3)
        sh(["ip", "netns", "del", ns])
        sh(["ip", "netns", "add", ns])
        r["cold_split_s"] = round(sum(nft(ns, p) for p in split(script)), 3)
        # One Service in the middle: replace its 5 endpoints, then put them back.
        i = n // 2
        vip = f"10.{ip(96, i + 1)}"
        old = [f"10.{ip(128, i * 5 + e + 1)}" for e in range(5)]
        new = [f"10.{ip(200, e + 1)}" for e in range(5)]
        data = []
        for k in range(reps):
            a, b = (old, new) if k % 2 == 0 else (new, old)
            keys = ", ".join(f"{vip} . 80 . {e}" for e in range(5))
            vals = ", ".join(f"{vip} . 80 . {e} : {b[e]} . 8080" for e in range(5))
            data.append(nft(ns, f"delete element {T} cluster-eps-tcp {{ {keys} }}\n"
                                f"add element {T} cluster-eps-tcp {{ {vals} }}\n") * 1000)
        verdict = []
        nft(ns, "".join(f"add chain {T} c4\nadd rule {T} c4 dnat ip to ip daddr . {p} dport"
                        f" . numgen random mod 4 map @cluster-eps-{p}\n" for p in ("tcp", "udp", "sctp")))
        for k in range(reps):
            to = "c4" if k % 2 == 0 else "c5"
            verdict.append(nft(ns, f"delete element {T} cluster-groups {{ {vip} . tcp . 80 }}\n"
                                   f"add element {T} cluster-groups {{ {vip} . tcp . 80 : goto {to} }}\n") * 1000)
        noop = [nft(ns, f"add table {T}\n") * 1000 for _ in range(reps)]
        lst = []
        for _ in range(min(reps, 10)):
            t0 = time.perf_counter()
            sh(["ip", "netns", "exec", ns, "nft", "-t", "list", "table", "ip", "kube-proxy-rs"])
            lst.append((time.perf_counter() - t0) * 1000)
        for name, xs in [("data_change_ms", data), ("verdict_change_ms", verdict),
                         ("noop_ms", noop)]:
            r[name + "_p50"] = round(pct(xs, 50), 1)
            r[name + "_p99"] = round(pct(xs, 99), 1)
        r["list_terse_ms_p50"] = round(pct(lst, 50), 1)
        dump = [json.loads(sh(["ip", "netns", "exec", ns, PROBE, "ip", "kube-proxy-rs"]))["ms"]
                for _ in range(reps)]
        r["list_netlink_ms_p50"] = round(pct(dump, 50), 2)
        return r
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", work])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("nft_layout.py: needs root (network namespaces)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "kube-proxy-rs",
                    "--example", "nft_list"], cwd=ROOT, check=True)
    rows = [one_size(int(n), a.reps) for n in a.sizes.split(",")]
    machine = {"date": time.strftime("%Y-%m-%d"), "kernel": platform.release(),
               "nft": sh(["nft", "--version"]).strip(), "cores": os.cpu_count()}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "nft-layout.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=1)
    cols = list(rows[0].keys())
    md = [f"{machine['date']}, kernel {machine['kernel']}, {machine['nft']}, "
          f"{machine['cores']} cores, {a.reps} changes per kind\n",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    with open(os.path.join(a.out, "nft-layout.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
