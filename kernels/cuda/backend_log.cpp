// The CUDA backend's log sink (backend_log.h).
#include "kernels/cuda/backend_log.h"

#include <atomic>
#include <cstdio>

namespace par::cuda {

namespace {

std::atomic<LogSink> g_sink{nullptr};

}  // namespace

void set_log_sink(LogSink sink) { g_sink.store(sink); }

void backend_log(LogLevel level, const std::string& message) {
  if (LogSink sink = g_sink.load()) {
    sink(level, message);
    return;
  }
  std::fprintf(stderr, "par cuda %s: %s\n", level == LogLevel::kWarning ? "warning" : "info",
               message.c_str());
}

}  // namespace par::cuda
