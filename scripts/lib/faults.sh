# shellcheck shell=bash
# Fault injection for the NAT lab of scripts/lib/natlab.sh (the shell twin of NatLab::block_udp
# and NatLab::delay_egress in tests/natlab/mod.rs: same nftables table, same delay loop).
# Sourced, not executed. Needs bench-common.sh (spawn, stop_pid, wait_log) and WORK.

# faults_block_udp ROUTER_NS REMOTE_IP : drops UDP between the router's site and REMOTE_IP,
# both ways, in a table `ip faults` of its own, before the NAT firewall.
faults_block_udp() {
	ip netns exec "$1" nft -f - <<-EOF2
		table ip faults {
		    chain forward {
		        type filter hook forward priority filter - 10; policy accept;
		        ip saddr $2 meta l4proto udp drop
		        ip daddr $2 meta l4proto udp drop
		    }
		}
	EOF2
}

# faults_unblock ROUTER_NS : removes what faults_block_udp added.
faults_unblock() { ip netns exec "$1" nft delete table ip faults 2>/dev/null || true; }

# The delay loop (tests/natlab/mod.rs DELAY_TUN): a tun device that writes every packet it
# reads back MS milliseconds later. netem (sch_netem) is missing from some kernels.
FAULTS_DELAY_PY='
import fcntl, os, select, struct, sys, time
from collections import deque
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0001 | 0x1000))
delay = float(sys.argv[2]) / 1000.0
queue = deque()
print("ready", flush=True)
while True:
    timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
    if select.select([fd], [], [], timeout)[0]:
        queue.append((time.monotonic() + delay, os.read(fd, 65535)))
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        os.write(fd, queue.popleft()[1])
'

# faults_delay_start HOST_NS MS LOGNAME : delays everything HOST_NS sends to 203.0.113.0/24 by
# MS ms (policy routing through the tun `dly`; replies undelayed). Sets DELAY_PID; stopping
# that process removes the device, its route and the delay.
faults_delay_start() {
	local ns=$1
	spawn "$ns" "$3" python3 -c "$FAULTS_DELAY_PY" dly "$2"
	DELAY_PID=$SPAWNED_PID
	wait_log "$3" ready 10 "$DELAY_PID" || return 1
	ip -n "$ns" link set dly up
	ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
		net.ipv4.conf.dly.rp_filter=0 net.ipv4.conf.dly.accept_local=1
	ip -n "$ns" route replace 203.0.113.0/24 dev dly table 100
	ip -n "$ns" rule show pref 100 | grep -q 'lookup 100' ||
		ip -n "$ns" rule add iif lo lookup 100 pref 100
}

# faults_delay_stop : stops the delay loop of faults_delay_start.
faults_delay_stop() {
	[[ -n ${DELAY_PID:-} ]] && stop_pid "$DELAY_PID"
	DELAY_PID=
}

# ping_reply_after LOGFILE T0 : seconds from T0 (Unix time) to the first reply in a `ping -D`
# log whose request left more than 0.3 s after T0, or nothing.
ping_reply_after() {
	sed -n 's/^\[\([0-9.]*\)\] [0-9]* bytes from .*/\1/p' "$1" 2>/dev/null |
		awk -v t="$2" '$1 > t + 0.3 { printf "%.3f\n", $1 - t; exit }'
}
