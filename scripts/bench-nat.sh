#!/usr/bin/env bash
# NAT traversal benchmark (issue 4), in the NAT lab of tests/natlab/mod.rs (ported to bash in
# scripts/lib/natlab.sh: same topology, address plan and nftables rules). Run as root:
#
#   bash scripts/bench-nat.sh
#
# On one lab "internet": a control server with STUN on two addresses × two ports and a relay
# secret, and a relay (like tests/e2e_nat_matrix.rs). Then:
#
# 1. Per pair of NAT kinds (open, full_cone, restricted_cone, port_restricted_cone, symmetric;
#    the 15 pairs of the 5×5 upper triangle, same-kind pairs included): a fresh pair of sites
#    (two new routers and hosts) and a new party. Members A and B are started together; from
#    that moment (`join` start) we take the time until A's `status --json` answers, until it
#    lists B, until the first reply to a ping A→B (one ping every 100 ms from the moment the
#    peer is listed; timestamps from `ping -D`), and until A's status shows the peer
#    `relayed` and `direct` (polled every ~100 ms). The expected path is direct except
#    port_restricted_cone↔symmetric and symmetric↔symmetric.
# 2. Paths between the same two hosts (two open sites, so the plain underlay between them
#    works too), each with fresh members and a new party: the underlay, lanparty-lite direct,
#    lanparty-lite relayed (direct UDP between the two hosts dropped by nft in the hosts, so
#    only the relay path works) with the relay's default per-member limits, and relayed again
#    with those limits raised (the relay restarted with huge --client-pps/--client-bytes-per-s).
#    For each: idle ping RTT (NAT_PINGS at 0.1 s) and iperf3 TCP throughput (NAT_SECONDS,
#    median of NAT_RUNS). Ratios against direct and the underlay measured in this run.
#
# Environment:
#   NAT_PAIRS     comma list of pairs to run, e.g. open:symmetric,symmetric:symmetric
#                 (default: all 15)
#   NAT_TIMEOUT   seconds per pair to wait for the ping and the expected path (default 60)
#   NAT_SECONDS   iperf3 seconds per run (default 4); NAT_RUNS runs, median (default 1)
#   NAT_PINGS     idle pings at 0.1 s per path (default 50)
#   NAT_SKIP_PATHS=1  only the pair matrix;  NAT_SKIP_MATRIX=1  only the paths
#   NAT_JSON      JSON output (default bench-results/bench-nat.json in the repository)
#   LANPARTY_BIN  use this binary instead of `cargo build --release --locked`
#   NAT_KEEP=1    keep the work directory (all logs) and print its path
# Exit status: 0 measured (unexpected paths are reported, not fatal); 2 a pair or a path
# failed to connect; 1 setup error.
#
# Everything runs in namespaces lpn-<PID>-*; the only traffic is between them. An EXIT trap
# stops every process the script started (by PID) and deletes every namespace it created.

set -Eeuo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/natlab.sh
source "$ROOT/scripts/lib/natlab.sh"

TIMEOUT=${NAT_TIMEOUT:-60}
SECONDS_RUN=${NAT_SECONDS:-4}
RUNS=${NAT_RUNS:-1}
PINGS=${NAT_PINGS:-50}
JSON_OUT=${NAT_JSON:-$ROOT/bench-results/bench-nat.json}
for v in TIMEOUT SECONDS_RUN RUNS PINGS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
LP_BIN=${LANPARTY_BIN:-$ROOT/target/release/lanparty-lite}
SECRET="a relay secret of at least thirty-two characters"
# What "limits raised" means for the relay in the paths phase.
RELAY_UNLIMITED=(--client-pps 100000000 --client-bytes-per-s 100000000000)

# All pairs of the upper triangle, in NATLAB_KINDS order.
ALL_PAIRS=()
for ((i = 0; i < ${#NATLAB_KINDS[@]}; i++)); do
	for ((j = i; j < ${#NATLAB_KINDS[@]}; j++)); do
		ALL_PAIRS+=("${NATLAB_KINDS[i]}:${NATLAB_KINDS[j]}")
	done
done
if [[ -n ${NAT_PAIRS:-} ]]; then
	IFS=, read -r -a PAIRS <<<"$NAT_PAIRS"
	for p in "${PAIRS[@]}"; do
		[[ " ${NATLAB_KINDS[*]} " == *" ${p%%:*} "* && " ${NATLAB_KINDS[*]} " == *" ${p#*:} "* && $p == *:* ]] ||
			die "NAT_PAIRS: $p is not KIND:KIND with kinds ${NATLAB_KINDS[*]}"
	done
else
	PAIRS=("${ALL_PAIRS[@]}")
fi

# --- work directory, cleanup ------------------------------------------------------------------

[[ $EUID -eq 0 ]] || die "run as root (network namespaces, tun devices, nftables)"
WORK=$(mktemp -d /tmp/lanparty-bench-nat.XXXXXX)
# Each pair runs in a subshell with its own lists (pids-<n>, netns-<n>), so its cleanup does not
# touch the server and relay; the EXIT trap here goes through all of them.
PIDS_FILE=$WORK/pids-main
NETNS_FILE=$WORK/netns-main
: >"$PIDS_FILE"
: >"$NETNS_FILE"
TAG=lpn-$$

cleanup_all() {
	local rc=$? f
	trap - EXIT INT TERM HUP
	if [[ -n ${CHILD_PID:-} ]] && alive "$CHILD_PID"; then
		kill -TERM "$CHILD_PID" 2>/dev/null || true
		wait "$CHILD_PID" 2>/dev/null || true
	fi
	for f in "$WORK"/pids-*; do
		[[ -e $f ]] && PIDS_FILE=$f stop_tracked
	done
	for f in "$WORK"/netns-*; do
		[[ -e $f && $f != "$WORK/netns-main" ]] && NETNS_FILE=$f delete_tracked_netns
	done
	NETNS_FILE=$WORK/netns-main delete_tracked_netns
	if [[ ${NAT_KEEP:-0} == 1 ]]; then
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

ensure_packages() {
	local -a missing=()
	local pair cmd pkg
	for pair in ip:iproute2 ss:iproute2 ping:iputils-ping iperf3:iperf3 jq:jq nft:nftables \
		conntrack:conntrack; do
		cmd=${pair%%:*} pkg=${pair#*:}
		command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
	done
	((${#missing[@]})) || return 0
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
		die "apt-get install ${missing[*]} failed: $(tail -3 "$WORK/apt.log")"
}

LP_BUILD="cargo build --release --locked"
build_lanparty() {
	if [[ -n ${LANPARTY_BIN:-} ]]; then
		LP_BUILD="given by LANPARTY_BIN; not rebuilt"
	else
		command -v cargo >/dev/null 2>&1 || PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
		log "cargo build --release --locked"
		(cd "$ROOT" && cargo build --release --locked -q) || die "cargo build --release --locked failed"
	fi
	[[ -x $LP_BIN ]] || die "$LP_BIN is not an executable"
}

# log_tail LOGNAME : the last lines of a log, on one line, for failure messages.
log_tail() { tail -n 4 "$WORK/$1.log" 2>/dev/null | tr '\n' ' ' | cut -c1-300; }

# --- the lab's internet: control server (STUN ×4) and relay -----------------------------------

start_internet() {
	natlab_new "$TAG"
	natlab_add_internet_host srv 2
	SRV_NS=$HOST_NS SRV_A=${HOST_IPS[0]} SRV_B=${HOST_IPS[1]}
	natlab_add_internet_host rly 1
	RLY_NS=$HOST_NS RLY_IP=${HOST_IPS[0]}
	SECRET_FILE=$WORK/relay.secret
	(umask 077 && printf '%s' "$SECRET" >"$SECRET_FILE")
	CONTROL=http://$SRV_A:7777
	# --rate-limit 0: the control server is not what we measure here.
	spawn "$SRV_NS" server "$LP_BIN" server --listen "$SRV_A:7777" --state-dir "$WORK/server" \
		--relay-secret-file "$SECRET_FILE" --rate-limit 0 \
		--stun "$SRV_A:3478" --stun "$SRV_A:3479" --stun "$SRV_B:3478" --stun "$SRV_B:3479"
	SERVER_PID=$SPAWNED_PID
	wait_log server listening 10 "$SERVER_PID" || die "control server did not start: $(log_tail server)"
	start_relay default
}

# start_relay default|unlimited : (re)starts the relay on the lab internet.
RELAY_PID=
RELAY_MODE=
start_relay() {
	[[ -n $RELAY_PID ]] && stop_pid "$RELAY_PID"
	local -a extra=()
	[[ $1 == unlimited ]] && extra=("${RELAY_UNLIMITED[@]}")
	spawn "$RLY_NS" "relay-$1" "$LP_BIN" relay --listen "$RLY_IP:3479" --secret-file "$SECRET_FILE" \
		--control "$CONTROL" "${extra[@]}"
	RELAY_PID=$SPAWNED_PID RELAY_MODE=$1
	wait_log "relay-$1" "relay listening" 10 "$RELAY_PID" || die "relay did not start: $(log_tail "relay-$1")"
}

# relay_stats : asks the relay for its counters (SIGUSR1) and prints "PACKETS BYTES RATE_LIMITED"
# from the line it logs (null null null if none came).
relay_stats() {
	local logf=$WORK/relay-$RELAY_MODE.log before after i
	before=$(grep -c "relay stats:" "$logf" 2>/dev/null || true)
	kill -USR1 "$RELAY_PID" 2>/dev/null || true
	for ((i = 0; i < 20; i++)); do
		after=$(grep -c "relay stats:" "$logf" 2>/dev/null || true)
		((after > before)) && break
		sleep 0.1
	done
	grep "relay stats:" "$logf" 2>/dev/null | tail -n 1 |
		sed -nE 's/.*forwarded ([0-9]+) packets \/ ([0-9]+) bytes.* ([0-9]+) rate limited.*/\1 \2 \3/p' |
		grep . || echo null null null
}

# new_party NAME : creates a party on the control server, prints its join code.
new_party() {
	local code
	code=$(ip netns exec "$SRV_NS" "$LP_BIN" create "$1" --control "$CONTROL" 2>"$WORK/create-$1.err" | tail -n 1)
	[[ -n $code ]] || return 1
	printf '%s\n' "$code"
}

# lp_status DIR : `status --json` of the member with state directory DIR (fails if not up).
lp_status() { "$LP_BIN" status --json --state-dir "$1" 2>/dev/null; }

# --- one pair: join both, time the first ping and the paths -----------------------------------

# fail_pair MESSAGE : ends the pair's subshell, recording why.
fail_pair() {
	printf '%s\n' "$*" >"$REASON_FILE"
	log "$PAIR_NAME: $*"
	exit 1
}

# connect_pair LABEL A_NS B_NS WANT : a new party; members a (in A_NS) and b (in B_NS) started
# together; polls a's status until the first ping reply a→b and until the peer shows WANT
# (direct or relayed; with WANT=direct, relayed is recorded on the way), or TIMEOUT. Sets
# T_UP T_PEER T_PING T_RELAYED T_DIRECT (seconds since join start, or null), PATH_FINAL,
# TRANSITIONS, PEER_VIP, MEMBER_PIDS, PINGER_PID, DIR_A, DIR_B.
connect_pair() {
	local label=$1 ns_a=$2 ns_b=$3 want=$4 code
	code=$(new_party "$label") || fail_pair "create failed: $(cat "$WORK/create-$label.err")"
	DIR_A=$WORK/$label-a DIR_B=$WORK/$label-b
	local t0 pa pb
	t0=$(now_s)
	spawn "$ns_a" "$label-a" "$LP_BIN" join "$code" --name a --state-dir "$DIR_A"
	pa=$SPAWNED_PID
	spawn "$ns_b" "$label-b" "$LP_BIN" join "$code" --name b --state-dir "$DIR_B"
	pb=$SPAWNED_PID
	MEMBER_PIDS=("$pa" "$pb")
	T_UP=null T_PEER=null T_PING=null T_RELAYED=null T_DIRECT=null PATH_FINAL=none
	TRANSITIONS=() PEER_VIP= PINGER_PID=
	local st now el line vip ctype last=none ping_ts
	while :; do
		alive "$pa" || fail_pair "member a exited: $(log_tail "$label-a")"
		alive "$pb" || fail_pair "member b exited: $(log_tail "$label-b")"
		if st=$(lp_status "$DIR_A"); then
			now=$(now_s)
			el=$(elapsed_s "$t0" "$now")
			[[ $T_UP == null ]] && T_UP=$el
			line=$(jq -r '[(.peers[0].virtual_ip // "-"), (.peers[0].connection_type // "-")] | join(" ")' <<<"$st")
			read -r vip ctype <<<"$line"
			if [[ $vip != - && -z $PEER_VIP ]]; then
				T_PEER=$el PEER_VIP=$vip
				spawn "$ns_a" "$label-ping" ping -D -n -i 0.1 -W 1 "$PEER_VIP"
				PINGER_PID=$SPAWNED_PID
			fi
			if [[ $ctype != - && $ctype != "$last" ]]; then
				TRANSITIONS+=("$ctype@$el")
				last=$ctype
			fi
			[[ $ctype == relayed && $T_RELAYED == null ]] && T_RELAYED=$el
			[[ $ctype == direct && $T_DIRECT == null ]] && T_DIRECT=$el
			PATH_FINAL=$ctype
		else
			now=$(now_s)
			el=$(elapsed_s "$t0" "$now")
		fi
		if [[ $T_PING == null && -n $PINGER_PID ]]; then
			ping_ts=$(first_ping_reply "$WORK/$label-ping.log")
			[[ -n $ping_ts ]] && T_PING=$(elapsed_s "$t0" "$ping_ts")
		fi
		if [[ $T_PING != null ]]; then
			[[ $want == direct && $T_DIRECT != null ]] && break
			[[ $want == relayed && $T_RELAYED != null ]] && break
		fi
		awk -v e="$el" -v t="$TIMEOUT" 'BEGIN { exit !(e >= t) }' && break
		sleep 0.1
	done
}

# stop_pair : stops the pinger and both members.
stop_pair() {
	[[ -n ${PINGER_PID:-} ]] && stop_pid "$PINGER_PID"
	local pid
	for pid in "${MEMBER_PIDS[@]}"; do stop_pid "$pid"; done
	PINGER_PID=
	MEMBER_PIDS=()
}

# run_pair N KIND_A KIND_B : the matrix cell KIND_A↔KIND_B with sites 2N and 2N+1. Writes
# $WORK/pair-N.json.
run_pair() {
	local n=$1 ka=$2 kb=$3 expect=direct
	natlab_punchable "$ka" "$kb" || expect=relayed
	local busy
	busy=$(host_busy_pct 0.5)
	NATLAB_NEXT_SITE=$((2 * n))
	natlab_add_site "$ka"
	local a_ns=$SITE_HOST_NS a_pub=$SITE_PUBLIC_IP
	natlab_add_site "$kb"
	local b_ns=$SITE_HOST_NS b_pub=$SITE_PUBLIC_IP
	connect_pair "p$n" "$a_ns" "$b_ns" "$expect"
	local nat_a nat_b path_b
	nat_a=$(lp_status "$DIR_A" | jq -r '.self.nat_type // "?"') || nat_a="?"
	nat_b=$(lp_status "$DIR_B" | jq -r '.self.nat_type // "?"') || nat_b="?"
	path_b=$(lp_status "$DIR_B" | jq -r '.peers[0].connection_type // "-"') || path_b="?"
	stop_pair
	local ok=true why=
	if [[ $T_PING == null ]]; then
		ok=false why="no ping reply within ${TIMEOUT} s"
	elif [[ $expect == direct && $T_DIRECT == null ]]; then
		why="not direct within ${TIMEOUT} s (path $PATH_FINAL)"
	fi
	jq -n --arg a "$ka" --arg b "$kb" --arg expect "$expect" --arg path "$PATH_FINAL" \
		--arg path_b "$path_b" --arg nat_a "$nat_a" --arg nat_b "$nat_b" \
		--arg pub_a "$a_pub" --arg pub_b "$b_pub" --argjson busy "$busy" \
		--argjson up "$T_UP" --argjson peer "$T_PEER" --argjson ping "$T_PING" \
		--argjson relayed "$T_RELAYED" --argjson direct "$T_DIRECT" \
		--argjson ok "$ok" --arg why "$why" \
		--argjson transitions "$( ((${#TRANSITIONS[@]})) && printf '%s\n' "${TRANSITIONS[@]}" |
			jq -R 'split("@") | {type: .[0], at_s: (.[1] | tonumber)}' | jq -cs . || echo '[]')" \
		'{a: $a, b: $b, expected_path: $expect, path_seen_by_a: $path, path_seen_by_b_at_end: $path_b,
		  nat_type_reported: {a: $nat_a, b: $nat_b}, public_ip: {a: $pub_a, b: $pub_b},
		  host_busy_pct_before: $busy,
		  seconds_from_join: {status_up: $up, peer_listed: $peer, first_ping_reply: $ping,
		    relayed: $relayed, direct: $direct},
		  connection_type_transitions: $transitions, ok: $ok, note: $why}'
	# The pair's sites go away with its namespaces (the subshell's cleanup).
}

# in_subshell RESULT_FILE FUNCTION ARGS… : runs FUNCTION in a subshell with its own process and
# namespace lists and cleanup; its stdout goes to RESULT_FILE. Returns its exit status. In the
# background plus `wait`, so a signal to this script is handled at once.
SUB_N=0
in_subshell() {
	local result=$1
	shift
	SUB_N=$((SUB_N + 1))
	set +e
	(
		set -Eeuo pipefail
		PIDS_FILE=$WORK/pids-$SUB_N NETNS_FILE=$WORK/netns-$SUB_N
		: >"$PIDS_FILE"
		: >"$NETNS_FILE"
		trap 'stop_tracked; delete_tracked_netns' EXIT
		trap 'exit 143' TERM
		trap 'printf "command failed (line %s): %.160s\n" "$LINENO" "${BASH_COMMAND%%$'"'\n'"'*}" >"$REASON_FILE"' ERR
		"$@" >"$result.tmp"
		mv "$result.tmp" "$result"
	) &
	CHILD_PID=$!
	wait "$CHILD_PID"
	local rc=$?
	CHILD_PID=
	set -e
	((rc == 130 || rc == 143)) && exit "$rc"
	return "$rc"
}

# --- paths between the same two hosts ---------------------------------------------------------

# measure_path NAME CLIENT_NS SERVER_NS TARGET : idle RTT and iperf3 TCP; prints a JSON object.
measure_path() {
	local name=$1 cns=$2 sns=$3 target=$4 run rtt loss
	ping_stats "$cns" "$target" 5 >/dev/null # warm-up, not counted
	read -r rtt loss _ < <(ping_stats "$cns" "$target" "$PINGS")
	[[ $rtt != null ]] || fail_pair "$name: idle ping got no replies"
	local -a mbps=() retrans=()
	for ((run = 1; run <= RUNS; run++)); do
		local m r
		read -r m r < <(iperf3_tcp "$cns" "$sns" "$target" "$SECONDS_RUN" "$name-iperf3-$run")
		mbps+=("$m") retrans+=("$r")
		log "$name: idle RTT $(fmt 0 3 "$rtt") ms, iperf3 run $run/$RUNS $(fmt 0 1 "$m") Mbit/s (retransmits $r)"
		sleep 0.5
	done
	jq -n --arg name "$name" --argjson rtt "$rtt" --argjson loss "$loss" \
		--argjson mbps "$(median "${mbps[@]}")" --argjson runs "$(json_array "${mbps[@]}")" \
		--argjson retrans "$(json_array "${retrans[@]}")" \
		'{name: $name, idle_rtt_ms: $rtt, idle_loss_pct: $loss, throughput_mbps: $mbps,
		  throughput_runs_mbps: $runs, retransmits_runs: $retrans}'
}

# block_direct NS PEER_IP add|del : drops UDP between NS and PEER_IP (the relay and the
# control server stay reachable), so the only path that works is through the relay.
block_direct() {
	if [[ $3 == add ]]; then
		ip netns exec "$1" nft -f - <<-EOF
			table inet lpnblock {
			    chain input { type filter hook input priority filter; policy accept; ip saddr $2 meta l4proto udp drop; }
			    chain output { type filter hook output priority filter; policy accept; ip daddr $2 meta l4proto udp drop; }
			}
		EOF
	else
		ip netns exec "$1" nft delete table inet lpnblock 2>/dev/null || true
	fi
}

# lanparty_path NAME WANT : fresh members on X and Y, connected WANT, measured, stopped; writes
# $WORK/path-NAME.json.
lanparty_path() {
	local name=$1 want=$2
	connect_pair "$name" "$X_NS" "$Y_NS" "$want"
	[[ $T_PING != null ]] || fail_pair "$name: no ping reply within ${TIMEOUT} s"
	if [[ $want == direct && $T_DIRECT == null ]] || [[ $want == relayed && $T_RELAYED == null ]]; then
		fail_pair "$name: path never became $want (last: $PATH_FINAL)"
	fi
	local t_path=$T_DIRECT
	[[ $want == relayed ]] && t_path=$T_RELAYED
	log "$name: first ping after $T_PING s, $want after $t_path s"
	local relay seen
	relay=$(lp_status "$DIR_A" | jq -c '.peers[0].relay // null') || relay=null
	local p0 b0 l0 p1 b1 l1
	read -r p0 b0 l0 < <(relay_stats)
	measure_path "$name" "$X_NS" "$Y_NS" "$PEER_VIP" >"$WORK/path-$name.raw"
	read -r p1 b1 l1 < <(relay_stats)
	seen=$(lp_status "$DIR_A" | jq -r '.peers[0].connection_type') || seen=unknown
	[[ $seen == "$want" ]] || warn "$name: the path was $seen at the end of the measurement"
	jq --arg want "$want" --argjson ping "$T_PING" --argjson path "$t_path" \
		--arg seen "$seen" --argjson relay "$relay" --arg relay_mode "$RELAY_MODE" \
		--argjson rp "$(calc 'b - a' a="$p0" b="$p1")" --argjson rb "$(calc 'b - a' a="$b0" b="$b1")" \
		--argjson rl "$(calc 'b - a' a="$l0" b="$l1")" \
		'. + {path: $want, path_at_end: $seen, relay: $relay, relay_limits: $relay_mode,
		      relay_during_measurement: {forwarded_packets: $rp, forwarded_bytes: $rb, rate_limited: $rl},
		      seconds_from_join: {first_ping_reply: $ping, path: $path}}' \
		"$WORK/path-$name.raw" >"$WORK/path-$name.json"
	stop_pair
}

# run_paths : the paths phase on two new open sites; prints its JSON object.
run_paths() {
	NATLAB_NEXT_SITE=$((2 * ${#ALL_PAIRS[@]}))
	natlab_add_site open
	X_NS=$SITE_HOST_NS X_IP=$SITE_PUBLIC_IP
	natlab_add_site open
	Y_NS=$SITE_HOST_NS Y_IP=$SITE_PUBLIC_IP
	PAIR_NAME=paths
	log "paths: underlay $X_IP → $Y_IP"
	measure_path underlay "$X_NS" "$Y_NS" "$Y_IP" >"$WORK/path-underlay.json"
	lanparty_path direct direct
	block_direct "$X_NS" "$Y_IP" add
	block_direct "$Y_NS" "$X_IP" add
	lanparty_path relayed relayed
	start_relay unlimited
	lanparty_path relayed-unlimited relayed
	block_direct "$X_NS" "$Y_IP" del
	block_direct "$Y_NS" "$X_IP" del
	jq -s --arg x "$X_IP" --arg y "$Y_IP" '{hosts: {a: $x, b: $y}, paths: (map({(.name): .}) | add)}' \
		"$WORK"/path-{underlay,direct,relayed,relayed-unlimited}.json
}

# --- report -----------------------------------------------------------------------------------

report() {
	local pairs_json=$WORK/pairs.json paths_json=$WORK/paths.json
	local -a files=()
	local n
	for ((n = 0; n < ${#ALL_PAIRS[@]}; n++)); do
		[[ -s $WORK/pair-$n.json ]] && files+=("$WORK/pair-$n.json")
	done
	if ((${#files[@]})); then jq -s . "${files[@]}" >"$pairs_json"; else echo '[]' >"$pairs_json"; fi
	[[ -s $WORK/paths-result.json ]] && cp "$WORK/paths-result.json" "$paths_json" || echo null >"$paths_json"

	echo
	echo "lanparty-lite NAT benchmark: $(nproc) CPUs, kernel $(uname -r), $("$LP_BIN" --version 2>/dev/null)"
	if ((${#files[@]})); then
		echo
		echo "1. Per NAT pair: seconds from \`join\` (A and B started together) until A's status is up,"
		echo "   lists B, the first ping reply A→B (ping every 0.1 s), and A's status shows the peer"
		echo "   relayed / direct (status polled every ~0.1 s). Timeout ${TIMEOUT} s. (!) = not the"
		echo "   expected path. NAT seen = self.nat_type of A and B when the pair ended (unknown: their"
		echo "   classification, a few seconds, had not finished yet)."
		echo
		printf '%-45s %-7s %-8s %6s %6s %8s %8s %7s  %s\n' "pair (A ↔ B)" "expect" "path" "up" "peer" "1st ping" "relayed" "direct" "NAT seen (A/B), notes"
		jq -r '.[] | [.a, .b, .expected_path, .path_seen_by_a, (.seconds_from_join | .status_up, .peer_listed,
			.first_ping_reply, .relayed, .direct), .nat_type_reported.a, .nat_type_reported.b, .note,
			.host_busy_pct_before] | map(. // "null" | tostring) | join("\u001f")' "$pairs_json" |
			while IFS=$'\x1f' read -r a b expect path up peer ping rel dir na nb note busy; do
				local mark=""
				[[ $path != "$expect" ]] && mark=" (!)"
				printf '%-45s %-7s %-8s %6s %6s %8s %8s %7s  %s/%s%s\n' "$a ↔ $b" "$expect" "$path$mark" \
					"$(fmt 0 2 "$up")" "$(fmt 0 2 "$peer")" "$(fmt 0 2 "$ping")" "$(fmt 0 2 "$rel")" \
					"$(fmt 0 2 "$dir")" "$na" "$nb" "${note:+; $note}$( awk -v b="$busy" 'BEGIN { if (b > 50) printf "; host %s%% busy before", b }')"
			done
		echo
		echo "   Matrix (row A, column B): seconds to the final path, d = direct, r = relayed"
		printf '   %-21s' ""
		local k
		for k in "${NATLAB_KINDS[@]}"; do printf ' %10.10s' "$k"; done
		echo
		local ka kb cell
		for ka in "${NATLAB_KINDS[@]}"; do
			printf '   %-21s' "$ka"
			for kb in "${NATLAB_KINDS[@]}"; do
				cell=$(jq -r --arg a "$ka" --arg b "$kb" '[.[] | select(.a == $a and .b == $b)][0] // empty |
					if .seconds_from_join.direct then "\(.seconds_from_join.direct * 10 | round / 10) d"
					elif .seconds_from_join.relayed then "\(.seconds_from_join.relayed * 10 | round / 10) r"
					else "fail" end' "$pairs_json")
				printf ' %10s' "${cell:-·}"
			done
			echo
		done
	fi

	local d_mbps=null r_mbps=null ru_mbps=null u_mbps=null d_rtt=null r_rtt=null ru_rtt=null u_rtt=null
	if [[ $(cat "$paths_json") != null ]]; then
		get() { jq -r "$1 // \"null\"" "$paths_json"; }
		u_mbps=$(get .paths.underlay.throughput_mbps) u_rtt=$(get .paths.underlay.idle_rtt_ms)
		d_mbps=$(get .paths.direct.throughput_mbps) d_rtt=$(get .paths.direct.idle_rtt_ms)
		r_mbps=$(get .paths.relayed.throughput_mbps) r_rtt=$(get .paths.relayed.idle_rtt_ms)
		ru_mbps=$(get '.paths."relayed-unlimited".throughput_mbps') ru_rtt=$(get '.paths."relayed-unlimited".idle_rtt_ms')
		echo
		echo "2. Paths between the same two hosts ($(get .hosts.a) and $(get .hosts.b), both without NAT), fresh"
		echo "   members each: iperf3 TCP ${SECONDS_RUN} s (median of ${RUNS}), ${PINGS} idle pings at 0.1 s."
		echo "   relayed: direct UDP between the hosts dropped, relay with its default per-member limits;"
		echo "   relayed-unlimited: the same with the relay's limits raised (${RELAY_UNLIMITED[*]})."
		echo "   relay fwd / drops: what the relay forwarded and dropped as rate limited meanwhile (SIGUSR1)."
		echo
		printf '%-18s %10s %9s %10s %10s %11s %11s %10s %9s\n' "path" "Mbit/s" "idle RTT" "+RTT vs" "+RTT vs" "Mbit/s" "Mbit/s" "relay fwd" "relay"
		printf '%-18s %10s %9s %10s %10s %11s %11s %10s %9s\n' "" "" "ms" "underlay" "direct" "/ underlay" "/ direct" "MB" "drops"
		local p m r
		for p in underlay direct relayed relayed-unlimited; do
			m=$(get ".paths.\"$p\".throughput_mbps") r=$(get ".paths.\"$p\".idle_rtt_ms")
			[[ $(get ".paths.\"$p\".name") == null ]] && continue
			printf '%-18s %10s %9s %10s %10s %11s %11s %10s %9s\n' "$p" "$(fmt 0 1 "$m")" "$(fmt 0 3 "$r")" \
				"$(fmt 0 3 "$(calc 'a - b' a="$r" b="$u_rtt")")" "$(fmt 0 3 "$(calc 'a - b' a="$r" b="$d_rtt")")" \
				"$(fmt 0 3 "$(calc 'a / b' a="$m" b="$u_mbps")")" "$(fmt 0 3 "$(calc 'a / b' a="$m" b="$d_mbps")")" \
				"$(fmt 0 1 "$(calc 'x / 1e6' x="$(get ".paths.\"$p\".relay_during_measurement.forwarded_bytes")")")" \
				"$(fmt 0 0 "$(get ".paths.\"$p\".relay_during_measurement.rate_limited")")"
		done
	fi

	mkdir -p "$(dirname "$JSON_OUT")"
	local git_rev git_dirty=false
	git_rev=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
	[[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && git_dirty=true
	jq -n --slurpfile pairs "$pairs_json" --slurpfile paths "$paths_json" \
		--arg started "$STARTED_AT" --argjson duration "$((SECONDS - START_S))" \
		--argjson timeout "$TIMEOUT" --argjson seconds "$SECONDS_RUN" --argjson runs "$RUNS" \
		--argjson pings "$PINGS" --arg kernel "$(uname -r)" --argjson cpus "$(nproc)" \
		--arg lp_bin "$LP_BIN" --arg lp_build "$LP_BUILD" --arg lp_version "$("$LP_BIN" --version 2>/dev/null || true)" \
		--arg git_rev "$git_rev" --argjson git_dirty "$git_dirty" \
		--arg iperf_version "$(iperf3 --version 2>/dev/null | head -1)" \
		--arg relay_unlimited "${RELAY_UNLIMITED[*]}" \
		--argjson tr_rd "$(calc 'a / b' a="$r_mbps" b="$d_mbps")" \
		--argjson tr_rud "$(calc 'a / b' a="$ru_mbps" b="$d_mbps")" \
		--argjson tr_du "$(calc 'a / b' a="$d_mbps" b="$u_mbps")" \
		--argjson rtt_rd "$(calc 'a - b' a="$r_rtt" b="$d_rtt")" \
		--argjson rtt_rud "$(calc 'a - b' a="$ru_rtt" b="$d_rtt")" \
		--argjson rtt_du "$(calc 'a - b' a="$d_rtt" b="$u_rtt")" \
		'{
			started_at: $started, duration_s: $duration,
			settings: {pair_timeout_s: $timeout, iperf3_seconds: $seconds, iperf3_runs: $runs,
				idle_pings: $pings, ping_interval_s: 0.1, status_poll_interval_s: 0.1,
				relay_unlimited_args: $relay_unlimited,
				lab: "tests/natlab/mod.rs topology and nft rules (scripts/lib/natlab.sh); control server with 4 STUN sockets and a relay on the lab internet"},
			host: {kernel: $kernel, cpus: $cpus},
			versions: {lanparty_lite: {binary: $lp_bin, version: $lp_version, build: $lp_build,
				git_commit: $git_rev, sources_dirty: $git_dirty}, iperf3: $iperf_version},
			pairs: $pairs[0],
			paths: $paths[0],
			ratios: {
				relayed_vs_direct_throughput: $tr_rd, relayed_unlimited_vs_direct_throughput: $tr_rud,
				direct_vs_underlay_throughput: $tr_du,
				added_idle_rtt_ms: {relayed_vs_direct: $rtt_rd, relayed_unlimited_vs_direct: $rtt_rud,
					direct_vs_underlay: $rtt_du}
			}
		}' >"$JSON_OUT"
	echo
	echo "JSON: $JSON_OUT   (took $((SECONDS - START_S)) s)"
}

# --- main -------------------------------------------------------------------------------------

main() {
	START_S=$SECONDS
	STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	local failed=0 n p
	ensure_packages
	build_lanparty
	start_internet
	log "lab up: control $CONTROL (STUN on $SRV_A and $SRV_B, ports 3478/3479), relay $RLY_IP:3479"

	if [[ ${NAT_SKIP_MATRIX:-0} != 1 ]]; then
		for ((n = 0; n < ${#ALL_PAIRS[@]}; n++)); do
			p=${ALL_PAIRS[n]}
			[[ " ${PAIRS[*]} " == *" $p "* ]] || continue
			log "=== pair ${p%%:*} ↔ ${p#*:}"
			PAIR_NAME="${p%%:*}↔${p#*:}" REASON_FILE=$WORK/reason-$n
			if ! in_subshell "$WORK/pair-$n.json" run_pair "$n" "${p%%:*}" "${p#*:}"; then
				local why="failed"
				[[ -s $REASON_FILE ]] && why=$(cat "$REASON_FILE")
				warn "pair $p: $why"
				jq -n --arg a "${p%%:*}" --arg b "${p#*:}" --arg why "$why" \
					'{a: $a, b: $b, ok: false, note: $why, seconds_from_join: {}}' >"$WORK/pair-$n.json"
				failed=1
			else
				jq -r '"\(.a) ↔ \(.b): first ping \(.seconds_from_join.first_ping_reply) s, relayed \(.seconds_from_join.relayed) s, direct \(.seconds_from_join.direct) s (expected \(.expected_path), transitions \(.connection_type_transitions | map("\(.type)@\(.at_s)") | join(" ")))"' \
					"$WORK/pair-$n.json" | while read -r line; do log "$line"; done
				[[ $(jq -r .ok "$WORK/pair-$n.json") == true ]] || failed=1
			fi
		done
	fi

	if [[ ${NAT_SKIP_PATHS:-0} != 1 ]]; then
		log "=== paths: underlay, direct, relayed (same two hosts)"
		REASON_FILE=$WORK/reason-paths
		if ! in_subshell "$WORK/paths-result.json" run_paths; then
			warn "paths: $(cat "$REASON_FILE" 2>/dev/null || echo failed)"
			failed=1
		fi
		# The relay may have been left in unlimited mode by a failed subshell: not reused.
	fi

	report
	((failed == 0)) || exit 2
}

main "$@"
