// par::Communicator over an MPI communicator, for data in host memory.
//
// Determinism: reductions never use MPI's reduction operators, whose order of operations
// differs between ranks and algorithms. Every element is reduced by exactly one rank, in
// rank order (((x0 op x1) op x2) ...), and the result is copied to the others: small
// messages are all-gathered and every rank folds the same inputs in the same order; larger
// ones are reduce-scattered with an all-to-all (each rank folds its block) and all-gathered.
// So all_reduce gives the same bits on every rank of the group (replicated parameters
// updated from it never drift apart) and the same bits every run, whichever path is taken.
// Integers go the same way: Open MPI 4.1.4's AVX operators saturate uint8 sums instead of
// wrapping. Max propagates NaN; sums of int64 and uint8 wrap.
//
// Sizes: counts are 64-bit; work is done in pieces of at most chunk_bytes() (64 MiB by
// default), which keeps every MPI count below 2^31 and bounds the scratch memory each
// communicator keeps (about one piece, grown on first use of a large message).
//
// Buffers: send and recv are either disjoint or one of these in-place forms:
//   all_reduce:     send == recv;
//   reduce_scatter: recv == send (the result goes to recv[0, recv_count), MPI's
//                   MPI_IN_PLACE convention) or recv == send + rank()*recv_count (NCCL's);
//   all_gather:     send == recv (the input is at recv[0, send_count)) or
//                   send == recv + rank()*send_count (already in its slot: MPI's and NCCL's).
// Any other overlap is a bug (std::logic_error).
//
// Errors: every MPI call is checked; a failure throws std::runtime_error naming the call,
// MPI's message and "rank R on host H" (see mpi_error.h).
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/communicator.h"

namespace par {

MPI_Datatype mpi_type_of(DataType type);

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates comm (the caller keeps and frees its own): collectives here never match
  // messages of other libraries or groups on the same ranks. Collective over comm.
  explicit MpiCommunicator(MPI_Comm comm);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  // MPI_Comm_split: ranks with the same color form a group, ordered by key (ties by rank
  // here). Collective over this communicator.
  std::unique_ptr<MpiCommunicator> split(int color, int key) const;

  // The underlying communicator, e.g. to broadcast an NCCL unique id. Owned by this object.
  MPI_Comm comm() const { return comm_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                  ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DataType type,
                      ReduceOp op) override;
  void all_gather(const void* send, void* recv, int64_t send_count, DataType type) override;
  void broadcast(void* buf, int64_t count, DataType type, int root) override;
  void barrier() override;
  using Communicator::all_reduce;

  // Largest piece handled by one MPI call, in bytes. Tests lower it to exercise the
  // splitting that real sizes above 2^31 elements need.
  int64_t chunk_bytes() const { return chunk_bytes_; }
  void set_chunk_bytes(int64_t bytes);
  // Floating-point all-reduces whose gathered size (count x group size x element size) is
  // at most this many bytes gather everything and fold locally; larger ones reduce-scatter
  // and all-gather. Both give the same bits; tests set it to force one path.
  int64_t gather_all_bytes() const { return gather_all_bytes_; }
  void set_gather_all_bytes(int64_t bytes);

 private:
  struct Adopt {};
  MpiCommunicator(MPI_Comm owned, Adopt);
  void init_from_comm();
  std::byte* scratch(int64_t bytes);
  int64_t chunk_elements(DataType type) const;
  void fold_all_reduce(const std::byte* send, std::byte* recv, int64_t count, DataType type,
                       ReduceOp op);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int64_t chunk_bytes_ = int64_t(64) << 20;
  // Small all-reduces are latency-bound: one all-gather beats all-to-all + all-gather.
  int64_t gather_all_bytes_ = int64_t(64) << 10;
  // Grown on demand, never shrunk: collectives run one at a time on a communicator.
  std::vector<std::byte> scratch_;
  std::vector<int> counts_a_, displs_a_, counts_b_, displs_b_;
};

}  // namespace par
