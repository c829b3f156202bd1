#!/usr/bin/env python3
"""Side-by-side benchmark of nftables mode: kube-proxy-rs (--proxy-mode
nftables) vs upstream kube-proxy in nftables mode and in iptables mode
(iptables-nft), same Kubernetes release (scripts/k8s/build.sh), against a real
kube-apiserver (scripts/k8s/controlplane.sh). Root only. Each proxy runs alone
in its own network namespace, one after the other against the same cluster
state, driven by bench/compare.py's run_one (same method, same helpers).

Usage: compare_nft.py [--sizes 1000,10000] [--endpoints 5] [--changes 30]
                      [--proxies rs,upstream-nft,upstream-ipt] [--out bench/results]
                      [--cold-start-limit 900] [--changes-limit SECONDS]
                      [--quiet-load 2.5 --quiet-wait 180] [--suffix S] [--keep-other-runs]

Measured from outside the proxy, per proxy x size:
  cold_start_s      process start -> every Service programmed. kube-proxy-rs:
                    map `cluster-groups` of table `ip kube-proxy-rs` holds the
                    VIP tuple of every Service (-> goto cN; the kernel refuses
                    a goto to a missing chain, and the proxy writes the Service's
                    `vips` and `cluster-eps-tcp` elements in the same transaction).
                    Upstream nftables: map `service-ips` of `ip kube-proxy` holds
                    every Service (-> goto its service chain, written in the same
                    transaction as its endpoint chains). Both counted by a netlink
                    dump of the map (bench/nfnl.py; 25 ms at 10,000), every 50 ms.
                    Upstream iptables: as bench/compare.py. After the cold start
                    the other maps are counted once (JSON: programmed_check).
  latency_ms p50/p99  EndpointSlice PUT sent -> the new endpoint in the kernel,
                    polled every 1 ms over netlink (no nft process: nft 1.0.6
                    fetches every element of the table for `nft get element`,
                    1.2-3.4 s at 10,000): kube-proxy-rs, the Service's
                    `cluster-eps-tcp` elements (one GETSETELEM of its 5 keys) hold the
                    new address; upstream nftables, its endpoint chain
                    `endpoint-<hash>-bench/svc-i/tcp/http__<ip>/8080` exists (one
                    GETCHAIN; it is created in the transaction that rewrites the
                    Service's chain to use it); upstream iptables as compare.py
                    (`iptables -S <KUBE-SVC chain>` every 5 ms).
  floor_ms p50/p99  the bare cost of the same change by hand, at that size, in
                    the proxy's namespace, 10 times: kube-proxy-rs, one `nft -f -`
                    deleting and adding the Service's 5 `cluster-eps-tcp` elements and
                    one `hairpin` pair (what its transaction for this change
                    holds); upstream nftables, one `nft -f -` of its change: the
                    Service's chain flushed and rewritten, its 5 endpoint chains
                    added, flushed and written (one of them new), the old one
                    flushed; upstream iptables as compare.py. Then put back.
  cpu_s_per_1000_changes  CPU of the proxy process over the changes, x 1000/changes
  cpu_with_children_s_per_1000_changes  the same plus its nft / iptables-restore
                    processes (the work happens there)
  put_rtt_p50_ms    the PUT's own round trip (API server and etcd), part of the latency
  peak_rss_mb       VmHWM of the proxy over the whole run
  watch floor       (row "API server watch (floor)", per size, before the
                    proxies) PUT sent -> a bare watcher in this script holds the
                    event, 30 changes: the API server's share of any latency
  first_packet_first_ms / first_packet_last_ms  median TCP connect time, as
                    compare.py, to the Service created first (svc-0) and the one
                    created last (svc-N-1); for upstream iptables to the ones
                    first and last in KUBE-SERVICES (its rule walk)
  cold_floor_s      (kube-proxy-rs, JSON only) one `nft -f` of the whole ruleset
                    `render` prints for the same number of Services, into an
                    empty namespace: the floor under its cold start's sync
  check_list_ms     (kube-proxy-rs, JSON only) `nft -t list table ip kube-proxy-rs`,
                    what its periodic check runs
  state_check       (kube-proxy-rs, JSON only) at the end, every Service's
                    cluster-eps-tcp buckets (one dump) against its slice in the API
A proxy that is not fully programmed within --cold-start-limit is reported so,
with how far it got, and gives no further figures.
Results: bench/results/compare-nftables{suffix}.{json,md,png}.
"""
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from nfnl import Nfnl, concat, inside  # noqa: E402

ROOT = compare.ROOT
NS = compare.NS
REPS = 10


def nft(netns, *args, script=None):
    """Runs nft in the namespace as the proxy runs it (a plain child, already
    in the namespace); returns its output and the seconds it took."""
    with inside(netns):
        t = time.monotonic()
        out = subprocess.run(["nft", *args], input=script, text=True, check=True, capture_output=True).stdout
        return out, time.monotonic() - t


def vip(i, m):
    return compare.objects(i, m)[0]["spec"]["clusterIP"]


def bench_vip(key):
    """A key starting with one of the benchmark's ClusterIPs (10.100.0.1 on)."""
    return key[0] == 10 and 100 <= key[1] < 104


def upstream_name(text):
    """Upstream's hashAndTruncate: 8 base32 chars of the SHA-256, '-', the text."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest())[:8].decode() + "-" + text


def endpoints(api, i):
    """Service i's endpoints now, as both proxies order them (by the ip:port string)."""
    sl = api.call("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/svc-{i}-abcde")
    return sorted(f"{e['addresses'][0]}:8080" for e in sl["endpoints"])


def endpoint_chain(i, ep):
    return "endpoint-" + upstream_name(f"{NS}/svc-{i}/tcp/http__{ep}")


class Nft:
    """What both nftables modes share: a netlink socket in the namespace,
    cold start by counting one map's Service elements, the Services created
    first and last for the first packet."""

    poll_s = 0.05
    binary = ""
    flags = []
    table = ""
    count_map = ""

    def __init__(self, netns, n, m):
        self.netns, self.n, self.m = netns, n, m
        self.nl = None
        self.extra = {}

    def start(self, kubeconfig, log):
        cmd = [self.binary, "--kubeconfig", kubeconfig, "--hostname-override", "node-0", "--proxy-mode", "nftables",
               *self.flags,
               # Both: the node's conntrack settings stay as they are.
               "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
               "--conntrack-tcp-timeout-close-wait=0"]
        return subprocess.Popen(["ip", "netns", "exec", self.netns] + cmd, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)

    def socket(self):
        if self.nl is None:
            self.nl = Nfnl(self.netns)
        return self.nl

    def count(self, map_):
        return self.socket().count_elements("ip", self.table, map_, bench_vip)

    def programmed(self):
        return (self.count(self.count_map) or 0) >= self.n

    def progress(self):
        return f"{self.count(self.count_map) or 0}/{self.n} Services in {self.count_map}"

    def begin_changes(self):
        pass

    def service(self, k, run):
        return (k * 7919) % self.n

    def poll(self, found):
        """wait(deadline) -> seen: found() every 1 ms."""
        def wait(deadline):
            while time.monotonic() < deadline:
                if found():
                    return True
                time.sleep(0.001)
            return False
        return wait

    def picks(self):
        return {"first": (0, vip(0, self.m)), "last": (self.n - 1, vip(self.n - 1, self.m))}

    def extras(self):
        return self.extra

    def close(self):
        pass


class RsNft(Nft):
    tag = "rs-nft"
    proxy = "kube-proxy-rs"
    mode = "nftables"
    table = "kube-proxy-rs"
    count_map = "cluster-groups"

    binary = os.path.join(ROOT, "target/release/kube-proxy-rs")
    flags = ["--min-sync-period", "0s"]

    def ready(self, api):
        counts = {mp: self.count(mp) for mp in ("vips", "cluster-groups", "cluster-eps-tcp")}
        self.extra["programmed_check"] = " ".join(f"{k}={v}" for k, v in counts.items())
        if counts["vips"] < self.n or counts["cluster-eps-tcp"] < self.n * self.m:
            raise RuntimeError(f"kube-proxy-rs: cluster-groups full but {counts}")
        # The first and last Service's buckets hold their endpoints, in
        # upstream's order (by the ip:port string).
        for i in (0, self.n - 1):
            want = [a.split(":")[0] for a in endpoints(api, i)]
            if self.eps(i) != want:
                raise RuntimeError(f"kube-proxy-rs: svc-{i} buckets {self.eps(i)}, expected {want}")

    def keys(self, i):
        return [concat(vip(i, self.m), ("port", 80), ("u32", b)) for b in range(self.m)]

    def eps(self, i):
        """The addresses in the Service's cluster-eps buckets, in bucket order."""
        got = self.socket().get_elements("ip", self.table, "cluster-eps-tcp", self.keys(i))
        return [socket.inet_ntoa(got[k][:4]) for k in self.keys(i) if k in got]

    def arm(self, i, new_ip, sl):
        return self.poll(lambda: new_ip in self.eps(i))

    def script(self, i, old, new):
        """One Service's buckets from `old` to `new` addresses and its first
        endpoint's hairpin pair, as one transaction."""
        t = f"ip {self.table}"
        k = [f"{vip(i, self.m)} . 80 . {b}" for b in range(self.m)]
        return (f"delete element {t} cluster-eps-tcp {{ {', '.join(k)} }}\n"
                f"delete element {t} hairpin {{ {old[0]} . {old[0]} }}\n"
                f"add element {t} cluster-eps-tcp {{ {', '.join(f'{x} : {a} . 8080' for x, a in zip(k, new))} }}\n"
                f"add element {t} hairpin {{ {new[0]} . {new[0]} }}\n")

    def floor(self, api):
        i = 1
        orig = self.eps(i)
        cur, times = orig, []
        for r in range(REPS):
            new = [f"10.250.{r % 250}.{b + 1}" for b in range(self.m)]
            times.append(nft(self.netns, "-f", "-", script=self.script(i, cur, new))[1] * 1000)
            cur = new
        nft(self.netns, "-f", "-", script=self.script(i, cur, orig))
        self.api = api
        self.extra["cold_floor_s"] = self.cold_floor()
        # What the periodic check runs (elements are not printed; are they read?).
        self.extra["check_list_ms"] = round(statistics.median(
            nft(self.netns, "-t", "list", "table", "ip", self.table)[1] * 1000 for _ in range(3)), 1)
        return times


    def cold_floor(self):
        """The whole ruleset at this size, as `render` prints it for the same
        objects (bench/gen_objects.py), loaded by one `nft -f` into an empty
        namespace: the floor under the cold start's sync (median of 3)."""
        with tempfile.TemporaryDirectory() as d:
            compare.sh([sys.executable, os.path.join(ROOT, "bench/gen_objects.py"), str(self.n), str(self.m), d])
            script = compare.sh([self.binary, "render", "--proxy-mode", "nftables", "--source", f"dir:{d}",
                                 "--node", "node-0"])
        scratch = f"{self.netns}-floor"
        subprocess.run(["ip", "netns", "add", scratch], check=True)
        try:
            times = []
            for _ in range(3):
                times.append(nft(scratch, "-f", "-", script=script)[1])
                nft(scratch, "delete", "table", "ip", self.table)
            return round(statistics.median(times), 2)
        finally:
            subprocess.run(["ip", "netns", "del", scratch])

    def extras(self):
        """After the changes and the first packet: every Service's buckets
        in the kernel hold its endpoints as the API server has them now."""
        want = {}
        for sl in self.api.call("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices")["items"]:
            i = int(sl["metadata"]["name"].split("-")[1])
            want[vip(i, self.m)] = sorted(f"{e['addresses'][0]}:8080" for e in sl["endpoints"])
        have = {}
        for key, data in self.socket().dump_elements("ip", self.table, "cluster-eps-tcp"):
            ep = f"{socket.inet_ntoa(data[:4])}:{int.from_bytes(data[4:6], 'big')}"
            # (VIP . port . bucket): 4 + 4 (the port, padded) + 4 bytes.
            have.setdefault(socket.inet_ntoa(key[:4]), {})[int.from_bytes(key[8:12], sys.byteorder)] = ep
        wrong = [v for v, eps in want.items() if have.get(v, {}) != dict(enumerate(eps))]
        self.extra["state_check"] = (f"all {len(want)} Services' buckets match the API" if not wrong else
                                     f"{len(wrong)} of {len(want)} Services differ from the API, e.g. {wrong[:3]}")
        return self.extra


class UpstreamNft(Nft):
    tag = "upstream-nft"
    proxy = "kube-proxy"
    mode = "nftables"
    table = "kube-proxy"
    count_map = "service-ips"

    binary = f"/var/cache/kube-proxy-rs/k8s/{compare.K8S_VERSION}/bin/kube-proxy"
    flags = ["--iptables-min-sync-period=0s", "--v=1"]

    def ready(self, api):
        # The chain names are computed as upstream computes them: svc-0's
        # endpoint chains must be there.
        for ep in endpoints(api, 0):
            chain = endpoint_chain(0, ep.replace(":", "/"))
            if not self.socket().chain_exists("ip", self.table, chain):
                raise RuntimeError(f"upstream chain names: {chain} not found")
        self.extra["programmed_check"] = f"service-ips={self.count('service-ips')}"

    def arm(self, i, new_ip, sl):
        chain = endpoint_chain(i, f"{new_ip}/8080")
        return self.poll(lambda: self.socket().chain_exists("ip", self.table, chain))

    def script(self, i, svc_rules, eps, stale):
        t = f"ip {self.table}"
        svc = "service-" + upstream_name(f"{NS}/svc-{i}/tcp/http")
        out = []
        for ep in eps:
            ip = ep.split(":")[0]
            c = endpoint_chain(i, ep.replace(":", "/"))
            out += [f"add chain {t} {c}", f"flush chain {t} {c}",
                    f"add rule {t} {c} ip saddr {ip} jump mark-for-masquerade",
                    f"add rule {t} {c} meta l4proto tcp dnat to {ep}"]
        vmap = ", ".join(f"{b} : goto {endpoint_chain(i, ep.replace(':', '/'))}" for b, ep in enumerate(eps))
        out += [f"add chain {t} {svc}", f"flush chain {t} {svc}"]
        out += [f"add rule {t} {svc} {r}" for r in svc_rules]
        out += [f"add rule {t} {svc} numgen random mod {len(eps)} vmap {{ {vmap} }}"]
        if stale:
            out.append(f"flush chain {t} {endpoint_chain(i, stale.replace(':', '/'))}")
        return "\n".join(out) + "\n"

    def floor(self, api):
        i = 1
        orig = endpoints(api, i)
        for ep in orig:
            if not self.socket().chain_exists("ip", self.table, endpoint_chain(i, ep.replace(":", "/"))):
                raise RuntimeError(f"upstream chain names: {endpoint_chain(i, ep.replace(':', '/'))} not found")
        svc = "service-" + upstream_name(f"{NS}/svc-{i}/tcp/http")
        listing, _ = nft(self.netns, "list", "chain", "ip", self.table, svc)
        body = listing.split("{", 2)[2].rsplit("}", 2)[0]
        svc_rules = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("numgen")]
        cur, times = orig, []
        for r in range(REPS):
            # One endpoint replaced by a new one, as in the timed changes.
            new = sorted(cur[1:] + [f"10.250.{r % 250}.1:8080"])
            times.append(nft(self.netns, "-f", "-", script=self.script(i, svc_rules, new, cur[0]))[1] * 1000)
            cur = new
        nft(self.netns, "-f", "-", script=self.script(i, svc_rules, orig, None))
        return times


def watch_floor(api, n, reps=30):
    """PUT sent -> a bare watcher (this process, no proxy running) holds the
    event with the new address: what the API server and etcd cost before
    any proxy can know of a change (the PUT's answer and the event race;
    this is the later of the two)."""
    i = n // 2
    path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
    sl = api.call("GET", f"{path}/svc-{i}-abcde")
    req = urllib.request.Request(f"{api.server}{path}?watch=1&fieldSelector=metadata.name%3Dsvc-{i}-abcde"
                                 f"&resourceVersion={sl['metadata']['resourceVersion']}")
    req.add_header("Authorization", f"Bearer {api.token}")
    lat = []
    with urllib.request.urlopen(req, context=api.ctx, timeout=60) as events:
        for k in range(reps):
            new_ip = f"10.199.{k // 250}.{k % 250 + 1}"
            sl["endpoints"][0]["addresses"] = [new_ip]
            t = time.monotonic()
            sl = api.call("PUT", f"{path}/svc-{i}-abcde", sl)
            while new_ip not in events.readline().decode():
                pass
            lat.append((time.monotonic() - t) * 1000)
            time.sleep(0.1)
    return {"latency_p50_ms": round(compare.percentile(lat, 50), 1),
            "latency_p99_ms": round(compare.percentile(lat, 99), 1)}


MODES = {
    "rs": RsNft,
    "upstream-nft": UpstreamNft,
    "upstream-ipt": lambda netns, n, m: compare.Iptables("upstream", "nft", netns, n, m),
}
RS, UP_NFT, UP_IPT = "kube-proxy-rs nftables", "kube-proxy nftables", "kube-proxy iptables-nft"
WATCH = "API server watch (floor)"


def judge(rows):
    """The issue's targets, at 10,000 Services (else the largest size) and
    across sizes, each with the floor it sits on."""
    sizes = sorted({n for n, _ in rows})
    if not sizes:
        return []
    n = 10000 if 10000 in sizes else sizes[-1]
    rs, up, ipt = (rows.get((n, p), {}) for p in (RS, UP_NFT, UP_IPT))
    lines = [f"Targets at {n} Services (floors measured in the same run):"]

    def check(name, ok, detail):
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})")

    def skip(name, why):
        lines.append(f"- not judged: {name} ({why})")

    def limit_of(r):
        m = re.search(r"after (\d+) s", r.get("note") or "")
        return int(m.group(1)) if m else None

    if not rs or rs.get("latency_p50_ms") is None:
        return lines + [f"- not judged: kube-proxy-rs has no figures at {n} ({rs.get('note', 'not run')})"]
    watch = rows.get((n, WATCH), {})
    for q, target in (("50", 25), ("99", 60)):
        floors = f"floor p{q} {rs[f'floor_p{q}_ms']} ms: the nft change alone"
        if watch.get(f"latency_p{q}_ms") is not None:
            floors += f"; watch floor p{q} {watch[f'latency_p{q}_ms']} ms: the API server alone"
        check(f"p{q} <= {target} ms", rs[f"latency_p{q}_ms"] <= target, f"{rs[f'latency_p{q}_ms']} ms; {floors}")
    small, big = rows.get((1000, RS), {}), rows.get((30000, RS), {})
    if small.get("latency_p50_ms") and big.get("latency_p50_ms"):
        check("p50 at 30000 <= 1.5 x p50 at 1000", big["latency_p50_ms"] <= 1.5 * small["latency_p50_ms"],
              f"{big['latency_p50_ms']} vs {small['latency_p50_ms']} ms")
    elif small.get("latency_p50_ms"):
        skip("p50 at 30000 <= 1.5 x p50 at 1000",
             f"30000 not run; at {n} {rs['latency_p50_ms']} ms vs {small['latency_p50_ms']} ms at 1000, "
             f"x{rs['latency_p50_ms'] / small['latency_p50_ms']:.2f}")
    if up.get("latency_p50_ms"):
        check("p50 >= 20x better than upstream nftables", up["latency_p50_ms"] >= 20 * rs["latency_p50_ms"],
              f"{up['latency_p50_ms']} vs {rs['latency_p50_ms']} ms, x{up['latency_p50_ms'] / rs['latency_p50_ms']:.1f}; "
              f"floors {up['floor_p50_ms']} vs {rs['floor_p50_ms']} ms")
    else:
        skip("p50 >= 20x better than upstream nftables", f"upstream nftables: {up.get('note', 'not run')}")
    check("cold start <= 3 s", rs["cold_start_s"] <= 3, f"{rs['cold_start_s']} s")
    if big.get("cold_start_s") is not None:
        check("cold start at 30000 <= 10 s", big["cold_start_s"] <= 10, f"{big['cold_start_s']} s")
    if up.get("cold_start_s") is not None:
        check("cold start >= 20x faster than upstream nftables", up["cold_start_s"] >= 20 * rs["cold_start_s"],
              f"{up['cold_start_s']} vs {rs['cold_start_s']} s, x{up['cold_start_s'] / rs['cold_start_s']:.0f}")
    elif limit_of(up):
        check("cold start >= 20x faster than upstream nftables", limit_of(up) >= 20 * rs["cold_start_s"],
              f"upstream not programmed within {limit_of(up)} s, so > x{limit_of(up) / rs['cold_start_s']:.0f}; "
              f"ours {rs['cold_start_s']} s")
    else:
        skip("cold start >= 20x faster than upstream nftables", "upstream nftables not run")
    first, last = rs.get("first_packet_first_ms"), rs.get("first_packet_last_ms")
    if first and last:
        check("first packet: last Service within 10 % of first", abs(last - first) <= 0.1 * first,
              f"{last} vs {first} ms, {100 * (last - first) / first:+.0f} %")
    for name, r in (("upstream nftables", up), ("upstream iptables", ipt)):
        if r.get("peak_rss_mb"):
            at_limit = " (upstream's while still programming)" if r.get("cold_start_s") is None else ""
            check(f"peak RSS <= 1/4 of {name}", rs["peak_rss_mb"] * 4 <= r["peak_rss_mb"],
                  f"{rs['peak_rss_mb']} vs {r['peak_rss_mb']} MB{at_limit}")
    if up.get("cpu_with_children_s_per_1000_changes") is not None:
        check("CPU per 1,000 changes <= 1/20 of upstream nftables (with nft processes)",
              rs["cpu_with_children_s_per_1000_changes"] * 20 <= up["cpu_with_children_s_per_1000_changes"],
              f"{rs['cpu_with_children_s_per_1000_changes']} vs {up['cpu_with_children_s_per_1000_changes']} s; "
              f"proxy process alone {rs['cpu_s_per_1000_changes']} vs {up['cpu_s_per_1000_changes']} s")
    else:
        skip("CPU per 1,000 changes <= 1/20 of upstream nftables", f"upstream nftables: {up.get('note', 'not run')}")
    return lines


METRICS = ["cold_start_s", "latency_p50_ms", "latency_p99_ms", "put_rtt_p50_ms", "floor_p50_ms", "floor_p99_ms",
           "cpu_s_per_1000_changes", "cpu_with_children_s_per_1000_changes", "peak_rss_mb",
           "first_packet_first_ms", "first_packet_last_ms", "note"]


def main():
    ap = compare.common_args(cold_start_limit=900)
    ap.set_defaults(proxies="rs,upstream-nft,upstream-ipt")
    ap.add_argument("--keep-other-runs", action="store_true",
                    help="keep the result file's records of proxy x size runs not made this time (each carries its date)")
    a = ap.parse_args()
    if not shutil.which("nft"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "nftables"], check=True)
    compare.prepare()
    machine = (f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB, "
               f"kernel {platform.release()}, {compare.sh(['nft', '--version']).strip()}, "
               f"{compare.sh(['iptables', '--version']).strip()}")
    records = []
    for n, api, cpdir in compare.clusters([int(x) for x in a.sizes.split(",")], a.endpoints):
        kubeconfig = os.path.join(cpdir, "admin.kubeconfig")
        rec = watch_floor(api, n)
        print(f"N={n} watch floor: {rec}", flush=True)
        records += [dict(r, proxy="API server", mode="watch (floor)")
                    for r in compare.as_records(rec, "none", "", n, a.endpoints, machine)]
        for which in a.proxies.split(","):
            make = MODES[which]
            rec = compare.run_one(lambda netns: make(netns, n, a.endpoints), n, a.changes, api, kubeconfig, cpdir,
                                  a.cold_start_limit, (a.quiet_load, a.quiet_wait), a.changes_limit)
            print(f"N={n} {which}: {rec}", flush=True)
            mode = "iptables-nft" if which == "upstream-ipt" else "nftables"
            records += compare.as_records(rec, "rs" if which == "rs" else "upstream", mode, n, a.endpoints, machine)
    stem = os.path.join(a.out, f"compare-nftables{a.suffix}")
    if a.keep_other_runs and os.path.exists(stem + ".json"):
        ran = {(r["proxy"], r["mode"], r["services"]) for r in records}
        records = [r for r in json.load(open(stem + ".json")) if (r["proxy"], r["mode"], r["services"]) not in ran] + records
    compare.write_results(
        records, stem,
        f"{time.strftime('%Y-%m-%d')}, {machine}, Kubernetes {compare.K8S_VERSION}, {a.endpoints} endpoints per "
        f"Service, {a.changes} changes per size; the machine is shared (another engineer's tests ran at times)",
        METRICS, judge, by_mode=True)


if __name__ == "__main__":
    main()
