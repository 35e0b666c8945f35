// Device-side helpers shared by the kernels of the CUDA backend: grid sizing for 64-bit
// element counts and fixed-order block reductions (the same tree every run, so sums are
// reproducible bit for bit).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace par::cuda {

constexpr int kThreads = 256;
// Grid-stride loops cover any count; more blocks than this only add scheduling work.
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(std::clamp<int64_t>(b, 1, kMaxBlocks));
}

// Threads for one block per row of `d` elements: a multiple of 32 (the reductions use
// whole warps), at most `cap`.
inline int threads_for_row(int64_t d, int cap = kThreads) {
  const int64_t t = (d + 31) / 32 * 32;
  return int(std::clamp<int64_t>(t, 32, cap));
}

__device__ __forceinline__ int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// Tensors stored in float32 or in bfloat16 (uint16_t bits, core/bf16.h): what an element
// holds, as float, and storing a float computed from it (rounded to nearest even).
__device__ __forceinline__ float stored_value(float x) { return x; }
__device__ __forceinline__ float stored_value(uint16_t b) {
  return __uint_as_float(uint32_t(b) << 16);
}
__device__ __forceinline__ void store_value(float* p, float x) { *p = x; }
// The same conversion as round_to_bf16's (matrix_to_bf16), so that the backend's rounded
// results agree bit for bit; core/bf16.h rounds numbers alike (a NaN's bits may differ).
__device__ __forceinline__ void store_value(uint16_t* p, float x) {
  *p = __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Slots of the shared memory block_sum and block_max take: one per warp, and the result.
constexpr int kBlockReduceSlots = 33;

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 and
// every thread of the block must call it (it synchronizes). `shared` holds
// kBlockReduceSlots values.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // a previous call may still be reading shared[32]
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T t = lane < warps ? shared[lane] : T(0);
    t = warp_sum(t);
    if (lane == 0) shared[32] = t;
  }
  __syncthreads();
  return shared[32];
}

template <typename T>
__device__ T block_max(T v, T* shared, T lowest) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T t = lane < warps ? shared[lane] : lowest;
    t = warp_max(t);
    if (lane == 0) shared[32] = t;
  }
  __syncthreads();
  return shared[32];
}

}  // namespace par::cuda
