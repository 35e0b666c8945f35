#include "kernels/cpu/blas_setup.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace par {

namespace {

// Kernels OpenBLAS falls back to when it does not know the CPU.
bool is_fallback_core(const char* core) {
  return !std::strcmp(core, "Prescott") || !std::strcmp(core, "Core2") ||
         !std::strcmp(core, "Nehalem") || !std::strcmp(core, "Sandybridge");
}

const char* best_core_for_this_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

}  // namespace

void select_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("PAR_KEEP_BLAS_CORE")) return;
  const char* core = openblas_get_corename();
  if (!core || !is_fallback_core(core)) return;
  const char* better = best_core_for_this_cpu();
  if (!better) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the slow kernels rather than refuse to run.
}

std::string blas_description() {
  const int par = openblas_get_parallel();
  std::string version = OPENBLAS_VERSION;
  version.erase(0, version.find_first_not_of(' '));
  version.erase(version.find_last_not_of(' ') + 1);
  return cat(version, ", core ", openblas_get_corename(), ", ",
             par == 2 ? "OpenMP" : par == 1 ? "pthreads" : "sequential", " threading");
}

}  // namespace par
