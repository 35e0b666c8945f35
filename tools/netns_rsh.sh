#!/bin/bash
# An "rsh" for Open MPI that reaches the test hosts of tools/netns_hosts.sh: instead of
# logging in somewhere, it runs the command inside network namespace HOST, in a fresh UTS
# namespace whose host name is HOST, so MPI processes there see their own host name and
# address exactly as on a separate machine.
#
#   mpirun --mca plm_rsh_agent tools/netns_rsh.sh ...      (as root)
#   tools/netns_rsh.sh [ssh-like options] HOST COMMAND...
#
# Open MPI passes the remote command (an orted invocation with its environment settings)
# as one string for a shell, as ssh would. Unlike ssh, the command inherits this process's
# environment and working directory (all namespaces share the file system), so PATH,
# LD_LIBRARY_PATH and OMP_* settings of the mpirun carry over to the processes.
set -euo pipefail

# Skip ssh options. Those that take a value consume the next word too.
while [[ $# -gt 0 && $1 == -* ]]; do
  case "$1" in
    -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
    *) shift ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "netns_rsh.sh: usage: netns_rsh.sh [options] HOST COMMAND..." >&2
  exit 255
fi
host=$1
shift
# A user@host form, as ssh accepts, names the same host.
host=${host#*@}
if ! ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$host"; then
  echo "netns_rsh.sh: no network namespace '$host' (create it with tools/netns_hosts.sh up)" >&2
  exit 255
fi

# $* joins the words as ssh does; the inner shell sets the host name in the new UTS
# namespace and then runs the command. exec keeps the process tree shallow, so killing
# the agent (what Open MPI does on abort) reaches the orted.
exec ip netns exec "$host" unshare --uts /bin/sh -c 'hostname "$1" && exec /bin/sh -c "$2"' \
  netns_rsh "$host" "$*"
