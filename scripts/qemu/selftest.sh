#!/usr/bin/env bash
# Proves the IPVS lab works: dummy link with a /32, an IPVS virtual server with
# a NAT real server, an ipset, an iptables-nft rule, the IPVS sysctls, and two
# network namespaces talking over a veth — all inside the guest kernel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
"$here/install.sh" >/dev/null
exec "$here/run.sh" --timeout 180 -- sh -ec '
  ip link add kube-ipvs0 type dummy
  ip addr add 10.96.0.10/32 dev kube-ipvs0
  ipvsadm -A -t 10.96.0.10:80 -s rr
  ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.10:8080 -m
  ipvsadm -Ln | grep -q "10.244.1.10:8080 *Masq"
  ipset create kprs-selftest hash:ip,port
  iptables -t nat -A POSTROUTING -m set --match-set kprs-selftest dst,dst -j MASQUERADE
  test -e /proc/sys/net/ipv4/vs/conntrack
  ip netns add a; ip netns add b
  ip link add va netns a type veth peer name vb netns b
  ip -n a addr add 192.168.77.1/24 dev va; ip -n a link set va up
  ip -n b addr add 192.168.77.2/24 dev vb; ip -n b link set vb up
  ip netns exec b python3 scripts/echo_server.py b 8080 --bind 0.0.0.0 & 
  for i in $(seq 50); do ip netns exec a curl -s --max-time 1 http://192.168.77.2:8080/ | grep -q "^b:8080" && break; sleep 0.2; done
  ip netns exec a curl -s --max-time 2 http://192.168.77.2:8080/ | grep -q "^b:8080"
  echo "selftest: IPVS lab OK"'
