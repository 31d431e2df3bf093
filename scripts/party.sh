#!/usr/bin/env bash
# Runs a real party on this machine: a small LAN of network namespaces (one bridge, N member
# hosts); player1 runs `lanparty-lite host` (the embedded control server, STUN and relay, and
# its own member), the others `join` with the code it prints; each has its own tun interface
# and WireGuard tunnels to the others. Pings every pair, shows LAN lobby discovery and status,
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
bin=$PWD/target/release/lanparty-lite

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

# player1 hosts: control server, STUN, relay and its own member in one process (`host`), with
# nothing else running; the others join with the code it prints.
ip netns exec "$tag-m1" "$bin" host "game-night" --listen 192.168.88.1:7777 --name player1 \
    --state-dir "$work/player1" --broadcast-route >"$work/player1.log" 2>&1 &
pids+=("$!")
code=
for _ in $(seq 1 100); do
    code=$(sed -n 's/^join code: //p' "$work/player1.log" 2>/dev/null | head -n 1)
    [ -n "$code" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.1
done
[ -n "$code" ] || { echo "the host did not start; log:"; cat "$work/player1.log"; exit 1; }
echo "join code: $code"
for i in $(seq 2 "$members"); do
    ip netns exec "$tag-m$i" "$bin" join "$code" --name "player$i" --state-dir "$work/player$i" \
        --broadcast-route >"$work/player$i.log" 2>&1 &
    pids+=("$!")
done

# Members join at once, so addresses are handed out in any order: read each one's.
vip=()
for i in $(seq 1 "$members"); do
    for _ in $(seq 1 100); do
        line=$(grep -m1 "^joined as " "$work/player$i.log" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "${pids[$((i - 1))]}" 2>/dev/null || break
        sleep 0.1
    done
    addr=$(sed -n 's/^joined as .* (\(.*\))$/\1/p' <<<"$line")
    [ -n "$addr" ] || { echo "player$i did not join; log:"; cat "$work/player$i.log"; exit 1; }
    vip[i]=$addr
done

echo "waiting for tunnels..."
for i in $(seq 1 "$members"); do
    for j in $(seq 1 "$members"); do
        [ "$i" = "$j" ] && continue
        for _ in $(seq 1 50); do
            ip netns exec "$tag-m$i" ping -c 1 -W 1 "${vip[j]}" >/dev/null 2>&1 && break
            sleep 0.2
        done
        if ip netns exec "$tag-m$i" ping -c 3 -i 0.2 -W 1 "${vip[j]}" >"$work/ping" 2>&1; then
            echo "player$i -> player$j (${vip[j]}): $(tail -n 1 "$work/ping")"
        else
            echo "player$i -> player$j (${vip[j]}): FAILED; log:"; tail -n 5 "$work/player$i.log"
            exit 1
        fi
    done
done
echo
echo "LAN game discovery: player1 hosts a lobby announced by broadcast, player2 looks for it"
ip netns exec "$tag-m1" python3 scripts/lan-lobby.py host "friday-ctf" >"$work/lobby.log" 2>&1 &
pids+=("$!")
if ! ip netns exec "$tag-m2" python3 scripts/lan-lobby.py client --wait 10 --player player2; then
    echo "lobby discovery FAILED; host log:"; cat "$work/lobby.log"
    exit 1
fi
echo
"$bin" status --state-dir "$work/player1"
echo
echo "members run in namespaces: $(printf '%s ' "${namespaces[@]:1}")"
echo "e.g.: ip netns exec $tag-m1 ping ${vip[2]}"
if [ -n "${PARTY_SECONDS:-}" ]; then
    sleep "$PARTY_SECONDS"
else
    echo "party is up; Ctrl-C to end it"
    wait "${pids[0]}" || true
fi
