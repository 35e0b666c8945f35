// Row-major gemm for float and double through CBLAS (OpenBLAS).
#pragma once

#include <cblas.h>

#include <cstdint>
#include <type_traits>

#include "core/error.h"

namespace par::cpu {

// CBLAS takes 32-bit sizes; pointers carry the 64-bit offsets.
inline int blas_int(int64_t v) {
  PAR_ASSERT(v >= 0 && v <= INT32_MAX, "matrix dimension ", v, " exceeds the BLAS int range");
  return static_cast<int>(v);
}

template <typename T>
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                 const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, blas_int(m), blas_int(n), blas_int(k), alpha, a,
                blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
  else
    cblas_dgemm(CblasRowMajor, ta, tb, blas_int(m), blas_int(n), blas_int(k), alpha, a,
                blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
}

}  // namespace par::cpu
