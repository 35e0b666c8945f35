// CUDA graphs of a repeated step (a decoding step, issue 17): the work a CudaOps is given
// between begin() and end(key) is recorded from its stream instead of run, kept under the
// caller's key (its name for the step's shapes), and launched; a later recording under the
// same key updates the kept instance in place when only kernel parameters changed
// (cudaGraphExecUpdate: pointers, sizes, grid), which is much cheaper than instantiating;
// replay(key) launches the kept graph again without recording anything. Internal to
// kernels/cuda; the public face is in cuda_ops.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <unordered_map>

#include "kernels/cuda/cuda_ops.h"

namespace par::cuda {

class StepGraphs {
 public:
  explicit StepGraphs(cudaStream_t stream) : stream_(stream) {}
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  bool capturing() const { return capturing_; }
  void begin();
  // `replayable`: whether replay(key) may launch the graph again (false when it copies
  // from host memory that changes between steps).
  void end(uint64_t key, bool replayable);
  // Ends a capture and discards it (after an error inside it).
  void abort();
  // false when nothing is kept under key; std::runtime_error when it is not replayable.
  bool replay(uint64_t key);
  // No kept graph is replayed until recorded again (a buffer it may use was freed); they
  // stay for updates in place.
  void forget_replays() {
    for (auto& [key, k] : kept_) k.replayable = false;
  }
  // Whether replay(key) would launch a kept graph.
  bool replayable(uint64_t key) const {
    const auto it = kept_.find(key);
    return it != kept_.end() && it->second.replayable;
  }
  const GraphStats& stats() const { return stats_; }

 private:
  struct Kept {
    cudaGraphExec_t exec = nullptr;
    bool replayable = false;
  };
  cudaStream_t stream_;
  bool capturing_ = false;
  std::unordered_map<uint64_t, Kept> kept_;
  GraphStats stats_;
};

}  // namespace par::cuda
