// One line on stderr when par dies of a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
// SIGABRT), saying what the thread was doing where that is known: HDF5 crashes on some
// damaged files (a flipped bit in a variable-length string's heap, with the HDF5 1.10 of
// Debian 12) instead of returning an error, and a bare "Segmentation fault" does not say
// which of a data set's files to check. Without such a context the line says that par
// crashed, for a bug report.
#pragma once

#include <string>

namespace par {

// Installs the handler for the fatal signals, over whatever handler each has now, which it
// calls after its line (an MPI library's stack trace), or the default action. Idempotent:
// call it again after a library that installs handlers of its own (MPI_Init).
void install_fatal_signal_message();

// While it lives, a fatal signal of this thread names `what` ("reading file F: dataset
// 'tokens'") as what crashed. Nests: the previous context comes back when it ends.
class CrashContext {
 public:
  explicit CrashContext(const std::string& what);
  ~CrashContext();
  CrashContext(const CrashContext&) = delete;
  CrashContext& operator=(const CrashContext&) = delete;

 private:
  std::string previous_;
};

}  // namespace par
