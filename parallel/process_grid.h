// The process grid: world = dp x sp x tp ranks, and one communicator per kind of group.
//
// Rank order: tp fastest, then sp, then dp:
//   world_rank = (dp_rank * sp + sp_rank) * tp + tp_rank
// so tensor-parallel partners (which talk most) are neighbours, and with the usual
// by-slot placement share a node.
//
// Groups (each rank belongs to exactly one of each; the rank within a group is the named
// coordinate):
//   dp()    same sp and tp rank, size dp, rank dp_rank  (gradient all-reduce)
//   sp()    same dp and tp rank, size sp, rank sp_rank  (sequence-parallel attention merge)
//   tp()    same dp and sp rank, size tp, rank tp_rank  (Megatron-style layers)
//   dp_sp() same tp rank, size dp*sp, rank dp_rank*sp + sp_rank (parameters replicated over
//           dp and sp: their gradients are summed over both)
//   world() everything
//
// Each group comes in two kinds (core/groups.h): host_group() for buffers in host memory
// (MPI), device_group() for the backend's buffers. A GPU backend attaches its own
// communicators for the groups whose data lives in device memory (NCCL, launch/backend.h);
// without them, device_group() is the host group (the CPU backend's memory is the host's).
// The grid is the one description of a rank's groups: the model, the training step and
// the checkpoints take theirs from it.
//
// Only the shape is validated here (the product must be the job's size); constraints that
// depend on the model (heads divisible by tp, N by sp, ...) belong to the caller.
#pragma once

#include <mpi.h>

#include <array>
#include <memory>
#include <string>

#include "core/groups.h"

namespace par {

struct GridShape {
  int dp = 1, sp = 1, tp = 1;
  int64_t size() const { return int64_t(dp) * sp * tp; }
  // World rank of the given coordinates (see the rank order above).
  int rank_of(int dp_rank, int sp_rank, int tp_rank) const {
    return (dp_rank * sp + sp_rank) * tp + tp_rank;
  }
};

class ProcessGrid {
 public:
  // One process, no MPI at all: every group is a SelfCommunicator.
  ProcessGrid();
  // Collective over `world` (usually MPI_COMM_WORLD; the grid keeps duplicates, the caller
  // keeps `world`). Throws UserError if the shape does not multiply to world's size or has
  // a factor below 1; every rank throws the same error.
  ProcessGrid(MPI_Comm world, GridShape shape);
  ~ProcessGrid();
  ProcessGrid(ProcessGrid&&) noexcept;
  ProcessGrid& operator=(ProcessGrid&&) noexcept;

  const GridShape& shape() const { return shape_; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int dp_rank() const { return dp_rank_; }
  int sp_rank() const { return sp_rank_; }
  int tp_rank() const { return tp_rank_; }
  // Rank among the grid's processes on this node, and this node's host name.
  int local_rank() const { return local_rank_; }
  const std::string& host() const { return host_name_; }

  enum class GroupName { kWorld, kDp, kSp, kTp, kDpSp };
  static constexpr GroupName kGroupNames[] = {GroupName::kWorld, GroupName::kDp, GroupName::kSp,
                                              GroupName::kTp, GroupName::kDpSp};
  static const char* name(GroupName g);  // "world", "dp", "sp", "tp", "dp_sp"

  // Host memory (MPI).
  HostGroup host_group(GroupName g) const { return HostGroup(*host_[size_t(g)]); }
  HostGroup world() const { return host_group(GroupName::kWorld); }
  HostGroup dp() const { return host_group(GroupName::kDp); }
  HostGroup sp() const { return host_group(GroupName::kSp); }
  HostGroup tp() const { return host_group(GroupName::kTp); }
  HostGroup dp_sp() const { return host_group(GroupName::kDpSp); }
  // The backend's memory: the communicator attached for `g`, else the host one.
  DeviceGroup device_group(GroupName g) const {
    const auto& d = device_[size_t(g)];
    return DeviceGroup(d ? *d : *host_[size_t(g)]);
  }
  // Gives group `g` a communicator for the backend's buffers (kept for the grid's life).
  void attach_device_group(GroupName g, std::unique_ptr<Communicator> c) {
    device_[size_t(g)] = std::move(c);
  }
  // What a model on this rank shares its work with.
  ModelGroups model_groups() const {
    return ModelGroups{device_group(GroupName::kSp), device_group(GroupName::kTp), sp()};
  }

  // "rank 5 (dp 1, sp 0, tp 1) on host node3", for log lines and error messages.
  std::string describe() const;

  // Replaces every host group's communicator by wrap(old one): for decorators that observe
  // the traffic (e.g. CountingCommunicator in `par bench`), in the order of kGroupNames.
  template <typename F>
  void decorate(F&& wrap) {
    for (auto& c : host_) c = wrap(std::move(c));
  }
  // The same for the communicators attached for the backend's buffers (NCCL), which carry
  // a GPU run's traffic: wrap(group, old one) for each attached group.
  template <typename F>
  void decorate_device(F&& wrap) {
    for (size_t g = 0; g < device_.size(); ++g)
      if (device_[g]) device_[g] = wrap(GroupName(g), std::move(device_[g]));
  }

 private:
  GridShape shape_;
  int world_rank_ = 0, world_size_ = 1;
  int dp_rank_ = 0, sp_rank_ = 0, tp_rank_ = 0;
  int local_rank_ = 0;
  std::string host_name_;
  std::array<std::unique_ptr<Communicator>, 5> host_;    // by GroupName
  std::array<std::unique_ptr<Communicator>, 5> device_;  // empty: the host one serves
};

}  // namespace par
