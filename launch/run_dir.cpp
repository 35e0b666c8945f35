#include "launch/run_dir.h"

#include <sys/stat.h>

#include <filesystem>
#include <mutex>

#include "core/error.h"
#include "launch/run_lock.h"

namespace par {

// Copies every log line of the run into OUT/train.log. The first line that cannot be
// written is kept for check(): glog calls send() from a destructor.
class RunDir::LogFile : public google::LogSink {
 public:
  explicit LogFile(const std::string& path) : file_(path) {}
  void send(google::LogSeverity severity, const char* full_filename, const char* base_filename,
            int line, const google::LogMessageTime& time, const char* message,
            size_t message_len) override {
    (void)full_filename;
    write(google::LogSink::ToString(severity, base_filename, line, time, message, message_len) +
          "\n");
  }
  void write(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_.empty()) return;  // the disk is full: the run is ending
    try {
      file_.append(text);
    } catch (const UserError& e) {
      error_ = e.what();
    }
  }
  std::string error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }

 private:
  AppendFile file_;
  mutable std::mutex mutex_;
  std::string error_;
};

bool file_exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

RunDir::RunDir(std::string path, const RunLock* lock) : path_(std::move(path)), lock_(lock) {
  std::error_code ec;
  std::filesystem::create_directories(path_, ec);
  if (ec || !std::filesystem::is_directory(path_))
    fail_user("cannot create the run directory --out ", path_, ": ", ec.message());
  metrics_ = std::make_unique<AppendFile>(file("metrics.jsonl"));
  log_ = std::make_unique<LogFile>(file("train.log"));
  google::AddLogSink(log_.get());
}

RunDir::~RunDir() { google::RemoveLogSink(log_.get()); }

void RunDir::metrics(const std::string& json_line) { metrics_->append(json_line + "\n"); }

void RunDir::write_config(const std::string& ini_text) {
  write_file_atomically(file("config.ini"),
                        "# Resolved options of the latest start of this run (par train).\n" +
                            ini_text);
}

void RunDir::check() const {
  const std::string error = log_->error();
  if (!error.empty()) throw UserError(error);
  if (lock_) lock_->check();
}

void RunDir::record_fatal(const std::string& line) { log_->write(line + "\n"); }

}  // namespace par
