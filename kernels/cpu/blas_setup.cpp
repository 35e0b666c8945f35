#include "kernels/cpu/blas_setup.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "core/error.h"

namespace par {

namespace {

bool is_one_of(const char* name, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (!std::strcmp(name, n)) return true;
  return false;
}

bool is_avx512_core(const char* core) {
  return is_one_of(core, {"SkylakeX", "Cooperlake", "SapphireRapids"});
}

}  // namespace

// libgcc answers these from CPUID and from the registers the OS saves (XCR0), so a
// kernel that cannot run here is never chosen.
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const char* better_blas_core(const char* current, bool cpu_has_avx512, bool cpu_has_avx2) {
  // Only the kernels OpenBLAS falls back to when it does not know the CPU are replaced:
  // any other choice (Haswell on an AVX2 CPU, Cooperlake on a Zen 5) is its own, made
  // knowing the CPU.
  if (!current || !is_one_of(current, {"Prescott", "Core2", "Nehalem", "Sandybridge"}))
    return nullptr;
  if (cpu_has_avx512) return "SkylakeX";
  if (cpu_has_avx2) return "Haswell";
  return nullptr;
}

void select_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("PAR_KEEP_BLAS_CORE")) return;
  const char* better = better_blas_core(openblas_get_corename(), cpu_has_avx512(), cpu_has_avx2());
  if (!better) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the slow kernels rather than refuse to run.
}

std::string blas_kernel_warning(const char* core, bool cpu_has_avx512, const char* coretype_env) {
  if (!core || !cpu_has_avx512 || is_avx512_core(core)) return "";
  return cat("OpenBLAS runs its ", core, " kernels, without AVX-512, on a CPU that has it",
             coretype_env ? cat(" (OPENBLAS_CORETYPE=", coretype_env, " chose them): unset it")
                          : std::string(": set OPENBLAS_CORETYPE=SkylakeX"),
             " for faster matrix products (about twice the sgemm rate on a Zen 5)");
}

std::string blas_kernel_warning() {
  return blas_kernel_warning(openblas_get_corename(), cpu_has_avx512(),
                             std::getenv("OPENBLAS_CORETYPE"));
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
