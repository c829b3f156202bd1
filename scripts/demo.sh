#!/usr/bin/env bash
# The demo: three "pods" (network namespaces on a bridge) behind one ClusterIP
# Service, kube-proxy-rs programming the node from a directory of manifests,
# and curl answered by different pods. No cluster needed. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
BIN=$PWD/target/release/kube-proxy-rs

P=kprs-demo
NODE=$P-node
OBJ=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in $NODE $P-pod0 $P-pod1 $P-pod2; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$OBJ"
}
for ns in $NODE $P-pod0 $P-pod1 $P-pod2; do ip netns del "$ns" 2>/dev/null || true; done
trap cleanup EXIT

# The node, with a bridge for its pods.
ip netns add $NODE
ip -n $NODE link set lo up
ip -n $NODE link add br0 type bridge
ip -n $NODE addr add 10.244.1.1/24 dev br0
ip -n $NODE link set br0 up
ip netns exec $NODE sysctl -qw net.ipv4.ip_forward=1
ip netns exec $NODE sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
# Locally generated traffic to a ClusterIP needs some route; DNAT does the rest.
ip -n $NODE route add 10.96.0.0/12 dev br0

for i in 0 1 2; do
  ns=$P-pod$i
  ip netns add $ns
  ip link add veth$i netns $NODE type veth peer name eth0 netns $ns
  ip -n $NODE link set veth$i master br0 up
  ip -n $ns link set lo up
  ip -n $ns addr add 10.244.1.1$i/24 dev eth0
  ip -n $ns link set eth0 up
  ip -n $ns route add default via 10.244.1.1
  ip netns exec $ns python3 scripts/echo_server.py pod$i 8080 & PIDS+=($!)
done

cat > "$OBJ/web.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: demo-node, conditions: {ready: true}}
- {addresses: [10.244.1.11], nodeName: demo-node, conditions: {ready: true}}
- {addresses: [10.244.1.12], nodeName: demo-node, conditions: {ready: true}}
YAML

ip netns exec $NODE "$BIN" --source "dir:$OBJ" --hostname-override demo-node \
  --cluster-cidr 10.244.0.0/16 --min-sync-period 0s 2> "$OBJ/proxy.log" & PIDS+=($!)

for _ in $(seq 50); do
  ip netns exec $NODE iptables-save -t nat 2>/dev/null | grep -q 'demo/web:http cluster IP' && break
  sleep 0.2
done
for _ in $(seq 50); do
  ip netns exec $NODE curl -s --max-time 1 http://10.96.0.10/ >/dev/null && break
  sleep 0.2
done

echo "== kube-proxy-rs programmed demo/web (ClusterIP 10.96.0.10:80 -> 3 pods):"
ip netns exec $NODE iptables-save -t nat | grep -E '^-A KUBE-(SERVICES|SVC)' | grep demo/web
echo
echo "== 12 requests: curl http://10.96.0.10/ from the node"
for i in $(seq 12); do
  ip netns exec $NODE curl -s --max-time 2 http://10.96.0.10/ | cut -d' ' -f1
done | sort | uniq -c
echo
echo "== the same proxy's log:"
tail -n 3 "$OBJ/proxy.log"
