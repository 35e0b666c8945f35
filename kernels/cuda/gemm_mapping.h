// Row-major matrix products through a column-major BLAS (cuBLAS), as plain data so that a
// test on a machine without a GPU can check the mapping against a reference.
//
// A row-major matrix with leading dimension ld is, read column-major, its transpose with
// the same ld. So C = op(A) op(B) (row-major) is C^T = op(B)^T op(A)^T (column-major):
// the operands swap places, keep their "transposed" flags, and m and n swap.
#pragma once

#include <cstdint>

namespace par::cuda {

// The workspace cuBLAS and cuBLASLt share on a backend's stream: cuBLAS's recommended
// size on Hopper.
constexpr int64_t kCublasWorkspaceBytes = int64_t(32) << 20;

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

// One product (batch 1), in the order of the arguments of Ops::gemm.
inline RowMajorGemm row_major_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                   float alpha, const float* a, int64_t lda, const float* b,
                                   int64_t ldb, float beta, float* c, int64_t ldc) {
  RowMajorGemm g;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = m, g.n = n, g.k = k;
  g.a = a, g.lda = lda;
  g.b = b, g.ldb = ldb;
  g.c = c, g.ldc = ldc;
  g.alpha = alpha, g.beta = beta;
  return g;
}

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

// ---- bfloat16 operands ----
// cuBLAS multiplies float32 operands in "bf16" (CUBLAS_COMPUTE_32F_FAST_16BF) at the tf32
// rate only (409 TFLOP/s on an H200 for 8192^3), bfloat16 operands at about twice that. A
// large product therefore pays for converting its operands to bfloat16 first (one pass
// over each, rounding to nearest as FAST_16BF does) and multiplying those, accumulating in
// float32 either way.

// The part of a row-major operand that a product reads: `rows` rows of `cols` elements,
// `ld` apart. Its bfloat16 copy is compact: `cols` apart.
struct StoredOperand {
  int64_t rows = 0, cols = 0, ld = 0;
  int64_t elements() const { return rows * cols; }
};
inline StoredOperand stored_a(const RowMajorGemm& g) {
  return g.trans_a ? StoredOperand{g.k, g.m, g.lda} : StoredOperand{g.m, g.k, g.lda};
}
inline StoredOperand stored_b(const RowMajorGemm& g) {
  return g.trans_b ? StoredOperand{g.n, g.k, g.ldb} : StoredOperand{g.k, g.n, g.ldb};
}

// The same product over compact copies of its operands (the pointers are the caller's to
// replace).
inline RowMajorGemm with_compact_operands(const RowMajorGemm& g) {
  RowMajorGemm r = g;
  r.lda = stored_a(g).cols;
  r.ldb = stored_b(g).cols;
  return r;
}

// Whether `products` (multiply-adds, over one or more cuBLAS calls) pay for converting
// `elements` operand elements to bfloat16. Per multiply-add the bfloat16 rate saves about
// 2 * (1/409 - 1/790) ps = 2.4e-15 s on an H200; per element the conversion reads 4 bytes
// and writes 2, 1.25e-12 s at 4.8 TB/s, so the break-even is near 530 multiply-adds per
// element; 768 leaves room for a bandwidth below peak. The input side's key and value
// projections ([N, d] x [d, d], d multiply-adds per element of x: 1016 at d = 1024)
// convert. The floor of 2^33 multiply-adds (about 40 us at the tf32 rate) keeps the latent
// layers' products of one example (M = 1024 rows: 3e9 and less), whose time the
// conversion's launches would eat, and decoding's. Batched products never convert (the
// blocked attention's: bf16 runs cuDNN's attention instead).
constexpr int64_t kBf16MinProductsPerElement = 768;
constexpr int64_t kBf16MinProducts = int64_t(1) << 33;
// In double: the memory plan asks of shapes no machine holds (a refused --batch-size),
// whose products would pass int64.
inline bool bf16_operands_pay(double products, double elements) {
  return products >= double(kBf16MinProducts) &&
         products >= double(kBf16MinProductsPerElement) * elements;
}
// The elements of the bfloat16 copies a linear layer [rows, in] -> [rows, out] asks of the
// backend's two scratch slots under Bf16Operands::kAuto (0 where it does not convert):
// the forward copies x (slot A) and w (B); the backward dy (A) and w, then x (B).
struct Bf16LinearCopies {
  int64_t a = 0, b = 0;
};
inline Bf16LinearCopies bf16_linear_copies(int64_t rows, int64_t in, int64_t out) {
  Bf16LinearCopies c;
  const double r = double(rows), i = double(in), o = double(out);
  if (bf16_operands_pay(r * i * o, r * i + o * i)) {
    c.a = rows * in;
    c.b = out * in;
  }
  if (bf16_operands_pay(2 * r * i * o, r * o + o * i + r * i)) {
    c.a = c.a > rows * out ? c.a : rows * out;
    const int64_t b = out * in > rows * in ? out * in : rows * in;
    c.b = c.b > b ? c.b : b;
  }
  return c;
}

inline bool bf16_operands_pay(const RowMajorGemm& g) {
  return g.batch == 1 && bf16_operands_pay(double(g.m) * double(g.n) * double(g.k),
                                           double(stored_a(g).elements() + stored_b(g).elements()));
}

}  // namespace par::cuda
