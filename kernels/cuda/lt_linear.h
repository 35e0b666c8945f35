// Matrix products with the bias added in cuBLASLt's epilogue, on bfloat16 operands.
//
// cuBLAS's gemm adds a bias only as beta * C, so a linear layer first broadcast b into
// every row of y, and the product then read y back: at N = 131072, d = 1024 each of the
// input side's two projections wrote and read an extra [N, d] float32 tensor (1 GiB of
// traffic), and the values' projection a third pass to round y to bfloat16, its storage.
// cuBLASLt adds the bias to the float32 sums as it stores them, in float32 or straight in
// bfloat16: y is written once.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "kernels/cuda/gemm_mapping.h"

namespace par::cuda {

// The largest power of two up to 256 that divides the address: what cuBLASLt is told of
// each pointer's alignment (it assumes 256 otherwise).
int pointer_alignment(const void* p);

// The matrices of a column-major product c as cuBLASLt's layouts describe them: each
// operand as stored (rows x cols, ld apart; a transposed one is stored k-major), and D.
struct LtShapes {
  uint64_t first_rows = 0, first_cols = 0, second_rows = 0, second_cols = 0;
  uint64_t d_rows = 0, d_cols = 0;
  int64_t ld_first = 0, ld_second = 0, ld_d = 0;
};
LtShapes lt_shapes(const ColumnMajorGemm& c);

// The column-major product of the linear layer y [rows, out] = x [rows, in] w^T over
// compact copies of x and w (its first operand w, transposed; its second x): D = y^T.
ColumnMajorGemm linear_as_column_major(int64_t rows, int64_t in, int64_t out);

class LtLinear {
 public:
  LtLinear();  // throws where cuBLASLt cannot be initialized
  ~LtLinear();
  LtLinear(const LtLinear&) = delete;
  LtLinear& operator=(const LtLinear&) = delete;

  // D = op(first) op(second) + bias, broadcast along D's columns (bias [c.m], float32), for
  // the single product c (column-major, batch 1, alpha 1, beta 0) on compact bfloat16
  // copies of its operands (first16: c.ld_first apart, second16: c.ld_second apart); D at
  // d ([c.m, c.n], c.ldc apart) in float32, or bfloat16 where d_bf16. False, having
  // launched nothing, where cuBLASLt offers no algorithm for the call (the caller then
  // goes the cuBLAS way); the answer is kept per shape and alignment. A launch that
  // cuBLASLt refuses after all is a decline too, from then on.
  bool forward(cudaStream_t stream, void* workspace, size_t workspace_bytes,
               const ColumnMajorGemm& c, const uint16_t* first16, const uint16_t* second16,
               void* d, bool d_bf16, const float* bias);

 struct Plan;  // cuBLASLt's descriptors and algorithm for one shape (lt_linear.cpp)

 private:
  // Says in the log, once per shape, that a call goes the cuBLAS way, and why.
  static void declined(const ColumnMajorGemm& c, bool d_bf16, const char* why);
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool,
                         int, int, int, int, size_t>;
  cublasLtHandle_t handle_ = nullptr;
  std::map<Key, std::unique_ptr<Plan>> plans_;  // a null plan: cuBLASLt declined the shape
};

}  // namespace par::cuda
