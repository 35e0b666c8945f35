#include "kernels/cuda/device_wait.h"

#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/poll_wait.h"
#include "kernels/cuda/cuda_check.h"

namespace par::cuda {

namespace {

struct Registry {
  std::mutex mutex;
  std::map<int, WaitWatch> watches;
  int next = 0;
  double timeout = 0;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: communicators may outlive statics
  return *r;
}

struct SteadyClock {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  double now() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  void pause(double s) {
    if (s <= 0) return std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::duration<double>(s));
  }
};

// Aborts every registered communicator and forgets them.
void abort_all() {
  std::map<int, WaitWatch> watches;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    watches.swap(r.watches);
  }
  for (auto& [handle, w] : watches) w.abort();
}

}  // namespace

int add_wait_watch(WaitWatch watch) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const int handle = r.next++;
  r.watches.emplace(handle, std::move(watch));
  return handle;
}

void remove_wait_watch(int handle) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.watches.erase(handle);
}

void set_wait_timeout(double seconds) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.timeout = seconds;
}

void wait_for_stream(cudaStream_t stream, const char* what) {
  Registry& r = registry();
  double timeout = 0;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    if (r.watches.empty()) {
      PAR_CUDA_CHECK(cudaStreamSynchronize(stream));
      return;
    }
    timeout = r.timeout;
  }
  cudaError_t status = cudaSuccess;
  auto done = [&] {
    status = cudaStreamQuery(stream);
    return status != cudaErrorNotReady;
  };
  auto failure = [&] {
    std::vector<std::function<std::string()>> checks;
    {
      std::lock_guard<std::mutex> lock(r.mutex);
      for (auto& [handle, w] : r.watches) checks.push_back(w.failure);
    }
    for (auto& check : checks)
      if (std::string why = check(); !why.empty()) return why;
    return std::string();
  };
  SteadyClock clock;
  const WaitOutcome out = poll_wait(done, failure, timeout, clock);
  switch (out.end) {
    case WaitEnd::kDone:
      PAR_CUDA_CHECK(status);  // the error of the stream's work, if it had one
      return;
    case WaitEnd::kFailed:
      abort_all();
      throw std::runtime_error(cat("waiting for the GPU (", what, "): ", out.why,
                                   "; the NCCL communicators are aborted (", where(), ")"));
    case WaitEnd::kTimedOut:
      abort_all();
      throw std::runtime_error(cat(
          "waiting for the GPU (", what, ") took more than --collective-timeout ", timeout,
          " s: a collective is stuck, so another rank, its GPU or the network hangs; the NCCL "
          "communicators are aborted (", where(), ")"));
  }
}

}  // namespace par::cuda
