// The run directory (--out): where a training run keeps its log, metrics and checkpoint.
//
//   OUT/train.log       everything the run logged (also on stderr)
//   OUT/metrics.jsonl   one JSON object per logged step and per validation
//   OUT/config.ini      the resolved options of the latest start
//   OUT/checkpoints/    checkpoint directories step-N (checkpoint/checkpoint_dir.h)
#pragma once

#include <glog/logging.h>

#include <fstream>
#include <string>

namespace par {

class RunDir {
 public:
  // Creates the directory (and parents) if needed; UserError if it cannot.
  explicit RunDir(std::string path);
  ~RunDir();
  RunDir(const RunDir&) = delete;
  RunDir& operator=(const RunDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

  // Appends one line to metrics.jsonl and flushes it.
  void metrics(const std::string& json_line);
  void write_config(const std::string& ini_text);

 private:
  class LogFile;
  std::string path_;
  std::ofstream metrics_;
  LogFile* log_ = nullptr;
};

bool file_exists(const std::string& path);

}  // namespace par
