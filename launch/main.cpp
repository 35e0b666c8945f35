// `par`: one binary, one subcommand per job (prep, train, eval, export, bench, ...).
#include <glog/logging.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "core/fatal_signals.h"
#include "kernels/cpu/blas_setup.h"
#include "launch/commands.h"
#include "launch/job.h"
#include "launch/version.h"
#include "parallel/mpi_environment.h"

namespace {

struct Entry {
  const char* name;
  const char* summary;
  int (*run)(int, char**);
  bool distributed;  // runs as an MPI job of several ranks; the others are one process
};

const Entry kCommands[] = {
    {"prep", "write token shards (HDF5) from bytes, a token array, or the copy and mirror tasks",
     par::cmd_prep, false},
    {"train", "train a model on token shards, with validation and checkpoints", par::cmd_train,
     true},
    {"eval", "score shards with a checkpoint (block evaluation); last line is JSON", par::cmd_eval,
     false},
    {"export", "write a checkpoint's weights in the public single-file format", par::cmd_export,
     false},
    {"inspect", "show a checkpoint: step, layout, model, tensors with checksums", par::cmd_inspect,
     false},
    {"sample", "generate continuations of prompts (cached decoding)", par::cmd_sample, false},
    {"bench", "time training steps (tokens/s, model FLOP/s vs sgemm, peak memory) or generation",
     par::cmd_bench,
     true},
};

// A one-process command started as several ranks would run whole in each, the ranks
// writing the same files at once (HDF5's lock then fails one of them with a misleading
// error) and printing every result once per rank. Say so once, from rank 0. A process
// that is alone but inherited a launcher's environment (a script run by one rank) says so
// with PAR_ONE_PROCESS=1.
int refuse_several_ranks(const std::string& name, int ranks) {
  if (par::MpiEnvironment::launcher_world_rank() == 0)
    std::cerr << par::cat("par ", name, ": error: par ", name, " runs as one process, but it "
                          "was started as ", ranks, " ranks (mpirun or srun): run it without the "
                          "launcher, or with -n 1 (a process alone in a launcher's environment: "
                          "set PAR_ONE_PROCESS=1)\n")
              << std::flush;
  return 2;
}

// What a command printed is its result (samples, an evaluation's JSON): output that did not
// reach its file (a full disk, a closed pipe) fails the command, as it would any write.
void check_stdout(const std::string& name) {
  std::cout.flush();
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;
  const int err = errno;
  if (flushed && !std::ferror(stdout) && !std::cout.fail()) return;
  throw par::UserError(par::cat("cannot write the output of par ", name, " (standard output)",
                                err ? par::cat(": ", std::strerror(err))
                                    : std::string(": a full disk, or a closed pipe?")));
}

void print_usage(std::ostream& os) {
  os << "usage: par <command> [options]   (par <command> --help for its options;"
        " par --version)\n\n"
        "Trains Perceiver AR models on long contexts.\n\ncommands:\n";
  for (const Entry& e : kCommands) os << "  " << e.name << std::string(10 - std::strlen(e.name), ' ') << e.summary << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  par::select_blas_kernels(argv);
  // A write past the file-size limit (ulimit -f, a batch system's) then fails with EFBIG,
  // which every checked write reports as an error naming the file, instead of a signal
  // that kills the process without a word and leaves a half-written checkpoint.
  std::signal(SIGXFSZ, SIG_IGN);
  // A crash says so in one line, naming the file HDF5 was reading where it was.
  par::install_fatal_signal_message();
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  try {
    if (argc < 2) {  // a mistake, not a request: the usage goes with the error, to stderr
      std::cerr << "par: error: no command given\n\n";
      print_usage(std::cerr);
      return 2;
    }
    if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
      print_usage(std::cout);
      check_stdout("--help");
      return 0;
    }
    if (!std::strcmp(argv[1], "--version")) {
      std::cout << "par, " << par::version() << "\n";
      check_stdout("--version");
      return 0;
    }
  } catch (const par::UserError& err) {
    std::cerr << par::cat("par: error: ", err.what(), "\n") << std::flush;
    return 2;
  }
  const std::string name = argv[1];
  // What errors are said by: prep's mode too ("par prep copy: error: ..."), as its help says.
  const std::string speaker =
      name == "prep" && argc > 2 && par::is_prep_mode(argv[2]) ? par::cat(name, " ", argv[2]) : name;
  for (const Entry& e : kCommands) {
    if (name != e.name) continue;
    if (const int ranks = par::MpiEnvironment::launcher_world_size();
        !e.distributed && ranks > 1 && !par::MpiEnvironment::alone_by_choice())
      return refuse_several_ranks(name, ranks);
    try {
      const int status = e.run(argc - 1, argv + 1);
      check_stdout(name);
      return status;
    } catch (const par::JobStopped& stop) {
      return stop.code;  // every rank has stopped; the failing ones said why
    } catch (const par::UserError& err) {
      // Each line in one write: under mpirun, another rank's lines or mpirun's abort
      // banner can otherwise land inside it.
      std::cerr << par::cat("par ", speaker, ": error: ", err.what(), "\n") << std::flush;
      return 2;
    } catch (const std::bad_alloc&) {
      // The memory plans count what train and eval allocate; what they do not (sample's
      // caches, a checkpoint's copy in inspect or export, a host that others share) ends
      // here.
      std::cerr << par::cat("par ", speaker, ": error: out of memory: an allocation failed\n")
                << std::flush;
      return 2;
    } catch (const std::length_error& err) {
      // A container asked for more than it can ever hold: a size past any machine.
      std::cerr << par::cat("par ", speaker, ": error: out of memory: a buffer of an impossible "
                            "size was asked for (", err.what(), ")\n")
                << std::flush;
      return 2;
    } catch (const std::exception& err) {
      std::cerr << par::cat("par ", speaker, ": internal error: ", err.what(), "\n") << std::flush;
      return 1;
    }
  }
  std::cerr << "par: error: unknown command '" << name << "'\n\n";
  print_usage(std::cerr);
  return 2;
}
