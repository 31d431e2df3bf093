#!/usr/bin/env bash
# Benchmark lanparty-lite against plain veth, Debian's wireguard-go and boringtun-cli, in one
# run, on the same kind of link: two fresh network namespaces joined by a veth pair, the
# tunnel on top (design.md §6/§7). Run as root:
#
#   bash scripts/bench.sh
#
# Per tunnel: iperf3 TCP throughput over the overlay (median of runs), idle ping RTT, ping RTT
# while iperf3 runs, daemon CPU (utime+stime, % of one core, SUM of both members) during the
# iperf3 runs, daemon RSS idle and after load (MAX of the two members; the target is per member).
# Prints a table with ratios and PASS/FAIL per target and writes everything as JSON.
#
# Environment:
#   BENCH_SECONDS  iperf3 seconds per run (default 10)
#   BENCH_RUNS     iperf3 runs per tunnel, median reported (default 3)
#   BENCH_PINGS    idle pings at 0.1 s (default 300; fewer make the RTT figures noisy)
#   BENCH_JSON     JSON output path (default bench-results/bench.json in the repository)
#   BENCH_ONLY     comma list of tunnels to run: veth,lanparty-lite,wireguard-go,boringtun-cli
#   BENCH_WAIT_IDLE before each tunnel, wait up to this many seconds for other load on the
#                  machine to drop below BENCH_IDLE_PCT % busy (defaults 120 and 15); the busy
#                  figure is recorded per tunnel either way
#   BENCH_CACHE    where boringtun-cli is installed (default /root/.cache/lanparty-bench)
#   BORINGTUN_CLI  use this boringtun-cli binary instead of finding/installing one
#   BENCH_STRICT=1 exit 1 when a target fails or cannot be evaluated
#   BENCH_TARGET   musl (default: the static build we ship) or gnu (glibc)
#   LANPARTY_BIN   benchmark this lanparty-lite binary instead of building one
#   BENCH_KEEP=1   keep the work directory (daemon and iperf3 logs) and print its path
# Exit status: 0 measured (targets are reported, not enforced unless BENCH_STRICT=1);
#              2 a tunnel failed to run; 1 setup error or (strict) a target failed.
#
# Everything happens inside namespaces named lpb-<PID>-*; the only traffic is between them.
# An EXIT trap stops every process the script started (by PID) and deletes its namespaces.

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"

# --- settings ---------------------------------------------------------------------------------

RUN_SECONDS=${BENCH_SECONDS:-10}
RUNS=${BENCH_RUNS:-3}
# Idle RTT: the target is judged on the MEDIAN of 300 pings; the mean is reported too. On this
# shared 2-core machine a ping now and then waits 2-4 ms for a CPU that another process holds
# (a woken daemon waits out the other task's time slice). In 600 pings at 0.1 s, lanparty-lite
# and boringtun-cli pinged in turns (so both saw the same load) had medians 0.121 and 0.115 ms
# but 11 and 18 pings over 0.3 ms (up to 4.2 ms): two 2-4 ms pings move a mean of 100 by
# 0.04-0.08 ms, as much as the target's whole margin, so such a mean decides by luck. The median of 300 measures the tunnel; the mean shows how often the machine got in
# the way.
PINGS=${BENCH_PINGS:-300}
JSON_OUT=${BENCH_JSON:-$ROOT/bench-results/bench.json}
CACHE_DIR=${BENCH_CACHE:-/root/.cache/lanparty-bench}
ONLY=${BENCH_ONLY:-veth,lanparty-lite,wireguard-go,boringtun-cli}
WAIT_IDLE=${BENCH_WAIT_IDLE:-120}
IDLE_PCT=${BENCH_IDLE_PCT:-15}

# BENCH_TARGET=musl (default): the static build, the binary we ship
# (`cargo build --release --target x86_64-unknown-linux-musl`).
# BENCH_TARGET=gnu: `--target x86_64-unknown-linux-gnu`, dynamically linked glibc (about
# 1.7 MiB more idle RSS: libc.so, ld.so and libgcc_s are mapped into each member).
LP_TARGET=${BENCH_TARGET:-musl}
case $LP_TARGET in
musl) LP_TRIPLE=x86_64-unknown-linux-musl ;;
gnu) LP_TRIPLE=x86_64-unknown-linux-gnu ;;
*) echo "BENCH_TARGET must be musl or gnu" >&2; exit 1 ;;
esac
LP_BIN=${LANPARTY_BIN:-$ROOT/target/$LP_TRIPLE/release/lanparty-lite}
TUNNELS=(veth lanparty-lite wireguard-go boringtun-cli)

# Underlay (veth) and overlay addresses. lanparty-lite assigns 10.66.0.1 / 10.66.0.2 itself
# (subnet 10.66.0.0/16, MTU 1420); the WireGuard tunnels are configured to match.
UNDER_A=192.168.213.1
UNDER_B=192.168.213.2
OVER_A=10.66.0.1
OVER_B=10.66.0.2
OVER_PREFIX=16
MTU=1420
WG_PORT=51820
IPERF_PORT=5201

# Targets for lanparty-lite.
TARGET_VS_WGO=1.5       # throughput ≥ 1.5 × wireguard-go
TARGET_VS_BT=0.95       # throughput ≥ 0.95 × boringtun-cli
TARGET_ADDED_RTT=0.15   # added idle RTT over plain veth ≤ 0.15 ms
TARGET_RSS_MIB=3        # idle RSS ≤ 3 MiB per member

for v in RUN_SECONDS RUNS PINGS IDLE_PCT; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $WAIT_IDLE =~ ^[0-9]+$ ]] || die "BENCH_WAIT_IDLE must be a number of seconds (got '$WAIT_IDLE')"

# --- work directory, cleanup ------------------------------------------------------------------

[[ $EUID -eq 0 ]] || die "run as root (network namespaces, tun devices)"
WORK=$(mktemp -d /tmp/lanparty-bench.XXXXXX)
PIDS_FILE=$WORK/pids          # "PID starttime" of every process we started
NETNS_FILE=$WORK/netns        # namespaces we created
UAPI_FILE=$WORK/uapi-sockets  # /var/run/wireguard/*.sock of our WireGuard interfaces
: >"$PIDS_FILE"
: >"$NETNS_FILE"
: >"$UAPI_FILE"

# Undoes everything this run set up. Runs on every exit, and per tunnel in its subshell.
cleanup_tracked() {
	stop_tracked
	delete_tracked_netns
	local sock
	while read -r sock; do
		[[ -n $sock ]] && rm -f "$sock"
	done <"$UAPI_FILE"
	: >"$UAPI_FILE"
}

cleanup_all() {
	local rc=$?
	trap - EXIT INT TERM HUP
	# A tunnel subshell still running (we were interrupted): stop it; its own trap cleans up.
	if [[ -n ${TUNNEL_PID:-} ]] && alive "$TUNNEL_PID"; then
		kill -TERM "$TUNNEL_PID" 2>/dev/null || true
		cleanup_tracked # also from here, so daemons go away even if the subshell is slow
		wait "$TUNNEL_PID" 2>/dev/null || true
	fi
	cleanup_tracked
	if [[ ${BENCH_KEEP:-0} == 1 ]]; then
		log "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- prerequisites ----------------------------------------------------------------------------

# Installs the Debian packages providing any missing command.
ensure_packages() {
	local -a missing=()
	local pair cmd pkg
	for pair in ip:iproute2 ss:iproute2 ping:iputils-ping iperf3:iperf3 wg:wireguard-tools \
		wireguard-go:wireguard-go jq:jq; do
		cmd=${pair%%:*} pkg=${pair#*:}
		command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
	done
	((${#missing[@]})) || return 0
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
		{ apt-get update >>"$WORK/apt.log" 2>&1 && apt-get install -y "${missing[@]}" >>"$WORK/apt.log" 2>&1; } ||
		die "apt-get install ${missing[*]} failed; see: $(tail -3 "$WORK/apt.log")"
}

# Makes cargo reachable when run through sudo or a bare root shell.
find_cargo() {
	command -v cargo >/dev/null 2>&1 && return 0
	local home=${CARGO_HOME:-$HOME/.cargo}
	[[ -x $home/bin/cargo ]] && PATH=$home/bin:$PATH && return 0
	return 1
}

# Builds target/$LP_TRIPLE/release/lanparty-lite (cargo only rebuilds if sources changed). If the build
# fails (e.g. sources mid-edit) but an older binary exists, uses it and says so in the JSON.
LP_BUILD=ok
build_lanparty() {
	if [[ -n ${LANPARTY_BIN:-} ]]; then
		[[ -x $LP_BIN ]] || die "LANPARTY_BIN=$LP_BIN is not an executable"
		LP_BUILD="given by LANPARTY_BIN; not rebuilt"
		return
	fi
	if ! find_cargo; then
		[[ -x $LP_BIN ]] || die "cargo not found and $LP_BIN missing"
		LP_BUILD="not rebuilt (cargo not found); existing binary used"
		warn "$LP_BUILD"
		return
	fi
	local target_args=(--target "$LP_TRIPLE")
	if [[ $LP_TRIPLE == *musl ]]; then
		command -v musl-gcc >/dev/null 2>&1 || apt-get install -y -qq musl-tools >/dev/null 2>&1 || true
	fi
	rustup target list --installed 2>/dev/null | grep -qx "$LP_TRIPLE" ||
		rustup target add "$LP_TRIPLE" >/dev/null 2>&1 || true
	log "cargo build --release ${target_args[*]} (lanparty-lite)"
	if (cd "$ROOT" && cargo build --release --quiet "${target_args[@]}"); then
		LP_BUILD="ok (${LP_TARGET})"
	elif [[ -x $LP_BIN ]]; then
		LP_BUILD="build failed; existing (possibly stale) binary used"
		warn "$LP_BUILD"
	else
		die "cargo build --release failed and there is no $LP_BIN"
	fi
}

# Finds boringtun-cli or installs it from crates.io into $CACHE_DIR. On failure sets BT_SKIP.
BT_BIN=
BT_SKIP=
ensure_boringtun() {
	local candidate
	for candidate in "${BORINGTUN_CLI:-}" "${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli" \
		"$CACHE_DIR/bin/boringtun-cli"; do
		if [[ -n $candidate && -x $candidate ]]; then
			BT_BIN=$candidate
			return
		fi
	done
	if ! find_cargo; then
		BT_SKIP="boringtun-cli not found and cargo is not available to install it"
		return
	fi
	log "cargo install boringtun-cli --locked --root $CACHE_DIR (once; takes a few minutes)"
	mkdir -p "$CACHE_DIR"
	if cargo install boringtun-cli --locked --root "$CACHE_DIR" >"$WORK/boringtun-install.log" 2>&1; then
		BT_BIN=$CACHE_DIR/bin/boringtun-cli
	else
		BT_SKIP="cargo install boringtun-cli failed: $(grep -m1 -i error "$WORK/boringtun-install.log" || tail -1 "$WORK/boringtun-install.log")"
	fi
}

# --- topology ---------------------------------------------------------------------------------

# Two namespaces joined directly by a veth pair, underlay addresses up and reachable.
make_topology() {
	make_netns "$NS_A"
	make_netns "$NS_B"
	ip -n "$NS_A" link add veth0 type veth peer name veth0 netns "$NS_B"
	ip -n "$NS_A" addr add "$UNDER_A/24" dev veth0
	ip -n "$NS_B" addr add "$UNDER_B/24" dev veth0
	ip -n "$NS_A" link set veth0 up
	ip -n "$NS_B" link set veth0 up
	wait_ping "$NS_A" "$UNDER_B" 10 || fail "underlay veth not reachable"
}

# fail MESSAGE : ends the current tunnel's subshell, recording why.
fail() {
	printf '%s\n' "$*" >"$REASON_FILE"
	log "$NAME: $*"
	exit 1
}

# record_error LINE COMMAND : ERR trap of a tunnel subshell; first line of the failed command.
record_error() { printf 'command failed (line %s): %.160s\n' "$1" "${2%%$'\n'*}" >"$REASON_FILE"; }

# log_tail LOGNAME : last lines of a daemon log, on one line, for failure messages.
log_tail() { tail -n 5 "$WORK/$1.log" 2>/dev/null | tr '\n' ' ' | cut -c1-400; }

# --- the four tunnels (each sets TARGET and DAEMON_PIDS) --------------------------------------

# Plain veth: the reference. No daemons.
start_veth() {
	TARGET=$UNDER_B
	DAEMON_PIDS=()
}

# lanparty-lite: a file control plane shared through the filesystem; the first member to join
# gets 10.66.0.1, so member a is started and registered before member b.
start_lanparty() {
	local dir=$WORK/lanparty code side pid
	mkdir -p "$dir"
	code=$("$LP_BIN" create bench --control "file:$dir/registry.json" | tail -1) ||
		fail "lanparty-lite create failed"
	DAEMON_PIDS=()
	for side in a b; do
		local ns=$NS_A
		[[ $side == b ]] && ns=$NS_B
		spawn "$ns" "lanparty-$side" "$LP_BIN" join "$code" --name "$side" \
			--state-dir "$dir/state-$side" --interface lp0 --mtu "$MTU"
		pid=$SPAWNED_PID
		DAEMON_PIDS+=("$pid")
		local start=$SECONDS
		until "$LP_BIN" status --json --state-dir "$dir/state-$side" >"$dir/status-$side.json" 2>/dev/null; do
			alive "$pid" || fail "lanparty-lite member $side exited: $(log_tail "lanparty-$side")"
			((SECONDS - start < 15)) || fail "lanparty-lite member $side did not come up"
			sleep 0.2
		done
	done
	TARGET=$(jq -r '.self.virtual_ip' "$dir/status-b.json")
	[[ $TARGET == "$OVER_B" ]] || log "lanparty-lite: member b got $TARGET"
	wait_ping "$NS_A" "$TARGET" 20 ||
		fail "no ping over lanparty-lite: a: $(log_tail lanparty-a) b: $(log_tail lanparty-b)"
	# Both sides should report the peer as connected (handshake done) before measuring.
	local start=$SECONDS
	for side in a b; do
		until "$LP_BIN" status --json --state-dir "$dir/state-$side" 2>/dev/null |
			jq -e '.peers | length > 0 and all(.state == "connected")' >/dev/null; do
			((SECONDS - start < 10)) || fail "lanparty-lite member $side never reported the peer connected"
			sleep 0.2
		done
	done
}

# A WireGuard implementation driven through its UAPI socket (/var/run/wireguard/IF.sock) by
# `wg`. start_uapi_tunnel LABEL CMD... : CMD gets the interface name appended. Interface names
# include our PID because the socket directory is shared by all namespaces.
start_uapi_tunnel() {
	local label=$1
	shift
	local -a cmd=("$@")
	local tag=${label:0:1} side ns if key start
	local -A ifname=([a]="lpb$$${tag}a" [b]="lpb$$${tag}b")
	local -A pubkey=()
	DAEMON_PIDS=()
	for side in a b; do
		ns=$NS_A
		[[ $side == b ]] && ns=$NS_B
		if=${ifname[$side]}
		printf '%s\n' "/var/run/wireguard/$if.sock" >>"$UAPI_FILE"
		spawn "$ns" "$label-$side" "${cmd[@]}" "$if"
		DAEMON_PIDS+=("$SPAWNED_PID")
		start=$SECONDS
		until [[ -S /var/run/wireguard/$if.sock ]] && ip -n "$ns" link show "$if" >/dev/null 2>&1; do
			alive "$SPAWNED_PID" || fail "$label ($side) exited: $(log_tail "$label-$side")"
			((SECONDS - start < 15)) || fail "$label ($side) created no interface/UAPI socket"
			sleep 0.1
		done
		key=$WORK/$label-$side.key
		(umask 077 && wg genkey >"$key")
		pubkey[$side]=$(wg pubkey <"$key")
	done
	for side in a b; do
		local me_over=$OVER_A peer=b peer_under=$UNDER_B peer_over=$OVER_B
		ns=$NS_A
		if [[ $side == b ]]; then
			ns=$NS_B me_over=$OVER_B peer=a peer_under=$UNDER_A peer_over=$OVER_A
		fi
		if=${ifname[$side]}
		ip netns exec "$ns" wg set "$if" private-key "$WORK/$label-$side.key" listen-port "$WG_PORT" \
			peer "${pubkey[$peer]}" endpoint "$peer_under:$WG_PORT" allowed-ips "$peer_over/32" ||
			fail "wg set on $label ($side) failed"
		ip -n "$ns" addr add "$me_over/$OVER_PREFIX" dev "$if"
		ip -n "$ns" link set "$if" mtu "$MTU" up
	done
	TARGET=$OVER_B
	wait_ping "$NS_A" "$TARGET" 20 ||
		fail "no ping over $label: a: $(log_tail "$label-a") b: $(log_tail "$label-b")"
}

start_wireguard_go() {
	# -f: stay in the foreground so the PID is the daemon's. LOG_LEVEL=error keeps logs quiet.
	start_uapi_tunnel wireguard-go env LOG_LEVEL=error wireguard-go -f
}

start_boringtun() {
	start_uapi_tunnel boringtun-cli "$BT_BIN" --foreground --threads 1 \
		--disable-drop-privileges --verbosity error
}

# --- measurement ------------------------------------------------------------------------------

# measure : runs the measurements against TARGET from NS_A, with the iperf3 server in NS_B, and
# prints the tunnel's JSON object. DAEMON_PIDS are member a's and b's daemons (none for veth).
measure() {
	local -a members=(a b) rss_idle=() rss_after=() hwm=()
	local i run pid

	ping_stats "$NS_A" "$TARGET" 5 >/dev/null # warm-up (ARP, first packets), not counted
	local idle_rtt idle_loss idle_median
	read -r idle_rtt idle_loss idle_median < <(ping_stats "$NS_A" "$TARGET" "$PINGS")
	[[ $idle_rtt != null ]] || fail "idle ping got no replies"
	for pid in "${DAEMON_PIDS[@]}"; do
		rss_idle+=("$(status_kib "$pid" VmRSS)")
	done

	spawn "$NS_B" "$NAME-iperf3-server" iperf3 -s -p "$IPERF_PORT"
	local server=$SPAWNED_PID
	wait_tcp_listen "$NS_B" "$IPERF_PORT" 10 || fail "iperf3 server did not start"

	# Loaded pings start 0.5 s into each iperf3 run and end before it does.
	local loaded_count=$(((RUN_SECONDS - 1) * 10))
	((loaded_count >= 3)) || loaded_count=3
	local -a mbps=() retrans=() loaded_rtt=() loaded_loss=() cpu_sum=() cpu_runs=()
	for ((run = 1; run <= RUNS; run++)); do
		local -a before=() after=()
		for pid in "${DAEMON_PIDS[@]}"; do before+=("$(cpu_ticks "$pid")"); done
		local t0 t1 out=$WORK/$NAME-iperf3-$run.log
		t0=$(now_s)
		spawn "$NS_A" "$NAME-iperf3-$run" iperf3 -c "$TARGET" -p "$IPERF_PORT" -t "$RUN_SECONDS" -J
		local client=$SPAWNED_PID
		sleep 0.5
		local rtt loss
		read -r rtt loss _ < <(ping_stats "$NS_A" "$TARGET" "$loaded_count")
		wait "$client" || fail "iperf3 run $run failed: $(jq -r '.error // empty' "$out" 2>/dev/null || log_tail "$NAME-iperf3-$run")"
		t1=$(now_s)
		for pid in "${DAEMON_PIDS[@]}"; do
			alive "$pid" || fail "a daemon (PID $pid) died during iperf3 run $run"
			after+=("$(cpu_ticks "$pid")")
		done

		mbps+=("$(jq '.end.sum_received.bits_per_second / 1e6' "$out")")
		retrans+=("$(jq '.end.sum_sent.retransmits // null' "$out")")
		loaded_rtt+=("$rtt")
		loaded_loss+=("$loss")
		if ((${#DAEMON_PIDS[@]})); then
			local per=() sum=0 pct
			for i in "${!DAEMON_PIDS[@]}"; do
				pct=$(calc "100 * (c1 - c0) / tck / (w1 - w0)" c0="${before[$i]}" c1="${after[$i]}" \
					tck="$CLK_TCK" w0="$t0" w1="$t1")
				per+=("\"${members[$i]}\":$pct")
				sum=$(calc 's + p' s="$sum" p="$pct")
			done
			cpu_sum+=("$sum")
			cpu_runs+=("{$(IFS=,; echo "${per[*]}"),\"sum\":$sum}")
		fi
		log "$NAME run $run/$RUNS: $(fmt 0 0 "${mbps[-1]}") Mbit/s, loaded RTT $(fmt 0 3 "$rtt") ms${sum:+, daemons $(fmt 0 1 "$sum") % CPU}"
		sleep 1 # let queues drain and the iperf3 server get ready again
	done
	stop_pid "$server"

	sleep 1
	for pid in "${DAEMON_PIDS[@]}"; do
		rss_after+=("$(status_kib "$pid" VmRSS)")
		hwm+=("$(status_kib "$pid" VmHWM)")
	done

	# {"a": x, "b": y, "max": m} in KiB, or null without daemons.
	per_member() {
		((${#DAEMON_PIDS[@]})) || {
			echo null
			return
		}
		jq -cn --argjson a "$1" --argjson b "$2" '{a: $a, b: $b, max: ([$a, $b] | max)}'
	}

	jq -n \
		--arg name "$NAME" \
		--argjson busy "$BUSY" --argjson waited "$WAITED" \
		--argjson mbps_runs "$(json_array "${mbps[@]}")" \
		--argjson retrans_runs "$(json_array "${retrans[@]}")" \
		--argjson idle_rtt "$idle_rtt" --argjson idle_loss "$idle_loss" \
		--argjson idle_median "$idle_median" \
		--argjson loaded_runs "$(json_array "${loaded_rtt[@]}")" \
		--argjson loaded_loss_runs "$(json_array "${loaded_loss[@]}")" \
		--argjson cpu_runs "$( ((${#cpu_runs[@]})) && json_array "${cpu_runs[@]}" || echo null)" \
		--argjson rss_idle "$(per_member "${rss_idle[@]:0:2}")" \
		--argjson rss_after "$(per_member "${rss_after[@]:0:2}")" \
		--argjson hwm "$(per_member "${hwm[@]:0:2}")" \
		--argjson mbps "$(median "${mbps[@]}")" \
		--argjson loaded "$(median "${loaded_rtt[@]}")" \
		--argjson cpu "$( ((${#cpu_sum[@]})) && median "${cpu_sum[@]}" || echo null)" \
		'{
			name: $name, status: "ok",
			host_busy_pct_before: $busy, waited_for_idle_s: $waited,
			throughput_mbps: $mbps, throughput_runs_mbps: $mbps_runs, retransmits_runs: $retrans_runs,
			idle_rtt_ms: $idle_rtt, idle_rtt_median_ms: $idle_median, idle_loss_pct: $idle_loss,
			loaded_rtt_ms: $loaded, loaded_rtt_runs_ms: $loaded_runs, loaded_loss_runs_pct: $loaded_loss_runs,
			daemon_cpu_pct_sum: $cpu, daemon_cpu_runs_pct: $cpu_runs,
			rss_idle_kib: $rss_idle, rss_after_load_kib: $rss_after, rss_peak_kib: $hwm
		}'
}

# run_tunnel NAME START_FUNCTION : one tunnel in a subshell with its own cleanup, so a failing
# tunnel is recorded and the next one still runs. Writes $WORK/result-NAME.json.
run_tunnel() {
	local name=$1 start_fn=$2 tag
	local result=$WORK/result-$name.json reason=$WORK/reason-$name
	case $name in
	veth) tag="veth" ;; lanparty-lite) tag="lp" ;; wireguard-go) tag="wgo" ;; *) tag="bt" ;;
	esac
	log "=== $name"
	local busy waited=0
	busy=$(host_busy_pct 1)
	# Other load on the machine skews every figure; wait a while for it to go away.
	while awk -v b="$busy" -v l="$IDLE_PCT" 'BEGIN { exit !(b > l) }' && ((waited < WAIT_IDLE)); do
		((waited == 0)) && log "machine ${busy}% busy; waiting up to ${WAIT_IDLE} s for it to drop below ${IDLE_PCT}%"
		busy=$(host_busy_pct 2)
		waited=$((waited + 2))
	done
	if awk -v b="$busy" -v l="$IDLE_PCT" 'BEGIN { exit !(b > l) }'; then
		warn "the machine is ${busy}% busy before $name; figures will be skewed"
	fi
	# In the background plus `wait`, so a signal to this script is handled at once (the trap
	# stops the subshell); a foreground subshell would delay it until the tunnel finished.
	set +e
	(
		set -Eeuo pipefail
		trap cleanup_tracked EXIT
		trap 'exit 143' TERM
		trap 'record_error "$LINENO" "$BASH_COMMAND"' ERR
		NAME=$name BUSY=$busy WAITED=$waited REASON_FILE=$reason
		NS_A=lpb-$$-$tag-a NS_B=lpb-$$-$tag-b
		make_topology
		"$start_fn"
		measure >"$result.tmp"
		mv "$result.tmp" "$result"
	) &
	TUNNEL_PID=$!
	wait "$TUNNEL_PID"
	local rc=$?
	TUNNEL_PID=
	set -e
	((rc == 130 || rc == 143)) && exit "$rc"
	if ((rc != 0)) || [[ ! -s $result ]]; then
		local why="exit status $rc"
		[[ -s $reason ]] && why=$(cat "$reason")
		warn "$name failed: $why"
		jq -n --arg name "$name" --arg why "$why" '{name: $name, status: "failed", reason: $why}' >"$result"
		FAILED=1
	fi
}

skip_tunnel() {
	log "=== $1 skipped: $2"
	jq -n --arg name "$1" --arg why "$2" '{name: $name, status: "skipped", reason: $why}' \
		>"$WORK/result-$1.json"
}

# --- report -----------------------------------------------------------------------------------

# Prints the table and the targets, and writes JSON_OUT. Sets TARGETS_OK=0 if any target
# failed or could not be evaluated.
TARGETS_OK=1
report() {
	local results=$WORK/results.json
	local -a files=()
	local t
	for t in "${TUNNELS[@]}"; do
		[[ -s $WORK/result-$t.json ]] && files+=("$WORK/result-$t.json")
	done
	jq -s 'map({(.name): .}) | add' "${files[@]}" >"$results"
	get() { jq -r "$1 // \"null\"" "$results"; }

	local veth_rtt veth_mean lp wgo bt
	veth_rtt=$(get '.veth.idle_rtt_median_ms')
	veth_mean=$(get '.veth.idle_rtt_ms')
	lp=$(get '."lanparty-lite".throughput_mbps')
	wgo=$(get '."wireguard-go".throughput_mbps')
	bt=$(get '."boringtun-cli".throughput_mbps')
	local vs_wgo vs_bt
	vs_wgo=$(calc 'a / b' a="$lp" b="$wgo")
	vs_bt=$(calc 'a / b' a="$lp" b="$bt")
	# Added RTT: medians (the target), and means for comparison with older runs.
	local -A added=() added_mean=()
	for t in lanparty-lite wireguard-go boringtun-cli; do
		added[$t]=$(calc 'a - b' a="$(get ".\"$t\".idle_rtt_median_ms")" b="$veth_rtt")
		added_mean[$t]=$(calc 'a - b' a="$(get ".\"$t\".idle_rtt_ms")" b="$veth_mean")
	done
	local lp_rss_mib
	lp_rss_mib=$(calc 'k / 1024' k="$(get '."lanparty-lite".rss_idle_kib.max')")

	echo
	echo "lanparty-lite benchmark: ${RUNS} × ${RUN_SECONDS} s iperf3 TCP (median), ${PINGS} idle pings; $(nproc) CPUs, kernel $(uname -r)"
	echo "CPU = utime+stime of both members' daemons summed, % of one core, during iperf3 (median run)."
	echo "RSS = max over the two members (MiB). Loaded RTT = ping during iperf3 (median run)."
	echo "Idle RTT = median of the idle pings (+RTT: over plain veth's median); mean: their mean."
	echo
	printf '%-14s %10s %9s %8s %8s %9s %8s %9s %9s %9s  %s\n' \
		"tunnel" "Mbit/s" "idle RTT" "+RTT" "mean" "load RTT" "CPU %" "RSS idle" "RSS load" "RSS peak" "runs (Mbit/s)"
	printf '%-14s %10s %9s %8s %8s %9s %8s %9s %9s %9s\n' "" "" "ms" "ms" "ms" "ms" "sum" "MiB max" "MiB max" "MiB max"
	local row status
	for t in "${TUNNELS[@]}"; do
		status=$(get ".\"$t\".status")
		if [[ $status == null ]]; then
			continue
		elif [[ $status != ok ]]; then
			printf '%-14s %s: %s\n' "$t" "${status^^}" "$(get ".\"$t\".reason")"
			continue
		fi
		row=$(jq -r --arg t "$t" '.[$t] | [
			.throughput_mbps, .idle_rtt_median_ms, .idle_rtt_ms, .loaded_rtt_ms, .daemon_cpu_pct_sum,
			(.rss_idle_kib.max // null), (.rss_after_load_kib.max // null), (.rss_peak_kib.max // null),
			(.throughput_runs_mbps | map(. * 10 | round / 10 | tostring) | join(","))
		] | map(. // "null" | tostring) | join(" ")' "$results")
		local mb irtt imean lrtt cpu ri ra rp runs
		read -r mb irtt imean lrtt cpu ri ra rp runs <<<"$row"
		printf '%-14s %10s %9s %8s %8s %9s %8s %9s %9s %9s  %s\n' "$t" \
			"$(fmt 0 1 "$mb")" "$(fmt 0 3 "$irtt")" "$(fmt 0 3 "${added[$t]:-null}")" "$(fmt 0 3 "$imean")" \
			"$(fmt 0 3 "$lrtt")" \
			"$(fmt 0 1 "$cpu")" "$(fmt 0 2 "$(calc 'k/1024' k="$ri")")" \
			"$(fmt 0 2 "$(calc 'k/1024' k="$ra")")" "$(fmt 0 2 "$(calc 'k/1024' k="$rp")")" "$runs"
	done
	echo "Machine busy (all CPUs, before each tunnel started; other processes skew results): $(jq -r \
		'[to_entries[] | select(.value.host_busy_pct_before != null) | "\(.key) \(.value.host_busy_pct_before)%"] | join(", ")' "$results")"

	# check DESCRIPTION VALUE OP THRESHOLD UNIT : prints one target line, appends JSON.
	local targets_json=$WORK/targets.jsonl
	: >"$targets_json"
	check() {
		local desc=$1 value=$2 op=$3 limit=$4 unit=$5 verdict
		if [[ $value == null ]]; then
			verdict=n/a
		elif awk -v v="$value" -v l="$limit" -v op="$op" 'BEGIN { exit !((op == ">=") ? (v >= l) : (v <= l)) }'; then
			verdict=PASS
		else
			verdict=FAIL
		fi
		[[ $verdict == PASS ]] || TARGETS_OK=0
		printf '  %-44s %9s %-4s %2s %6s %-4s  %s\n' "$desc" "$(fmt 0 3 "$value")" "$unit" "$op" "$limit" "$unit" "$verdict"
		jq -cn --arg d "$desc" --argjson v "$value" --arg op "$op" --argjson l "$limit" \
			--arg u "$unit" --arg r "$verdict" \
			'{target: $d, value: $v, op: $op, threshold: $l, unit: $u, result: $r}' >>"$targets_json"
	}
	echo
	echo "Ratios and targets (lanparty-lite):"
	check "throughput / wireguard-go" "$vs_wgo" ">=" "$TARGET_VS_WGO" "x"
	check "throughput / boringtun-cli" "$vs_bt" ">=" "$TARGET_VS_BT" "x"
	check "added idle RTT over plain veth (median)" "${added[lanparty-lite]}" "<=" "$TARGET_ADDED_RTT" "ms"
	check "idle RSS per member (max of the two)" "$lp_rss_mib" "<=" "$TARGET_RSS_MIB" "MiB"
	echo
	printf 'Added idle RTT over plain veth (median): lanparty-lite %s ms, wireguard-go %s ms, boringtun-cli %s ms\n' \
		"$(fmt 0 3 "${added[lanparty-lite]}")" "$(fmt 0 3 "${added[wireguard-go]}")" "$(fmt 0 3 "${added[boringtun-cli]}")"
	printf 'Added idle RTT over plain veth (mean):   lanparty-lite %s ms, wireguard-go %s ms, boringtun-cli %s ms\n' \
		"$(fmt 0 3 "${added_mean[lanparty-lite]}")" "$(fmt 0 3 "${added_mean[wireguard-go]}")" "$(fmt 0 3 "${added_mean[boringtun-cli]}")"

	# JSON: settings, versions, every figure, ratios and targets.
	mkdir -p "$(dirname "$JSON_OUT")"
	local git_rev git_dirty=false
	git_rev=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
	[[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && git_dirty=true
	jq -n \
		--slurpfile tunnels "$results" \
		--slurpfile targets <(jq -s . "$targets_json") \
		--arg started "$STARTED_AT" --argjson duration "$((SECONDS - START_S))" \
		--argjson seconds "$RUN_SECONDS" --argjson runs "$RUNS" --argjson pings "$PINGS" \
		--argjson mtu "$MTU" --arg kernel "$(uname -r)" --argjson cpus "$(nproc)" \
		--arg lp_bin "$LP_BIN" --arg lp_build "$LP_BUILD" --arg lp_version "$("$LP_BIN" --version 2>/dev/null || true)" \
		--arg git_rev "$git_rev" --argjson git_dirty "$git_dirty" \
		--arg wgo_version "$(wireguard-go --version 2>/dev/null | head -1)" \
		--arg wg_version "$(wg --version 2>/dev/null | head -1)" \
		--arg bt_bin "${BT_BIN:-}" --arg bt_version "$([[ -n $BT_BIN ]] && "$BT_BIN" --version 2>/dev/null)" \
		--arg iperf_version "$(iperf3 --version 2>/dev/null | head -1)" \
		--argjson vs_wgo "$vs_wgo" --argjson vs_bt "$vs_bt" \
		--argjson add_lp "${added[lanparty-lite]}" --argjson add_wgo "${added[wireguard-go]}" \
		--argjson add_bt "${added[boringtun-cli]}" \
		--argjson addm_lp "${added_mean[lanparty-lite]}" --argjson addm_wgo "${added_mean[wireguard-go]}" \
		--argjson addm_bt "${added_mean[boringtun-cli]}" \
		'{
			started_at: $started, duration_s: $duration,
			settings: {iperf3_seconds: $seconds, iperf3_runs: $runs, idle_pings: $pings,
				ping_interval_s: 0.1, mtu: $mtu,
				topology: "two network namespaces, one veth pair, tunnel on top"},
			aggregation: {daemon_cpu_pct_sum: "sum of both members, % of one core, median of runs",
				rss_kib: "per member a/b and max of the two", throughput_mbps: "median of runs",
				loaded_rtt_ms: "median of the per-run averages",
				idle_rtt_ms: "mean of the idle pings", idle_rtt_median_ms: "median of the idle pings",
				added_idle_rtt_ms: "median minus plain veth median (the target)",
				added_idle_rtt_mean_ms: "mean minus plain veth mean"},
			host: {kernel: $kernel, cpus: $cpus},
			versions: {
				lanparty_lite: {binary: $lp_bin, version: $lp_version, build: $lp_build,
					git_commit: $git_rev, sources_dirty: $git_dirty},
				wireguard_go: $wgo_version, wireguard_tools: $wg_version,
				boringtun_cli: {binary: $bt_bin, version: $bt_version}, iperf3: $iperf_version},
			tunnels: $tunnels[0],
			ratios: {
				lanparty_vs_wireguard_go_throughput: $vs_wgo,
				lanparty_vs_boringtun_cli_throughput: $vs_bt,
				added_idle_rtt_ms: {"lanparty-lite": $add_lp, "wireguard-go": $add_wgo, "boringtun-cli": $add_bt},
				added_idle_rtt_mean_ms: {"lanparty-lite": $addm_lp, "wireguard-go": $addm_wgo, "boringtun-cli": $addm_bt}
			},
			targets: $targets[0]
		}' >"$JSON_OUT"
	echo
	echo "JSON: $JSON_OUT   (took $((SECONDS - START_S)) s)"
}

# --- main -------------------------------------------------------------------------------------

main() {
	START_S=$SECONDS
	STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	FAILED=0
	selected() { [[ ",$ONLY," == *",$1,"* ]]; }

	ensure_packages
	selected lanparty-lite && build_lanparty
	selected boringtun-cli && ensure_boringtun

	selected veth && run_tunnel veth start_veth
	selected lanparty-lite && run_tunnel lanparty-lite start_lanparty
	selected wireguard-go && run_tunnel wireguard-go start_wireguard_go
	if selected boringtun-cli; then
		if [[ -n $BT_SKIP ]]; then
			skip_tunnel boringtun-cli "$BT_SKIP"
		else
			run_tunnel boringtun-cli start_boringtun
		fi
	fi

	report
	((FAILED == 0)) || exit 2
	if [[ ${BENCH_STRICT:-0} == 1 && $TARGETS_OK == 0 ]]; then
		exit 1
	fi
}

main "$@"
