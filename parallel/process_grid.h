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
// Only the shape is validated here (the product must be the job's size); constraints that
// depend on the model (heads divisible by tp, N by sp, ...) belong to the caller.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "core/communicator.h"

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
  const std::string& host() const { return host_; }

  // The MPI communicators behind the groups (MPI_COMM_NULL without MPI), e.g. to set up
  // NCCL communicators for the same groups.
  enum class Group { kWorld, kDp, kSp, kTp, kDpSp };
  MPI_Comm mpi_comm(Group g) const;

  Communicator& world() const { return *world_; }
  Communicator& dp() const { return *dp_; }
  Communicator& sp() const { return *sp_; }
  Communicator& tp() const { return *tp_; }
  Communicator& dp_sp() const { return *dp_sp_; }

  // "rank 5 (dp 1, sp 0, tp 1) on host node3", for log lines and error messages.
  std::string describe() const;

  // Replaces every group's communicator by wrap(old one): for decorators that observe
  // the traffic (e.g. CountingCommunicator in `par bench`).
  template <typename F>
  void decorate(F&& wrap) {
    world_ = wrap(std::move(world_));
    dp_ = wrap(std::move(dp_));
    sp_ = wrap(std::move(sp_));
    tp_ = wrap(std::move(tp_));
    dp_sp_ = wrap(std::move(dp_sp_));
  }

 private:
  GridShape shape_;
  int world_rank_ = 0, world_size_ = 1;
  int dp_rank_ = 0, sp_rank_ = 0, tp_rank_ = 0;
  int local_rank_ = 0;
  std::string host_;
  std::unique_ptr<Communicator> world_, dp_, sp_, tp_, dp_sp_;
  MPI_Comm mpi_[5] = {MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL};
};

}  // namespace par
