#include "launch/stop_request.h"

#include <csignal>

namespace par {

namespace {

// A signal handler can only talk through a global flag; this is the one place par keeps
// process-wide state, and only the handler writes it.
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_stop_signal(int sig) { g_signal = sig; }

struct sigaction g_previous_usr1, g_previous_term;

}  // namespace

StopRequest::StopRequest(double max_minutes)
    : max_seconds_(max_minutes * 60), start_(std::chrono::steady_clock::now()) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // slow system calls continue; the loop polls the flag
  sigaction(SIGUSR1, &sa, &g_previous_usr1);
  sigaction(SIGTERM, &sa, &g_previous_term);
}

StopRequest::~StopRequest() {
  sigaction(SIGUSR1, &g_previous_usr1, nullptr);
  sigaction(SIGTERM, &g_previous_term, nullptr);
}

StopRequest::Reason StopRequest::agreed(Communicator& world) const {
  int64_t reason = g_signal ? kSignal : kNone;
  if (world.rank() == 0 && max_seconds_ > 0 &&
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() >=
          max_seconds_)
    reason = std::max<int64_t>(reason, kTimeLimit);
  return Reason(world.all_reduce_value(reason, ReduceOp::kMax));
}

const char* StopRequest::describe(Reason r) {
  switch (r) {
    case kSignal: return "a stop signal (SIGUSR1/SIGTERM)";
    case kTimeLimit: return "the --max-minutes limit";
    default: return "nothing";
  }
}

}  // namespace par
