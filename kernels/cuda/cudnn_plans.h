// The attention graphs cuDNN has built plans for, kept per thread and device for the
// thread's life and shared by every backend the thread makes there, with the cuDNN handle
// that built and runs them.
//
// Why beyond one backend: building a plan compiles cuDNN's attention kernels at run time,
// a large part of a second per shape, and the GPU tests make a backend per test (dozens,
// mostly of the same shapes). Why per thread: a handle runs its work on the stream last set
// on it, so each run sets its caller's stream and executes, which must not interleave with
// another thread's; the layout tests run ranks as threads, each with its own backend.
// PyTorch keeps its cuDNN attention graphs per thread too.
//
// Never destroyed (a handle and its plans per thread that ran cuDNN attention): cuDNN keeps
// thread-local state of its own, which the thread's exit destroys before a store made
// earlier, and destroying descriptors or the handle after it corrupts the heap wherever a
// call fails (seen with cuDNN 9.19; PyTorch leaks its caches for the same reason).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/cudnn_api.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/sdpa_graph.h"

namespace par::cuda {

// Whether a refusal's text (CudnnError::what()) says that memory ran out, on the host or
// the device, rather than that cuDNN does not take the graph.
bool cudnn_refusal_is_transient(const std::string& refusal);

class CudnnPlans {
 public:
  // A graph with its plan, or why cuDNN could not build one (graph null then).
  struct Entry {
    std::unique_ptr<CudnnGraph> graph;
    std::string refusal;
    double build_ms = 0;  // host time to make it (cuDNN compiles kernels at run time)
    bool transient = false;  // refused for want of memory
    // For a refusal for want of memory: the tries so far, and the calls (get) left before
    // the next (memory freed since may let it through; each try may cost as much as a
    // plan, so the wait doubles).
    int tries = 1;
    int64_t retry_wait = 0;  // the calls it waits in all
    int64_t calls_until_retry = 0;
  };
  // The calls a refusal for want of memory waits before its first retry, and the most
  // it waits.
  static constexpr int64_t kFirstRetryAfter = 8;
  static constexpr int64_t kLongestRetryWait = 4096;

  // This thread's plans on `device` (cuDNN's handle is made there, on first use).
  static CudnnPlans& of_this_thread(const CudnnApi& api, int device);
  // Plans built in this process, on every thread (tests: a shape seen before on a thread is
  // not built again there).
  static int64_t built();

  CudnnPlans(const CudnnPlans&) = delete;
  CudnnPlans& operator=(const CudnnPlans&) = delete;

  // The entry of the forward or backward graph of `d`, null when none was made yet.
  const Entry* find(bool backward, const sdpa::Dims& d) const;
  // The entry, made on first use (then *made is set, for the log): the graph of
  // sdpa_graph.h built into a plan on this thread's handle, or cuDNN's refusal (a
  // CudnnError's text), kept so that a refused shape is not tried again (a try may cost
  // as much as a plan); one for want of memory (cudnn_refusal_is_transient) is tried
  // again on the kFirstRetryAfter-th call after it, then after twice as many calls each
  // time up to kLongestRetryWait, and at once after forget_transient().
  const Entry& get(bool backward, const sdpa::Dims& d, bool* made = nullptr);
  // The refusals for want of memory are dropped, so that their shapes are tried again (a
  // new backend: its memory is not its predecessor's).
  void forget_transient();
  // Tests: while `refusal` is not empty, this thread's builds are refused with it instead
  // of reaching cuDNN (a refusal for want of memory cannot be had at will).
  static void refuse_builds_for_tests(std::string refusal);
  // Runs a graph of this thread's plans on `stream`.
  void run(const CudnnGraph& g, cudaStream_t stream,
           const std::vector<std::pair<int64_t, void*>>& bound, void* workspace);
  // The handle no longer names `stream` (about to be destroyed) if it did. Never throws.
  void forget_stream(cudaStream_t stream) noexcept;

 private:
  CudnnPlans(const CudnnApi& api, int device) : api_(&api), device_(device) {}
  // direction, then every field of sdpa::Dims
  using Key = std::tuple<bool, int64_t, int64_t, int64_t, int64_t, int64_t, double, bool,
                         int64_t, int64_t, bool>;
  static Key key_of(bool backward, const sdpa::Dims& d);
  cudnnHandle_t handle();

  const CudnnApi* api_;
  int device_;
  cudnnHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;  // the last set on handle_
  std::map<Key, Entry> entries_;
};

}  // namespace par::cuda
