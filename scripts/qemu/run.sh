#!/usr/bin/env bash
# Runs a command inside Debian's kernel under QEMU (software emulation), with
# the host's filesystem as the guest's (read-only, overlaid with tmpfs) and the
# caller's working directory. Exits with the command's exit code; 124 on
# timeout; 77 when the lab is not installed (scripts/qemu/install.sh).
#   run.sh [--timeout SECONDS] [--mem MB] -- COMMAND...
set -euo pipefail
CACHE=${KPRS_CACHE:-/var/cache/kube-proxy-rs}/qemu
timeout_s=300 mem=2048
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--timeout S] [--mem MB] -- COMMAND..." >&2; exit 2; }
if [ ! -f "$CACHE/initrd.img" ] || ! command -v qemu-system-x86_64 >/dev/null; then
  echo "QEMU lab not installed (run scripts/qemu/install.sh)" >&2
  exit 77
fi
kv=$(cat "$CACHE/KERNEL_VERSION")
run=$(mktemp -d "$CACHE/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
cmd=$(printf '%q ' "$@")
# The guest sees this file at the same path through the 9p share.
cat > "$run/script.sh" <<SCRIPT
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mkdir -p /lib/modules && ln -sfn $CACHE/kernel/lib/modules/$kv /lib/modules/$kv
# libcrc32c users need crc32c first (busybox/kmod ignore that softdep order).
modprobe -a crc32c_generic virtio_net dummy veth bridge br_netfilter nf_conntrack nf_nat \
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_sh nf_tables nft_compat nft_chain_nat nft_ct nft_nat \
  nft_masq x_tables ip_tables iptable_nat iptable_filter iptable_mangle ip6_tables ip6table_nat \
  ip6table_filter xt_comment xt_mark xt_MASQUERADE xt_conntrack xt_addrtype xt_statistic \
  xt_recent xt_multiport xt_nat xt_tcpudp xt_set xt_physdev ip_set ip_set_hash_ip \
  ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet ip_set_hash_net \
  ip_set_bitmap_port 2>/dev/null
ip link set lo up
ip link set eth0 up 2>/dev/null && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
cd $(printf '%q' "$PWD")
$cmd
echo "KPRS-EXIT:\$?"
echo o > /proc/sysrq-trigger; sleep 10
SCRIPT
set +e
timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 -accel tcg -m "$mem" -smp 2 \
  -nographic -no-reboot -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 kprs.script=$run/script.sh" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 </dev/null | tee "$run/console.log"
qrc=${PIPESTATUS[0]}
set -e
[ "$qrc" = 124 ] && { echo "run.sh: guest timed out after ${timeout_s}s" >&2; exit 124; }
rc=$(grep -a -o 'KPRS-EXIT:[0-9]*' "$run/console.log" | tail -1 | cut -d: -f2)
[ -n "$rc" ] || { echo "run.sh: guest ended without reporting an exit code" >&2; exit 125; }
exit "$rc"
