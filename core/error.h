// Error kinds shared by every part of par.
//
// A UserError is a problem with what the user gave us (an option, a config, a file): the
// binary prints its message as one line and exits with status 2, without a stack trace.
// Anything else that escapes is a bug or an environment failure and exits with status 1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace par {

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Builds a message from stream pieces: fail_user("shard ", path, " is empty").
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail_user(const Args&... args) {
  throw UserError(cat(args...));
}

}  // namespace par

// Internal invariants: a failure here is a bug in par, not in the user's input.
#define PAR_ASSERT(cond, ...)                                                         \
  do {                                                                                \
    if (!(cond))                                                                      \
      throw std::logic_error(::par::cat(__FILE__, ":", __LINE__, ": ", #cond, " ",    \
                                        ##__VA_ARGS__));                              \
  } while (0)
