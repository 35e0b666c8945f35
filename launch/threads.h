// How many CPU threads each rank runs (OpenMP loops and BLAS).
//
// Left to its default, OpenMP starts one thread per CPU the process may run on. Under a
// plain `mpirun` without binding, every rank of a node may run on all its CPUs, so R ranks
// would start R threads per CPU; OpenMP threads spin while they wait at the end of each
// parallel loop, and on shared cores that spinning slows every step many times over. So
// the default divides the node's CPUs among its ranks, and an explicit --threads that
// oversubscribes the node gets a warning.
#pragma once

#include <limits>
#include <string>

namespace par {

struct CpuBudget {
  int node_cpus = 1;    // online CPUs of this node
  int mask_cpus = 1;    // CPUs this process may run on (its affinity mask)
  int local_ranks = 1;  // ranks of this job on this node
  // OMP_THREAD_LIMIT: the most threads OpenMP starts, whatever it is asked for. OpenBLAS,
  // told of more threads than that, waits for ever for those that never start.
  int thread_limit = std::numeric_limits<int>::max();
};

// The CPUs of this process and node; `local_ranks` from the job.
CpuBudget cpu_budget(int local_ranks);

// --threads N (N > 0) as given; 0: the node's CPUs shared among its ranks, at most the
// CPUs this process may run on, at least 1. Either way at most the thread limit.
int threads_for(int requested, const CpuBudget& b);

// A warning when `requested` threads pass the thread limit (and threads_for runs fewer);
// "" otherwise.
std::string thread_limit_warning(int requested, const CpuBudget& b);

// A warning when `threads` per rank oversubscribe the CPUs (more threads than this rank
// may run on, or more than the node has for all its ranks); "" otherwise.
std::string oversubscription_warning(int threads, const CpuBudget& b);

// Address space each CPU thread takes on its first matrix product: the buffer OpenBLAS
// 0.3.21 (Debian's OpenMP build) allocates per thread, 128 MiB and a page (seen in its
// malloc), and the thread's stack.
int64_t thread_address_space_bytes();

// UserError when `threads` threads would not fit the address-space limit (ulimit -v) with
// what the process holds now: OpenBLAS then retries its allocation forever.
void check_thread_address_space(int threads);

// Applies threads_for() to OpenMP and BLAS, with OMP_NUM_THREADS, when set, in place of
// a --threads of 0, after check_thread_address_space; returns the warning, if any, for
// the caller to log.
std::string apply_threads(int requested, int local_ranks);

// Prints a non-empty warning to stderr as "par COMMAND: warning: ...".
void warn_threads(const char* command, const std::string& warning);

}  // namespace par
