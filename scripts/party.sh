#!/usr/bin/env bash
# Runs a real party on this machine: a small LAN of network namespaces (one bridge, N member
# hosts), one file-backed control plane, and a lanparty-lite member in each namespace with its
# own tun interface and WireGuard tunnels to the others. Shows status and pings every pair,
# then keeps the party up until Ctrl-C (or for PARTY_SECONDS seconds). Cleans up on exit.
#
# Usage (as root): bash scripts/party.sh [MEMBERS]      (default 3, at most 20)
# Try, while it runs:  ip netns exec <member-namespace> ping 10.66.0.2
set -euo pipefail
cd "$(dirname "$0")/.."

members=${1:-3}
[[ "$members" =~ ^[0-9]+$ ]] && ((members >= 2 && members <= 20)) || {
    echo "usage: $0 [MEMBERS]  (2 to 20)" >&2
    exit 2
}
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (network namespaces, tun); run as root" >&2; exit 1; }
bash scripts/deps.sh
cargo build --release --locked -q
# The default target is static musl (.cargo/config.toml).
bin=$PWD/target/x86_64-unknown-linux-musl/release/lanparty-lite

tag="lpp$$"
work=$(mktemp -d "/tmp/lanparty-party.XXXXXX")
pids=()
namespaces=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
    echo "party over; namespaces and processes removed"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# "The LAN": a bridge in its own namespace (a root-namespace bridge drops unicast between
# namespaces on these machines).
lan="$tag-lan"
ip netns add "$lan"; namespaces+=("$lan")
ip -n "$lan" link add br0 type bridge
ip -n "$lan" link set br0 up
for i in $(seq 1 "$members"); do
    ns="$tag-m$i"
    ip netns add "$ns"; namespaces+=("$ns")
    ip link add "$tag-v$i" type veth peer name eth0 netns "$ns"
    ip link set "$tag-v$i" netns "$lan"
    ip -n "$lan" link set "$tag-v$i" master br0 up
    ip -n "$ns" addr add "192.168.88.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done

code=$("$bin" create "game-night" --control "file:$work/registry.json" | tail -n 1)
echo "join code: $code"
for i in $(seq 1 "$members"); do
    ip netns exec "$tag-m$i" "$bin" join "$code" --name "player$i" --state-dir "$work/player$i" \
        >"$work/player$i.log" 2>&1 &
    pids+=("$!")
done

echo "waiting for tunnels..."
for i in $(seq 1 "$members"); do
    for j in $(seq 1 "$members"); do
        [ "$i" = "$j" ] && continue
        for _ in $(seq 1 50); do
            ip netns exec "$tag-m$i" ping -c 1 -W 1 "10.66.0.$j" >/dev/null 2>&1 && break
            sleep 0.2
        done
        if ip netns exec "$tag-m$i" ping -c 3 -i 0.2 -W 1 "10.66.0.$j" >"$work/ping" 2>&1; then
            echo "player$i -> player$j (10.66.0.$j): $(tail -n 1 "$work/ping")"
        else
            echo "player$i -> player$j (10.66.0.$j): FAILED; log:"; tail -n 5 "$work/player$i.log"
            exit 1
        fi
    done
done
echo
"$bin" status --state-dir "$work/player1"
echo
echo "members run in namespaces: $(printf '%s ' "${namespaces[@]:1}")"
echo "e.g.: ip netns exec $tag-m1 ping 10.66.0.2"
if [ -n "${PARTY_SECONDS:-}" ]; then
    sleep "$PARTY_SECONDS"
else
    echo "party is up; Ctrl-C to end it"
    wait "${pids[0]}" || true
fi
