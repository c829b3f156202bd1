#!/usr/bin/env python3
"""Bounded connection load for restart tests: opens RATE new TCP connections per
second to HOST:PORT for SECONDS, each sending one HTTP request and reading the
answer. Prints one JSON line: attempted, ok, failed, first failures, and per
second counts. Only for addresses inside test namespaces.

Usage: loadgen.py HOST PORT RATE SECONDS [--timeout 1.0]
"""
import argparse
import json
import socket
import threading
import time


def one(host, port, timeout, results, lock):
    ok = False
    err = ""
    try:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((host, port))
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            ok = data.startswith(b"HTTP/1.0 200")
            if not ok:
                err = "bad answer"
    except OSError as e:
        err = type(e).__name__ + ": " + str(e)
    with lock:
        results.append((time.monotonic(), ok, err))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("rate", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--timeout", type=float, default=1.0)
    a = ap.parse_args()
    results, lock, threads = [], threading.Lock(), []
    start = time.monotonic()
    total = int(a.rate * a.seconds)
    for i in range(total):
        due = start + i / a.rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        t = threading.Thread(target=one, args=(a.host, a.port, a.timeout, results, lock), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(a.timeout + 2)
    failed = [r for r in results if not r[1]]
    print(json.dumps({
        "attempted": total,
        "ok": sum(1 for r in results if r[1]),
        "failed": len(failed) + (total - len(results)),
        "first_failures": [f"{r[0] - start:.2f}s {r[2]}" for r in failed[:5]],
    }))


if __name__ == "__main__":
    main()
