#!/usr/bin/env bash
# Load test of the control server: thousands of simulated members create parties, join
# (challenge + key-possession proof), heartbeat and hold roster long-polls against one
# `lanparty-lite server` on 127.0.0.1, while new members trickle in (examples/control_load.rs).
#
#   bash scripts/bench-control.sh
#
# Builds the release binary and the example, starts the server with a fresh state directory
# (a temporary directory on the disk TMPDIR is on; every change is fsynced there), runs the
# generator, samples the server's RSS (VmRSS, VmHWM), CPU time and open files from /proc,
# prints the generator's table and a server table, and writes JSON.
#
# Phases (see the example): setup (parties), join (every member), baseline (heartbeats and
# joins, no long-polls parked), measured (every member also holds a roster long-poll; joins
# wake them; "roster propagation" = join request sent -> other members' long-polls answered).
#
# Environment:
#   BENCH_MEMBERS          simulated members (default 2000)
#   BENCH_SECONDS          measured period in seconds (default 20)
#   BENCH_BASELINE_SECONDS heartbeats without long-polls first (default 5; 0 skips)
#   BENCH_PARTY_SIZE       members per party (default 20)
#   BENCH_HEARTBEAT_S      each member heartbeats every this many seconds (default 2)
#   BENCH_JOINS_PER_S      trickle of new members (default 10)
#   BENCH_WORKERS          keep-alive worker connections for joins/heartbeats (default 16)
#   BENCH_JSON             output (default bench-results/bench-control.json in the repository)
#   BENCH_WAIT_IDLE        wait up to this many seconds for other load on the machine to drop
#                          below BENCH_IDLE_PCT % busy (defaults 120 and 15); recorded either way
#   BENCH_SKIP_BUILD=1     use the existing release binaries
#   BENCH_KEEP=1           keep the work directory (server log, state, samples)
# Exit status: 0 all requests succeeded; 1 some requests failed (see "errors"); 2 the server
# died or the generator could not run; other: setup error.
#
# Only loopback is used. An EXIT trap stops the server and the sampler (by PID) and removes
# the work directory.

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"

# --- settings ---------------------------------------------------------------------------------

MEMBERS=${BENCH_MEMBERS:-2000}
SECONDS_MEASURED=${BENCH_SECONDS:-20}
SECONDS_BASELINE=${BENCH_BASELINE_SECONDS:-5}
PARTY_SIZE=${BENCH_PARTY_SIZE:-20}
HEARTBEAT_S=${BENCH_HEARTBEAT_S:-2}
JOINS_PER_S=${BENCH_JOINS_PER_S:-10}
WORKERS=${BENCH_WORKERS:-16}
JSON_OUT=${BENCH_JSON:-$ROOT/bench-results/bench-control.json}
WAIT_IDLE=${BENCH_WAIT_IDLE:-120}
IDLE_PCT=${BENCH_IDLE_PCT:-15}

# The default target is static musl (.cargo/config.toml).
LP_BIN=$ROOT/target/release/lanparty-lite
GEN_BIN=$ROOT/target/release/examples/control_load

for v in MEMBERS PARTY_SIZE WORKERS IDLE_PCT; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $WAIT_IDLE =~ ^[0-9]+$ ]] || die "BENCH_WAIT_IDLE must be a number of seconds (got '$WAIT_IDLE')"
for v in SECONDS_MEASURED SECONDS_BASELINE HEARTBEAT_S JOINS_PER_S; do
	[[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "$v must be a number (got '${!v}')"
done
command -v jq >/dev/null || die "jq is needed to write the JSON"

PARTIES=$(((MEMBERS + PARTY_SIZE - 1) / PARTY_SIZE))
# Room for the trickle: every party gets about joins/s * seconds / parties new members.
PARTY_MAX_PEERS=$(awk -v s="$PARTY_SIZE" -v r="$JOINS_PER_S" -v t="$SECONDS_MEASURED" \
	-v b="$SECONDS_BASELINE" -v p="$PARTIES" \
	'BEGIN { m = s + int(r * (t + b) / p) + 4; if (m < 64) m = 64; print m }')
MAX_PARTIES=$((PARTIES + 16))

# --- work directory, cleanup ------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lanparty-bench-control.XXXXXX")
SERVER_PID=
SAMPLER_PID=

# shellcheck disable=SC2317 # runs from the EXIT trap
cleanup() {
	trap - EXIT INT TERM HUP
	if [[ -n $SAMPLER_PID ]] && alive "$SAMPLER_PID"; then
		kill "$SAMPLER_PID" 2>/dev/null || true
		wait "$SAMPLER_PID" 2>/dev/null || true
	fi
	if [[ -n $SERVER_PID ]]; then
		stop_pid "$SERVER_PID"
	fi
	if [[ ${BENCH_KEEP:-0} == 1 ]]; then
		log "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- build ------------------------------------------------------------------------------------

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
	log "building the release binary and examples/control_load.rs"
	(cd "$ROOT" && cargo build --release --quiet --bin lanparty-lite --example control_load) ||
		die "build failed"
fi
[[ -x $LP_BIN && -x $GEN_BIN ]] || die "missing $LP_BIN or $GEN_BIN (build first)"

# --- file descriptors -------------------------------------------------------------------------

# Server and generator each hold one socket per member plus the workers'.
NEED_FDS=$((MEMBERS + WORKERS + 256))
if (($(ulimit -n) < NEED_FDS)); then
	hard=$(ulimit -Hn)
	if [[ $hard != unlimited ]] && ((hard < NEED_FDS)); then
		die "need $NEED_FDS open files, the hard limit is $hard (lower BENCH_MEMBERS or raise it)"
	fi
	ulimit -n "$NEED_FDS"
fi
log "open-file limit $(ulimit -n) (need $NEED_FDS)"

# --- a quiet machine --------------------------------------------------------------------------

STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
START_S=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_BEFORE=$(host_busy_pct 2)
waited=0
while ((waited < WAIT_IDLE)) && awk -v b="$BUSY_BEFORE" -v l="$IDLE_PCT" 'BEGIN { exit !(b >= l) }'; do
	log "machine is ${BUSY_BEFORE}% busy (other builds/tests?); waiting (${waited}/${WAIT_IDLE} s)"
	sleep 8
	waited=$((waited + 10))
	BUSY_BEFORE=$(host_busy_pct 2)
	LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
done
log "machine ${BUSY_BEFORE}% busy before the run, load average $LOAD_BEFORE"

# --- helpers ----------------------------------------------------------------------------------

# listen_counters : "ListenOverflows ListenDrops" of TcpExt (whole network namespace).
listen_counters() {
	awk '/^TcpExt:/ {
		if (!seen) { for (i = 2; i <= NF; i++) name[i] = $i; seen = 1; next }
		for (i = 2; i <= NF; i++) {
			if (name[i] == "ListenOverflows") o = $i
			if (name[i] == "ListenDrops") d = $i
		}
	} END { printf "%d %d\n", o, d }' /proc/net/netstat
}

# open_fds PID : number of open file descriptors.
open_fds() {
	local fds=(/proc/"$1"/fd/*)
	echo "${#fds[@]}"
}

# sampler PID : every 0.5 s "seconds rss_kib hwm_kib cpu_ticks fds" until PID is gone.
sampler() {
	local pid=$1 t0=$SECONDS
	while alive "$pid"; do
		printf '%s %s %s %s %s\n' "$((SECONDS - t0))" "$(status_kib "$pid" VmRSS)" \
			"$(status_kib "$pid" VmHWM)" "$(cpu_ticks "$pid" 2>/dev/null || echo 0)" \
			"$(open_fds "$pid")" || true
		sleep 0.5
	done
}

mib() { awk -v k="$1" 'BEGIN { if (k == "null" || k == "") print "-"; else printf "%.1f MiB", k / 1024 }'; }

# --- server -----------------------------------------------------------------------------------

mkdir -m 0700 "$WORK/state"
STATE_FS=$(df -PT "$WORK/state" | awk 'NR == 2 { print $2 }')
log "server: --max-parties $MAX_PARTIES --max-peers $PARTY_MAX_PEERS, state on $STATE_FS"
"$LP_BIN" server --listen 127.0.0.1:0 --state-dir "$WORK/state" --rate-limit 0 \
	--max-parties "$MAX_PARTIES" --max-peers "$PARTY_MAX_PEERS" \
	>"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
ADDR=
for ((i = 0; i < 100; i++)); do
	ADDR=$(awk '/^listening on / { print $3; exit }' "$WORK/server.out")
	[[ -n $ADDR ]] && break
	alive "$SERVER_PID" || break
	sleep 0.1
done
[[ -n $ADDR ]] || {
	cat "$WORK/server.log" >&2
	die "the server did not start"
}
IDLE_RSS=$(status_kib "$SERVER_PID" VmRSS)
log "server PID $SERVER_PID on $ADDR, idle RSS $(mib "$IDLE_RSS")"
read -r OVERFLOWS0 DROPS0 < <(listen_counters)
TICKS0=$(cpu_ticks "$SERVER_PID")
sampler "$SERVER_PID" >"$WORK/samples" &
SAMPLER_PID=$!

# --- load -------------------------------------------------------------------------------------

LOAD_START_S=$(now_s)
set +e
"$GEN_BIN" --server "$ADDR" --server-pid "$SERVER_PID" --members "$MEMBERS" \
	--party-size "$PARTY_SIZE" --party-max-peers "$PARTY_MAX_PEERS" \
	--seconds "$SECONDS_MEASURED" --baseline-seconds "$SECONDS_BASELINE" \
	--heartbeat-s "$HEARTBEAT_S" --joins-per-s "$JOINS_PER_S" --workers "$WORKERS" \
	--json "$WORK/load.json" 2> >(sed 's/^/  /' >&2)
GEN_STATUS=$?
set -e
LOAD_WALL_S=$(calc 'b - a' a="$LOAD_START_S" b="$(now_s)")

# --- server readings --------------------------------------------------------------------------

SERVER_ALIVE=false
if alive "$SERVER_PID"; then
	SERVER_ALIVE=true
	END_RSS=$(status_kib "$SERVER_PID" VmRSS)
	END_HWM=$(status_kib "$SERVER_PID" VmHWM)
	CPU_S=$(calc '(b - a) / t' a="$TICKS0" b="$(cpu_ticks "$SERVER_PID")" t="$CLK_TCK")
else
	END_RSS=null END_HWM=null CPU_S=null
	warn "the server died during the run; its log:"
	tail -20 "$WORK/server.log" >&2
fi
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=
read -r OVERFLOWS1 DROPS1 < <(listen_counters)
PEAK_RSS=$(awk '$2 != "null" && $2 > m { m = $2 } END { print (m ? m : "null") }' "$WORK/samples")
PEAK_FDS=$(awk '$5 > m { m = $5 } END { print m + 0 }' "$WORK/samples")
REGISTRY_BYTES=$(stat -c %s "$WORK/state/registry.json" 2>/dev/null || echo null)
LOG_PROBLEMS=$(grep -c -E ' (WARN|ERROR) ' "$WORK/server.log" || true)
LOG_SAMPLE=$(grep -E ' (WARN|ERROR) ' "$WORK/server.log" | sort | uniq -c | sort -rn | head -5 || true)
stop_pid "$SERVER_PID"
SERVER_PID=
CPU_PCT=$(calc '100 * c / w' c="$CPU_S" w="$LOAD_WALL_S")

# --- table ------------------------------------------------------------------------------------

{
	echo
	echo "server (lanparty-lite server, state on $STATE_FS, $(nproc) CPUs, load before: $LOAD_BEFORE, ${BUSY_BEFORE}% busy)"
	printf '  %-42s %s\n' \
		"idle RSS after start" "$(mib "$IDLE_RSS")" \
		"peak RSS (0.5 s samples)" "$(mib "$PEAK_RSS")" \
		"VmRSS / VmHWM at the end" "$(mib "$END_RSS") / $(mib "$END_HWM")" \
		"CPU over the whole load run" "$(fmt 1 1 "$CPU_S") s in $(fmt 1 1 "$LOAD_WALL_S") s ($(fmt 1 1 "$CPU_PCT") % of one core)" \
		"open files, peak" "$PEAK_FDS" \
		"registry.json at the end" "$REGISTRY_BYTES bytes" \
		"listen queue overflows / drops (netns-wide)" "$((OVERFLOWS1 - OVERFLOWS0)) / $((DROPS1 - DROPS0))" \
		"WARN/ERROR lines in the server log" "$LOG_PROBLEMS" \
		"server alive at the end" "$SERVER_ALIVE"
	[[ -z $LOG_SAMPLE ]] || printf '%s\n' "$LOG_SAMPLE" | sed 's/^/    /'
	echo
}

# --- JSON -------------------------------------------------------------------------------------

mkdir -p "$(dirname "$JSON_OUT")"
LOAD_JSON=null
[[ -s $WORK/load.json ]] && LOAD_JSON=$(cat "$WORK/load.json")
GIT_COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$([[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && echo true || echo false)
jq -n \
	--arg started "$STARTED_AT" --argjson duration "$((SECONDS - START_S))" \
	--argjson members "$MEMBERS" --argjson party_size "$PARTY_SIZE" \
	--argjson seconds "$SECONDS_MEASURED" --argjson baseline "$SECONDS_BASELINE" \
	--argjson heartbeat "$HEARTBEAT_S" --argjson joins "$JOINS_PER_S" \
	--argjson workers "$WORKERS" --argjson max_parties "$MAX_PARTIES" \
	--argjson max_peers "$PARTY_MAX_PEERS" \
	--arg kernel "$(uname -r)" --argjson cpus "$(nproc)" --arg load "$LOAD_BEFORE" \
	--argjson busy "$BUSY_BEFORE" --arg fs "$STATE_FS" \
	--arg commit "$GIT_COMMIT" --argjson dirty "$GIT_DIRTY" \
	--argjson idle_rss "$IDLE_RSS" --argjson peak_rss "$PEAK_RSS" \
	--argjson end_rss "$END_RSS" --argjson end_hwm "$END_HWM" \
	--argjson cpu_s "$CPU_S" --argjson wall "$LOAD_WALL_S" --argjson cpu_pct "$CPU_PCT" \
	--argjson fds "$PEAK_FDS" --argjson registry "$REGISTRY_BYTES" \
	--argjson overflows "$((OVERFLOWS1 - OVERFLOWS0))" --argjson drops "$((DROPS1 - DROPS0))" \
	--argjson log_problems "$LOG_PROBLEMS" --argjson alive "$SERVER_ALIVE" \
	--argjson gen_status "$GEN_STATUS" --argjson load_json "$LOAD_JSON" \
	'{
		started_at: $started, duration_s: $duration,
		settings: { members: $members, party_size: $party_size, measured_s: $seconds,
			baseline_s: $baseline, heartbeat_s: $heartbeat, joins_per_s: $joins,
			workers: $workers, server_max_parties: $max_parties, server_max_peers: $max_peers,
			server_rate_limit: 0, listen: "127.0.0.1 (loopback)" },
		host: { kernel: $kernel, cpus: $cpus, loadavg_before: $load,
			busy_pct_before: $busy, state_dir_fs: $fs },
		git: { commit: $commit, sources_dirty: $dirty },
		server: { idle_rss_kib: $idle_rss, peak_rss_kib_sampled: $peak_rss,
			vmrss_kib_end: $end_rss, vmhwm_kib_end: $end_hwm,
			cpu_s: $cpu_s, load_wall_s: $wall, cpu_pct_of_core: $cpu_pct,
			open_files_peak: $fds, registry_json_bytes: $registry,
			listen_overflows: $overflows, listen_drops: $drops,
			log_warn_error_lines: $log_problems, alive_at_end: $alive },
		generator_exit_status: $gen_status,
		load: $load_json
	}' >"$JSON_OUT"
log "wrote $JSON_OUT ($((SECONDS - START_S)) s)"

if [[ $SERVER_ALIVE != true ]] || ((GEN_STATUS >= 2)); then
	exit 2
fi
exit "$GEN_STATUS"
