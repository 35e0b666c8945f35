#!/usr/bin/env bash
# Installs the Debian packages par needs (when missing) and builds it into build/.
# Usage: tools/setup.sh [TARGET...]  (as root, or with sudo available; default: every
#        target, the tests included; `tools/setup.sh par` builds the binary and its CUDA
#        plugin only, as the main job does)
# Environment: BUILD_DIR (default build), BUILD_TYPE (default Release).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config
  libopenmpi-dev openmpi-bin
  iproute2 util-linux  # ip netns, unshare: the multi-host tests
  libhdf5-dev hdf5-tools
  libboost-program-options-dev
  libgoogle-glog-dev
  libgtest-dev
  libopenblas-openmp-dev
  munge slurmctld slurmd slurm-client  # a one-node SLURM cluster: tools/slurm_cluster.sh, tests/slurm
  libpmix-dev  # libpmix.so, which SLURM's mpi/pmix plugin loads (srun --mpi=pmix)
  python3-matplotlib  # tools/plot_runs.py (loss curves), run by /usr/bin/python3
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" > /dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build_dir" -j"$(nproc)" "${targets[@]}"
echo "setup: built $build_dir/launch/par"
