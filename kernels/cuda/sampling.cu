// Ops::sample_tokens on the GPU: the rule of core/token_choice.h, step for step, so that the
// GPU chooses the CPU's token for the same uniform number.
//   1. Order: each logit becomes a 64-bit key, larger = earlier in the CPU's order (the
//      float's bits made monotone, -0 taken as +0, then the complement of the id, so equal
//      logits put the smaller id first and no two keys are equal); a segmented radix sort
//      (CUB) sorts each row's keys, largest first.
//   2-5. One block per row walks the sorted row in tiles: the weights exp(l/T - l_0/T) in
//      double, their running sums by a block scan in double (the carry added tile after
//      tile), written to scratch; then the top-p count and the token are the first indices
//      where the running sum reaches top_p * S(K) and exceeds u * S(n), found by a block
//      minimum. Temperature 0 takes the first key (the CPU's max_element: the first maximum).
// The one difference from the CPU: the running sums are associated as a scan tree, not left
// to right, and CUDA's exp may differ from the C library's in the last bit. The CPU's left to
// right sum of up to V terms may be off by up to about V units in the last place of a double
// (typically sqrt(V): ~1e-14 relative at V = 50,257), the tree's much less, so a choice
// differs only when u * S lies that close to a boundary between two tokens. Ties (equal logits) and the top-p
// boundary with exactly representable weights (equal logits give weights of exactly 1) are
// decided exactly as on the CPU. Deterministic: fixed shapes, no atomics.
#include <cub/cub.cuh>

#include <cmath>

#include "core/error.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

constexpr int kChooseThreads = 256;

__device__ __forceinline__ uint64_t order_key(float x, int64_t id) {
  uint32_t b = __float_as_uint(x == 0.0f ? 0.0f : x);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (uint64_t(b) << 32) | uint64_t(~uint32_t(id));
}
__device__ __forceinline__ double key_logit(uint64_t key) {
  uint32_t b = uint32_t(key >> 32);
  b = (b & 0x80000000u) ? (b & 0x7fffffffu) : ~b;
  return double(__uint_as_float(b));
}
__device__ __forceinline__ int32_t key_id(uint64_t key) { return int32_t(~uint32_t(key)); }

__global__ void make_keys(uint64_t* keys, int* offsets, const float* logits, int64_t rows,
                          int64_t vocab) {
  for (int64_t i = global_thread(); i < rows * vocab; i += grid_threads())
    keys[i] = order_key(logits[i], i % vocab);
  for (int64_t r = global_thread(); r <= rows; r += grid_threads()) offsets[r] = int(r * vocab);
}

// The first i < n with pred(i), or n; every thread of the block must call it.
template <typename Pred>
__device__ int64_t first_where(int64_t n, Pred pred, int64_t* shared) {
  int64_t first = n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    if (pred(i)) {
      first = i;
      break;
    }
  return -block_max<int64_t>(-first, shared, INT64_MIN);
}

struct ChoiceArgs {
  const uint64_t* sorted;  // [rows, vocab], each row largest first
  double* running;         // [rows, vocab]
  int32_t* ids;            // [rows]
  const double* u;         // [rows]
  int64_t vocab, top_k;
  double temperature, top_p;
};

__global__ void __launch_bounds__(kChooseThreads) choose(ChoiceArgs a) {
  using Scan = cub::BlockScan<double, kChooseThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int64_t reduce[kBlockReduceSlots];
  const int64_t r = blockIdx.x;
  const uint64_t* keys = a.sorted + r * a.vocab;
  double* run = a.running + r * a.vocab;
  if (a.temperature == 0) {
    if (threadIdx.x == 0) a.ids[r] = key_id(keys[0]);
    return;
  }
  const int64_t kept = a.top_k > 0 && a.top_k < a.vocab ? a.top_k : a.vocab;
  const double top = key_logit(keys[0]) / a.temperature;
  if (!isfinite(top)) {  // the first of the order, as choose_token (the same for every thread)
    if (threadIdx.x == 0) a.ids[r] = key_id(keys[0]);
    return;
  }
  double carry = 0;
  for (int64_t t0 = 0; t0 < kept; t0 += kChooseThreads) {
    const int64_t i = t0 + threadIdx.x;
    const double w = i < kept ? exp(key_logit(keys[i]) / a.temperature - top) : 0.0;
    double inclusive, tile;
    Scan(scan).InclusiveSum(w, inclusive, tile);
    if (i < kept) run[i] = carry + inclusive;
    carry += tile;
    __syncthreads();  // the scan's storage is reused by the next tile
  }
  int64_t n = kept;
  if (a.top_p < 1) {
    const double reach = a.top_p * run[kept - 1];
    const int64_t at = first_where(kept, [&](int64_t i) { return !(run[i] < reach); }, reduce);
    n = at < kept ? at + 1 : kept;  // at least 1: the first weight is exp(0) = 1 > 0
  }
  const double target = a.u[r] * run[n - 1];
  const int64_t i = first_where(n, [&](int64_t j) { return target < run[j]; }, reduce);
  if (threadIdx.x == 0) a.ids[r] = key_id(keys[i < n ? i : n - 1]);
}

struct Layout {
  size_t keys_in, keys_out, running, offsets, cub, cub_bytes, total;
};

size_t round_up(size_t x) { return (x + 255) / 256 * 256; }

Layout layout(int64_t rows, int64_t vocab) {
  const size_t n = size_t(rows * vocab);
  Layout l{};
  l.keys_in = 0;
  l.keys_out = round_up(n * 8);
  l.running = l.keys_out + round_up(n * 8);
  l.offsets = l.running + round_up(n * 8);
  l.cub = l.offsets + round_up(size_t(rows + 1) * sizeof(int));
  PAR_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(
      nullptr, l.cub_bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      int(n), int(rows), static_cast<const int*>(nullptr), static_cast<const int*>(nullptr)));
  l.total = l.cub + round_up(l.cub_bytes);
  return l;
}

}  // namespace

size_t sample_tokens_scratch_bytes(int64_t rows, int64_t vocab) {
  PAR_ASSERT(rows > 0 && vocab > 0 && rows * vocab <= INT32_MAX, "sample_tokens: ", rows,
             " rows of ", vocab, " logits exceed the sort's int range");
  return layout(rows, vocab).total;
}

void sample_tokens(cudaStream_t st, int32_t* ids, const float* logits, int64_t rows,
                   int64_t vocab, const SamplingOptions& o, const double* u, void* scratch) {
  const Layout l = layout(rows, vocab);
  char* s = static_cast<char*>(scratch);
  auto* keys_in = reinterpret_cast<uint64_t*>(s + l.keys_in);
  auto* keys_out = reinterpret_cast<uint64_t*>(s + l.keys_out);
  auto* offsets = reinterpret_cast<int*>(s + l.offsets);
  make_keys<<<blocks_for(rows * vocab), kThreads, 0, st>>>(keys_in, offsets, logits, rows, vocab);
  PAR_CUDA_CHECK(cudaGetLastError());
  size_t cub_bytes = l.cub_bytes;
  PAR_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(
      s + l.cub, cub_bytes, keys_in, keys_out, int(rows * vocab), int(rows), offsets, offsets + 1,
      0, 64, st));
  ChoiceArgs a{keys_out, reinterpret_cast<double*>(s + l.running), ids, u, vocab, o.top_k,
               o.temperature, o.top_p};
  choose<<<unsigned(rows), kChooseThreads, 0, st>>>(a);
  PAR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace par::cuda::kern
