// Waiting for the GPU where an NCCL collective may never finish (core/poll_wait.h).
//
// The NCCL communicators of a process register here how to ask them for an asynchronous
// failure and how to abort them. While none is registered (one GPU, no peers), a wait is
// cudaStreamSynchronize as before. While some are, it polls: a peer whose NCCL failed
// (a dead process, a broken link) shows as an asynchronous error of ours, and a peer that
// hangs as a wait past --collective-timeout. Either way every registered communicator is
// aborted first (ncclCommAbort: their kernels return, so the memory frees and teardown that
// follow do not wait for ever), and the wait throws an error naming what happened.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <string>

namespace par::cuda {

struct WaitWatch {
  std::function<std::string()> failure;  // "" while well, else why not
  std::function<void()> abort;           // called at most once, then never failure()
};

// Registers a communicator; the handle removes it again.
int add_wait_watch(WaitWatch watch);
void remove_wait_watch(int handle);

// Seconds a poll waits before it gives up (<= 0: no limit; default 0).
void set_wait_timeout(double seconds);

// Waits until `stream` has done its work; `what` names the wait in errors ("download").
void wait_for_stream(cudaStream_t stream, const char* what);

// wait_for_stream while communicators are registered, else nothing. For before a copy
// between the device and pageable host memory: the runtime returns from such a copy only
// once the stream's earlier work is done, blocked where no poll sees a hung collective.
void wait_if_watched(cudaStream_t stream, const char* what);

}  // namespace par::cuda
