#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh, the control
# plane build, the QEMU lab), then checks formatting and lints, and runs unit,
# golden, real-kernel (host and QEMU guest) and API-server tests.
# Run as root on Debian.
#
# A prerequisite that fails to install fails the run, with the reason:
# - in CI (CI=true) at once, before the tests; there every test must run (the
#   tests themselves fail instead of skipping when CI=true as root), and CI
#   must run as root;
# - elsewhere after the tests, which still run (those needing the missing
#   piece print SKIPPED with the reason), so a developer gets every other
#   result, but a suite that did not run in full never reports success.
set -euo pipefail
cd "$(dirname "$0")/.."
ci=false
case "${CI:-}" in [Tt][Rr][Uu][Ee] | 1) ci=true ;; esac
if $ci && [ "$(id -u)" != 0 ]; then
  echo "test.sh: CI=true but not root: the kernel labs need root, so tests would skip" >&2
  exit 1
fi
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
missing=()
# prereq NAME LOG COMMAND...: runs an installer; on failure says why, and in CI stops.
prereq() {
  local name=$1 log=$2
  shift 2
  if "$@" >"$log" 2>&1; then
    return 0
  fi
  echo "test.sh: $name failed to install (see $log):" >&2
  tail -5 "$log" >&2
  if $ci; then
    echo "test.sh: FAILED: CI=true and a prerequisite did not install: $name" >&2
    exit 1
  fi
  missing+=("$name (see $log)")
}
# A real kube-apiserver for the end-to-end tests, built once per machine into a
# cache outside the repository (needs Go >= 1.24; slow the first time).
prereq "control plane build (scripts/k8s/build.sh)" /tmp/kprs-k8s-build.log scripts/k8s/build.sh
# The IPVS lab: Debian's kernel under QEMU (the host kernel may have no IPVS).
prereq "QEMU lab (scripts/qemu/install.sh)" /tmp/kprs-qemu-install.log scripts/qemu/install.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# --show-output: skip reasons and measured spreads appear in the log.
cargo test --all-targets -- --show-output 2>&1
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: FAILED: the tests passed, but these prerequisites did not install, so the tests needing them were skipped:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "test.sh: all tests ran and passed"
