// A scratch directory for one test, removed with everything in it afterwards.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <vector>
#include <sstream>
#include <string>

#include "core/error.h"

namespace par::testing_util {

struct TempDir {
  std::string path;
  TempDir() {
    std::string t =
        (std::filesystem::path(::testing::TempDir()) / "par_test_XXXXXX").string();
    PAR_ASSERT(::mkdtemp(t.data()) != nullptr, "mkdtemp");
    path = t;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const {
    return (std::filesystem::path(path) / name).string();
  }
};

// The whole content of a file ("" if it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// Every regular file under dir (relative path and contents), sorted: equal snapshots mean
// nothing was added, removed or modified.
inline std::string tree(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec))
    if (e.is_regular_file()) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  std::string out;
  for (const auto& f : files) out += f.substr(dir.size()) + "\n" + slurp(f) + "\n";
  return out;
}

}  // namespace par::testing_util
