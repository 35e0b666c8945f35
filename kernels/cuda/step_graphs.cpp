// StepGraphs (step_graphs.h): recording a step from a stream, keeping its instance per key,
// updating it in place, launching it.
#include "kernels/cuda/step_graphs.h"

#include <stdexcept>

#include "core/error.h"
#include "kernels/cuda/cuda_check.h"

namespace par::cuda {

StepGraphs::~StepGraphs() {
  if (capturing_) abort();
  for (auto& [key, k] : kept_) cudaGraphExecDestroy(k.exec);
}

void StepGraphs::begin() {
  PAR_ASSERT(!capturing_, "begin_graph: a step is already being recorded");
  // Thread-local: another thread's unrelated CUDA calls do not break this recording.
  PAR_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
}

void StepGraphs::abort() {
  if (!capturing_) return;
  capturing_ = false;
  ++stats_.refused;  // refused by the backend, or failed on the way
  cudaGraph_t g = nullptr;
  cudaStreamEndCapture(stream_, &g);
  if (g) cudaGraphDestroy(g);
  cudaGetLastError();  // the capture's error, reported by the caller
}

void StepGraphs::end(uint64_t key, bool replayable) {
  PAR_ASSERT(capturing_, "end_graph without begin_graph, or after the recording was discarded "
                         "(a buffer freed inside it)");
  capturing_ = false;
  cudaGraph_t g = nullptr;
  PAR_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
  auto it = kept_.find(key);
  if (it != kept_.end()) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(it->second.exec, g, &info) == cudaSuccess) {
      ++stats_.updated;
    } else {  // another topology: instantiate afresh
      cudaGetLastError();
      cudaGraphExecDestroy(it->second.exec);
      kept_.erase(it);
      it = kept_.end();
    }
  }
  if (it == kept_.end()) {
    Kept k;
    const cudaError_t e = cudaGraphInstantiate(&k.exec, g, 0);
    cudaGraphDestroy(g);
    PAR_CUDA_CHECK(e);
    it = kept_.emplace(key, k).first;
    ++stats_.instantiated;
  } else {
    cudaGraphDestroy(g);
  }
  it->second.replayable = replayable;
  PAR_CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream_));
  ++stats_.launched;
}

bool StepGraphs::replay(uint64_t key) {
  PAR_ASSERT(!capturing_, "replay_graph inside a recording");
  const auto it = kept_.find(key);
  if (it == kept_.end()) return false;
  if (!it->second.replayable)
    throw std::runtime_error(cat("replay_graph: the step kept under key ", key,
                                 " uploads from the host; a replayed step must take its inputs "
                                 "from device buffers (upload them before replay_graph)"));
  PAR_CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream_));
  ++stats_.launched;
  return true;
}

}  // namespace par::cuda
