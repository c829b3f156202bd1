#!/usr/bin/env bash
# Sets up the IPVS test lab: Debian's kernel (which has IPVS and dummy links,
# unlike some CI hosts) booted under QEMU with the host filesystem shared in.
# Installs QEMU and tools with apt, downloads the kernel package without
# installing it, and builds a small initramfs, all under a cache outside the
# repository. Idempotent; prints the cache directory. Run as root.
set -euo pipefail
CACHE=${KPRS_CACHE:-/var/cache/kube-proxy-rs}/qemu
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DEBIAN_FRONTEND=noninteractive
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx insmod || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v ipvsadm >/dev/null || need+=(ipvsadm)
command -v ipset >/dev/null || need+=(ipset)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$CACHE"
cd "$CACHE"
stamp=$(sha256sum "$here/init" | cut -c1-16)
[ "$(cat INIT_STAMP 2>/dev/null)" = "$stamp" ] || rm -f initrd.img
if [ ! -f initrd.img ] || [ ! -f vmlinuz ]; then
  if [ ! -f vmlinuz ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$pkg" ] || { echo "install.sh: no linux-image-amd64 package found" >&2; exit 1; }
  rm -rf kernel ./*.deb
  apt-get download "$pkg" 2>/dev/null
  dpkg-deb -x ./*.deb kernel
  rm -f ./*.deb
  kv=$(ls kernel/lib/modules)
  cp "kernel/boot/vmlinuz-$kv" vmlinuz
  depmod -b kernel "$kv"
  echo "$kv" > KERNEL_VERSION
  fi
  kv=$(cat KERNEL_VERSION)
  # The initramfs needs only what mounts the host's root over 9p; every other
  # module is loaded by modprobe from the cache once the host root is mounted.
  rm -rf initramfs && mkdir -p initramfs/bin initramfs/mods
  cp /bin/busybox initramfs/bin/busybox
  # In dependency order, as modprobe would load them.
  : > initramfs/mods/order
  modprobe -d kernel -S "$kv" --show-depends -a virtio_pci 9pnet_virtio 9p overlay |
    awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' | while read -r f; do
      m=$(basename "$f" .ko)
      cp "$f" initramfs/mods/
      echo "$m" >> initramfs/mods/order
    done
  cp "$here/init" initramfs/init
  chmod +x initramfs/init
  (cd initramfs && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img
  echo "$stamp" > INIT_STAMP
fi
echo "$CACHE"
