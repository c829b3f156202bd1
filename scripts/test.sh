#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then checks
# formatting and lints, and runs unit, golden, real-kernel (host and QEMU
# guest) and API-server tests.
# Run as root on Debian; kernel tests skip with a printed reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A real kube-apiserver for the end-to-end tests, built once per machine into a
# cache outside the repository (needs Go >= 1.24; slow the first time).
if ! scripts/k8s/build.sh >/tmp/kprs-k8s-build.log 2>&1; then
  echo "WARNING: control plane build failed (see /tmp/kprs-k8s-build.log); API-server tests will skip"
  tail -5 /tmp/kprs-k8s-build.log
fi
# The IPVS lab: Debian's kernel under QEMU (the host kernel may have no IPVS).
if ! scripts/qemu/install.sh >/tmp/kprs-qemu-install.log 2>&1; then
  echo "WARNING: QEMU lab install failed (see /tmp/kprs-qemu-install.log); IPVS tests will skip"
  tail -5 /tmp/kprs-qemu-install.log
fi
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# --show-output: skip reasons and measured spreads appear in the log.
cargo test --all-targets -- --show-output 2>&1
