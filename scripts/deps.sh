#!/usr/bin/env bash
# Installs the system tools the lab tests and benchmarks use, only when missing.
# Usage: bash scripts/deps.sh
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have ping || need+=(iputils-ping)
have wg || need+=(wireguard-tools)
have python3 || need+=(python3)
have sha256sum || need+=(coreutils)
have setpriv || need+=(util-linux)
have nft || need+=(nftables)
have conntrack || need+=(conntrack)
have sysctl || need+=(procps)  # the NAT lab turns on forwarding in its routers
have iperf3 || need+=(iperf3)
have socat || need+=(socat)
have openssl || need+=(openssl)
have turnutils_natdiscovery || need+=(coturn) # RFC 5780 STUN clients for tests/stun_interop.rs

if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
