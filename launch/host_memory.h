// What this process holds and what it may hold: resident memory (now and at its peak) and
// address space,
// the node's physical memory, and the memory limit of its cgroup (v2 memory.max or v1
// memory.limit_in_bytes, the tightest of its own cgroup and every parent: what a batch
// system or a container sets, and what the kernel's OOM killer enforces).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace par {

// VmRSS, VmHWM and VmSize of /proc/self/status, in bytes (0 if unreadable).
int64_t resident_bytes();
int64_t peak_resident_bytes();
int64_t address_space_bytes();
// Physical memory of the node, in bytes.
int64_t physical_memory_bytes();

struct CgroupLimit {
  int64_t bytes = 0;  // 0: no limit found
  std::string file;   // the file that set it ("/sys/fs/cgroup/.../memory.max")
};

// This process's cgroups that can limit memory: its v2 cgroup and its v1 memory cgroup,
// where mounted, as directories, with the name of their limit file. The paths are
// parameters for tests.
struct MemoryCgroup {
  std::string dir;         // "/sys/fs/cgroup/job/step"
  std::string mount;       // the hierarchy's mount point (the walk up stops there)
  std::string limit_file;  // "memory.max" (v2) or "memory.limit_in_bytes" (v1)
};
std::vector<MemoryCgroup> memory_cgroups(const std::string& proc_cgroup = "/proc/self/cgroup",
                                         const std::string& mountinfo = "/proc/self/mountinfo");

// The memory limit of this process's cgroup. The paths are parameters for tests.
CgroupLimit cgroup_memory_limit(const std::string& proc_cgroup = "/proc/self/cgroup",
                                const std::string& mountinfo = "/proc/self/mountinfo");

// "1.50 GiB", "312.0 MiB", "64 KiB": for messages.
std::string format_bytes(double bytes);

}  // namespace par
