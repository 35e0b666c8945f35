// See mpi_communicator.h for the reduction order and the in-place forms.
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "parallel/mpi_error.h"

namespace par {
namespace {

// MPI counts are int; stay well below 2^31 whatever the chunk size.
constexpr int64_t kMaxElementsPerCall = int64_t(1) << 30;

bool overlaps(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + uintptr_t(b_bytes) && pb < pa + uintptr_t(a_bytes);
}

template <typename T>
T add(T a, T b) {
  if constexpr (std::is_same_v<T, int64_t>) {
    // Wraps like MPI's integer sum instead of being undefined on overflow.
    return int64_t(uint64_t(a) + uint64_t(b));
  } else {
    return T(a + b);
  }
}

template <typename T>
T max_of(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    // NaN wins (a diverged rank must not hide), and ties keep the earlier rank's value
    // (so max(-0, +0) has one answer).
    return (b > a || b != b) ? b : a;
  } else {
    return b > a ? b : a;
  }
}

// out[i] = parts[0][i] op parts[1][i] op ... in part order; parts[p] = parts + p * stride.
// out does not overlap parts.
template <typename T>
void fold_typed(T* out, const T* parts, int64_t stride, int nparts, int64_t n, ReduceOp op) {
  std::memcpy(out, parts, size_t(n) * sizeof(T));
  for (int p = 1; p < nparts; ++p) {
    const T* x = parts + int64_t(p) * stride;
    if (op == ReduceOp::kSum) {
      for (int64_t i = 0; i < n; ++i) out[i] = add(out[i], x[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = max_of(out[i], x[i]);
    }
  }
}

void fold(DataType type, std::byte* out, const std::byte* parts, int64_t stride, int nparts,
          int64_t n, ReduceOp op) {
  if (n <= 0) return;
  switch (type) {
    case DataType::kFloat32:
      return fold_typed(reinterpret_cast<float*>(out), reinterpret_cast<const float*>(parts),
                        stride, nparts, n, op);
    case DataType::kFloat64:
      return fold_typed(reinterpret_cast<double*>(out),
                        reinterpret_cast<const double*>(parts), stride, nparts, n, op);
    case DataType::kInt64:
      return fold_typed(reinterpret_cast<int64_t*>(out),
                        reinterpret_cast<const int64_t*>(parts), stride, nparts, n, op);
    case DataType::kUInt8:
      return fold_typed(reinterpret_cast<uint8_t*>(out),
                        reinterpret_cast<const uint8_t*>(parts), stride, nparts, n, op);
  }
}

// `count` elements of `base` whose successive instances start `stride_bytes` apart: picks
// element range [o, o + count) out of every rank's block without copying.
class StridedType {
 public:
  StridedType(int64_t count, MPI_Datatype base, int64_t stride_bytes) {
    MPI_Datatype block = MPI_DATATYPE_NULL;
    check_mpi(MPI_Type_contiguous(int(count), base, &block), "MPI_Type_contiguous");
    int rc = MPI_Type_create_resized(block, 0, MPI_Aint(stride_bytes), &type_);
    MPI_Type_free(&block);
    check_mpi(rc, "MPI_Type_create_resized");
    rc = MPI_Type_commit(&type_);
    if (rc != MPI_SUCCESS) MPI_Type_free(&type_);
    check_mpi(rc, "MPI_Type_commit");
  }
  ~StridedType() {
    if (type_ != MPI_DATATYPE_NULL) MPI_Type_free(&type_);
  }
  StridedType(const StridedType&) = delete;
  StridedType& operator=(const StridedType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

}  // namespace

MPI_Datatype mpi_type_of(DataType type) {
  switch (type) {
    case DataType::kFloat32: return MPI_FLOAT;
    case DataType::kFloat64: return MPI_DOUBLE;
    case DataType::kInt64: return MPI_INT64_T;
    case DataType::kUInt8: return MPI_UINT8_T;
  }
  PAR_ASSERT(false, "unknown DataType");
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  init_from_comm();
}

MpiCommunicator::MpiCommunicator(MPI_Comm owned, Adopt) : comm_(owned) { init_from_comm(); }

void MpiCommunicator::init_from_comm() {
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  counts_a_.resize(size_t(size_));
  displs_a_.resize(size_t(size_));
  counts_b_.resize(size_t(size_));
  displs_b_.resize(size_t(size_));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(int color, int key) const {
  PAR_ASSERT(color >= 0, "split: color must be non-negative, got ", color);
  MPI_Comm out = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, color, key, &out), "MPI_Comm_split");
  try {
    return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(out, Adopt{}));
  } catch (...) {
    MPI_Comm_free(&out);
    throw;
  }
}

void MpiCommunicator::set_chunk_bytes(int64_t bytes) {
  PAR_ASSERT(bytes >= 1, "chunk_bytes must be positive, got ", bytes);
  chunk_bytes_ = bytes;
}

void MpiCommunicator::set_gather_all_bytes(int64_t bytes) {
  PAR_ASSERT(bytes >= 0, "gather_all_bytes must be non-negative, got ", bytes);
  gather_all_bytes_ = bytes;
}

int64_t MpiCommunicator::chunk_elements(DataType type) const {
  return std::clamp<int64_t>(chunk_bytes_ / int64_t(size_of(type)), 1, kMaxElementsPerCall);
}

std::byte* MpiCommunicator::scratch(int64_t bytes) {
  if (int64_t(scratch_.size()) < bytes) {
    scratch_.clear();
    scratch_.shrink_to_fit();
    scratch_.resize(size_t(bytes));
  }
  return scratch_.data();
}

void MpiCommunicator::all_reduce(const void* send, void* recv, int64_t count, DataType type,
                                 ReduceOp op) {
  PAR_ASSERT(count >= 0, "all_reduce: negative count ", count);
  if (count == 0) return;
  const int64_t es = int64_t(size_of(type));
  PAR_ASSERT(send == recv || !overlaps(send, count * es, recv, count * es),
             "all_reduce: send and recv partially overlap");
  if (size_ == 1) {
    if (send != recv) std::memmove(recv, send, size_t(count * es));
    return;
  }
  // Every type, integers included, goes through the rank-order fold rather than MPI's
  // reduction operators: floats need the fixed order, and Open MPI 4.1.4's AVX operator
  // component saturates MPI_SUM on MPI_UINT8_T instead of wrapping (found by the tests).
  fold_all_reduce(static_cast<const std::byte*>(send), static_cast<std::byte*>(recv), count,
                  type, op);
}

void MpiCommunicator::fold_all_reduce(const std::byte* send, std::byte* recv, int64_t count,
                                      DataType type, ReduceOp op) {
  const int64_t es = int64_t(size_of(type));
  const MPI_Datatype mt = mpi_type_of(type);
  const int64_t p = size_;
  const int64_t chunk = chunk_elements(type);
  for (int64_t o = 0; o < count; o += chunk) {
    const int64_t n = std::min(chunk, count - o);
    const std::byte* s = send + o * es;
    std::byte* r = recv + o * es;
    if (n * p * es <= gather_all_bytes_) {
      // Every rank gets every input and folds them in rank order itself.
      std::byte* parts = scratch(n * p * es);
      check_mpi(MPI_Allgather(s, int(n), mt, parts, int(n), mt, comm_), "MPI_Allgather");
      fold(type, r, parts, n, size_, n, op);
      continue;
    }
    // Reduce-scatter by all-to-all: rank j receives block j of every rank and folds it in
    // rank order; blocks are ceil(n / p) long, the last ones shorter or empty.
    const int64_t b = (n + p - 1) / p;
    for (int64_t j = 0; j < p; ++j) {
      counts_a_[size_t(j)] = int(std::clamp<int64_t>(n - j * b, 0, b));
      displs_a_[size_t(j)] = int(j * b);
    }
    const int mine = counts_a_[size_t(rank_)];
    for (int64_t i = 0; i < p; ++i) {
      counts_b_[size_t(i)] = mine;
      displs_b_[size_t(i)] = int(i * b);
    }
    std::byte* parts = scratch(p * b * es);
    check_mpi(MPI_Alltoallv(s, counts_a_.data(), displs_a_.data(), mt, parts, counts_b_.data(),
                            displs_b_.data(), mt, comm_),
              "MPI_Alltoallv");
    // Safe in place: the all-to-all has finished reading send.
    fold(type, r + rank_ * b * es, parts, b, size_, mine, op);
    check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, r, counts_a_.data(),
                             displs_a_.data(), mt, comm_),
              "MPI_Allgatherv");
  }
}

void MpiCommunicator::reduce_scatter(const void* send, void* recv, int64_t recv_count,
                                     DataType type, ReduceOp op) {
  PAR_ASSERT(recv_count >= 0, "reduce_scatter: negative count ", recv_count);
  if (recv_count == 0) return;
  const int64_t es = int64_t(size_of(type));
  const int64_t rc = recv_count;
  auto* s = static_cast<const std::byte*>(send);
  auto* r = static_cast<std::byte*>(recv);
  PAR_ASSERT(r == s || r == s + rank_ * rc * es || !overlaps(s, rc * size_ * es, r, rc * es),
             "reduce_scatter: send and recv overlap other than in place");
  if (size_ == 1) {
    if (s != r) std::memmove(r, s, size_t(rc * es));
    return;
  }
  // Every type goes through the all-to-all and a rank-order fold: deterministic for floats,
  // and one code path for all in-place forms (the input is read before anything is written).
  const MPI_Datatype mt = mpi_type_of(type);
  const int64_t k_max = std::max<int64_t>(1, chunk_elements(type) / size_);
  for (int64_t o = 0; o < rc; o += k_max) {
    const int64_t k = std::min(k_max, rc - o);
    std::byte* parts = scratch(k * size_ * es);
    if (k == rc) {
      check_mpi(MPI_Alltoall(s, int(k), mt, parts, int(k), mt, comm_), "MPI_Alltoall");
    } else {
      // Elements [o, o + k) of every block: later pieces read only elements at or beyond
      // o + k of each block, which the fold of this piece does not write, so in place works.
      StridedType piece(k, mt, rc * es);
      check_mpi(MPI_Alltoall(s + o * es, 1, piece.get(), parts, int(k), mt, comm_),
                "MPI_Alltoall");
    }
    fold(type, r + o * es, parts, k, size_, k, op);
  }
}

void MpiCommunicator::all_gather(const void* send, void* recv, int64_t send_count,
                                 DataType type) {
  PAR_ASSERT(send_count >= 0, "all_gather: negative count ", send_count);
  if (send_count == 0) return;
  const int64_t es = int64_t(size_of(type));
  const int64_t sc = send_count;
  auto* s = static_cast<const std::byte*>(send);
  auto* r = static_cast<std::byte*>(recv);
  std::byte* slot = r + rank_ * sc * es;
  // Put this rank's input in its slot, then gather in place: one path for every form.
  if (s == slot) {
  } else if (s == r) {
    std::memmove(slot, r, size_t(sc * es));
  } else {
    PAR_ASSERT(!overlaps(s, sc * es, r, sc * size_ * es),
               "all_gather: send and recv overlap other than in place");
    std::memcpy(slot, s, size_t(sc * es));
  }
  if (size_ == 1) return;
  const MPI_Datatype mt = mpi_type_of(type);
  const int64_t k_max = std::max<int64_t>(1, chunk_elements(type) / size_);
  for (int64_t o = 0; o < sc; o += k_max) {
    const int64_t k = std::min(k_max, sc - o);
    if (k == sc) {
      check_mpi(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, r, int(k), mt, comm_),
                "MPI_Allgather");
    } else {
      StridedType piece(k, mt, sc * es);
      check_mpi(
          MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, r + o * es, 1, piece.get(), comm_),
          "MPI_Allgather");
    }
  }
}

void MpiCommunicator::broadcast(void* buf, int64_t count, DataType type, int root) {
  PAR_ASSERT(count >= 0, "broadcast: negative count ", count);
  PAR_ASSERT(root >= 0 && root < size_, "broadcast: root ", root, " outside group of ", size_);
  if (count == 0 || size_ == 1) return;
  const int64_t es = int64_t(size_of(type));
  const int64_t chunk = chunk_elements(type);
  auto* b = static_cast<std::byte*>(buf);
  for (int64_t o = 0; o < count; o += chunk) {
    const int n = int(std::min(chunk, count - o));
    check_mpi(MPI_Bcast(b + o * es, n, mpi_type_of(type), root, comm_), "MPI_Bcast");
  }
}

void MpiCommunicator::barrier() { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

}  // namespace par
