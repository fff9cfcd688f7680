#!/usr/bin/env bash
# A multi-host test bed in network namespaces (issue 13). Needs root, iproute2, nftables.
#
#   tools/netbed.sh up [N=6] [NAT=2]   N nodes, each in its own namespace; the last NAT of
#                                      them each behind its own NAT router (masquerade);
#                                      the first N-NAT are public on one bridge
#   tools/netbed.sh job                a completion through node 0's API, until certified
#   tools/netbed.sh status             height, finalized hash and peers of every node
#   tools/netbed.sh partition          cut the bridge ports of the public nodes 2..
#   tools/netbed.sh heal               reconnect them
#   tools/netbed.sh converge [T=120]   wait until every node reports one finalized hash
#   tools/netbed.sh down               stop the nodes, delete every namespace
#   tools/netbed.sh check [N] [NAT]    up, job, partition, heal, converge, job, down
#   tools/netbed.sh relays             every node's reachability, relays, failed relay probes
#
# RELAY_FAULT=drop|corrupt (with up or check) makes public node BAD_RELAY (default 1) a
# relay that drops or corrupts every circuit it forwards (join --fault-relay), and the
# NATed nodes reserve a slot on every public node (join --relays); check then also
# waits until every NATed node holds slots only on other relays, at least one of them
# having caught the bad one by its probe, before the jobs run (through the others).
#
# Everything lives in namespaces named nb-*; the bridge is inside nb-hub, so no traffic
# touches the host's own interfaces. State (plan, logs, pids) is under $NETBED_ROOT
# (default /tmp/aipg-netbed).
set -euo pipefail

ROOT=${NETBED_ROOT:-/tmp/aipg-netbed}
PY=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
HUB=nb-hub

die() { echo "netbed: $*" >&2; exit 1; }
need() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  command -v ip >/dev/null || die "needs iproute2 (ip)"
  if ! command -v nft >/dev/null; then
    echo "netbed: installing nftables" >&2
    (apt-get install -y nftables >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y nftables >/dev/null)) \
      || die "needs nftables (apt-get install nftables) for the NAT routers"
  fi
  ip netns add nb-probe 2>/dev/null && ip netns del nb-probe || die "cannot create network namespaces here"
}

pub_ip() { echo "10.77.0.$(( $1 + 1 ))"; }
node_ip() {  # node i's own address
  local i=$1; if [ "$i" -ge "$PUBLIC" ]; then echo "192.168.$(( i - PUBLIC + 1 )).2"; else pub_ip "$i"; fi
}
load() { [ -f "$ROOT/bed.env" ] || die "no test bed is up (tools/netbed.sh up)"; . "$ROOT/bed.env"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

up() {
  need
  local n=${1:-6} nat=${2:-2}
  [ "$nat" -lt "$n" ] || die "NAT must be below N"
  down_quiet
  mkdir -p "$ROOT"
  rm -f "$ROOT/nat_peers"
  PUBLIC=$(( n - nat ))
  echo "N=$n; NAT=$nat; PUBLIC=$PUBLIC" > "$ROOT/bed.env"
  ip netns add $HUB
  in_ns $HUB ip link set lo up
  in_ns $HUB ip link add br0 type bridge
  in_ns $HUB ip addr add 10.77.0.254/24 dev br0
  in_ns $HUB ip link set br0 up
  for i in $(seq 0 $(( n - 1 ))); do
    ip netns add "nb-n$i"; in_ns "nb-n$i" ip link set lo up
    if [ "$i" -lt "$PUBLIC" ]; then
      ip link add "nbv$i" netns $HUB type veth peer name eth0 netns "nb-n$i"
      in_ns $HUB ip link set "nbv$i" master br0 up
      in_ns "nb-n$i" ip addr add "$(pub_ip "$i")/24" dev eth0
      in_ns "nb-n$i" ip link set eth0 up
    else
      local j=$(( i - PUBLIC + 1 )) r="nb-r$(( i - PUBLIC + 1 ))"
      ip netns add "$r"; in_ns "$r" ip link set lo up
      ip link add "nbv$i" netns $HUB type veth peer name wan0 netns "$r"
      in_ns $HUB ip link set "nbv$i" master br0 up
      in_ns "$r" ip addr add "10.77.0.$(( 100 + j ))/24" dev wan0
      in_ns "$r" ip link set wan0 up
      ip link add lan0 netns "$r" type veth peer name eth0 netns "nb-n$i"
      in_ns "$r" ip addr add "192.168.$j.1/24" dev lan0
      in_ns "$r" ip link set lan0 up
      in_ns "nb-n$i" ip addr add "192.168.$j.2/24" dev eth0
      in_ns "nb-n$i" ip link set eth0 up
      in_ns "nb-n$i" ip route add default via "192.168.$j.1"
      in_ns "$r" sysctl -qw net.ipv4.ip_forward=1
      # masquerade the LAN; nothing is forwarded in (no port mappings): a home router
      in_ns "$r" nft -f - <<NFT
table ip nat {
  chain postrouting_wan {
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }
}
table ip filter {
  chain forward_lan {
    type filter hook forward priority 0; policy drop;
    iifname "lan0" accept
    ct state established,related accept
  }
}
NFT
    fi
  done
  echo "netbed: planning a devnet of $n nodes in $ROOT/devnet" >&2
  "$PY" "$HERE/netbed.py" plan "$ROOT/devnet" "$n" >/dev/null
  local boot=()
  for i in $(seq 0 $(( n - 1 ))); do
    local ip; ip=$(node_ip "$i")
    # only the NATed nodes run jobs: every job's worker is one nobody can dial
    local role=verifier; [ "$i" -ge "$PUBLIC" ] && role=worker
    local cmd; cmd=$("$PY" "$HERE/netbed.py" cmd "$ROOT/devnet" "$i" "$ip" "$role" "${boot[@]}")
    if [ -n "${RELAY_FAULT:-}" ] && [ "$i" = "${BAD_RELAY:-1}" ]; then
      [ "$i" -lt "$PUBLIC" ] || die "BAD_RELAY must be a public node"
      cmd="$cmd --fault-relay $RELAY_FAULT"
      echo "netbed: node$i is a faulty relay ($RELAY_FAULT)" >&2
    fi
    if [ -n "${RELAY_FAULT:-}" ] && [ "$role" = worker ]; then
      # a slot on every public node, so each NATed one reserves on (and probes) the bad
      # relay too: with the default two of three, both might pick the good ones
      cmd="$cmd --relays $PUBLIC"
    fi
    [ "$role" = worker ] && "$PY" "$HERE/netbed.py" peer "$ROOT/devnet" "$i" >> "$ROOT/nat_peers"
    in_ns "nb-n$i" setsid bash -c "exec $cmd" >"$ROOT/node$i.log" 2>&1 &
    echo $! >> "$ROOT/pids"
    if [ "$i" -lt "$PUBLIC" ] && [ "${#boot[@]}" -lt 3 ]; then
      boot+=("/ip4/$ip/tcp/4001/ws/p2p/$("$PY" "$HERE/netbed.py" peer "$ROOT/devnet" "$i")")
    fi
  done
  echo "netbed: $n nodes started ($PUBLIC public, $nat behind NAT); logs in $ROOT/node*.log" >&2
}

status() {
  load
  for i in $(seq 0 $(( N - 1 ))); do
    printf 'node%s %s: ' "$i" "$(node_ip "$i")"
    in_ns "nb-n$i" "$PY" "$HERE/netbed.py" status "http://$(node_ip "$i"):8080" 2>/dev/null || echo "(no answer)"
  done
}

job() {  # a completion and an image job through node 0; each served by a NATed worker
  load
  local out; out=$(in_ns nb-n0 "$PY" "$HERE/netbed.py" job "http://$(pub_ip 0):8080" "${1:-300}") \
    || { echo "$out"; die "a job failed"; }
  echo "$out"
  echo "$out" | awk '/^job /{print $5}' | while read -r w; do
    grep -qx "$w" "$ROOT/nat_peers" || die "job served by $w, not by a NATed worker"
  done
}

partition() {  # public nodes 1.. on one side; node 0 and the NAT routers on the other
  load
  for i in $(seq 1 $(( PUBLIC - 1 ))); do in_ns $HUB ip link set "nbv$i" down; done
  echo "netbed: cut public nodes 1..$(( PUBLIC - 1 )) off the bridge (no side has 2/3)" >&2
}

heal() {
  load
  for i in $(seq 0 $(( N - 1 ))); do in_ns $HUB ip link set "nbv$i" up; done
  echo "netbed: healed" >&2
}

converge() {  # every node has the same block at the lowest height any of them reached
  load
  local deadline=$(( $(date +%s) + ${1:-120} )) floor=${2:-1}
  while [ "$(date +%s)" -lt "$deadline" ]; do
    local h
    h=$(for i in $(seq 0 $(( N - 1 ))); do
      in_ns "nb-n$i" "$PY" "$HERE/netbed.py" status "http://$(node_ip "$i"):8080" 2>/dev/null | awk '{print $1}' || echo 0
    done | sort -n | head -1)
    if [ -n "$h" ] && [ "$h" -ge "$floor" ]; then
      local distinct
      distinct=$(for i in $(seq 0 $(( N - 1 ))); do
        in_ns "nb-n$i" "$PY" "$HERE/netbed.py" block "http://$(node_ip "$i"):8080" "$h" 2>/dev/null || echo "node$i-missing"
      done | sort | uniq | wc -l)
      if [ "$distinct" = 1 ]; then echo "netbed: converged: every node has the same block $h" >&2; return 0; fi
    fi
    sleep 2  # polling other processes
  done
  status; die "the nodes did not converge"
}

relays() {
  load
  for i in $(seq 0 $(( N - 1 ))); do
    printf 'node%s: ' "$i"
    in_ns "nb-n$i" "$PY" "$HERE/netbed.py" reach "http://$(node_ip "$i"):8080" 2>/dev/null || echo "(no answer)"
  done
}

avoid_bad_relay() {  # every NATed node holds slots only on good relays; one caught the bad
  load
  local bad; bad=$("$PY" "$HERE/netbed.py" peer "$ROOT/devnet" "${BAD_RELAY:-1}")
  local deadline=$(( $(date +%s) + ${1:-120} ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    local ok=1 caught=0
    for i in $(seq "$PUBLIC" $(( N - 1 ))); do
      local line; line=$(in_ns "nb-n$i" "$PY" "$HERE/netbed.py" reach "http://$(node_ip "$i"):8080" 2>/dev/null) || { ok=0; continue; }
      # "<reachability> <failures> <relay>,<relay>"
      set -- $line
      [ "$1" = private ] && [ "${3:--}" != - ] || ok=0
      case ",${3:-}," in *",$bad,"*) ok=0 ;; esac
      if [ "${2:-0}" -ge 1 ]; then caught=1; fi
    done
    if [ "$ok" = 1 ] && [ "$caught" = 1 ]; then
      relays
      echo "netbed: the NATed nodes avoid the faulty relay node${BAD_RELAY:-1} (caught by its probe)" >&2
      return 0
    fi
    sleep 2  # polling other processes
  done
  relays; die "the NATed nodes did not leave the faulty relay"
}

height0() { in_ns nb-n0 "$PY" "$HERE/netbed.py" status "http://$(pub_ip 0):8080" | awk '{print $1}'; }

down_quiet() {
  if [ -f "$ROOT/pids" ]; then
    while read -r pid; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done < "$ROOT/pids"
    rm -f "$ROOT/pids"
  fi
  for ns in $(ip netns list | awk '{print $1}' | grep '^nb-' || true); do
    ip netns pids "$ns" 2>/dev/null | while read -r pid; do kill "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

down() { down_quiet; echo "netbed: down" >&2; }

check() {
  up "${1:-6}" "${2:-2}"
  trap down EXIT
  converge 240
  if [ -n "${RELAY_FAULT:-}" ]; then avoid_bad_relay 180; fi
  job 240
  partition
  local before; before=$(height0)
  sleep 10  # no side has two thirds: consensus stops on both until the bridge heals
  heal
  converge 240 $(( before + 3 ))  # past the partition: consensus resumed, one chain
  job 240
  echo "netbed: check passed" >&2
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  job) shift; job "$@" ;;
  partition) partition ;;
  heal) heal ;;
  converge) shift; converge "$@" ;;
  check) shift; check "$@" ;;
  relays) relays ;;
  *) sed -n '2,26p' "$0"; exit 2 ;;
esac
