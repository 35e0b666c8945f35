#include "launch/threads.h"

#include <cblas.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace par {

CpuBudget cpu_budget(int local_ranks) {
  CpuBudget b;
  b.node_cpus = std::max(1, int(sysconf(_SC_NPROCESSORS_ONLN)));
  cpu_set_t set;
  CPU_ZERO(&set);
  b.mask_cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? std::max(1, CPU_COUNT(&set))
                                                           : b.node_cpus;
  b.local_ranks = std::max(1, local_ranks);
  return b;
}

int threads_for(int requested, const CpuBudget& b) {
  if (requested > 0) return requested;
  return std::max(1, std::min(b.mask_cpus, b.node_cpus / b.local_ranks));
}

std::string oversubscription_warning(int threads, const CpuBudget& b) {
  const bool over_mask = threads > b.mask_cpus;
  const bool over_node = int64_t(threads) * b.local_ranks > b.node_cpus;
  if (!over_mask && !over_node) return "";
  return cat(threads, " thread(s) per rank x ", b.local_ranks, " rank(s) on this node",
             over_mask ? cat(", but this rank may run on only ", b.mask_cpus, " CPU(s)")
                       : cat(" exceed its ", b.node_cpus, " CPU(s)"),
             ": threads waiting on shared cores slow every step, often many times over. "
             "Give --threads at most ", threads_for(0, b),
             " (launch/LAUNCH.md: binding and --threads-per-rank)");
}

std::string apply_threads(int requested, int local_ranks) {
  const CpuBudget b = cpu_budget(local_ranks);
  // OMP_NUM_THREADS (the launch scripts set it) stands for --threads when that is not given.
  if (requested <= 0 && std::getenv("OMP_NUM_THREADS")) requested = omp_get_max_threads();
  const int threads = threads_for(requested, b);
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  return oversubscription_warning(threads, b);
}

void warn_threads(const char* command, const std::string& warning) {
  if (!warning.empty()) std::fprintf(stderr, "par %s: warning: %s\n", command, warning.c_str());
}

}  // namespace par
