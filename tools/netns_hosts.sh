#!/bin/bash
# Test "hosts" for multi-node MPI runs on one machine: each host is a Linux network
# namespace (parhost1, parhost2, ...) with its own address on a private bridge, so Open MPI
# sees separate nodes that talk over TCP. tools/netns_rsh.sh starts processes inside them;
# tools/netns_mpirun.sh wraps the whole up / mpirun / down cycle.
#
#   tools/netns_hosts.sh up [N=2] [SLOTS=2]   create parhost1..parhostN (root only)
#   tools/netns_hosts.sh down                 remove everything `up` made (idempotent)
#
# Layout: bridge br-par with 10.77.0.254/24 in the root namespace (where mpirun runs);
# host i has 10.77.0.i/24 on its eth0 (a veth whose peer, vpar<i>, sits on the bridge).
# `up` writes $PAR_NETNS_DIR/hostfile ("parhost1 slots=SLOTS" lines) for mpirun --hostfile.
set -euo pipefail

BRIDGE=br-par
BRIDGE_ADDR=10.77.0.254/24
PREFIX=parhost
STATE_DIR=${PAR_NETNS_DIR:-/run/par-netns}

die() { echo "netns_hosts.sh: $*" >&2; exit 1; }

# Every namespace this script may have made: a previous `up` with a larger N leaves more
# than the current one would, so `down` looks at what exists rather than at N.
existing_hosts() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}[0-9]+$" || true
}

down() {
  local h
  for h in $(existing_hosts); do
    ip netns del "$h" 2>/dev/null || true
  done
  # Deleting a namespace deletes its veth end and with it the peer; these catch leftovers
  # of an `up` that failed half-way.
  for h in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
             grep -E '^vpar[0-9]+$' || true); do
    ip link del "$h" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -f "$STATE_DIR/hostfile" "$STATE_DIR/hosts"
  rmdir "$STATE_DIR" 2>/dev/null || true
}

up() {
  local n=${1:-2} slots=${2:-2}
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 250 ]] || die "N must be 1..250, got '$n'"
  [[ $slots =~ ^[0-9]+$ && $slots -ge 1 ]] || die "SLOTS must be >= 1, got '$slots'"
  [[ $(id -u) -eq 0 ]] || die "must run as root (creates network namespaces)"
  command -v ip >/dev/null || die "the ip command (iproute2) is missing"
  down  # start from nothing, so a crashed earlier run cannot get in the way
  trap 'down' ERR

  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_ADDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Bridged frames must not be filtered by the host's iptables FORWARD rules (Docker sets
  # its policy to DROP); harmless where br_netfilter is not loaded.
  if [[ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    echo 0 >/proc/sys/net/bridge/bridge-nf-call-iptables || true
  fi

  mkdir -p "$STATE_DIR"
  : >"$STATE_DIR/hostfile"
  : >"$STATE_DIR/hosts"
  local i h
  for ((i = 1; i <= n; i++)); do
    h=$PREFIX$i
    ip netns add "$h"
    ip link add "vpar$i" type veth peer name eth0 netns "$h"
    ip link set "vpar$i" master "$BRIDGE" up
    ip -n "$h" link set lo up
    ip -n "$h" addr add "10.77.0.$i/24" dev eth0
    ip -n "$h" link set eth0 up
    echo "$h slots=$slots" >>"$STATE_DIR/hostfile"
    echo "10.77.0.$i $h" >>"$STATE_DIR/hosts"
  done
  trap - ERR
  echo "netns_hosts.sh: up: ${PREFIX}1..${PREFIX}$n on $BRIDGE, hostfile $STATE_DIR/hostfile"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  *) die "usage: netns_hosts.sh up [N=2] [SLOTS=2] | down" ;;
esac
