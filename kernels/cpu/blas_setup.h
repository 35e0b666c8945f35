// Choosing OpenBLAS's kernels before any work starts.
//
// OpenBLAS picks its kernels from the CPU model at load time. A CPU newer than the
// library (Debian 12 ships 0.3.21) is not recognized and falls back to the SSE3
// "Prescott" kernels, about 5x slower than the AVX-512 ones the CPU can run. The
// choice can only be made through OPENBLAS_CORETYPE before the library loads, so when
// the fallback is detected on a CPU with AVX2 or AVX-512, the process sets the variable
// and re-executes itself (same pid, same arguments; before MPI is initialized).
// Setting OPENBLAS_CORETYPE yourself, or PAR_KEEP_BLAS_CORE=1, disables this.
#pragma once

#include <string>

namespace par {

// Whether this CPU (and the OS) runs OpenBLAS's AVX-512 kernels (F, BW, VL, DQ), and its
// AVX2 ones (AVX2, FMA).
bool cpu_has_avx512();
bool cpu_has_avx2();

// The OpenBLAS core to switch to from `current` on a CPU with these instruction sets, or
// nullptr to keep it: the SSE/AVX fallbacks become SkylakeX on an AVX-512 CPU and
// Haswell on an AVX2 one.
const char* better_blas_core(const char* current, bool cpu_has_avx512, bool cpu_has_avx2);

// A warning for the log when OpenBLAS runs kernels without AVX-512 on a CPU that has it
// (`core` running, `coretype_env` the OPENBLAS_CORETYPE that chose it or nullptr), else
// "". OpenBLAS picks AVX-512 kernels for such CPUs itself, so this is mostly a stale
// OPENBLAS_CORETYPE, which par does not override and which halves the matrix products'
// rate on a Zen 5 (README, Performance).
std::string blas_kernel_warning(const char* core, bool cpu_has_avx512, const char* coretype_env);
// The same for this process.
std::string blas_kernel_warning();

// Call first thing in main(); may not return (re-exec).
void select_blas_kernels(char** argv);

// "OpenBLAS 0.3.21, core SkylakeX, OpenMP threading" -- for logs and benchmarks.
std::string blas_description();

}  // namespace par
