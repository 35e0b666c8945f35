// This thread's cuDNN handle and attention plans per device (cudnn_plans.h).
#include "kernels/cuda/cudnn_plans.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cctype>
#include <iterator>

#include "core/error.h"

namespace par::cuda {

namespace {
std::atomic<int64_t> plans_built{0};
thread_local std::string refusal_for_tests;
}  // namespace

void CudnnPlans::refuse_builds_for_tests(std::string refusal) {
  refusal_for_tests = std::move(refusal);
}

bool cudnn_refusal_is_transient(const std::string& refusal) {
  // cuDNN's statuses: CUDNN_STATUS_ALLOC_FAILED (8), CUDNN_STATUS_INTERNAL_ERROR_{HOST,
  // DEVICE}_ALLOCATION_FAILED (9); CUDA's: cudaErrorMemoryAllocation, "out of memory".
  std::string lower = refusal;
  for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  return refusal.find("ALLOC") != std::string::npos ||
         lower.find("out of memory") != std::string::npos ||
         lower.find("memoryallocation") != std::string::npos;
}

CudnnPlans& CudnnPlans::of_this_thread(const CudnnApi& api, int device) {
  // Leaked on purpose (cudnn_plans.h: why never destroyed).
  thread_local auto* per_device = new std::map<int, std::unique_ptr<CudnnPlans>>;
  std::unique_ptr<CudnnPlans>& p = (*per_device)[device];
  if (!p) p.reset(new CudnnPlans(api, device));
  PAR_ASSERT(p->api_ == &api, "cudnn plans: one cuDNN per process");
  return *p;
}

int64_t CudnnPlans::built() { return plans_built.load(); }

CudnnPlans::Key CudnnPlans::key_of(bool backward, const sdpa::Dims& d) {
  return Key{backward, d.batch,         d.heads,          d.nq,           d.nk,
             d.head_dim, d.scale,       d.causal,         d.cudnn_version, d.kv_example_rows,
             d.deterministic};
}

cudnnHandle_t CudnnPlans::handle() {
  if (handle_) return handle_;
  // cudnnCreate binds the handle to the current device.
  if (const cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    cudaGetLastError();  // not left for a later check to find
    throw CudnnError(cat("cuDNN: cannot select device ", device_, ": ", cudaGetErrorString(e)));
  }
  cudnnHandle_t h = nullptr;
  const cudnnStatus_t st = api_->Create(&h);
  if (st != CUDNN_STATUS_SUCCESS) throw CudnnError(cat("cudnnCreate: ", api_->describe(st)));
  handle_ = h;
  return handle_;
}

const CudnnPlans::Entry* CudnnPlans::find(bool backward, const sdpa::Dims& d) const {
  const auto it = entries_.find(key_of(backward, d));
  return it == entries_.end() ? nullptr : &it->second;
}

const CudnnPlans::Entry& CudnnPlans::get(bool backward, const sdpa::Dims& d, bool* made) {
  if (made) *made = false;
  const Key key = key_of(backward, d);
  int tries = 1;
  int64_t wait = kFirstRetryAfter;
  if (auto it = entries_.find(key); it != entries_.end()) {
    Entry& kept = it->second;
    if (!kept.transient || --kept.calls_until_retry > 0) return kept;
    tries = kept.tries + 1;
    wait = std::min(kLongestRetryWait, kept.retry_wait * 2);
    entries_.erase(it);
  }
  Entry e;
  auto start = std::chrono::steady_clock::now();
  try {
    if (!refusal_for_tests.empty()) throw CudnnError(refusal_for_tests);
    const cudnnHandle_t h = handle();
    start = std::chrono::steady_clock::now();  // the plan's time, not the handle's
    const sdpa::Graph g = backward ? sdpa::describe_backward(d) : sdpa::describe_forward(d);
    e.graph = std::make_unique<CudnnGraph>(*api_, g, h);
    e.graph->build_plan(h);
    ++plans_built;
  } catch (const CudnnError& err) {
    e.graph.reset();
    e.refusal = err.what();
  }
  e.build_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (made) *made = true;
  e.transient = !e.graph && cudnn_refusal_is_transient(e.refusal);
  e.tries = tries;
  e.retry_wait = e.calls_until_retry = e.transient ? wait : 0;
  return entries_.emplace(key, std::move(e)).first->second;
}

void CudnnPlans::forget_transient() {
  for (auto it = entries_.begin(); it != entries_.end();)
    it = it->second.transient ? entries_.erase(it) : std::next(it);
}

void CudnnPlans::run(const CudnnGraph& g, cudaStream_t stream,
                     const std::vector<std::pair<int64_t, void*>>& bound, void* workspace) {
  const cudnnHandle_t h = handle();
  if (stream != stream_) {
    const cudnnStatus_t st = api_->SetStream(h, stream);
    // A handle left on another stream would run this graph unordered with the caller's work.
    if (st != CUDNN_STATUS_SUCCESS) throw CudnnError(cat("cudnnSetStream: ", api_->describe(st)));
    stream_ = stream;
  }
  g.execute(h, bound, workspace);
}

void CudnnPlans::forget_stream(cudaStream_t stream) noexcept {
  if (!handle_ || stream_ != stream || stream == nullptr) return;
  if (api_->SetStream(handle_, nullptr) == CUDNN_STATUS_SUCCESS) stream_ = nullptr;
}

}  // namespace par::cuda
