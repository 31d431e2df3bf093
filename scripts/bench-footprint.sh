#!/usr/bin/env bash
# Footprint of lanparty-lite (issue 6): binary sizes, static builds, and a member's memory and
# wakeups in a real party. Run as root:
#
#   bash scripts/bench-footprint.sh
#
# 1. Builds, stripped release: glibc with TLS (the default), glibc without TLS
#    (--no-default-features), static musl x86_64, static musl aarch64 (cross gcc from Debian);
#    the aarch64 build's unit tests run under qemu-user.
# 2. For the glibc and the static x86_64 builds: a party of 1 + FOOTPRINT_PEERS members in network
#    namespaces, each its own host on one bridged LAN, joined through a control server (http)
#    in a namespace of its own. Member m0 is measured: RSS once every tunnel is up and it has
#    been idle; wakeups per second over FOOTPRINT_IDLE_S idle seconds (context switches of
#    all its threads, from /proc); then RSS after FOOTPRINT_TRAFFIC_S seconds of iperf3 at full
#    speed from m1 to m0 through the tunnel, and the peak (VmHWM).
#
# Environment: FOOTPRINT_PEERS (8), FOOTPRINT_IDLE_S (30), FOOTPRINT_TRAFFIC_S (60),
#              FOOTPRINT_JSON (bench-results/bench-footprint.json), FOOTPRINT_SKIP_AARCH64=1.
# Prints a table with the targets and writes JSON. Exit 0 when measured (targets are reported),
# 1 on a setup error. Everything runs in namespaces lpf-<PID>-*, removed on exit.

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"

PEERS=${FOOTPRINT_PEERS:-8}
IDLE_S=${FOOTPRINT_IDLE_S:-30}
TRAFFIC_S=${FOOTPRINT_TRAFFIC_S:-60}
JSON_OUT=${FOOTPRINT_JSON:-$ROOT/bench-results/bench-footprint.json}
for v in PEERS IDLE_S TRAFFIC_S; do
	[[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} >= 1)) || die "$v must be a positive integer"
done
((PEERS <= 60)) || die "FOOTPRINT_PEERS must be at most 60"

TARGET_TLS_MIB=2.5
TARGET_NOTLS_MIB=1.5
TARGET_IDLE_RSS_MIB=3
TARGET_LOAD_RSS_MIB=4
TARGET_WAKEUPS=5

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, tun)"
bash "$ROOT/scripts/deps.sh"
need=()
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d /tmp/lanparty-footprint.XXXXXX)
PIDS_FILE=$WORK/pids
NETNS_FILE=$WORK/netns
: >"$PIDS_FILE"
: >"$NETNS_FILE"
TAG="lpf-$$"
cleanup() {
	stop_tracked
	delete_tracked_netns
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
kib_to_mib() { [[ $1 == null ]] && echo null || awk -v k="$1" 'BEGIN { printf "%.2f", k / 1024 }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { if (v == "null") print "n/a"; else print (v <= t) ? "PASS" : "FAIL" }'; }

# --- 1. builds ---------------------------------------------------------------------------------

cd "$ROOT"
log "building: glibc + TLS"
cargo build --release --locked -q
GNU_BIN=$ROOT/target/release/lanparty-lite
log "building: glibc without TLS"
cargo build --release --locked -q --no-default-features --target-dir target/no-tls
NOTLS_BIN=$ROOT/target/no-tls/release/lanparty-lite
log "building: static musl x86_64"
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
cargo build --release --locked -q --target x86_64-unknown-linux-musl
MUSL_BIN=$ROOT/target/x86_64-unknown-linux-musl/release/lanparty-lite

AARCH64_BIN= AARCH64_TESTS=null AARCH64_VERSION=null
if [[ -z ${FOOTPRINT_SKIP_AARCH64:-} ]]; then
	log "building: static musl aarch64 (cross), unit tests under qemu-aarch64"
	rustup target add aarch64-unknown-linux-musl >/dev/null 2>&1 || true
	export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
	export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
	export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64
	if cargo build --release --locked -q --target aarch64-unknown-linux-musl; then
		AARCH64_BIN=$ROOT/target/aarch64-unknown-linux-musl/release/lanparty-lite
		AARCH64_VERSION=$(qemu-aarch64 "$AARCH64_BIN" --version 2>&1 || echo failed)
		if cargo test --locked -q --target aarch64-unknown-linux-musl --lib >"$WORK/aarch64-tests.log" 2>&1; then
			AARCH64_TESTS=$(grep -Eo '[0-9]+ passed' "$WORK/aarch64-tests.log" | tail -1 | grep -Eo '[0-9]+')
		else
			warn "aarch64 unit tests failed under qemu:"; tail -20 "$WORK/aarch64-tests.log" >&2
			AARCH64_TESTS=failed
		fi
	else
		warn "aarch64 cross build failed"
	fi
fi

size_of() { [[ -n $1 && -f $1 ]] && stat -c %s "$1" || echo null; }
linkage() { [[ -n $1 && -f $1 ]] && { file -b "$1" | grep -Eo 'statically linked|static-pie linked|dynamically linked' | head -1; } || echo -; }

# --- 2. a party: m0 measured, with PEERS peers -------------------------------------------------

# party_run BIN LABEL : prints "IDLE_RSS_KIB WAKEUPS_PER_S LOAD_RSS_KIB PEAK_KIB MBITS CONNECTED"
party_run() {
	local bin=$1 label=$2 n=$((PEERS + 1)) lan="$TAG-$label-lan" srv="$TAG-$label-srv" i
	make_netns "$lan"
	ip -n "$lan" link add br0 type bridge
	ip -n "$lan" link set br0 up
	attach() { # attach NS PORT ADDR
		make_netns "$1"
		ip link add "$TAG-x" type veth peer name eth0 netns "$1"
		ip link set "$TAG-x" netns "$lan"
		ip -n "$lan" link set "$TAG-x" name "$2"
		ip -n "$lan" link set "$2" master br0 up
		ip -n "$1" addr add "$3/24" dev eth0
		ip -n "$1" link set eth0 up
	}
	attach "$srv" srv 192.168.214.250
	spawn "$srv" "$label-server" "$bin" server --listen 192.168.214.250:7777 --state-dir "$WORK/$label-server" --rate-limit 0
	local url=http://192.168.214.250:7777 code=
	for _ in $(seq 1 100); do
		code=$(ip netns exec "$srv" "$bin" create footprint --control "$url" 2>/dev/null | tail -n 1) && [[ -n $code ]] && break
		sleep 0.1
	done
	[[ -n $code ]] || die "$label: control server did not come up"
	local pids=()
	for ((i = 0; i < n; i++)); do
		attach "$TAG-$label-m$i" "m$i" "192.168.214.$((i + 1))"
		spawn "$TAG-$label-m$i" "$label-m$i" "$bin" join "$code" --name "m$i" --state-dir "$WORK/$label-m$i"
		pids+=("$SPAWNED_PID")
	done
	local m0=${pids[0]} connected=0
	for _ in $(seq 1 300); do
		connected=$("$bin" status --json --state-dir "$WORK/$label-m0" 2>/dev/null |
			grep -c '"state": "connected"' || true)
		((connected >= PEERS)) && break
		# Traffic from every peer to m0 brings each tunnel up.
		for ((i = 1; i < n; i++)); do
			ip netns exec "$TAG-$label-m$i" ping -c 1 -W 1 10.66.0.1 >/dev/null 2>&1 &
		done
		wait
		sleep 0.2
	done
	((connected >= PEERS)) || warn "$label: only $connected of $PEERS peers connected"
	sleep 5
	local a b idle_rss wakeups
	a=$(ctx_switches "$m0")
	sleep "$IDLE_S"
	b=$(ctx_switches "$m0")
	idle_rss=$(status_kib "$m0" VmRSS)
	wakeups=$(awk -v a="$a" -v b="$b" -v s="$IDLE_S" 'BEGIN { printf "%.2f", (b - a) / s }')

	spawn "$TAG-$label-m0" "$label-iperf-server" iperf3 -s -1 -p 5201
	wait_tcp_listen "$TAG-$label-m0" 5201 10 || die "$label: iperf3 server did not start"
	local mbits
	mbits=$(ip netns exec "$TAG-$label-m1" iperf3 -c 10.66.0.1 -p 5201 -t "$TRAFFIC_S" -J 2>/dev/null |
		awk '/"sum_received"/ { f = 1 } f && /"bits_per_second"/ { gsub(/[,]/, ""); printf "%.0f", $2 / 1e6; exit }')
	sleep 2
	local load_rss peak
	load_rss=$(status_kib "$m0" VmRSS)
	peak=$(status_kib "$m0" VmHWM)
	stop_tracked
	delete_tracked_netns
	echo "$idle_rss $wakeups $load_rss $peak ${mbits:-null} $connected"
}

# ctx_switches PID : voluntary + involuntary context switches of every thread of PID.
ctx_switches() {
	cat /proc/"$1"/task/*/status 2>/dev/null |
		awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}

log "party of $((PEERS + 1)) with the glibc build (${IDLE_S} s idle, ${TRAFFIC_S} s iperf3)"
read -r GNU_IDLE GNU_WAKE GNU_LOAD GNU_PEAK GNU_MBITS GNU_UP < <(party_run "$GNU_BIN" gnu)
[[ -n ${GNU_UP:-} ]] || die "the glibc party did not run (see the messages above)"
log "party of $((PEERS + 1)) with the static musl build"
read -r MUSL_IDLE MUSL_WAKE MUSL_LOAD MUSL_PEAK MUSL_MBITS MUSL_UP < <(party_run "$MUSL_BIN" musl)
[[ -n ${MUSL_UP:-} ]] || die "the musl party did not run (see the messages above)"

# --- report -------------------------------------------------------------------------------------

GNU_SIZE=$(size_of "$GNU_BIN")
NOTLS_SIZE=$(size_of "$NOTLS_BIN")
MUSL_SIZE=$(size_of "$MUSL_BIN")
A64_SIZE=$(size_of "$AARCH64_BIN")

printf '\n%-34s %10s %-22s %s\n' "build (stripped, release)" "MiB" "linking" "notes"
printf '%-34s %10s %-22s %s\n' "x86_64 glibc, TLS (default)" "$(mib "$GNU_SIZE")" "$(linkage "$GNU_BIN")" "target <= $TARGET_TLS_MIB MiB: $(verdict "$(mib "$GNU_SIZE")" $TARGET_TLS_MIB)"
printf '%-34s %10s %-22s %s\n' "x86_64 glibc, no TLS" "$(mib "$NOTLS_SIZE")" "$(linkage "$NOTLS_BIN")" "target <= $TARGET_NOTLS_MIB MiB: $(verdict "$(mib "$NOTLS_SIZE")" $TARGET_NOTLS_MIB)"
printf '%-34s %10s %-22s %s\n' "x86_64 musl static, TLS" "$(mib "$MUSL_SIZE")" "$(linkage "$MUSL_BIN")" "target <= $TARGET_TLS_MIB MiB: $(verdict "$(mib "$MUSL_SIZE")" $TARGET_TLS_MIB)"
if [[ -n $AARCH64_BIN ]]; then
	printf '%-34s %10s %-22s %s\n' "aarch64 musl static, TLS" "$(mib "$A64_SIZE")" "$(linkage "$AARCH64_BIN")" "qemu: $AARCH64_VERSION; unit tests passed: $AARCH64_TESTS"
fi
printf '\n%-22s %6s %14s %12s %14s %12s %10s\n' "member m0 of $((PEERS + 1))" "peers" "idle RSS MiB" "wakeups/s" "RSS after MiB" "peak MiB" "Mbit/s"
for b in GNU MUSL; do
	idle=${b}_IDLE wake=${b}_WAKE load=${b}_LOAD peak=${b}_PEAK mbits=${b}_MBITS up=${b}_UP
	printf '%-22s %6s %14s %12s %14s %12s %10s\n' "$([[ $b == GNU ]] && echo glibc || echo 'musl static')" "${!up}" \
		"$(kib_to_mib "${!idle}")" "${!wake}" "$(kib_to_mib "${!load}")" "$(kib_to_mib "${!peak}")" "${!mbits}"
done
printf '\ntargets: idle RSS <= %s MiB with %s peers, RSS after %s s of traffic <= %s MiB, idle wakeups <= %s/s\n' \
	"$TARGET_IDLE_RSS_MIB" "$PEERS" "$TRAFFIC_S" "$TARGET_LOAD_RSS_MIB" "$TARGET_WAKEUPS"
for b in GNU MUSL; do
	idle=${b}_IDLE wake=${b}_WAKE load=${b}_LOAD
	printf '  %-12s idle RSS %s, RSS after traffic %s, wakeups %s\n' "$([[ $b == GNU ]] && echo glibc || echo musl)" \
		"$(verdict "$(kib_to_mib "${!idle}")" $TARGET_IDLE_RSS_MIB)" \
		"$(verdict "$(kib_to_mib "${!load}")" $TARGET_LOAD_RSS_MIB)" \
		"$(verdict "${!wake}" $TARGET_WAKEUPS)"
done

mkdir -p "$(dirname "$JSON_OUT")"
cat >"$JSON_OUT" <<JSON
{
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)",
  "peers": $PEERS, "idle_s": $IDLE_S, "traffic_s": $TRAFFIC_S,
  "sizes_bytes": { "gnu_tls": $GNU_SIZE, "gnu_no_tls": $NOTLS_SIZE, "musl_x86_64": $MUSL_SIZE, "musl_aarch64": $A64_SIZE },
  "aarch64_unit_tests_passed_under_qemu": "$AARCH64_TESTS",
  "gnu":  { "connected_peers": $GNU_UP, "idle_rss_kib": $GNU_IDLE, "wakeups_per_s": $GNU_WAKE, "rss_after_traffic_kib": $GNU_LOAD, "peak_rss_kib": $GNU_PEAK, "mbit_s": $GNU_MBITS },
  "musl": { "connected_peers": $MUSL_UP, "idle_rss_kib": $MUSL_IDLE, "wakeups_per_s": $MUSL_WAKE, "rss_after_traffic_kib": $MUSL_LOAD, "peak_rss_kib": $MUSL_PEAK, "mbit_s": $MUSL_MBITS }
}
JSON
log "wrote $JSON_OUT"
