// Messages of the CUDA backend for the run's log. The backend does not link glog (it is a
// plugin shared with tests); par hands it a sink that forwards to its log
// (launch/backend.cpp), and without one the messages go to stderr.
#pragma once

#include <string>

namespace par::cuda {

enum class LogLevel { kInfo, kWarning };
using LogSink = void (*)(LogLevel level, const std::string& message);

void set_log_sink(LogSink sink);  // null restores stderr
void backend_log(LogLevel level, const std::string& message);

}  // namespace par::cuda
