#!/usr/bin/env bash
# Installs what kube-proxy-rs needs to build, run its demo and run its tests on
# a fresh Debian machine (run as root). Idempotent: skips what is present.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have iptables || need_pkgs+=(iptables)
have ipset || need_pkgs+=(ipset)
have nft || need_pkgs+=(nftables)
have conntrack || need_pkgs+=(conntrack)
have ip || need_pkgs+=(iproute2)
have curl || need_pkgs+=(curl)
have python3 || need_pkgs+=(python3)
have cc || need_pkgs+=(build-essential)
have pkg-config || need_pkgs+=(pkg-config)
have ps || need_pkgs+=(procps)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! have cargo; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain with rustup"
    have curl || { apt-get update -qq; apt-get install -y -qq curl >/dev/null; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
echo "setup: $(cargo --version), $(iptables --version)"
