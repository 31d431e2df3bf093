#!/usr/bin/env bash
# Runs the whole test suite: unit, integration, fuzz-corpus replay and end-to-end namespace tests.
# The end-to-end tests need root (network namespaces, tun devices).
# Usage (as root): bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the end-to-end tests need root (network namespaces and tun); run as root" >&2
    exit 1
fi
bash scripts/deps.sh
cargo test --all-targets --locked
