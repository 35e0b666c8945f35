// Compact bfloat16 copies of float32 matrices: the operands of the products that run on
// bfloat16 tensor cores (gemm_mapping.h, bf16_operands_pay). Memory-bound: a contiguous
// matrix goes four elements per thread (16-byte loads, 8-byte stores).
#include <cuda_bf16.h>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kernels.h"

namespace par::cuda::kern {

namespace {

__device__ __forceinline__ uint16_t to_bf16(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

__global__ void contiguous_to_bf16_kernel(uint2* dst, const float4* src, int64_t quads) {
  for (int64_t i = global_thread(); i < quads; i += grid_threads()) {
    const float4 x = src[i];
    dst[i] = make_uint2(uint32_t(to_bf16(x.x)) | uint32_t(to_bf16(x.y)) << 16,
                        uint32_t(to_bf16(x.z)) | uint32_t(to_bf16(x.w)) << 16);
  }
}

__global__ void strided_to_bf16_kernel(uint16_t* dst, const float* src, int64_t rows,
                                       int64_t cols, int64_t ld) {
  const int64_t n = rows * cols;
  for (int64_t t = global_thread(); t < n; t += grid_threads())
    dst[t] = to_bf16(src[(t / cols) * ld + t % cols]);
}

__global__ void bf16_to_float_kernel(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) dst[i] = stored_value(src[i]);
}

}  // namespace

void bf16_to_float(cudaStream_t st, float* dst, const uint16_t* src, int64_t n) {
  if (n <= 0) return;
  bf16_to_float_kernel<<<blocks_for(n), kThreads, 0, st>>>(dst, src, n);
  PAR_CUDA_CHECK_LAUNCH("bf16_to_float_kernel");
}

void matrix_to_bf16(cudaStream_t st, uint16_t* dst, const float* src, int64_t rows,
                    int64_t cols, int64_t ld) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  const bool aligned = reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(dst) % 8 == 0;
  if ((ld == cols || rows == 1) && n % 4 == 0 && aligned) {
    contiguous_to_bf16_kernel<<<blocks_for(n / 4), kThreads, 0, st>>>(
        reinterpret_cast<uint2*>(dst), reinterpret_cast<const float4*>(src), n / 4);
    PAR_CUDA_CHECK_LAUNCH("contiguous_to_bf16_kernel");
    return;
  }
  strided_to_bf16_kernel<<<blocks_for(n), kThreads, 0, st>>>(dst, src, rows, cols, ld);
  PAR_CUDA_CHECK_LAUNCH("strided_to_bf16_kernel");
}

}  // namespace par::cuda::kern
