// The chunking of the deterministic reductions (reduce.cu: column sums, the LayerNorm
// backward) and the sizes of their partial buffers; and what the embedding backward's
// scratch holds besides CUB's (embedding.cu). Host-only C++, no CUDA header: the memory
// plan (launch/memory_plan.cpp, built without CUDA too) sizes these buffers the way the
// kernels do.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace par::cuda::kern {

// Rows per chunk of the two-pass column sums; at most that in the LayerNorm backward's.
constexpr int64_t kRowsPerChunk = 64;
inline int64_t chunks_of(int64_t rows) { return (rows + kRowsPerChunk - 1) / kRowsPerChunk; }

// The LayerNorm backward takes a chunk per block, and each row of it costs a block's two
// reductions in turn: 64 rows per block left the latents' calls (M = 1024 rows: 16 blocks)
// to a few SMs for the length of 64 such rows. Fewer rows per chunk where rows are few keep
// about kNormChunks blocks in flight; long calls (131072 rows) keep 64.
constexpr int64_t kNormChunks = 1024;
inline int64_t norm_rows_per_chunk(int64_t rows) {
  return std::clamp<int64_t>((rows + kNormChunks - 1) / kNormChunks, 1, kRowsPerChunk);
}
inline int64_t norm_chunks_of(int64_t rows) {
  const int64_t r = norm_rows_per_chunk(rows);
  return (rows + r - 1) / r;
}

// The chunk partials are added in groups of this many first, a group per block row, so
// that a long sum (2048 chunks at 131072 rows) is not one thread's dependent loop over
// them all while the GPU idles; then the groups' sums, in order. Fixed grouping: the
// same additions, in the same order, every run.
constexpr int64_t kChunksPerGroup = 64;
inline int64_t groups_of(int64_t chunks) {
  return (chunks + kChunksPerGroup - 1) / kChunksPerGroup;
}

// Floats of the partial buffer: the chunk partials, then (8-byte aligned) the groups'
// double sums.
inline int64_t partial_floats(int64_t chunks, int64_t cols) {
  return (chunks * cols + 1) / 2 * 2 + 2 * groups_of(chunks) * cols;
}

// The partial buffers of column_sums and of the LayerNorm backward (reduce.cu), in floats.
inline int64_t column_sums_partial_floats(int64_t rows, int64_t cols) {
  return partial_floats(chunks_of(rows), cols);
}
inline int64_t layernorm_backward_partial_floats(int64_t rows, int64_t d) {
  return partial_floats(norm_chunks_of(rows), 2 * d);
}

// The embedding backward cuts segments of equal ids longer than this into pieces of this
// many rows, so there are at most 2 rows / kEmbeddingPiece + 1 pieces.
constexpr int32_t kEmbeddingPiece = 32;
inline int64_t embedding_max_pieces(int64_t rows) { return 2 * rows / kEmbeddingPiece + 1; }
inline size_t scratch_align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The embedding backward's scratch less CUB's temporary storage (whose size only CUB can
// say): eight int32 arrays of about a row each, the counts, the pieces' bounds, and a row
// of d partial sums per piece, each 256-byte aligned.
inline size_t embedding_scratch_without_cub(int64_t rows, int64_t d) {
  const size_t r = size_t(rows), p = size_t(embedding_max_pieces(rows)), i32 = sizeof(int32_t);
  return 7 * scratch_align_up(r * i32) + scratch_align_up((r + 1) * i32) +
         scratch_align_up(2 * i32) + 2 * scratch_align_up(p * i32) +
         scratch_align_up(p * size_t(d) * sizeof(float));
}

}  // namespace par::cuda::kern
