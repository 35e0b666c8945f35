// See process_grid.h.
#include "parallel/process_grid.h"

#include "core/error.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_environment.h"
#include "parallel/mpi_error.h"

namespace par {

ProcessGrid::ProcessGrid() : host_name_(host_name()) {
  for (auto& c : host_) c = std::make_unique<SelfCommunicator>();
}

ProcessGrid::ProcessGrid(MPI_Comm world, GridShape shape)
    : shape_(shape), host_name_(host_name()) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  PAR_ASSERT(initialized, "ProcessGrid(MPI_Comm, ...) needs MPI (an MpiEnvironment)");
  check_mpi(MPI_Comm_size(world, &world_size_), "MPI_Comm_size");
  check_mpi(MPI_Comm_rank(world, &world_rank_), "MPI_Comm_rank");
  // Every rank sees the same shape and size, so every rank throws the same error and none
  // is left waiting in a collective.
  if (shape.dp < 1 || shape.sp < 1 || shape.tp < 1) {
    fail_user("--dp ", shape.dp, " x --sp ", shape.sp, " x --tp ", shape.tp,
              ": each of --dp, --sp and --tp must be at least 1");
  }
  if (shape.size() != world_size_) {
    fail_user("--dp ", shape.dp, " x --sp ", shape.sp, " x --tp ", shape.tp, " = ",
              shape.size(), " ranks, but the job has ", world_size_,
              ": start it with that many processes (mpirun -np ", shape.size(),
              ") or choose --dp, --sp and --tp whose product is ", world_size_);
  }
  tp_rank_ = world_rank_ % shape.tp;
  sp_rank_ = (world_rank_ / shape.tp) % shape.sp;
  dp_rank_ = world_rank_ / (shape.tp * shape.sp);

  auto world_comm = std::make_unique<MpiCommunicator>(world);
  // Colors number the groups; keys order the ranks inside them by the group's coordinate.
  auto dp = world_comm->split(sp_rank_ * shape.tp + tp_rank_, dp_rank_);
  auto sp = world_comm->split(dp_rank_ * shape.tp + tp_rank_, sp_rank_);
  auto tp = world_comm->split(dp_rank_ * shape.sp + sp_rank_, tp_rank_);
  auto dp_sp = world_comm->split(tp_rank_, dp_rank_ * shape.sp + sp_rank_);
  PAR_ASSERT(dp->size() == shape.dp && dp->rank() == dp_rank_);
  PAR_ASSERT(sp->size() == shape.sp && sp->rank() == sp_rank_);
  PAR_ASSERT(tp->size() == shape.tp && tp->rank() == tp_rank_);
  PAR_ASSERT(dp_sp->size() == shape.dp * shape.sp &&
             dp_sp->rank() == dp_rank_ * shape.sp + sp_rank_);
  local_rank_ = node_local(world).rank;
  host_[size_t(GroupName::kWorld)] = std::move(world_comm);
  host_[size_t(GroupName::kDp)] = std::move(dp);
  host_[size_t(GroupName::kSp)] = std::move(sp);
  host_[size_t(GroupName::kTp)] = std::move(tp);
  host_[size_t(GroupName::kDpSp)] = std::move(dp_sp);
}

ProcessGrid::~ProcessGrid() = default;
ProcessGrid::ProcessGrid(ProcessGrid&&) noexcept = default;
ProcessGrid& ProcessGrid::operator=(ProcessGrid&&) noexcept = default;

const char* ProcessGrid::name(GroupName g) {
  static const char* const kNames[] = {"world", "dp", "sp", "tp", "dp_sp"};
  return kNames[size_t(g)];
}

std::string ProcessGrid::describe() const {
  return cat("rank ", world_rank_, " (dp ", dp_rank_, ", sp ", sp_rank_, ", tp ", tp_rank_,
             ") on host ", host_name_);
}

}  // namespace par
