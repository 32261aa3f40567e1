#!/usr/bin/env bash
# gatecast test bed: a real multi-host network built from Linux network namespaces.
#
#   subnet A (10.200.1.0/24, fd00:200:1::/64)       subnet B (10.200.2.0/24, fd00:200:2::/64)
#   PREFIX-src .10 --+                               +-- PREFIX-rx1 .11
#   PREFIX-rta .21 --+  (a retransmit server upstream of the router)
#                    |-- brA [PREFIX-sw] brB ---------|-- PREFIX-rx2 .12
#   PREFIX-rtr .1  --+        (no snooping)           +-- PREFIX-rtr .1 (eth1)
#                                                    +-- PREFIX-rt1 .21, rt2 .22, rt3 .23
#                                                    +-- PREFIX-rep .31
#   (eth0)           PREFIX-rtr forwards multicast A -> B with a real smcrouted
#                    ((*,G) templates: 239.0.0.0/8, 232.0.0.0/8 (SSM), ff3e::/16), or, where the
#                    kernel cannot route multicast (no CONFIG_IP_MROUTE), forwards the same groups
#                    in the kernel with nftables netdev rules (TTL lowered, TTL 1 stays).
#                    GATECAST_TESTBED_ROUTER=smcroute|nftables chooses (default auto).
#
# Every host's interface on its subnet is eth0 (the router has eth0 on A and eth1 on B).
# Usage:
#   testbed.sh up PREFIX               build it (PREFIX: short, unique per run, e.g. gc1a2b)
#   testbed.sh down PREFIX             tear it down (idempotent; kills smcrouted by its pid)
#   testbed.sh loss PREFIX HOST PCT [PORT]   drop PCT % of UDP arriving at HOST (port optional)
#   testbed.sh drop PREFIX HOST on|off [PORT] drop all UDP arriving at HOST (bursts: switch it)
#       PORT may be written PORT/data: then only gatecast DATA packets (type byte 1) are dropped
#   testbed.sh limit PREFIX HOST PPS   drop UDP arriving at HOST on eth0 beyond PPS a second (a slow edge)
#   testbed.sh dropped PREFIX HOST     packets dropped at HOST so far by loss and drop rules
#   testbed.sh linkloss PREFIX PCT PORT  drop PCT % of UDP to PORT that the router forwards to
#                                      subnet B: every host there loses the same packets
#   testbed.sh linkdropped PREFIX      packets that rule dropped
#   testbed.sh clear PREFIX HOST       remove HOST's loss rules
#   testbed.sh translated PREFIX HOST  raw S1 datagrams the translate rule dropped at HOST
#   testbed.sh status PREFIX HOST URL  fetch a role's status endpoint from inside HOST
#   testbed.sh translate PREFIX HOST PORT   at a host with the agent: drop S1 datagrams to PORT
#                                      that do not come from the host itself (the agent's copies do)
#   testbed.sh rate PREFIX HOST RATE   shape HOST's eth0 egress with tbf (e.g. 50mbit)
#   testbed.sh route PREFIX GROUP      add a (*,G) route A -> B on the running smcrouted
#   testbed.sh routes PREFIX           show smcrouted's routes (or the nftables forwarding chain)
# Needs root, iproute2, nftables and smcroute (smcroute only where the kernel routes multicast).
set -euo pipefail

die() { echo "testbed: $*" >&2; exit 2; }
[[ $# -ge 2 ]] || die "usage: testbed.sh up|down|loss|drop|clear|rate|route|routes PREFIX ..."
command=$1
prefix=$2
shift 2
[[ $prefix =~ ^[a-z0-9]{2,8}$ ]] || die "PREFIX must be 2-8 lower-case letters or digits: $prefix"
state=${TMPDIR:-/tmp}/gatecast-testbed-$prefix
sw=$prefix-sw
hosts=(src rta rtr rx1 rx2 rt1 rt2 rt3 rep)

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# The nft match that picks PCT % of packets at random: none for 100 (every packet; nft's numgen
# takes no "< 100"), "< 0" (no packet) for 0. PCT is checked 0-100 before.
chance() {
  if (($1 >= 100)); then echo ""; else echo "numgen random mod 100 < $1"; fi
}
# A percentage argument in base 10 (08 is 8), 0-100, or death naming it.
percent() {
  [[ $1 =~ ^[0-9]{1,3}$ ]] && ((10#$1 <= 100)) || die "$2: PCT is a percentage, 0-100: $1"
  echo $((10#$1))
}

# Creates a veth pair: one end named PORT on BRIDGE in the switch, the other IFNAME in host NS.
attach() {
  local ns=$1 ifname=$2 port=$3 bridge=$4
  ip -n "$sw" link add "$port" type veth peer name "$ifname" netns "$ns"
  ip -n "$sw" link set "$port" master "$bridge" up
  ip -n "$ns" link set "$ifname" up
}

address() {
  local ns=$1 ifname=$2 v4=$3 v6=$4
  ip -n "$ns" addr add "$v4" dev "$ifname"
  ip -n "$ns" -6 addr add "$v6" dev "$ifname" nodad
}

up() {
  # The router is chosen before anything is built, and a bed that fails half-way is taken down.
  local router=${GATECAST_TESTBED_ROUTER:-auto}
  case $router in
    auto) if kernel_routes_multicast; then router=smcroute; else router=nftables; fi ;;
    smcroute) kernel_routes_multicast || die "GATECAST_TESTBED_ROUTER=smcroute, but $(no_mroute_reason)" ;;
    nftables) ;;
    *) die "GATECAST_TESTBED_ROUTER must be auto, smcroute or nftables: $router" ;;
  esac
  trap 'status=$?; if [[ $status -ne 0 ]]; then down; fi' EXIT
  mkdir -p "$state"
  ip netns add "$sw"
  for host in "${hosts[@]}"; do
    ip netns add "$prefix-$host"
    ip -n "$prefix-$host" link set lo up multicast on
    # Room for 4 MiB socket buffers, as the roles ask (per namespace on current kernels).
    in_ns "$prefix-$host" sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true
  done
  for bridge in brA brB; do
    ip -n "$sw" link add "$bridge" type bridge mcast_snooping 0
    ip -n "$sw" link set "$bridge" up
  done
  attach "$prefix-src" eth0 src0 brA
  attach "$prefix-rta" eth0 rta0 brA
  attach "$prefix-rtr" eth0 rtr0 brA
  attach "$prefix-rtr" eth1 rtr1 brB
  attach "$prefix-rx1" eth0 rx1 brB
  attach "$prefix-rx2" eth0 rx2 brB
  attach "$prefix-rt1" eth0 rt1 brB
  attach "$prefix-rt2" eth0 rt2 brB
  attach "$prefix-rt3" eth0 rt3 brB
  attach "$prefix-rep" eth0 rep brB
  address "$prefix-src" eth0 10.200.1.10/24 fd00:200:1::10/64
  address "$prefix-rta" eth0 10.200.1.21/24 fd00:200:1::21/64
  address "$prefix-rtr" eth0 10.200.1.1/24 fd00:200:1::1/64
  address "$prefix-rtr" eth1 10.200.2.1/24 fd00:200:2::1/64
  address "$prefix-rx1" eth0 10.200.2.11/24 fd00:200:2::11/64
  address "$prefix-rx2" eth0 10.200.2.12/24 fd00:200:2::12/64
  address "$prefix-rt1" eth0 10.200.2.21/24 fd00:200:2::21/64
  address "$prefix-rt2" eth0 10.200.2.22/24 fd00:200:2::22/64
  address "$prefix-rt3" eth0 10.200.2.23/24 fd00:200:2::23/64
  address "$prefix-rep" eth0 10.200.2.31/24 fd00:200:2::31/64
  for host in src rta; do
    ip -n "$prefix-$host" route add default via 10.200.1.1
    ip -n "$prefix-$host" -6 route add default via fd00:200:1::1
  done
  for host in rx1 rx2 rt1 rt2 rt3 rep; do
    ip -n "$prefix-$host" route add default via 10.200.2.1
    ip -n "$prefix-$host" -6 route add default via fd00:200:2::1
  done
  in_ns "$prefix-rtr" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  case $router in
    smcroute) start_smcrouted ;;
    nftables) start_nft_forwarding ;;
  esac
  echo "$router" >"$state/router"
  trap - EXIT
}

# The kernel's multicast routing (CONFIG_IP_MROUTE, CONFIG_IPV6_MROUTE), which smcrouted drives.
kernel_routes_multicast() { [[ -e /proc/net/ip_mr_vif && -e /proc/net/ip6_mr_vif ]]; }
no_mroute_reason() {
  echo "this kernel cannot route multicast (no /proc/net/ip_mr_vif or ip6_mr_vif: built without" \
    "CONFIG_IP_MROUTE / CONFIG_IPV6_MROUTE)"
}

start_smcrouted() {
  cat >"$state/smcroute.conf" <<CONF
phyint eth0 enable
phyint eth1 enable
mroute from eth0 group 239.0.0.0/8 to eth1
mroute from eth0 group 232.0.0.0/8 to eth1
mroute from eth0 group ff3e::/16 to eth1
CONF
  in_ns "$prefix-rtr" smcrouted -n -N -f "$state/smcroute.conf" -i "gc-$prefix" -u "$state/smcroute.sock" \
    -P "$state/smcroute.pid" -l info >"$state/smcroute.log" 2>&1 &
  echo $! >"$state/smcrouted.pid"
  for _ in $(seq 1 50); do
    [[ -S $state/smcroute.sock ]] && break
    sleep 0.1
  done
  [[ -S $state/smcroute.sock ]] || { cat "$state/smcroute.log" >&2; die "smcrouted did not start"; }
  echo "testbed $prefix up: hosts ${hosts[*]/#/$prefix-}, router smcrouted pid $(cat "$state/smcrouted.pid")"
}

# Where the kernel cannot route multicast, the router forwards the same groups in the kernel with
# nftables: a netdev ingress hook on eth0 sends a copy of each frame to 239.0.0.0/8, 232.0.0.0/8 or
# ff3e::/16 out of eth1, its TTL (hop limit) lowered by one as a router does (the frame itself
# goes on with the TTL it came with); a datagram that
# arrives with a TTL of 1 is not forwarded. The source address stays the sender's, so
# source-specific joins work as across smcrouted. Chain linkloss holds the linkloss rules.
start_nft_forwarding() {
  local rules=$state/forward.nft family field hop
  {
    echo "table netdev gcforward {"
    echo "  chain linkloss { }"
    for family in 4 6; do
      if [[ $family == 4 ]]; then field="ip ttl"; else field="ip6 hoplimit"; fi
      printf '  chain hop%s {\n    %s vmap {' "$family" "$field"
      for hop in $(seq 2 255); do printf ' %d : jump hop%s_%d%s' "$hop" "$family" "$hop" "$([[ $hop -lt 255 ]] && echo ,)"; done
      printf ' }\n  }\n'
      for hop in $(seq 2 255); do echo "  chain hop${family}_$hop { $field set $((hop - 1)) dup to eth1 $field set $hop; }"; done
    done
    echo "  chain ingress {"
    echo "    type filter hook ingress device eth0 priority 0; policy accept;"
    echo "    meta pkttype != multicast accept"
    echo "    jump linkloss"
    echo "    ip daddr { 239.0.0.0/8, 232.0.0.0/8 } goto hop4"
    echo "    ip6 daddr ff3e::/16 goto hop6"
    echo "  }"
    echo "}"
  } >"$rules"
  in_ns "$prefix-rtr" nft -f "$rules" || die "the nftables forwarding of $prefix-rtr did not load ($rules)"
  echo "testbed $prefix up: hosts ${hosts[*]/#/$prefix-}, router: nftables forwarding ($(no_mroute_reason))"
}

down() {
  if [[ -f $state/smcrouted.pid ]]; then
    local pid
    pid=$(cat "$state/smcrouted.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  for ns in "$sw" "${hosts[@]/#/$prefix-}"; do
    # End whatever a test left running inside the host, by pid, then delete the namespace.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  rm -rf "$state"
}

ensure_loss_table() {
  local ns=$1
  in_ns "$ns" nft list table inet gcloss >/dev/null 2>&1 && return
  in_ns "$ns" nft add table inet gcloss
  # A named counter outlives the burst rules that are added and deleted again.
  in_ns "$ns" nft add counter inet gcloss dropped
  in_ns "$ns" nft add chain inet gcloss input '{ type filter hook input priority 0; }'
}

# Match for a port argument: empty (all UDP), PORT, PORT/data (gatecast DATA packets only:
# the type byte is the fourth byte of the UDP payload, docs/protocol.md), or PORT/data/FIRST-LAST
# (DATA packets whose sequence, the 32 bits at payload byte 12, is in FIRST-LAST: a stretch of a
# session lost by its sequences, whatever the pace at which a loaded host reads them).
# A UDP port, 1-65535, in base 10 (05000 is 5000), or death naming it.
udp_port() {
  [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)) || die "PORT must be 1-65535: $1"
  echo $((10#$1))
}

port_match() {
  local spec=${1:-} port
  if [[ -z $spec ]]; then
    echo "meta l4proto udp"
  elif [[ $spec =~ ^([0-9]+)/data/([0-9]+)-([0-9]+)$ ]]; then
    port=$(udp_port "${BASH_REMATCH[1]}") || exit 2
    echo "udp dport $port @ih,24,8 1 @ih,96,32 ${BASH_REMATCH[2]}-${BASH_REMATCH[3]}"
  elif [[ $spec =~ ^([0-9]+)/data$ ]]; then
    port=$(udp_port "${BASH_REMATCH[1]}") || exit 2
    echo "udp dport $port @ih,24,8 1"
  elif [[ $spec =~ ^[0-9]+$ ]]; then
    port=$(udp_port "$spec") || exit 2
    echo "udp dport $port"
  else
    die "PORT must be a number, NUMBER/data or NUMBER/data/FIRST-LAST: $spec"
  fi
}

# The bed's router: smcroute or nftables (see up).
router_of() { cat "$state/router" 2>/dev/null || echo smcroute; }

case $command in
  up) up ;;
  down) down ;;
  loss)
    [[ $# -ge 2 && $# -le 3 ]] || die "usage: testbed.sh loss PREFIX HOST PCT [PORT]"
    ns=$prefix-$1
    pct=$(percent "$2" loss)
    match=$(port_match "${3:-}")
    ensure_loss_table "$ns"
    # shellcheck disable=SC2086
    in_ns "$ns" nft add rule inet gcloss input $match $(chance "$pct") counter name dropped drop
    ;;
  drop)
    [[ $# -ge 2 ]] || die "usage: testbed.sh drop PREFIX HOST on|off [PORT]"
    ns=$prefix-$1
    match=$(port_match "${3:-}")
    ensure_loss_table "$ns"
    if [[ $2 == on ]]; then
      # shellcheck disable=SC2086
      in_ns "$ns" nft add rule inet gcloss input $match counter name dropped drop comment '"burst"'
    else
      handle=$(in_ns "$ns" nft -a list chain inet gcloss input | sed -n 's/.*comment "burst" # handle \([0-9]*\).*/\1/p' | head -1)
      [[ -z $handle ]] || in_ns "$ns" nft delete rule inet gcloss input handle "$handle"
    fi
    ;;
  limit)
    # A slow edge: UDP datagrams arriving on eth0 beyond PPS a second (bursts of a tenth of a
    # second) are dropped, DATA and REPAIR alike, as at a link or host that cannot keep up.
    [[ $# -ge 2 ]] || die "usage: testbed.sh limit PREFIX HOST PPS"
    ns=$prefix-$1
    [[ $2 =~ ^[0-9]+$ && $2 -ge 10 ]] || die "PPS must be a whole number of at least 10: $2"
    ensure_loss_table "$ns"
    in_ns "$ns" nft add rule inet gcloss input iifname eth0 meta l4proto udp \
      limit rate over "$2"/second burst "$(($2 / 10))" packets counter name dropped drop
    ;;
  dropped)
    in_ns "$prefix-$1" nft list counter inet gcloss dropped 2>/dev/null | sed -n 's/.*packets \([0-9]*\).*/\1/p' | head -1
    ;;
  translate)
    [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "usage: testbed.sh translate PREFIX HOST PORT"
    ns=$prefix-$1
    in_ns "$ns" nft delete table inet gctranslate 2>/dev/null || true
    in_ns "$ns" nft add table inet gctranslate
    in_ns "$ns" nft add chain inet gctranslate input '{ type filter hook input priority -10; }'
    in_ns "$ns" nft add rule inet gctranslate input udp dport "$2" fib saddr type != local counter drop
    ;;
  status)
    [[ $# -ge 2 ]] || die "usage: testbed.sh status PREFIX HOST URL"
    in_ns "$prefix-$1" node -e 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))' "$2"
    ;;
  linkloss)
    [[ $# -eq 2 ]] || die "usage: testbed.sh linkloss PREFIX PCT PORT"
    pct=$(percent "$1" linkloss)
    port=$(udp_port "$2")
    ns=$prefix-rtr
    # Everything checked first: a refused call leaves the rules as they were.
    in_ns "$ns" nft delete table inet gclinkloss 2>/dev/null || true
    in_ns "$ns" nft add table inet gclinkloss
    in_ns "$ns" nft add chain inet gclinkloss forward '{ type filter hook forward priority 0; }'
    # shellcheck disable=SC2046
    in_ns "$ns" nft add rule inet gclinkloss forward oifname eth1 udp dport "$port" $(chance "$pct") counter drop
    if [[ $(router_of) == nftables ]]; then
      # Multicast crosses in the netdev hook, not the forward hook: a lost copy is just not sent.
      # Only what would be forwarded is counted (the bed's groups, TTL above 1).
      in_ns "$ns" nft flush chain netdev gcforward linkloss
      # shellcheck disable=SC2046
      in_ns "$ns" nft add rule netdev gcforward linkloss ip daddr '{ 239.0.0.0/8, 232.0.0.0/8 }' ip ttl '>' 1 \
        udp dport "$port" $(chance "$pct") counter accept
      # shellcheck disable=SC2046
      in_ns "$ns" nft add rule netdev gcforward linkloss ip6 daddr ff3e::/16 ip6 hoplimit '>' 1 \
        udp dport "$port" $(chance "$pct") counter accept
    fi
    ;;
  linkdropped)
    {
      in_ns "$prefix-rtr" nft list table inet gclinkloss 2>/dev/null || true
      [[ $(router_of) != nftables ]] || in_ns "$prefix-rtr" nft list chain netdev gcforward linkloss 2>/dev/null || true
    } | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | awk '{ sum += $1 } END { if (NR > 0) print sum }'
    ;;
  translated)
    in_ns "$prefix-$1" nft list table inet gctranslate 2>/dev/null | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1
    ;;
  clear) in_ns "$prefix-$1" nft delete table inet gcloss 2>/dev/null || true ;;
  rate)
    [[ $# -ge 2 ]] || die "usage: testbed.sh rate PREFIX HOST RATE"
    in_ns "$prefix-$1" tc qdisc replace dev eth0 root tbf rate "$2" burst 64kb latency 50ms
    ;;
  route)
    [[ $# -ge 1 ]] || die "usage: testbed.sh route PREFIX GROUP"
    if [[ $(router_of) == nftables ]]; then
      # It forwards its ranges already; another group it cannot forward, and says so.
      case $1 in
        239.* | 232.* | ff3e:* | FF3E:*)
          echo "testbed: the nftables router forwards every group of 239.0.0.0/8, 232.0.0.0/8 and ff3e::/16 already" >&2 ;;
        *) die "route: the nftables router forwards only 239.0.0.0/8, 232.0.0.0/8 and ff3e::/16, not $1" ;;
      esac
    else
      smcroutectl -u "$state/smcroute.sock" add eth0 "$1" eth1
    fi
    ;;
  routes)
    if [[ $(router_of) == nftables ]]; then
      in_ns "$prefix-rtr" nft list chain netdev gcforward ingress
    else
      smcroutectl -u "$state/smcroute.sock" -p show routes
    fi
    ;;
  *) die "unknown command: $command" ;;
esac
