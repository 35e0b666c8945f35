#include "launch/run_dir.h"

#include <sys/stat.h>

#include <filesystem>

#include "core/error.h"

namespace par {

// Copies every log line of the run into OUT/train.log.
class RunDir::LogFile : public google::LogSink {
 public:
  explicit LogFile(const std::string& path) : out_(path, std::ios::app) {}
  void send(google::LogSeverity severity, const char* full_filename, const char* base_filename,
            int line, const google::LogMessageTime& time, const char* message,
            size_t message_len) override {
    (void)full_filename;
    out_ << google::LogSink::ToString(severity, base_filename, line, time, message, message_len)
         << "\n";
    out_.flush();
  }
  bool ok() const { return bool(out_); }

 private:
  std::ofstream out_;
};

bool file_exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

RunDir::RunDir(std::string path) : path_(std::move(path)) {
  std::error_code ec;
  std::filesystem::create_directories(path_, ec);
  if (ec || !std::filesystem::is_directory(path_))
    fail_user("cannot create the run directory --out ", path_, ": ", ec.message());
  metrics_.open(file("metrics.jsonl"), std::ios::app);
  if (!metrics_) fail_user("cannot write ", file("metrics.jsonl"));
  log_ = new LogFile(file("train.log"));
  google::AddLogSink(log_);
}

RunDir::~RunDir() {
  google::RemoveLogSink(log_);
  delete log_;
}

void RunDir::metrics(const std::string& json_line) {
  metrics_ << json_line << "\n";
  metrics_.flush();
}

void RunDir::write_config(const std::string& ini_text) {
  const std::string tmp = file("config.ini.tmp");
  {
    std::ofstream out(tmp);
    out << "# Resolved options of the latest start of this run (par train).\n" << ini_text;
    if (!out) fail_user("cannot write ", tmp);
  }
  std::filesystem::rename(tmp, file("config.ini"));
}

}  // namespace par
