// What the fused attention kernels share: the tile sizes, and the two tensor-core input
// formats behind one interface (storage type in shared memory, WMMA element type and k
// step, conversion from float32). bf16 is stored rounded; tf32 is stored as float and
// rounded when a fragment is loaded, as cuBLAS's TF32 mode rounds its inputs.
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

namespace par::cuda::kern::fused {

namespace wmma = nvcuda::wmma;

inline constexpr int kTileQ = 64, kTileK = 64, kWarps = 4, kFusedThreads = kWarps * 32;

struct Bf16 {
  using Storage = __nv_bfloat16;
  using Elem = __nv_bfloat16;
  static constexpr int kStep = 16;
  __device__ static Storage from_float(float x) { return __float2bfloat16_rn(x); }
  template <typename F>
  __device__ static void round(F&) {}
};

struct Tf32 {
  using Storage = float;
  using Elem = wmma::precision::tf32;
  static constexpr int kStep = 8;
  __device__ static Storage from_float(float x) { return x; }
  template <typename F>
  __device__ static void round(F& f) {
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
  }
};

}  // namespace par::cuda::kern::fused
