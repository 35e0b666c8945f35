// Running the real `par` binary from a test: exit status, stdout and stderr.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <cstdlib>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint/model_file.h"
#include "core/init.h"
#include "core/param_layout.h"
#include "data/prep.h"
#include "tests/temp_dir.h"

namespace par::testing_util {

struct ParRun {
  int rc;
  std::string out, err;
};

// Runs `par ARGS` (ARGS already shell-quoted where needed); output files go in `dir`.
inline ParRun run_par(const TempDir& dir, const std::string& args) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string cmd = cat("'", PAR_BINARY, "' ", args, " >'", out, "' 2>'", err, "'");
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

// Runs a shell command line; output files go in `dir`.
inline ParRun run_shell(const TempDir& dir, const std::string& cmd) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const int status = std::system(cat(cmd, " >'", out, "' 2>'", err, "'").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

// A command line (`sh -c`) running in the background in a process group of its own, its
// output in `log`; killed with its group if the test ends before it does.
class Background {
 public:
  Background(const std::string& cmd, const std::string& log) {
    pid_ = fork();
    PAR_ASSERT(pid_ >= 0, "fork");
    if (pid_ == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c", cat("exec ", cmd, " >'", log, "' 2>&1").c_str(), nullptr);
      _exit(127);
    }
    setpgid(pid_, pid_);
  }
  ~Background() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int sig) const { ::kill(pid_, sig); }
  // The exit status (128 + N when killed by signal N); waits at most `seconds`, then -1.
  int wait(double seconds = 120) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

// Polls `done` every 2 ms for at most `seconds`; whether it came true.
template <typename F>
bool wait_until(F&& done, double seconds = 60) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// `mpirun` of n ranks of `par ARGS` on this machine: oversubscribed, one thread per rank,
// idle threads asleep.
inline std::string mpirun(int n, const std::string& args) {
  return cat("mpirun --oversubscribe --allow-run-as-root -np ", n,
             " -x OMP_WAIT_POLICY=passive -x OMP_NUM_THREADS=1 '", PAR_BINARY, "' ", args);
}

inline std::string quote(const std::string& s) { return "'" + s + "'"; }
inline const std::string& configs_dir() {
  static const std::string dir = std::string(PAR_SOURCE_DIR) + "/configs/";
  return dir;
}

// `par train` of configs/tiny.ini on one thread: the reliability tests' run.
inline std::string tiny_train_args(const std::string& data, const std::string& out, int64_t steps) {
  return cat("train --config '", configs_dir(), "tiny.ini' --data '", data, "' --out '", out,
             "' --steps ", steps, " --threads 1");
}

// A small byte-level model (d 32, N 64, M 16, one layer): enough for eval and sample to
// run in a blink.
inline ModelConfig small_model_config() {
  ModelConfig c;
  c.d_model = 32;
  c.context_length = 64;
  c.num_latents = 16;
  c.num_layers = 1;
  c.cross_heads = c.self_heads = 2;
  c.mlp_factor = 2;
  return c;
}

// The model `c` with random weights, exported to `path`.
inline void write_random_model(const std::string& path, const ModelConfig& c) {
  std::vector<float> params;
  init_parameters(ParamLayout(c), 1, params);
  write_export(path, c, 0, params.data());
}

inline void write_small_model(const std::string& path) {
  write_random_model(path, small_model_config());
}

// Copy-task shards in dir/data (examples of `length` tokens); returns the train pattern.
inline std::string copy_task_data(const TempDir& dir, int64_t length, int64_t examples) {
  MirrorPrepOptions o;
  o.length = length;
  o.examples = examples;
  o.val_examples = 4;
  o.reverse = false;
  o.common.out_dir = dir.file("data");
  std::ostringstream log;
  prep_mirror(o, log);
  return o.common.out_dir + "/train-*.h5";
}

// The ids under `key` in the first JSON line of `out` that has them (`par sample --format
// json`: "prompt", "generated").
inline std::vector<int32_t> json_ids(const std::string& out, const std::string& key) {
  const std::regex re("\"" + key + "\": \\[([0-9, ]*)\\]");
  std::smatch m;
  std::vector<int32_t> ids;
  if (!std::regex_search(out, m, re)) return ids;
  std::istringstream in(m[1].str());
  for (std::string t; std::getline(in, t, ',');) ids.push_back(std::stoi(t));
  return ids;
}

// The "loss" of every line of a metrics.jsonl that has one, as written.
inline std::vector<std::string> logged_losses(const std::string& metrics) {
  std::vector<std::string> out;
  std::istringstream in(slurp(metrics));
  const std::regex re("\"loss\": ([^,}]+)");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, re)) out.push_back(m[1]);
  }
  return out;
}

}  // namespace par::testing_util

// A user error: exit status 2, `part` in the message, and no internal error.
#define EXPECT_USER_ERROR(run, part)                                       \
  do {                                                                     \
    const ::par::testing_util::ParRun r_ = (run);                          \
    EXPECT_EQ(r_.rc, 2) << r_.err;                                         \
    EXPECT_NE(r_.err.find(part), std::string::npos) << r_.err;             \
    EXPECT_EQ(r_.err.find("internal error"), std::string::npos) << r_.err; \
  } while (0)
