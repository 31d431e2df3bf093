# shellcheck shell=bash
# Helpers for scripts/bench.sh: logging, tracked processes and namespaces, /proc readings,
# ping/iperf3 parsing and small numeric utilities. Sourced, not executed.
#
# Expects these globals from the caller: WORK (private temp dir), PIDS_FILE, NETNS_FILE.

# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	printf '[bench %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
	exit 1
}

# ---------------------------------------------------------------------------------------------
# Tracked processes and namespaces (everything we start is listed, so cleanup can undo it)
# ---------------------------------------------------------------------------------------------

# spawn NS LOGNAME CMD... : runs CMD inside namespace NS in the background, output to
# $WORK/LOGNAME.log. `ip netns exec` execs CMD, so the PID is CMD's own. Sets SPAWNED_PID.
SPAWNED_PID=
spawn() {
	local ns=$1 logname=$2
	shift 2
	ip netns exec "$ns" "$@" >"$WORK/$logname.log" 2>&1 &
	SPAWNED_PID=$!
	# Record "PID starttime" (start time survives exec, unlike comm) so cleanup only ever signals
	# the very process we started, even if the PID were reused.
	printf '%s %s\n' "$SPAWNED_PID" "$(start_time "$SPAWNED_PID")" >>"$PIDS_FILE"
}

# alive PID : true if PID is still running (and not a zombie).
alive() {
	[[ -r /proc/$1/stat ]] || return 1
	local state
	state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ $state != Z && $state != X ]]
}

# stop_pid PID : SIGTERM, wait up to 5 s, then SIGKILL.
stop_pid() {
	local pid=$1 i
	alive "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		warn "PID $pid ignored SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

# start_time PID : the process start time (field 22 of /proc/PID/stat), or "gone".
start_time() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
		echo gone
		return
	}
	stat=${stat##*) }
	awk '{ print $20 }' <<<"$stat"
}

# stop_tracked : stops every process listed in PIDS_FILE that is still the same process
# (same start time), newest first, then empties the list.
stop_tracked() {
	[[ -s $PIDS_FILE ]] || return 0
	local pid started
	while read -r pid started; do
		[[ -n $pid ]] || continue
		if alive "$pid" && [[ "$(start_time "$pid")" == "$started" ]]; then
			stop_pid "$pid"
		fi
	done < <(tac "$PIDS_FILE")
	: >"$PIDS_FILE"
}

# make_netns NAME : creates a namespace with loopback up and records it for cleanup.
make_netns() {
	ip netns add "$1"
	printf '%s\n' "$1" >>"$NETNS_FILE"
	ip -n "$1" link set lo up
}

# delete_tracked_netns : deletes every namespace we created, then empties the list.
delete_tracked_netns() {
	[[ -s $NETNS_FILE ]] || return 0
	local ns
	while read -r ns; do
		[[ -n $ns ]] || continue
		if [[ -e /run/netns/$ns ]]; then
			ip netns del "$ns" 2>/dev/null || [[ ! -e /run/netns/$ns ]] || warn "could not delete namespace $ns"
		fi
	done <"$NETNS_FILE"
	: >"$NETNS_FILE"
}

# ---------------------------------------------------------------------------------------------
# /proc readings
# ---------------------------------------------------------------------------------------------

# shellcheck disable=SC2034 # used by bench.sh
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID : utime+stime of the whole process (all threads), in clock ticks. Drops
# "pid (comm) " first (comm may contain spaces); utime/stime are then fields 12/13.
cpu_ticks() {
	local stat
	stat=$(cat "/proc/$1/stat")
	stat=${stat##*) }
	awk '{ print $12 + $13 }' <<<"$stat"
}

# host_busy_pct SECONDS : share of all CPUs not idle over SECONDS (to spot other load on the
# machine, which skews every figure here).
host_busy_pct() {
	local a b
	a=$(head -1 /proc/stat)
	sleep "$1"
	b=$(head -1 /proc/stat)
	awk -v a="$a" -v b="$b" 'BEGIN {
		# user nice system idle iowait irq softirq steal (guest time is already in user)
		split(a, x, " "); split(b, y, " ")
		for (i = 2; i <= 9; i++) { d = y[i] - x[i]; total += d; if (i == 5 || i == 6) idle += d }
		printf "%.1f\n", (total > 0) ? 100 * (total - idle) / total : 0
	}'
}

# status_kib PID FIELD : a kB field of /proc/PID/status (VmRSS, VmHWM), or null.
status_kib() {
	awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print "null" }' \
		"/proc/$1/status" 2>/dev/null || echo null
}

# now_s : monotonic-enough wall clock in seconds with fractions.
now_s() { date +%s.%N; }

# ---------------------------------------------------------------------------------------------
# Network measurements
# ---------------------------------------------------------------------------------------------

# wait_ping NS TARGET TIMEOUT_S : pings once a second until TARGET answers.
wait_ping() {
	local ns=$1 target=$2 timeout=$3 start=$SECONDS
	while ((SECONDS - start < timeout)); do
		if ip netns exec "$ns" ping -n -q -c 1 -W 1 "$target" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.2
	done
	return 1
}

# ping_stats NS TARGET COUNT : COUNT pings at 0.1 s; prints "AVG_MS LOSS_PCT MEDIAN_MS" (AVG and
# MEDIAN null if nothing came back; MEDIAN is the median of the replies' RTTs).
ping_stats() {
	local ns=$1 target=$2 count=$3 logname=ping-$BASHPID out
	# Tracked like the daemons, so an interrupted run does not leave it pinging.
	spawn "$ns" "$logname" ping -n -c "$count" -i 0.1 -W 1 -w "$((count / 10 + 10))" "$target"
	wait "$SPAWNED_PID" || true
	out=$(cat "$WORK/$logname.log")
	rm -f "$WORK/$logname.log"
	local median
	median=$(median $(sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' <<<"$out"))
	awk -v median="$median" '
		/packet loss/ { for (i = 1; i <= NF; i++) if ($i ~ /%$/) { loss = $i; sub(/%/, "", loss) } }
		/^rtt|^round-trip/ { split($4, v, "/"); avg = v[2] }
		END { printf "%s %s %s\n", (avg == "" ? "null" : avg), (loss == "" ? "null" : loss), median }
	' <<<"$out"
}

# wait_tcp_listen NS PORT TIMEOUT_S : waits until something listens on TCP PORT inside NS.
wait_tcp_listen() {
	local ns=$1 port=$2 timeout=$3 start=$SECONDS
	while ((SECONDS - start < timeout)); do
		if ip netns exec "$ns" ss -Htln "sport = :$port" | grep -q .; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

# median VALUES... : median of the non-null values, or null.
median() {
	printf '%s\n' "$@" | grep -v -e '^null$' -e '^$' | sort -g | awk '
		{ a[NR] = $1 }
		END {
			if (NR == 0) print "null"
			else if (NR % 2) print a[(NR + 1) / 2]
			else print (a[NR / 2] + a[NR / 2 + 1]) / 2
		}'
}

# calc EXPR VARS... : evaluates an awk expression over named numbers (name=value); prints null
# if any value is null. Example: calc 'a / b' a=3 b=2
calc() {
	local expr=$1 arg
	shift
	local -a assigns=()
	for arg in "$@"; do
		[[ ${arg#*=} == null || -z ${arg#*=} ]] && {
			echo null
			return
		}
		assigns+=(-v "$arg")
	done
	awk "${assigns[@]}" "BEGIN { v = $expr; printf \"%.6g\n\", v }"
}

# json_array VALUES... : a JSON array of numbers/nulls.
json_array() {
	local IFS=,
	printf '[%s]\n' "$*"
}

# fmt WIDTH DECIMALS VALUE : right-aligned number, or "-" for null.
fmt() {
	if [[ $3 == null || -z $3 ]]; then
		printf "%${1}s" "-"
	else
		printf "%${1}.${2}f" "$3"
	fi
}

# ---------------------------------------------------------------------------------------------
# More helpers (added for scripts/bench-nat.sh; general enough for the other benchmarks)
# ---------------------------------------------------------------------------------------------

# wait_log LOGNAME PATTERN TIMEOUT_S [PID] : waits until $WORK/LOGNAME.log has a line matching
# the extended regex PATTERN; fails early if PID (the writer) exits.
wait_log() {
	local file=$WORK/$1.log pattern=$2 timeout=$3 pid=${4:-} start=$SECONDS
	while ((SECONDS - start < timeout)); do
		grep -Eq -- "$pattern" "$file" 2>/dev/null && return 0
		[[ -n $pid ]] && ! alive "$pid" && return 1
		sleep 0.1
	done
	return 1
}

# elapsed_s T0 T1 : T1 - T0 in seconds (3 decimals); null if either is empty or null.
elapsed_s() {
	[[ -n $1 && $1 != null && -n $2 && $2 != null ]] || {
		echo null
		return
	}
	awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'
}

# first_ping_reply LOGFILE : the timestamp of the first reply in the output of `ping -D`, or
# nothing.
first_ping_reply() {
	sed -n 's/^\[\([0-9.]*\)\] [0-9]* bytes from .*/\1/p' "$1" 2>/dev/null | head -n 1
}

# iperf3_tcp CLIENT_NS SERVER_NS TARGET SECONDS LOGNAME : one iperf3 TCP run from CLIENT_NS to
# TARGET (a server started in SERVER_NS on port 5201 for this run); prints "MBIT_S RETRANSMITS"
# (null null when it failed). Both processes are tracked.
iperf3_tcp() {
	local cns=$1 sns=$2 target=$3 secs=$4 logname=$5 server out
	spawn "$sns" "$logname-server" iperf3 -s -1 -p 5201
	server=$SPAWNED_PID
	if ! wait_tcp_listen "$sns" 5201 10; then
		stop_pid "$server"
		echo null null
		return
	fi
	spawn "$cns" "$logname" iperf3 -c "$target" -p 5201 -t "$secs" -J
	wait "$SPAWNED_PID" || true
	stop_pid "$server"
	out=$WORK/$logname.log
	jq -r '[(.end.sum_received.bits_per_second // null | if . then . / 1e6 else null end),
		(.end.sum_sent.retransmits // null)] | map(tostring) | join(" ")' "$out" 2>/dev/null ||
		echo null null
}
