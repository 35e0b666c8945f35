#include "core/fatal_signals.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace par {

namespace {

constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
constexpr size_t kContextBytes = 768;

// The context, written only by its thread outside the handler; the handler only reads it.
thread_local char t_context[kContextBytes] = {0};

struct sigaction g_previous[NSIG];

void say(const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    const ssize_t w = write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= size_t(w);
  }
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGSEGV: return "SIGSEGV (a bad memory access)";
    case SIGBUS: return "SIGBUS (a bad memory access)";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL (an instruction this CPU lacks?)";
    case SIGABRT: return "SIGABRT";
    default: return "a fatal signal";
  }
}

// Async-signal-safe: write(2) and sigaction only.
extern "C" void on_fatal_signal(int sig) {
  say("par: died of ");
  say(signal_name(sig));
  if (t_context[0]) {
    say(" while ");
    say(t_context);
    say(": a damaged file can crash HDF5; check that file (h5dump), or replace it\n");
  } else {
    say(": a bug in par; please report it with the command line and the log\n");
  }
  // The handler before ours takes it from here (it may print a stack trace), or the
  // default action; the signal, blocked while this runs, comes again once it returns.
  sigaction(sig, &g_previous[sig], nullptr);
  raise(sig);
}

}  // namespace

void install_fatal_signal_message() {
  for (int sig : kSignals) {
    struct sigaction now {};
    if (sigaction(sig, nullptr, &now) != 0) continue;
    if (!(now.sa_flags & SA_SIGINFO) && now.sa_handler == on_fatal_signal) continue;
    struct sigaction ours {};
    ours.sa_handler = on_fatal_signal;
    sigemptyset(&ours.sa_mask);
    if (sigaction(sig, &ours, &g_previous[sig]) != 0) continue;
  }
}

CrashContext::CrashContext(const std::string& what) : previous_(t_context) {
  const size_t n = std::min(what.size(), kContextBytes - 1);
  std::memcpy(t_context, what.data(), n);
  t_context[n] = '\0';
}

CrashContext::~CrashContext() {
  std::memcpy(t_context, previous_.c_str(), previous_.size() + 1);
}

}  // namespace par
