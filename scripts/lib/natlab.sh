# shellcheck shell=bash
# The NAT lab in bash: an "internet" bridge, hosts on it, and sites behind Linux routers that
# reproduce the NAT behaviours of RFC 4787 with nftables. Sourced, not executed.
#
# This is a port of tests/natlab/mod.rs, which is the reference: same topology, same address
# plan, same nftables text per NAT kind (natlab_nft_rules is nft_rules there, line for line),
# same router sysctl and `conntrack -F` after loading. Change both together.
#
#   <base>-inet: bridge br0 = "the internet", 203.0.113.0/24 (only inside the lab)
#    │ port <tag>            │ port r<i>                          │ port s<i>
#   <base>-<tag>            <base>-r<i> (router of site i)       <base>-h<i> (site i, no NAT)
#   internet host           wan 203.0.113.(101+i)/24             eth0 203.0.113.(101+i)/24
#   eth0 203.0.113.N/24     lan 192.168.(i+1).1/24
#   (+ a second address)     │ veth
#                           <base>-h<i> (the host of site i)
#                           eth0 192.168.(i+1).2/24, default via 192.168.(i+1).1
#
# Kinds (names as `status` reports self.nat_type): open (no router), full_cone,
# restricted_cone, port_restricted_cone, symmetric. Every router has the WAN firewall of a home
# router (drops unsolicited inbound), see tests/natlab/mod.rs for the table of behaviours.
#
# Needs bench-common.sh (make_netns, which records namespaces for cleanup), nft, conntrack.

NATLAB_KINDS=(open full_cone restricted_cone port_restricted_cone symmetric)
NATLAB_CONE_TIMEOUT=2m

# natlab_new BASE : creates namespace BASE-inet with the bridge br0 (the internet).
natlab_new() {
	NATLAB_BASE=$1
	NATLAB_INET=$1-inet
	NATLAB_NEXT_HOST=1
	NATLAB_NEXT_SITE=0
	NATLAB_DIR=${WORK:?}/natlab
	mkdir -p "$NATLAB_DIR"
	make_netns "$NATLAB_INET"
	ip -n "$NATLAB_INET" link add br0 type bridge
	ip -n "$NATLAB_INET" link set br0 up
}

# natlab_plug PORT NS : veth from the internet bridge (port PORT) to eth0 in NS, both up.
natlab_plug() {
	ip -n "$NATLAB_INET" link add name "$1" type veth peer name eth0 netns "$2"
	ip -n "$NATLAB_INET" link set dev "$1" master br0 up
	ip -n "$2" link set eth0 up
}

# natlab_add_internet_host TAG N : host BASE-TAG on the internet with N (1 or 2) consecutive
# addresses 203.0.113.K… Sets HOST_NS and HOST_IPS (array).
natlab_add_internet_host() {
	local tag=$1 n=$2 k
	((n >= 1 && n <= 2)) || die "natlab: 1 or 2 addresses, not $n"
	((${#tag} <= 15)) && [[ $tag != br0 && ! $tag =~ ^[rs][0-9]+$ ]] ||
		die "natlab: host tag $tag must be at most 15 bytes and not clash with site ports"
	((NATLAB_NEXT_HOST + n - 1 < 101)) || die "natlab: too many internet hosts"
	HOST_NS=$NATLAB_BASE-$tag
	HOST_IPS=()
	make_netns "$HOST_NS"
	natlab_plug "$tag" "$HOST_NS"
	for ((k = 0; k < n; k++)); do
		HOST_IPS+=("203.0.113.$((NATLAB_NEXT_HOST + k))")
		ip -n "$HOST_NS" addr add "${HOST_IPS[-1]}/24" dev eth0
	done
	NATLAB_NEXT_HOST=$((NATLAB_NEXT_HOST + n))
}

# natlab_add_site KIND : site i (the next number) of KIND. Sets SITE_INDEX, SITE_HOST_NS,
# SITE_ROUTER_NS (empty when open), SITE_HOST_IP, SITE_PUBLIC_IP.
natlab_add_site() {
	local kind=$1 i=$NATLAB_NEXT_SITE
	((i <= 153)) || die "natlab: too many sites"
	NATLAB_NEXT_SITE=$((i + 1))
	SITE_INDEX=$i
	SITE_PUBLIC_IP=203.0.113.$((101 + i))
	SITE_HOST_NS=$NATLAB_BASE-h$i
	if [[ $kind == open ]]; then
		SITE_ROUTER_NS=
		SITE_HOST_IP=$SITE_PUBLIC_IP
		make_netns "$SITE_HOST_NS"
		natlab_plug "s$i" "$SITE_HOST_NS"
		ip -n "$SITE_HOST_NS" addr add "$SITE_PUBLIC_IP/24" dev eth0
		return
	fi
	local gw=192.168.$((i + 1)).1 r=$NATLAB_BASE-r$i h=$SITE_HOST_NS
	SITE_ROUTER_NS=$r
	SITE_HOST_IP=192.168.$((i + 1)).2
	make_netns "$r"
	make_netns "$h"
	ip -n "$NATLAB_INET" link add name "r$i" type veth peer name wan netns "$r"
	ip -n "$NATLAB_INET" link set dev "r$i" master br0 up
	ip -n "$r" addr add "$SITE_PUBLIC_IP/24" dev wan
	ip -n "$r" link set wan up
	ip -n "$r" link add lan type veth peer name eth0 netns "$h"
	ip -n "$r" addr add "$gw/24" dev lan
	ip -n "$r" link set lan up
	ip -n "$h" addr add "$SITE_HOST_IP/24" dev eth0
	ip -n "$h" link set eth0 up
	ip -n "$h" route add default via "$gw"
	ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
	natlab_nft_rules "$kind" "$SITE_HOST_IP" >"$NATLAB_DIR/r$i.nft"
	ip netns exec "$r" nft -f "$NATLAB_DIR/r$i.nft"
	ip netns exec "$r" conntrack -F 2>/dev/null
}

# natlab_del_site HOST_NS ROUTER_NS : deletes a site's namespaces (its veths go with them).
natlab_del_site() {
	local ns
	for ns in "$@"; do
		[[ -n $ns && -e /run/netns/$ns ]] && ip netns del "$ns"
	done
	return 0
}

# natlab_nft_rules KIND HOST_IP : the ruleset a router of KIND loads for a host at HOST_IP on
# its `lan` (tests/natlab/mod.rs nft_rules, byte for byte).
natlab_nft_rules() {
	local kind=$1 host=$2 masquerade key_type= learn= lookup=
	case $kind in
	symmetric) masquerade="masquerade fully-random" ;;
	full_cone | restricted_cone | port_restricted_cone) masquerade=masquerade ;;
	*) die "natlab: no router for kind $kind" ;;
	esac
	case $kind in
	full_cone) key_type="inet_service" learn="udp sport" lookup="udp dport" ;;
	restricted_cone)
		key_type="ipv4_addr . inet_service" learn="ip daddr . udp sport" lookup="ip saddr . udp dport"
		;;
	esac
	echo "table ip natlab {"
	if [[ -n $key_type ]]; then
		printf '    map cone {\n        type %s : inet_service\n        flags timeout\n        timeout %s\n    }\n' \
			"$key_type" "$NATLAB_CONE_TIMEOUT"
	fi
	printf '    chain prerouting {\n        type nat hook prerouting priority dstnat; policy accept;\n'
	if [[ -n $key_type ]]; then
		printf '        iifname "wan" meta l4proto udp dnat to %s : %s map @cone\n' "$host" "$lookup"
	fi
	printf '    }\n'
	printf '    chain postrouting {\n        type nat hook postrouting priority srcnat; policy accept;\n        oifname "wan" %s\n    }\n' \
		"$masquerade"
	if [[ -n $key_type ]]; then
		printf '    chain learn {\n        type filter hook postrouting priority srcnat + 10; policy accept;\n'
		printf '        oifname "wan" meta l4proto udp ct direction original update @cone { %s : ct original proto-src }\n' "$learn"
		printf '        oifname "wan" meta l4proto udp ct direction reply update @cone { %s : ct reply proto-src }\n    }\n' "$learn"
	fi
	printf '    chain forward {\n        type filter hook forward priority filter; policy drop;\n        ct state established,related accept\n        iifname "lan" oifname "wan" accept\n'
	if [[ -n $key_type ]]; then
		printf '        iifname "wan" oifname "lan" ct status dnat accept\n'
	fi
	printf '    }\n'
	printf '    chain input {\n        type filter hook input priority filter; policy drop;\n        iifname "lo" accept\n        ct state established,related accept\n        iifname "lan" accept\n    }\n'
	echo "}"
}

# natlab_punchable KIND_A KIND_B : true if simultaneous punching gets through between the two
# kinds, as measured in the lab: all pairs but port_restricted_cone↔symmetric and
# symmetric↔symmetric (NatKind::punchable_with).
natlab_punchable() {
	case "$1:$2" in
	port_restricted_cone:symmetric | symmetric:port_restricted_cone | symmetric:symmetric) return 1 ;;
	esac
	return 0
}
