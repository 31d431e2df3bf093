#!/usr/bin/env bash
# Installs what the build, the lab tests and the benchmarks need, only when missing: system tools
# and musl-gcc (Debian packages) and the Rust target of the default build (.cargo/config.toml).
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
# The shipped binary is the static musl build (scripts/build-release.sh): musl-gcc compiles
# ring's C code for it.
have musl-gcc || need+=(musl-tools)

if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The standard library of that target, if rustup can still fetch it (the glibc build, which
# the tests use, needs nothing more).
triple=x86_64-unknown-linux-musl
if have rustup && ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    echo "installing the Rust target $triple"
    rustup target add "$triple" >/dev/null 2>&1 || echo "cannot install $triple; the musl build will be skipped"
fi
