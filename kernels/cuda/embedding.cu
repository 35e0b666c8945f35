// The embedding's backward pass without floating-point atomics: dtable[id] += dh[r] for
// every row r, summed in an order fixed by the data alone.
//
// 1. Stable radix sort of (id, row) by id (CUB): rows of one id become a segment, in
//    increasing row order.
// 2. Segments longer than kPiece rows are cut into pieces of kPiece rows; each piece is
//    summed by one thread per column (so a single id covering a whole 131072-token context
//    is still summed by thousands of threads).
// 3. One thread per (segment, column) adds the segment's pieces (or, for a short segment,
//    its rows) in order and adds the total to the table row.
// Everything is sized from `rows` alone, so no count comes back to the host.
#include <cub/cub.cuh>

#include "core/error.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

constexpr int32_t kPiece = kEmbeddingPiece;  // reduction_sizes.h
constexpr int kCols = 256;  // columns per block (one thread each)

// Pieces are cut only from segments longer than kPiece, so there are at most 2*rows/kPiece.
int64_t max_pieces(int64_t rows) { return embedding_max_pieces(rows); }

size_t align_up(size_t b) { return scratch_align_up(b); }

// The scratch layout, computed the same way for sizing and for use.
struct Layout {
  size_t vals_in, keys_out, vals_out, flags, seg_index, seg_start, n_part, part_offset,
      counts, part_start, part_end, partial, cub_temp, cub_bytes, total;
};

size_t cub_temp_bytes(int64_t rows) {
  size_t sort_bytes = 0, scan_bytes = 0;
  const int n = int(rows);
  PAR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, (const int32_t*)nullptr,
                                                 (int32_t*)nullptr, (const int32_t*)nullptr,
                                                 (int32_t*)nullptr, n, 0, 32, cudaStream_t(0)));
  PAR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, (const int32_t*)nullptr,
                                               (int32_t*)nullptr, n, cudaStream_t(0)));
  return std::max(sort_bytes, scan_bytes);
}

Layout layout_of(int64_t rows, int64_t d) {
  Layout l{};
  const size_t i32 = sizeof(int32_t), r = size_t(rows), p = size_t(max_pieces(rows));
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  l.vals_in = take(r * i32);
  l.keys_out = take(r * i32);
  l.vals_out = take(r * i32);
  l.flags = take(r * i32);
  l.seg_index = take(r * i32);
  l.seg_start = take((r + 1) * i32);
  l.n_part = take(r * i32);
  l.part_offset = take(r * i32);
  l.counts = take(2 * i32);
  l.part_start = take(p * i32);
  l.part_end = take(p * i32);
  l.partial = take(p * size_t(d) * sizeof(float));
  l.cub_bytes = cub_temp_bytes(rows);
  l.cub_temp = take(l.cub_bytes);
  l.total = at;
  return l;
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) v[i] = int32_t(i);
}

__global__ void flags_kernel(int32_t* flags, const int32_t* keys, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    flags[i] = (i == 0 || keys[i] != keys[i - 1]) ? 1 : 0;
}

// seg_start[s] = first sorted position of segment s; seg_start[S] = n; counts[0] = S.
__global__ void segments_kernel(int32_t* seg_start, int32_t* counts, const int32_t* flags,
                                const int32_t* seg_index, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    if (flags[i]) seg_start[seg_index[i]] = int32_t(i);
    if (i == n - 1) {
      const int32_t segments = seg_index[i] + flags[i];
      seg_start[segments] = int32_t(n);
      counts[0] = segments;
    }
  }
}

// n_part[s]: pieces of segment s (0 for short segments and for s >= S).
__global__ void count_pieces_kernel(int32_t* n_part, const int32_t* seg_start,
                                    const int32_t* counts, int64_t n) {
  const int32_t segments = counts[0];
  for (int64_t s = global_thread(); s < n; s += grid_threads()) {
    int32_t pieces = 0;
    if (s < segments) {
      const int32_t len = seg_start[s + 1] - seg_start[s];
      pieces = len > kPiece ? (len + kPiece - 1) / kPiece : 0;
    }
    n_part[s] = pieces;
  }
}

__global__ void pieces_kernel(int32_t* part_start, int32_t* part_end, const int32_t* seg_start,
                              const int32_t* n_part, const int32_t* part_offset,
                              const int32_t* counts) {
  const int32_t segments = counts[0];
  for (int64_t s = global_thread(); s < segments; s += grid_threads()) {
    const int32_t end = seg_start[s + 1];
    for (int32_t k = 0; k < n_part[s]; ++k) {
      const int32_t begin = seg_start[s] + k * kPiece;
      part_start[part_offset[s] + k] = begin;
      part_end[part_offset[s] + k] = begin + kPiece < end ? begin + kPiece : end;
    }
  }
}

// partial[piece, c] = sum over the piece's sorted positions of dh[row, c], in order.
__global__ void piece_sums_kernel(float* partial, const float* dh, const int32_t* rows_sorted,
                                  const int32_t* part_start, const int32_t* part_end,
                                  const int32_t* n_part, const int32_t* part_offset, int64_t n,
                                  int64_t d) {
  const int32_t pieces = part_offset[n - 1] + n_part[n - 1];
  const int64_t c = int64_t(blockIdx.y) * kCols + threadIdx.x;
  if (c >= d) return;
  for (int64_t p = blockIdx.x; p < pieces; p += gridDim.x) {
    double s = 0.0;
    for (int32_t i = part_start[p]; i < part_end[p]; ++i) s += double(dh[int64_t(rows_sorted[i]) * d + c]);
    partial[p * d + c] = float(s);
  }
}

__global__ void segment_sums_kernel(float* dtable, const float* dh, const float* partial,
                                    const int32_t* ids_sorted, const int32_t* rows_sorted,
                                    const int32_t* seg_start, const int32_t* n_part,
                                    const int32_t* part_offset, const int32_t* counts,
                                    int64_t d) {
  const int32_t segments = counts[0];
  const int64_t c = int64_t(blockIdx.y) * kCols + threadIdx.x;
  if (c >= d) return;
  for (int64_t s = blockIdx.x; s < segments; s += gridDim.x) {
    double sum = 0.0;
    if (n_part[s] == 0) {
      for (int32_t i = seg_start[s]; i < seg_start[s + 1]; ++i)
        sum += double(dh[int64_t(rows_sorted[i]) * d + c]);
    } else {
      for (int32_t k = 0; k < n_part[s]; ++k) sum += double(partial[int64_t(part_offset[s] + k) * d + c]);
    }
    float& out = dtable[int64_t(ids_sorted[seg_start[s]]) * d + c];
    out += float(sum);
  }
}

}  // namespace

size_t embedding_backward_scratch_bytes(int64_t rows, int64_t d) {
  if (rows <= 0 || d <= 0) return 0;
  PAR_ASSERT(rows < (int64_t(1) << 31) - 1, "embedding_backward: ", rows, " rows exceed int32");
  const Layout l = layout_of(rows, d);
  // The memory plan counts everything but CUB's part from reduction_sizes.h.
  PAR_ASSERT(l.total - align_up(l.cub_bytes) == embedding_scratch_without_cub(rows, d),
             "embedding_backward: reduction_sizes.h's scratch size disagrees with the layout");
  return l.total;
}

void embedding_backward(cudaStream_t st, float* dtable, const int32_t* ids, const float* dh,
                        int64_t rows, int64_t d, void* scratch, size_t scratch_bytes) {
  if (rows <= 0 || d <= 0) return;
  const Layout l = layout_of(rows, d);
  PAR_ASSERT(scratch_bytes >= l.total, "embedding_backward: scratch too small");
  char* base = static_cast<char*>(scratch);
  auto i32 = [&](size_t off) { return reinterpret_cast<int32_t*>(base + off); };
  int32_t* vals_in = i32(l.vals_in);
  int32_t* keys_out = i32(l.keys_out);
  int32_t* vals_out = i32(l.vals_out);
  int32_t* flags = i32(l.flags);
  int32_t* seg_index = i32(l.seg_index);
  int32_t* seg_start = i32(l.seg_start);
  int32_t* n_part = i32(l.n_part);
  int32_t* part_offset = i32(l.part_offset);
  int32_t* counts = i32(l.counts);
  int32_t* part_start = i32(l.part_start);
  int32_t* part_end = i32(l.part_end);
  float* partial = reinterpret_cast<float*>(base + l.partial);
  void* temp = base + l.cub_temp;
  const int n = int(rows);

  iota_kernel<<<blocks_for(rows), kThreads, 0, st>>>(vals_in, rows);
  PAR_CUDA_CHECK_LAUNCH("iota_kernel");
  size_t bytes = l.cub_bytes;
  PAR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, ids, keys_out, vals_in, vals_out,
                                                 n, 0, 32, st));
  flags_kernel<<<blocks_for(rows), kThreads, 0, st>>>(flags, keys_out, rows);
  PAR_CUDA_CHECK_LAUNCH("flags_kernel");
  bytes = l.cub_bytes;
  PAR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, bytes, flags, seg_index, n, st));
  segments_kernel<<<blocks_for(rows), kThreads, 0, st>>>(seg_start, counts, flags, seg_index,
                                                          rows);
  PAR_CUDA_CHECK_LAUNCH("segments_kernel");
  count_pieces_kernel<<<blocks_for(rows), kThreads, 0, st>>>(n_part, seg_start, counts, rows);
  PAR_CUDA_CHECK_LAUNCH("count_pieces_kernel");
  bytes = l.cub_bytes;
  PAR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, bytes, n_part, part_offset, n, st));
  pieces_kernel<<<blocks_for(rows), kThreads, 0, st>>>(part_start, part_end, seg_start, n_part,
                                                        part_offset, counts);
  PAR_CUDA_CHECK_LAUNCH("pieces_kernel");
  const unsigned col_blocks = unsigned((d + kCols - 1) / kCols);
  PAR_ASSERT(col_blocks <= 65535, "embedding_backward: width ", d, " too large");
  const dim3 piece_grid(unsigned(std::min<int64_t>(max_pieces(rows), 4096)), col_blocks);
  piece_sums_kernel<<<piece_grid, kCols, 0, st>>>(partial, dh, vals_out, part_start, part_end,
                                                   n_part, part_offset, rows, d);
  PAR_CUDA_CHECK_LAUNCH("piece_sums_kernel");
  const dim3 seg_grid(unsigned(std::min<int64_t>(rows, 4096)), col_blocks);
  segment_sums_kernel<<<seg_grid, kCols, 0, st>>>(dtable, dh, partial, keys_out, vals_out,
                                                   seg_start, n_part, part_offset, counts, d);
  PAR_CUDA_CHECK_LAUNCH("segment_sums_kernel");
}

}  // namespace par::cuda::kern
