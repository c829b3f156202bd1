#!/usr/bin/env python3
"""Writes N Services with M endpoints each as YAML files for `--source dir:`.

Usage: gen_objects.py N M OUTDIR [--per-file 100] [--ns bench]
Service i gets ClusterIP 10.{96+i//65536}.{(i//256)%256}.{i%256} (i >= 1 skips .0),
port 80 -> 8080, endpoints 10.{128+...}. Files hold --per-file services each
(services-00000.yaml, ...), so one change rewrites one small file.
"""
import argparse
import os


def ip(base, i):
    return f"{base + i // 65536}.{(i // 256) % 256}.{i % 256}"


def service_yaml(ns, i, m, version=0):
    name = f"svc-{i}"
    out = [
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\n"
        f"spec: {{clusterIP: 10.{ip(96, i + 1)}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n"
    ]
    eps = []
    for e in range(m):
        n = i * m + e + version * 7919
        eps.append(f"- {{addresses: [10.{ip(128, n + 1)}], nodeName: node-{e % 3}}}")
    out.append(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata: {{name: {name}-abcde, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n"
        "addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n" + "\n".join(eps) + "\n---\n"
    )
    return "".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("m", type=int)
    ap.add_argument("outdir")
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--ns", default="bench")
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    for f in range(0, a.n, a.per_file):
        with open(os.path.join(a.outdir, f"services-{f // a.per_file:05d}.yaml"), "w") as fh:
            for i in range(f, min(f + a.per_file, a.n)):
                fh.write(service_yaml(a.ns, i, a.m))


if __name__ == "__main__":
    main()
