#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then checks
# formatting and lints, and runs unit, golden and real-kernel tests.
# Run as root on Debian; kernel tests skip with a printed reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets 2>&1
