#!/usr/bin/env bash
# Failover benchmark (health, failover, fail-back), in the NAT lab of scripts/lib/natlab.sh
# with the faults of scripts/lib/faults.sh (the same lab and faults as tests/e2e_failover.rs).
# Run as root:
#
#   bash scripts/bench-failover.sh
#
# On the lab internet: a control server (STUN on two addresses × two ports) and two relays.
# Each run makes two new port-restricted cone sites A and B and a new party, waits until the
# pair is connected direct, starts `ping -D -i 0.2` A→B and waits until A probes the path on
# the busy schedule (two probes since the ping began). Then, in order:
#   failover    UDP between the two routers' public addresses dropped in A's router: seconds
#               to the first ping reply to a request sent after the fault (target 3 s);
#   fail-back   the drop removed: seconds until A's status shows the peer direct (target 30 s);
#   flush       `conntrack -F` in A's router: seconds to the next ping reply;
#   rebinding   A's router maps A to a new public port, 20000 (rules replaced, conntrack
#               flushed): seconds to the next ping reply (target 5 s), then until A shows B
#               direct again. (One port, as a home router's NAT rebinding does: with a port
#               range Linux picks a port per flow, which is a symmetric NAT, not a rebinding.)
#   degraded    +300 ms on everything A's host sends: seconds until A shows B degraded, and
#               after removing it until connected;
#   relay death direct blocked again, pair relayed: the relay in use SIGKILLed, seconds to the
#               next ping reply (target 5 s); the relay is restarted for the next run.
# Then a fresh idle pair: wakeups per second of one member (voluntary + involuntary context
# switches of all its threads over FO_IDLE_S, as scripts/bench-footprint.sh counts them).
#
# Environment: FO_RUNS runs (default 3), FO_IDLE_S idle seconds (default 30), FO_TIMEOUT
# seconds per wait (default 60), FO_JSON output (default bench-results/bench-failover.json),
# LANPARTY_BIN (skip the build), FO_KEEP=1 keep the work directory.
# Exit status: 0 measured; 1 setup error or a run that did not connect.
#
# Namespaces lpf-<PID>-*; an EXIT trap stops every process the script started (by PID) and
# deletes every namespace it created.

set -Eeuo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/natlab.sh
source "$ROOT/scripts/lib/natlab.sh"
# shellcheck source-path=SCRIPTDIR source=lib/faults.sh
source "$ROOT/scripts/lib/faults.sh"

RUNS=${FO_RUNS:-3}
IDLE_S=${FO_IDLE_S:-30}
TIMEOUT=${FO_TIMEOUT:-60}
JSON_OUT=${FO_JSON:-$ROOT/bench-results/bench-failover.json}
for v in RUNS IDLE_S TIMEOUT; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
LP_BIN=${LANPARTY_BIN:-$ROOT/target/release/lanparty-lite}
SECRET="a relay secret of at least thirty-two characters"

[[ $EUID -eq 0 ]] || die "run as root (network namespaces, tun devices, nftables)"
for cmd in ip nft conntrack jq ping python3; do
	command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing (scripts/deps.sh installs it)"
done
WORK=$(mktemp -d /tmp/lanparty-bench-failover.XXXXXX)
PIDS_FILE=$WORK/pids
NETNS_FILE=$WORK/netns
: >"$PIDS_FILE"
: >"$NETNS_FILE"
TAG=lpf-$$

cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	stop_tracked
	delete_tracked_netns
	if [[ ${FO_KEEP:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [[ -z ${LANPARTY_BIN:-} ]]; then
	command -v cargo >/dev/null 2>&1 || PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
	log "cargo build --release"
	(cd "$ROOT" && cargo build --release -q) || die "cargo build --release failed"
fi
[[ -x $LP_BIN ]] || die "$LP_BIN is not an executable"

# --- the internet: control server and two relays --------------------------------------------

natlab_new "$TAG"
natlab_add_internet_host srv 2
SRV_NS=$HOST_NS SRV_A=${HOST_IPS[0]} SRV_B=${HOST_IPS[1]}
SECRET_FILE=$WORK/relay.secret
(umask 077 && printf '%s' "$SECRET" >"$SECRET_FILE")
CONTROL=http://$SRV_A:7777
spawn "$SRV_NS" server "$LP_BIN" server --listen "$SRV_A:7777" --state-dir "$WORK/server" \
	--relay-secret-file "$SECRET_FILE" --rate-limit 0 \
	--stun "$SRV_A:3478" --stun "$SRV_A:3479" --stun "$SRV_B:3478" --stun "$SRV_B:3479"
wait_log server listening 10 "$SPAWNED_PID" || die "control server did not start"
RLY_NS=() RLY_AT=() RLY_PID=()
for i in 0 1; do
	natlab_add_internet_host "rly$i" 1
	RLY_NS+=("$HOST_NS") RLY_AT+=("${HOST_IPS[0]}:3479") RLY_PID+=("")
done
# start_relay I : (re)starts relay I.
start_relay() {
	spawn "${RLY_NS[$1]}" "relay$1-$SECONDS" "$LP_BIN" relay --listen "${RLY_AT[$1]}" \
		--secret-file "$SECRET_FILE" --control "$CONTROL"
	RLY_PID[$1]=$SPAWNED_PID
	wait_log "relay$1-$SECONDS" "relay listening" 10 "$SPAWNED_PID" || die "relay $1 did not start"
}
relays_listed() {
	local out
	out=$(ip netns exec "$SRV_NS" curl -fsS "$CONTROL/v1/relays" 2>/dev/null) || return 1
	[[ $out == *"${RLY_AT[0]}"* && $out == *"${RLY_AT[1]}"* ]]
}
start_relay 0
start_relay 1

# --- helpers -------------------------------------------------------------------------------

lp_status() { "$LP_BIN" status --json --state-dir "$1" 2>/dev/null; }
# peer_field DIR JQ : a jq expression on the first peer of the member in DIR.
peer_field() { lp_status "$1" | jq -r ".peers[0] | $2" 2>/dev/null || echo "?"; }
# wait_for DESCRIPTION T0 COMMAND… : polls COMMAND every 0.1 s until it succeeds; prints seconds
# since T0, or null after TIMEOUT.
wait_for() {
	local what=$1 t0=$2 now
	shift 2
	while :; do
		"$@" && {
			elapsed_s "$t0" "$(now_s)"
			return
		}
		now=$(now_s)
		if awk -v a="$t0" -v b="$now" -v t="$TIMEOUT" 'BEGIN { exit !(b - a >= t) }'; then
			warn "$what: not within $TIMEOUT s"
			echo null
			return
		fi
		sleep 0.1
	done
}
is_path() { [[ $(peer_field "$1" '"\(.state) \(.connection_type)"') == "$2" ]]; }
is_state() { [[ $(peer_field "$1" .state) == "$2" ]]; }
# wait_ping_after LOG T0 : seconds from T0 to the first ping reply to a request after T0.
wait_ping_after() {
	local log=$1 t0=$2 r
	while :; do
		r=$(ping_reply_after "$log" "$t0")
		[[ -n $r ]] && {
			echo "$r"
			return
		}
		awk -v a="$t0" -v b="$(now_s)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a >= t) }' && {
			echo null
			return
		}
		sleep 0.1
	done
}
probes_in_use() { peer_field "$1" '[.paths[] | select(.in_use) | .probes_sent][0] // 0'; }
warm_up() {
	local start n i
	start=$(probes_in_use "$1")
	for ((i = 0; i < 400; i++)); do
		n=$(probes_in_use "$1")
		[[ $n =~ ^[0-9]+$ ]] && ((n >= start + 2)) && return 0
		sleep 0.1
	done
	warn "warm-up: the path in use was not probed twice in 40 s"
}

# --- one run ---------------------------------------------------------------------------------

declare -a F_OVER F_BACK F_FLUSH F_REBIND F_REDIRECT F_DEG F_UNDEG F_RELAY
run_once() {
	local n=$1 code t0
	for ((k = 0; k < 100; k++)); do relays_listed && break; sleep 0.1; done
	NATLAB_NEXT_SITE=$((2 * n))
	natlab_add_site port_restricted_cone
	local a_ns=$SITE_HOST_NS a_r=$SITE_ROUTER_NS a_host=$SITE_HOST_IP
	natlab_add_site port_restricted_cone
	local b_ns=$SITE_HOST_NS b_r=$SITE_ROUTER_NS b_pub=$SITE_PUBLIC_IP
	code=$(ip netns exec "$SRV_NS" "$LP_BIN" create "run$n" --control "$CONTROL" 2>/dev/null | tail -n 1)
	[[ -n $code ]] || die "run $n: create failed"
	local da=$WORK/r$n-a db=$WORK/r$n-b pa pb
	spawn "$a_ns" "r$n-a" "$LP_BIN" join "$code" --name a --state-dir "$da"
	pa=$SPAWNED_PID
	spawn "$b_ns" "r$n-b" "$LP_BIN" join "$code" --name b --state-dir "$db"
	pb=$SPAWNED_PID
	[[ $(wait_for "run $n direct" "$(now_s)" is_path "$da" "connected direct") != null ]] ||
		die "run $n: the pair did not connect direct"
	local vip
	vip=$(peer_field "$da" .virtual_ip)
	spawn "$a_ns" "r$n-ping" ping -D -n -i 0.2 -W 1 "$vip"
	local ping_pid=$SPAWNED_PID plog=$WORK/r$n-ping.log
	warm_up "$da"

	t0=$(now_s)
	faults_block_udp "$a_r" "$b_pub"
	F_OVER+=("$(wait_ping_after "$plog" "$t0")")
	wait_for "run $n relayed" "$t0" is_path "$da" "connected relayed" >/dev/null
	t0=$(now_s)
	faults_unblock "$a_r"
	F_BACK+=("$(wait_for "run $n fail-back" "$t0" is_path "$da" "connected direct")")
	log "run $n: failover ${F_OVER[-1]} s, fail-back ${F_BACK[-1]} s"

	t0=$(now_s)
	ip netns exec "$a_r" conntrack -F 2>/dev/null
	F_FLUSH+=("$(wait_ping_after "$plog" "$t0")")
	wait_for "run $n direct after flush" "$t0" is_path "$da" "connected direct" >/dev/null

	natlab_nft_rules port_restricted_cone "$a_host" |
		sed 's/oifname "wan" masquerade$/oifname "wan" meta l4proto udp masquerade to :20000\n        oifname "wan" masquerade/' \
			>"$WORK/r$n-remap.nft"
	grep -q 'to :20000$' "$WORK/r$n-remap.nft" || die "remap rules"
	t0=$(now_s)
	{ echo "flush ruleset"; cat "$WORK/r$n-remap.nft"; } | ip netns exec "$a_r" nft -f -
	ip netns exec "$a_r" conntrack -F 2>/dev/null
	F_REBIND+=("$(wait_ping_after "$plog" "$t0")")
	F_REDIRECT+=("$(wait_for "run $n direct after rebinding" "$t0" is_path "$da" "connected direct")")
	log "run $n: flush ${F_FLUSH[-1]} s, rebinding ${F_REBIND[-1]} s, direct again ${F_REDIRECT[-1]} s"

	t0=$(now_s)
	faults_delay_start "$a_ns" 300 "r$n-delay" || die "run $n: delay loop did not start"
	F_DEG+=("$(wait_for "run $n degraded" "$t0" is_state "$da" degraded)")
	t0=$(now_s)
	faults_delay_stop
	F_UNDEG+=("$(wait_for "run $n connected again" "$t0" is_state "$da" connected)")
	log "run $n: degraded after ${F_DEG[-1]} s, connected again after ${F_UNDEG[-1]} s"

	faults_block_udp "$a_r" "$b_pub"
	wait_for "run $n relayed" "$(now_s)" is_path "$da" "connected relayed" >/dev/null
	local relay i dead=
	relay=$(peer_field "$da" .relay)
	for i in 0 1; do [[ ${RLY_AT[$i]} == "$relay" ]] && dead=$i; done
	if [[ -z $dead ]]; then
		warn "run $n: relay in use '$relay' is not one of ours"
		F_RELAY+=(null)
	else
		t0=$(now_s)
		kill -KILL "${RLY_PID[$dead]}"
		F_RELAY+=("$(wait_ping_after "$plog" "$t0")")
		wait "${RLY_PID[$dead]}" 2>/dev/null || true
		start_relay "$dead"
	fi
	log "run $n: relay death ${F_RELAY[-1]} s"
	stop_pid "$ping_pid"
	stop_pid "$pa"
	stop_pid "$pb"
	natlab_del_site "$a_ns" "$a_r" "$b_ns" "$b_r"
}

host_busy=$(host_busy_pct 0.5)
for ((n = 0; n < RUNS; n++)); do
	log "run $((n + 1))/$RUNS"
	run_once "$n"
done

# --- idle wakeups ------------------------------------------------------------------------------

ctx_switches() {
	cat /proc/"$1"/task/*/status 2>/dev/null |
		awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}
NATLAB_NEXT_SITE=$((2 * RUNS))
natlab_add_site port_restricted_cone
i_a=$SITE_HOST_NS
natlab_add_site port_restricted_cone
i_b=$SITE_HOST_NS
code=$(ip netns exec "$SRV_NS" "$LP_BIN" create idle --control "$CONTROL" 2>/dev/null | tail -n 1)
spawn "$i_a" idle-a "$LP_BIN" join "$code" --name a --state-dir "$WORK/idle-a"
idle_pid=$SPAWNED_PID
spawn "$i_b" idle-b "$LP_BIN" join "$code" --name b --state-dir "$WORK/idle-b"
[[ $(wait_for "idle pair direct" "$(now_s)" is_path "$WORK/idle-a" "connected direct") != null ]] ||
	die "the idle pair did not connect"
sleep 5
c0=$(ctx_switches "$idle_pid")
sleep "$IDLE_S"
c1=$(ctx_switches "$idle_pid")
WAKEUPS=$(awk -v a="$c0" -v b="$c1" -v s="$IDLE_S" 'BEGIN { printf "%.2f", (b - a) / s }')

# --- report ------------------------------------------------------------------------------------

m_over=$(median "${F_OVER[@]}") m_back=$(median "${F_BACK[@]}") m_flush=$(median "${F_FLUSH[@]}")
m_rebind=$(median "${F_REBIND[@]}") m_deg=$(median "${F_DEG[@]}") m_undeg=$(median "${F_UNDEG[@]}")
m_relay=$(median "${F_RELAY[@]}") m_redirect=$(median "${F_REDIRECT[@]}")
row() { printf '%-34s %8s %8s   %s\n' "$1" "$(fmt 8 2 "$2")" "$3" "$4"; }
{
	printf '\nlanparty-lite failover, median of %s runs (host busy %s %% before)\n' "$RUNS" "$host_busy"
	printf '%-34s %8s %8s   %s\n' "figure" "median s" "target" "runs"
	row "failover (direct blackholed)" "$m_over" "3" "${F_OVER[*]}"
	row "fail-back (block lifted)" "$m_back" "30" "${F_BACK[*]}"
	row "relay death (other relay)" "$m_relay" "5" "${F_RELAY[*]}"
	row "rebinding (public port changed)" "$m_rebind" "5" "${F_REBIND[*]}"
	row "  ... direct again" "$m_redirect" "30" "${F_REDIRECT[*]}"
	row "conntrack -F" "$m_flush" "5" "${F_FLUSH[*]}"
	row "degraded detection (+300 ms)" "$m_deg" "-" "${F_DEG[*]}"
	row "back to connected (delay removed)" "$m_undeg" "-" "${F_UNDEG[*]}"
	printf '%-34s %8s %8s\n' "idle wakeups/s (one member)" "$WAKEUPS" "-"
} >&2

mkdir -p "$(dirname "$JSON_OUT")"
jq -n --argjson runs "$RUNS" --argjson idle_s "$IDLE_S" --argjson busy "$host_busy" \
	--argjson over "$(json_array "${F_OVER[@]}")" --argjson back "$(json_array "${F_BACK[@]}")" \
	--argjson relay "$(json_array "${F_RELAY[@]}")" --argjson rebind "$(json_array "${F_REBIND[@]}")" \
	--argjson flush "$(json_array "${F_FLUSH[@]}")" --argjson deg "$(json_array "${F_DEG[@]}")" \
	--argjson undeg "$(json_array "${F_UNDEG[@]}")" --argjson wakeups "$WAKEUPS" \
	--argjson m_over "$m_over" --argjson m_back "$m_back" --argjson m_relay "$m_relay" \
	--argjson m_rebind "$m_rebind" --argjson m_flush "$m_flush" --argjson m_deg "$m_deg" \
	--argjson m_undeg "$m_undeg" --argjson m_redirect "$m_redirect" \
	--argjson redirect "$(json_array "${F_REDIRECT[@]}")" \
	'{runs: $runs, host_busy_pct_before: $busy,
	  delay_method: "tun delay loop in the host (sch_netem unavailable on this kernel)",
	  seconds: {
	    failover: {median: $m_over, target: 3, runs: $over},
	    failback: {median: $m_back, target: 30, runs: $back},
	    relay_death: {median: $m_relay, target: 5, runs: $relay},
	    rebinding: {median: $m_rebind, target: 5, runs: $rebind},
	    rebinding_direct_again: {median: $m_redirect, target: 30, runs: $redirect},
	    conntrack_flush: {median: $m_flush, target: 5, runs: $flush},
	    degraded_detection: {median: $m_deg, runs: $deg},
	    degraded_recovery: {median: $m_undeg, runs: $undeg}},
	  idle_wakeups_per_s: $wakeups, idle_seconds: $idle_s}' >"$JSON_OUT"
log "wrote $JSON_OUT"
