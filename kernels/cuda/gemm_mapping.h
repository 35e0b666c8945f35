// Row-major matrix products through a column-major BLAS (cuBLAS), as plain data so that a
// test on a machine without a GPU can check the mapping against a reference.
//
// A row-major matrix with leading dimension ld is, read column-major, its transpose with
// the same ld. So C = op(A) op(B) (row-major) is C^T = op(B)^T op(A)^T (column-major):
// the operands swap places, keep their "transposed" flags, and m and n swap.
#pragma once

#include <cstdint>

namespace par::cuda {

// C[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C, row-major, for `batch` matrices whose
// successive instances are stride_* elements apart (0 for a single product).
struct RowMajorGemm {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const float* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  float* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  float alpha = 1, beta = 0;
  int64_t batch = 1;
};

// The same product in BLAS (column-major) terms: C = alpha op(first) op(second) + beta C,
// C of m rows and n columns.
struct ColumnMajorGemm {
  bool trans_first = false;
  bool trans_second = false;
  int64_t m = 0, n = 0, k = 0;
  const float* first = nullptr;
  int64_t ld_first = 0, stride_first = 0;
  const float* second = nullptr;
  int64_t ld_second = 0, stride_second = 0;
  float* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  float alpha = 1, beta = 0;
  int64_t batch = 1;
};

inline ColumnMajorGemm to_column_major(const RowMajorGemm& g) {
  ColumnMajorGemm r;
  r.trans_first = g.trans_b;
  r.trans_second = g.trans_a;
  r.m = g.n;
  r.n = g.m;
  r.k = g.k;
  r.first = g.b;
  r.ld_first = g.ldb;
  r.stride_first = g.stride_b;
  r.second = g.a;
  r.ld_second = g.lda;
  r.stride_second = g.stride_a;
  r.c = g.c;
  r.ldc = g.ldc;
  r.stride_c = g.stride_c;
  r.alpha = g.alpha;
  r.beta = g.beta;
  r.batch = g.batch;
  return r;
}

// Whether the leading dimensions can hold the row-major operands (what BLAS checks, in
// row-major words): each ld at least the stored row length, and at least 1.
inline bool leading_dimensions_valid(const RowMajorGemm& g) {
  const int64_t a_cols = g.trans_a ? g.m : g.k;
  const int64_t b_cols = g.trans_b ? g.k : g.n;
  auto ok = [](int64_t ld, int64_t cols) { return ld >= 1 && ld >= cols; };
  return ok(g.lda, a_cols) && ok(g.ldb, b_cols) && ok(g.ldc, g.n);
}

}  // namespace par::cuda
