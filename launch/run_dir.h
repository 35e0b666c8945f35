// The run directory (--out): where a training run keeps its log, metrics and checkpoint.
//
//   OUT/train.log       everything the run logged (also on stderr), and its fatal error
//   OUT/metrics.jsonl   one JSON object per logged step and per validation
//   OUT/config.ini      the resolved options of the latest start
//   OUT/lock            held while a run uses the directory (launch/run_lock.h)
//   OUT/checkpoints/    checkpoint directories step-N (checkpoint/checkpoint_dir.h)
//
// Every write is checked: one that fails (a full disk) ends the run with a UserError
// naming the file. Log lines are written from inside glog, which cannot take an
// exception, so a failed one is kept and thrown by check(), which the training loop calls
// every step.
#pragma once

#include <glog/logging.h>

#include <memory>
#include <string>

#include "data/checked_file.h"

namespace par {

class RunLock;

class RunDir {
 public:
  // Creates the directory (and parents) if needed; UserError if it cannot. `lock`, the
  // directory's lock when this process holds it, is checked by check() too.
  explicit RunDir(std::string path, const RunLock* lock = nullptr);
  ~RunDir();
  RunDir(const RunDir&) = delete;
  RunDir& operator=(const RunDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

  // Appends one line to metrics.jsonl.
  void metrics(const std::string& json_line);
  void write_config(const std::string& ini_text);
  // Throws the first failed write of a log line, if any, or a lock file taken away.
  void check() const;
  // Appends the line that ends the run to train.log (as far as the disk allows).
  void record_fatal(const std::string& line);

 private:
  class LogFile;
  std::string path_;
  const RunLock* lock_;
  std::unique_ptr<AppendFile> metrics_;
  std::unique_ptr<LogFile> log_;
};

bool file_exists(const std::string& path);

}  // namespace par
