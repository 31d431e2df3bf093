#!/usr/bin/env bash
# Picks the release opt-level with numbers: builds lanparty-lite at opt-level s, z and 3 (same
# lto/codegen-units/panic/strip settings), and for each prints the stripped binary size and the
# lanparty-lite row of scripts/bench.sh (throughput, RTT, CPU, RSS). Run as root.
#
#   bash scripts/bench-opt-levels.sh          (BENCH_SECONDS/BENCH_RUNS are passed through)
# Writes bench-results/opt-levels.json.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench-results/opt-levels.json
mkdir -p bench-results
rows=()
printf '%-6s %12s %12s %10s %10s %8s\n' "level" "size bytes" "Mbit/s" "idle RTT" "load RTT" "RSS MiB"
for level in s z 3; do
    dir=target/opt-$level
    CARGO_PROFILE_RELEASE_OPT_LEVEL=$level cargo build --release --locked --quiet --target-dir "$dir" \
        --target x86_64-unknown-linux-musl
    bin=$dir/x86_64-unknown-linux-musl/release/lanparty-lite # the static build we ship
    size=$(stat -c %s "$bin")
    json=$(mktemp)
    LANPARTY_BIN=$PWD/$bin BENCH_ONLY=lanparty-lite BENCH_JSON=$json bash scripts/bench.sh >/dev/null
    read -r mbit rtt load rss < <(jq -r '.tunnels["lanparty-lite"] | "\(.throughput_mbps | round) \(.idle_rtt_ms) \(.loaded_rtt_ms) \(.rss_idle_kib.max / 1024 * 100 | round / 100)"' "$json")
    printf '%-6s %12s %12s %10s %10s %8s\n' "$level" "$size" "$mbit" "$rtt" "$load" "$rss"
    rows+=("$(jq -c --arg level "$level" --argjson size "$size" '{level: $level, size_bytes: $size, lanparty: .tunnels["lanparty-lite"]}' "$json")")
    rm -f "$json"
done
printf '%s\n' "${rows[@]}" | jq -s '{opt_levels: .}' >"$out"
echo "JSON: $out"
