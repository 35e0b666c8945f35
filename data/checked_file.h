// Files written with every step checked: open, each write, fsync, close and rename. On a
// full disk (or any I/O error) the caller gets a UserError "cannot write PATH: REASON" in
// one line, and no partial file is left under the final name.
#pragma once

#include <string>

namespace par {

// Writes `text` as the whole of `path` and makes it durable (fsync). On failure the
// partial file is removed.
void write_file(const std::string& path, const std::string& text);

// The same through PATH.tmp and a rename, so that readers see the old file or the new one,
// never a part; the temporary file is removed on failure.
void write_file_atomically(const std::string& path, const std::string& text);

// fsync of a directory, so that the names created or renamed in it are durable. File
// systems that cannot sync a directory (EINVAL) are taken at their word.
void sync_directory(const std::string& dir);

// A file that only grows (logs): every append writes all its bytes, or throws and leaves
// no part of them.
class AppendFile {
 public:
  // Opens (creating) `path` for appending; UserError if it cannot.
  explicit AppendFile(std::string path);
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;

  void append(const std::string& text);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace par
