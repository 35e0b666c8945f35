#!/usr/bin/env bash
# Prepares what tools/gpu_check.sh needs on a GPU machine that has CUDA, a driver and a
# Python with PyTorch, but no Open MPI, HDF5, glog, gflags, Boost or OpenBLAS, and no
# network: a portable build of `par` and `par_cuda_tests`, and the shared libraries they
# load that such a machine lacks, packed into one compressed archive.
#
# Run here (the build machine: Debian 12 with the packages of tools/setup.sh, CUDA 13):
#   tools/gpu_bundle.sh                  # -> build-gpu-bundle/bundle/par-gpu-bundle.tar.xz
#   tools/gpu_bundle.sh DIR              # the archive goes to DIR instead
# Then, on the GPU machine, from the repository root, the command it prints last:
#   EXPECT_COMMIT=SHA tools/gpu_check.sh # or: ... tools/gpu_check.sh DIR/par-gpu-bundle.tar.xz
# With this workplace's device tool: one run of that command with carry
# ["build-gpu-bundle/bundle"] (build-*/ is ignored by git, so it travels only when carried)
# and timeout_s 600. The MANIFEST names the commit built ("commit: SHA") and whether the
# tree had local changes ("tree: ..."); gpu_check.sh refuses a bundle of another commit than
# EXPECT_COMMIT (no .git travels to the device machine) or one with local changes.
#
# The build: Release, -DPAR_NATIVE=OFF with -march=x86-64-v3 (any AVX2 machine), PAR_CUDA=ON
# for sm_80 and sm_90, in build-gpu-bundle/build (BUILD_DIR overrides). Bundled: every
# library ldd resolves outside glibc and the CUDA toolkit (libmpi and its dependencies,
# libhdf5, libglog, libgflags, libboost_program_options, the OpenMP OpenBLAS, libgomp,
# libgfortran, ...), stripped. libstdc++, libgcc_s and libcudart go to fallback/: the GPU
# machine's own (newer) ones are preferred, ours are used only where it has none. cuBLAS
# and NCCL (hundreds of MiB) are not bundled: gpu_check.sh finds the machine's (CUDA
# toolkit or the nvidia-* Python packages).
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=${1:-build-gpu-bundle/bundle}
build=${BUILD_DIR:-build-gpu-bundle/build}
archs=${CUDA_ARCHS:-80;90}

mkdir -p "$(dirname "$build")"
echo "gpu_bundle: configuring $build (portable x86-64-v3, CUDA architectures $archs)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPAR_NATIVE=OFF \
  -DCMAKE_C_FLAGS="-march=x86-64-v3" -DCMAKE_CXX_FLAGS="-march=x86-64-v3" \
  -DPAR_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$archs" -DPAR_BUILD_TESTS=ON > "$build.configure.log" 2>&1 \
  || { cat "$build.configure.log"; exit 1; }
echo "gpu_bundle: building par and par_cuda_tests (a few minutes on 2 cores)"
cmake --build "$build" -j"$(nproc)" --target par par_cuda_backend par_cuda_tests

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/par-gpu-bundle
mkdir -p "$root/bin" "$root/lib" "$root/fallback"
# The CUDA backend is a plugin par loads from its own directory (kernels/cuda/backend_plugin.h).
cp "$build/launch/par" "$build/launch/libpar_cuda_backend.so" "$build/tests/cuda/par_cuda_tests" \
  "$root/bin/"
strip --strip-unneeded "$root/bin/par" "$root/bin/libpar_cuda_backend.so" "$root/bin/par_cuda_tests"

# Every library the binaries and the plugin load, as the loader here resolves them.
mapfile -t libs < <(ldd "$build/launch/par" "$build/launch/libpar_cuda_backend.so" \
                        "$build/tests/cuda/par_cuda_tests" |
                    awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
cuda_root=$(readlink -f /usr/local/cuda 2>/dev/null || echo /usr/local/cuda)
for lib in "${libs[@]}"; do
  name=$(basename "$lib")
  real=$(readlink -f "$lib")
  case "$name" in
    # glibc: the GPU machine's own (ours would not match its loader).
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*|libresolv.so.*|\
    libutil.so.*|libanl.so.*|libmvec.so.*) continue ;;
    libstdc++.so.*|libgcc_s.so.*|libcudart.so.*) dest=$root/fallback ;;
    *)
      case "$real" in
        "$cuda_root"/*|/usr/local/cuda*) continue ;;  # cuBLAS, NCCL: the machine's own
      esac
      dest=$root/lib ;;
  esac
  cp -L "$lib" "$dest/$name"
  chmod u+w "$dest/$name"
  strip --strip-unneeded "$dest/$name" 2>/dev/null || true
done

# ldd lists the whole closure, so everything is here; still, nothing may be unresolved.
if LD_LIBRARY_PATH="$root/lib:$root/fallback" ldd "$root/bin/par" "$root/bin/libpar_cuda_backend.so" \
     "$root/bin/par_cuda_tests" |
   grep "not found"; then
  echo "gpu_bundle: unresolved libraries (above)" >&2
  exit 1
fi

# The commit built, and whether tracked files differed from it (staged or not): a bundle
# with local changes measures code no commit holds.
commit=$(git rev-parse HEAD 2>/dev/null || echo '?')
changes=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
tree="clean"
[ "$changes" -gt 0 ] && tree="local changes ($changes files)"
cat > "$root/MANIFEST" <<EOF
par GPU bundle, made $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname) from ${commit:0:9}$([ "$changes" -gt 0 ] && echo ' (with local changes)')
commit: $commit
tree: $tree
build: Release, -march=x86-64-v3, CUDA architectures $archs, $(/usr/local/cuda/bin/nvcc --version | tail -1)
bin: $(cd "$root/bin" && ls | tr '\n' ' ')
lib: $(cd "$root/lib" && ls | tr '\n' ' ')
fallback: $(cd "$root/fallback" && ls | tr '\n' ' ')
EOF

mkdir -p "$out_dir"
archive=$out_dir/par-gpu-bundle.tar.xz
tar -C "$stage" -cf - par-gpu-bundle | xz -T0 -6 > "$archive.tmp"
mv "$archive.tmp" "$archive"
unpacked=$(du -sm "$root" | cut -f1)
packed=$(du -m "$archive" | cut -f1)
echo "gpu_bundle: $archive: ${packed} MiB (${unpacked} MiB unpacked, $(ls "$root/lib" | wc -l) libraries)"
[ "$changes" -gt 0 ] &&
  echo "gpu_bundle: built with local changes: gpu_check.sh refuses this bundle unless ALLOW_STALE=1 (commit them and build again)"
echo "gpu_bundle: on the GPU machine run, from the repository root at ${commit:0:9}:"
echo "  EXPECT_COMMIT=$commit tools/gpu_check.sh"
echo "gpu_bundle: (device tool: that command, carry [\"$out_dir\"], timeout_s 600; then give the machine back)"
