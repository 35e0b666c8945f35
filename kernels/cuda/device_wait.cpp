#include "kernels/cuda/device_wait.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unistd.h>
#include <vector>

#include "core/error.h"
#include "core/poll_wait.h"
#include "kernels/cuda/cuda_check.h"

namespace par::cuda {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

[[noreturn]] void end_process(const std::string& why) {
  std::fputs(cat("par: ", where(), ": ", why, "; ending this rank\n").c_str(), stderr);
  std::fflush(stderr);
  ::_exit(1);
}

// The communicators, and a thread that asks them for asynchronous errors while there are
// any. The main thread's waits ask too (and end with an error the caller can report); the
// thread is for when the main thread waits nowhere: blocked in a kernel launch behind a
// full queue, or busy on the host. It gives the main thread kGrace to deal with an error
// itself, then ends the process.
class Registry {
 public:
  static constexpr double kGrace = 5, kLook = 0.1;
  // How long aborting the communicators may take before the process ends instead:
  // ncclCommAbort frees memory, which waits for every kernel on the device.
  static constexpr double kAbortLimit = 60;

  int add(WaitWatch w) {
    std::lock_guard<std::mutex> lock(mutex_);
    const int handle = next_++;
    watches_.emplace(handle, std::move(w));
    if (!thread_.joinable()) {
      stop_ = false;
      thread_ = std::thread([this] { run(); });
    }
    return handle;
  }

  void remove(int handle) {
    std::thread done;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      watches_.erase(handle);
      if (!watches_.empty() || !thread_.joinable()) return;
      stop_ = true;
      done.swap(thread_);
    }
    wake_.notify_all();
    done.join();
  }

  void set_timeout(double s) {
    std::lock_guard<std::mutex> lock(mutex_);
    timeout_ = s;
  }
  double timeout() {
    std::lock_guard<std::mutex> lock(mutex_);
    return timeout_;
  }
  bool empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    return watches_.empty();
  }

  // "" while every communicator is well. Under the lock: a communicator is never checked
  // while it is being aborted or destroyed (both take it out of the map first).
  std::string failure() {
    std::lock_guard<std::mutex> lock(mutex_);
    return failure_locked();
  }

  // Aborts every communicator and forgets them. All at once, each from its own thread:
  // one abort waits for the device, so aborted one by one, the first could wait for ever
  // on a kernel of the next.
  void abort_all() {
    std::map<int, WaitWatch> watches;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      watches.swap(watches_);
      aborting_since_ = Clock::now();
      aborting_ = true;
    }
    std::vector<std::thread> aborts;
    for (auto& [handle, w] : watches) aborts.emplace_back([&w] { w.abort(); });
    for (auto& t : aborts) t.join();
    std::lock_guard<std::mutex> lock(mutex_);
    aborting_ = false;
  }

 private:
  // failure(), with mutex_ held.
  std::string failure_locked() {
    for (auto& [handle, w] : watches_)
      if (std::string why = w.failure(); !why.empty()) return why;
    return "";
  }

  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    bool failing = false;  // a failure has been left alone since failing_since
    Clock::time_point failing_since;
    while (!wake_.wait_for(lock, std::chrono::duration<double>(kLook), [&] { return stop_; })) {
      if (aborting_) {
        if (seconds_since(aborting_since_) > kAbortLimit)
          end_process(cat("aborting the NCCL communicators has taken more than ", kAbortLimit, " s"));
        continue;
      }
      const std::string why = failure_locked();
      if (why.empty()) {
        failing = false;
        continue;
      }
      if (!failing) failing_since = Clock::now();
      failing = true;
      if (seconds_since(failing_since) > kGrace)
        end_process(cat(why, " (seen while no wait for the GPU was in progress)"));
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::map<int, WaitWatch> watches_;
  int next_ = 0;
  double timeout_ = 0;
  bool stop_ = false;
  bool aborting_ = false;
  Clock::time_point aborting_since_;
  std::thread thread_;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: communicators may outlive statics
  return *r;
}

struct SteadyClock {
  Clock::time_point t0 = Clock::now();
  double now() const { return seconds_since(t0); }
  void pause(double s) {
    if (s <= 0) return std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::duration<double>(s));
  }
};

}  // namespace

int add_wait_watch(WaitWatch watch) { return registry().add(std::move(watch)); }

void remove_wait_watch(int handle) { registry().remove(handle); }

void set_wait_timeout(double seconds) { registry().set_timeout(seconds); }

void wait_for_stream(cudaStream_t stream, const char* what) {
  Registry& r = registry();
  if (r.empty()) {
    PAR_CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  const double timeout = r.timeout();
  cudaError_t status = cudaSuccess;
  auto done = [&] {
    status = cudaStreamQuery(stream);
    return status != cudaErrorNotReady;
  };
  SteadyClock clock;
  const WaitOutcome out = poll_wait(done, [&] { return r.failure(); }, timeout, clock);
  switch (out.end) {
    case WaitEnd::kDone:
      PAR_CUDA_CHECK(status);  // the error of the stream's work, if it had one
      return;
    case WaitEnd::kFailed:
      r.abort_all();
      throw std::runtime_error(cat("waiting for the GPU (", what, "): ", out.why,
                                   "; the NCCL communicators are aborted (", where(), ")"));
    case WaitEnd::kTimedOut:
      r.abort_all();
      throw std::runtime_error(cat(
          "waiting for the GPU (", what, ") took more than --collective-timeout ", timeout,
          " s: a collective is stuck, so another rank, its GPU or the network hangs; the NCCL "
          "communicators are aborted (", where(), ")"));
  }
}

void wait_if_watched(cudaStream_t stream, const char* what) {
  if (!registry().empty()) wait_for_stream(stream, what);
}

}  // namespace par::cuda
