// par::Communicator over NCCL, for data in GPU memory (part of the CUDA backend: built when
// PAR_CUDA is ON, and given to the process grid as its device groups, core/groups.h).
//
// Streams: collectives run on the communicator's own CUDA stream. Each one first waits
// (with a CUDA event) for the work already queued on the compute stream -- the stream of
// the CudaOps that produced the data, see par::cuda::cuda_stream -- and the compute stream
// then waits for the collective's completion. So calls return at once, later ops on the
// compute stream see the result, and compute queued on other streams may overlap.
//
// Host buffers (the trainer's loss sums, a gradient norm through all_reduce_value, ...)
// are accepted too: they are staged through device memory and the call returns when the
// result is back on the host.
//
// In-place forms: the same as MpiCommunicator's (both MPI's and NCCL's conventions for
// reduce_scatter and all_gather); the MPI ones cost an extra device copy.
//
// Determinism: NCCL reduces each element once along its ring or tree and sends the result
// to every rank, so all ranks get the same bits, and the same inputs give the same bits on
// every run with the same NCCL version, topology and environment (NCCL_ALGO, NCCL_PROTO).
// The order of the sum differs from MpiCommunicator's rank order. Max follows NCCL (which
// does not propagate NaN as MpiCommunicator does).
//
// Errors: every NCCL and CUDA call is checked; the message names the call, the library's
// own description, this rank within the group and "rank R on host H".
#pragma once

#include <array>
#include <memory>

#include "core/communicator.h"

namespace par {

// The bytes of an ncclUniqueId (NCCL_UNIQUE_ID_BYTES = 128), without NCCL's header.
struct NcclId {
  std::array<char, 128> bytes{};
};

// A new id (ncclGetUniqueId): made on one rank and given to all ranks of the new group.
NcclId nccl_unique_id();

// Rank `rank` of a group of `size`, every rank passing the same id; collective over the
// group (blocks until all ranks have joined). The current CUDA device must be the one of
// `compute_stream` (par::cuda::select_device before making the backend).
std::unique_ptr<Communicator> make_nccl_communicator(const NcclId& id, int rank, int size,
                                                     void* compute_stream);

// The same for the ranks of a host group (MPI): rank 0 of `group` makes the id and
// broadcasts it over the group. Collective over `group`.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& group, void* compute_stream);

}  // namespace par
