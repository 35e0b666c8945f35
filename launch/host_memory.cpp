#include "launch/host_memory.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

namespace par {

namespace {

int64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::char_traits<char>::length(key));
  return 0;
}

std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> w;
  for (std::string t; in >> t;) w.push_back(t);
  return w;
}

bool has_option(const std::string& options, const std::string& name) {
  std::istringstream in(options);
  for (std::string o; std::getline(in, o, ',');)
    if (o == name) return true;
  return false;
}

// A limit file's value: "max" (v2) or a number of 2^62 and more (v1's "unlimited",
// rounded down to a page) mean none.
int64_t read_limit(const std::string& path) {
  std::ifstream in(path);
  std::string v;
  if (!(in >> v) || v == "max") return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (*end != '\0' || n <= 0 || n >= (1LL << 62)) return 0;
  return n;
}

}  // namespace

int64_t resident_bytes() { return status_kib("VmRSS:") * 1024; }
int64_t peak_resident_bytes() { return status_kib("VmHWM:") * 1024; }
int64_t address_space_bytes() { return status_kib("VmSize:") * 1024; }

int64_t physical_memory_bytes() {
  return int64_t(sysconf(_SC_PHYS_PAGES)) * int64_t(sysconf(_SC_PAGESIZE));
}

std::vector<MemoryCgroup> memory_cgroups(const std::string& proc_cgroup,
                                         const std::string& mountinfo) {
  // This process's cgroup path in the v2 hierarchy and in v1's memory hierarchy.
  std::string v2_path, v1_path;
  bool v2 = false, v1 = false;
  {
    std::ifstream in(proc_cgroup);
    for (std::string line; std::getline(in, line);) {
      const size_t a = line.find(':'), b = line.find(':', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
      if (line.compare(0, a, "0") == 0 && controllers.empty()) {
        v2 = true;
        v2_path = path;
      } else if (has_option(controllers, "memory")) {
        v1 = true;
        v1_path = path;
      }
    }
  }
  std::vector<MemoryCgroup> found;
  std::ifstream in(mountinfo);
  for (std::string line; std::getline(in, line);) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    const std::vector<std::string> w = words(line);
    const auto dash = std::find(w.begin(), w.end(), "-");
    if (w.size() < 5 || w.end() - dash < 2) continue;
    const std::string& fstype = *(dash + 1);
    const std::string super = w.end() - dash >= 4 ? *(dash + 3) : "";
    const bool is_v2 = fstype == "cgroup2" && v2;
    const bool is_v1 = fstype == "cgroup" && v1 && has_option(super, "memory");
    if (!is_v2 && !is_v1) continue;
    const std::string& root = w[3];
    const std::string& mount = w[4];
    std::string path = is_v2 ? v2_path : v1_path;
    // The cgroup path is relative to the hierarchy's root; the mount shows `root` of it.
    if (root != "/") {
      if (path.rfind(root, 0) != 0) continue;
      path = path.substr(root.size());
    }
    while (!path.empty() && path.back() == '/') path.pop_back();
    found.push_back({mount + path, mount, is_v2 ? "memory.max" : "memory.limit_in_bytes"});
  }
  return found;
}

CgroupLimit cgroup_memory_limit(const std::string& proc_cgroup, const std::string& mountinfo) {
  CgroupLimit best;
  // Every cgroup from the process's own up to the mount point limits it.
  for (const MemoryCgroup& cg : memory_cgroups(proc_cgroup, mountinfo))
    for (std::string dir = cg.dir;; dir.resize(dir.rfind('/'))) {
      const std::string file = dir + "/" + cg.limit_file;
      const int64_t limit = read_limit(file);
      if (limit > 0 && (best.bytes == 0 || limit < best.bytes)) best = {limit, file};
      if (dir.size() <= cg.mount.size()) break;
    }
  return best;
}

std::string format_bytes(double bytes) {
  char buf[64];
  const double kib = 1024, mib = kib * 1024, gib = mib * 1024, tib = gib * 1024;
  if (bytes >= 1024 * tib) std::snprintf(buf, sizeof buf, "%.3g TiB", bytes / tib);
  else if (bytes >= tib) std::snprintf(buf, sizeof buf, "%.2f TiB", bytes / tib);
  else if (bytes >= gib) std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / gib);
  else if (bytes >= mib) std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / mib);
  else std::snprintf(buf, sizeof buf, "%.0f KiB", std::ceil(bytes / kib));
  return buf;
}

}  // namespace par
