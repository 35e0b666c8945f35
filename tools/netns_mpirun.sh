#!/bin/bash
# Runs an mpirun job across test hosts made of network namespaces (tools/netns_hosts.sh):
# creates the hosts, runs mpirun in the root namespace with orted started on each host
# through tools/netns_rsh.sh, and removes the hosts on any exit. Root only.
#
#   tools/netns_mpirun.sh [--hosts N=2] [--slots S=2] -- MPIRUN_ARGS...
#   e.g. tools/netns_mpirun.sh --hosts 2 -- -np 4 build/launch/par train --dp 2 --sp 2 ...
#
# Ranks are placed by slot: with 2 hosts of 2 slots, ranks 0,1 on parhost1 and 2,3 on
# parhost2. Processes inherit this environment and working directory (the namespaces share
# the file system); OMP_NUM_THREADS=1 and OMP_WAIT_POLICY=passive unless already set.
# The mpirun used is $PAR_MPIRUN, else mpirun from PATH. Runs are serialized machine-wide
# with a lock, since the namespaces and the bridge have fixed names.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hosts=2
slots=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hosts) hosts=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "netns_mpirun.sh: usage: netns_mpirun.sh [--hosts N] [--slots S] -- MPIRUN_ARGS..." >&2
       exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "netns_mpirun.sh: no mpirun arguments after --" >&2; exit 2; }
mpirun=${PAR_MPIRUN:-mpirun}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

exec 9>/run/par-netns.lock
flock -w 300 9 || { echo "netns_mpirun.sh: another run holds /run/par-netns.lock" >&2; exit 1; }

trap '"$here/netns_hosts.sh" down' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$here/netns_hosts.sh" up "$hosts" "$slots" >/dev/null

host_list=
for ((i = 1; i <= hosts; i++)); do host_list+="${host_list:+,}parhost$i:$slots"; done

# Why each option:
#  plm_rsh_agent         start orted "remotely" through the namespace agent;
#  plm_rsh_no_tree_spawn every orted is started from here (no agent runs inside a host);
#  *_if_include          talk only over the bridge: the hosts have no other route, and the
#                        root namespace's other interfaces are unreachable from them;
#  btl tcp,self          ranks on different hosts have no shared memory;
#  orte_keep_fqdn_hostnames host names are compared as given (parhost1, no domain part);
#  mpi_yield_when_idle   all hosts share this machine's cores: each thinks it has a core per
#                        rank, so waiting ranks would spin and starve the others.
set +e
"$mpirun" --allow-run-as-root --oversubscribe \
  --host "$host_list" \
  --mca plm_rsh_agent "$here/netns_rsh.sh" \
  --mca plm_rsh_no_tree_spawn 1 \
  --mca orte_keep_fqdn_hostnames 1 \
  --mca btl tcp,self \
  --mca mpi_yield_when_idle 1 \
  --mca btl_tcp_if_include 10.77.0.0/24 \
  --mca oob_tcp_if_include 10.77.0.0/24 \
  "$@"
rc=$?
set -e
exit $rc
