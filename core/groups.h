// Groups of ranks, typed by where the buffers of their collectives live.
//
// A rank talks to each of its groups (parallel/process_grid.h: world, dp, sp, tp, dp x sp)
// through two kinds of communicator: one for host memory (MPI), and one for the backend's
// memory, which is device memory on a GPU (NCCL) and host memory for the CPU backend (the
// same MPI communicator then). Passing one where the other belongs is a crash on a GPU and
// silently fine on the CPU, so the memory is part of the type: a HostGroup cannot be given
// where a DeviceGroup is asked for, or the other way round, without saying so.
#pragma once

#include "core/communicator.h"

namespace par {

enum class Memory {
  kHost,    // host memory
  kDevice,  // the backend's memory (device memory on a GPU)
};

// One group's communicator for buffers in memory M; empty: this rank alone (every
// collective is then a copy or nothing, as SelfCommunicator's).
template <Memory M>
class Group {
 public:
  Group() = default;
  explicit Group(Communicator& c) : c_(&c) {}

  int rank() const { return c_ ? c_->rank() : 0; }
  int size() const { return c_ ? c_->size() : 1; }
  Communicator& operator*() const { return c_ ? *c_ : alone(); }
  Communicator* operator->() const { return &**this; }

 private:
  static Communicator& alone() {
    static SelfCommunicator self;  // stateless: shared by every empty group
    return self;
  }
  Communicator* c_ = nullptr;
};

using HostGroup = Group<Memory::kHost>;
using DeviceGroup = Group<Memory::kDevice>;

// The groups a model shares its work with: sp and tp carry the backend's buffers, sp_host
// carries host data (the targets, which every rank of the sequence group reads).
struct ModelGroups {
  DeviceGroup sp;  // sequence parallel: slices of the context
  DeviceGroup tp;  // tensor parallel: slices of the heads and MLPs
  HostGroup sp_host;
};

}  // namespace par
