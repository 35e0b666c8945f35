#include "launch/threads.h"

#include <cblas.h>
#include <omp.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "launch/host_memory.h"

namespace par {

CpuBudget cpu_budget(int local_ranks) {
  CpuBudget b;
  b.node_cpus = std::max(1, int(sysconf(_SC_NPROCESSORS_ONLN)));
  cpu_set_t set;
  CPU_ZERO(&set);
  b.mask_cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? std::max(1, CPU_COUNT(&set))
                                                           : b.node_cpus;
  b.local_ranks = std::max(1, local_ranks);
  b.thread_limit = std::max(1, omp_get_thread_limit());
  return b;
}

int threads_for(int requested, const CpuBudget& b) {
  const int threads =
      requested > 0 ? requested : std::max(1, std::min(b.mask_cpus, b.node_cpus / b.local_ranks));
  return std::min(threads, std::max(1, b.thread_limit));
}

std::string thread_limit_warning(int requested, const CpuBudget& b) {
  if (requested <= b.thread_limit) return "";
  return cat(requested, " thread(s) asked for, but OMP_THREAD_LIMIT is ", b.thread_limit,
             ": running ", threads_for(requested, b), " (OpenMP starts no more, and BLAS, told "
             "of more, would wait for them for ever)");
}

std::string oversubscription_warning(int threads, const CpuBudget& b) {
  const bool over_mask = threads > b.mask_cpus;
  const bool over_node = int64_t(threads) * b.local_ranks > b.node_cpus;
  if (!over_mask && !over_node) return "";
  return cat(threads, " thread(s) per rank x ", b.local_ranks, " rank(s) on this node",
             over_mask ? cat(", but this rank may run on only ", b.mask_cpus, " CPU(s)")
                       : cat(" exceed its ", b.node_cpus, " CPU(s)"),
             ": threads waiting on shared cores slow every step, often many times over. ",
             threads > 1 ? cat("Give --threads at most ", threads_for(0, b))
                         // One thread each is already the least: the ranks are too many.
                         : cat("Start at most ", std::max(1, b.node_cpus),
                               " rank(s) per node (more nodes, or mpirun --map-by ppr:",
                               std::max(1, b.node_cpus), ":node)"),
             " (launch/LAUNCH.md: binding and --threads-per-rank)");
}

int64_t thread_address_space_bytes() {
  constexpr int64_t kOpenBlasBuffer = (int64_t(128) << 20) + 4096;
  struct rlimit stack{};
  const int64_t stack_bytes =
      getrlimit(RLIMIT_STACK, &stack) == 0 && stack.rlim_cur != RLIM_INFINITY
          ? int64_t(stack.rlim_cur)
          : int64_t(8) << 20;
  return kOpenBlasBuffer + stack_bytes;
}

void check_thread_address_space(int threads) {
  struct rlimit as{};
  if (getrlimit(RLIMIT_AS, &as) != 0 || as.rlim_cur == RLIM_INFINITY) return;
  // 5% of the limit stays for malloc's per-thread arenas (measured under 8,000,000 KiB:
  // 52 threads ran, 55 failed to start, 56 hung in OpenBLAS).
  const double limit = double(as.rlim_cur), usable = 0.95 * limit;
  const double used = double(address_space_bytes()), each = double(thread_address_space_bytes());
  if (used + threads * each <= usable) return;
  const int most = int(std::max(0.0, (usable - used) / each));
  fail_user("--threads ", threads, ": every thread takes ", format_bytes(each),
            " of address space (OpenBLAS's buffer and the stack), ", format_bytes(threads * each),
            " in all, but the address-space limit (ulimit -v) is ", format_bytes(limit), " and ",
            format_bytes(used), " of it is in use: give --threads at most ", most,
            " or raise ulimit -v");
}

std::string apply_threads(int requested, int local_ranks) {
  const CpuBudget b = cpu_budget(local_ranks);
  // OMP_NUM_THREADS (the launch scripts set it) stands for --threads when that is not given.
  if (requested <= 0 && std::getenv("OMP_NUM_THREADS")) requested = omp_get_max_threads();
  const int threads = threads_for(requested, b);
  check_thread_address_space(threads);
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  const std::string limited = thread_limit_warning(requested, b);
  const std::string over = oversubscription_warning(threads, b);
  return limited.empty() ? over : over.empty() ? limited : cat(limited, "; ", over);
}

void warn_threads(const char* command, const std::string& warning) {
  if (!warning.empty()) std::fprintf(stderr, "par %s: warning: %s\n", command, warning.c_str());
}

}  // namespace par
