// CudaOps's matrix products (kernels/cuda/cuda_ops_impl.h): gemm and the linear layers
// through cuBLAS with the compute type of the chosen MatmulPrecision, on bfloat16 copies of
// the operands where they pay (--precision bf16), the forward's bias in cuBLASLt's
// epilogue where it takes it.
#include "kernels/cuda/cuda_ops_impl.h"

namespace par::cuda {

namespace {

int to_int(int64_t v, const char* what) {
  PAR_ASSERT(v >= 0 && v <= INT32_MAX, what, " = ", v, " exceeds cuBLAS's int range");
  return int(v);
}

cublasComputeType_t compute_type(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kFloat32: return CUBLAS_COMPUTE_32F;
    case MatmulPrecision::kTF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case MatmulPrecision::kBF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
  }
  return CUBLAS_COMPUTE_32F;
}

}  // namespace

void CudaOps::gemm_row_major(const RowMajorGemm& g) {
  if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return;
  if (g.k <= 0) {  // no products: C = beta C, as BLAS defines it
    kern::scale_matrices(stream_, g.c, g.m, g.n, g.ldc, g.stride_c, g.batch, g.beta);
    return;
  }
  PAR_ASSERT(leading_dimensions_valid(g), "gemm: leading dimensions too small (m ", g.m, " n ",
             g.n, " k ", g.k, " lda ", g.lda, " ldb ", g.ldb, " ldc ", g.ldc, ")");
  if (g.batch == 1 && bf16_operands_for(g)) {
    gemm_bf16(g, bf16_copy(kBf16A, g.a, stored_a(g)), bf16_copy(kBf16B, g.b, stored_b(g)));
    return;
  }
  const ColumnMajorGemm c = to_column_major(g);
  const cublasOperation_t op1 = c.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op2 = c.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasComputeType_t ct = compute_type(precision_);
  const int m = to_int(c.m, "m"), n = to_int(c.n, "n"), k = to_int(c.k, "k");
  const int ld1 = to_int(c.ld_first, "ld"), ld2 = to_int(c.ld_second, "ld");
  const int ldc = to_int(c.ldc, "ldc");
  if (c.batch == 1) {
    PAR_CUBLAS_CHECK(cublasGemmEx(cublas_, op1, op2, m, n, k, &c.alpha, c.first, CUDA_R_32F,
                                  ld1, c.second, CUDA_R_32F, ld2, &c.beta, c.c, CUDA_R_32F, ldc,
                                  ct, CUBLAS_GEMM_DEFAULT));
  } else {
    PAR_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        cublas_, op1, op2, m, n, k, &c.alpha, c.first, CUDA_R_32F, ld1, c.stride_first,
        c.second, CUDA_R_32F, ld2, c.stride_second, &c.beta, c.c, CUDA_R_32F, ldc, c.stride_c,
        to_int(c.batch, "batch"), ct, CUBLAS_GEMM_DEFAULT));
  }
}

bool CudaOps::bf16_operands_for(int64_t products, int64_t elements) const {
  if (precision_ != MatmulPrecision::kBF16) return false;
  switch (bf16_operands_) {
    case Bf16Operands::kAlways: return true;
    case Bf16Operands::kNever: return false;
    case Bf16Operands::kAuto: break;
  }
  return bf16_operands_pay(products, elements);
}

const uint16_t* CudaOps::bf16_copy(int slot, const float* src, const StoredOperand& o) {
  auto* dst = static_cast<uint16_t*>(scratch(slot, size_t(o.elements()) * sizeof(uint16_t)));
  kern::matrix_to_bf16(stream_, dst, src, o.rows, o.cols, o.ld);
  return dst;
}

void CudaOps::gemm_bf16(const RowMajorGemm& g, const uint16_t* a16, const uint16_t* b16) {
  const ColumnMajorGemm c = to_column_major(with_compact_operands(g));
  const cublasOperation_t op1 = c.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op2 = c.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
  // The column-major form swaps the operands: B's copy comes first.
  PAR_CUBLAS_CHECK(cublasGemmEx(cublas_, op1, op2, to_int(c.m, "m"), to_int(c.n, "n"),
                                to_int(c.k, "k"), &c.alpha, b16, CUDA_R_16BF,
                                to_int(c.ld_first, "ld"), a16, CUDA_R_16BF,
                                to_int(c.ld_second, "ld"), &c.beta, c.c, CUDA_R_32F,
                                to_int(c.ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void CudaOps::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                   float* c, int64_t ldc) {
  use_device();
  gemm_row_major(row_major_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc));
}

bool CudaOps::lt_linear_forward(void* y, bool y_bf16, const uint16_t* x16, const uint16_t* w16,
                                const float* b, int64_t rows, int64_t in, int64_t out) {
  // The column-major form swaps the operands: w's copy comes first.
  return lt_->forward(stream_, cublas_workspace_, kCublasWorkspace,
                      linear_as_column_major(rows, in, out), w16, x16, y, y_bf16, b);
}

void CudaOps::linear_forward(float* y, const float* x, const float* w, const float* b,
                             int64_t rows, int64_t in, int64_t out) {
  use_device();
  const RowMajorGemm g = row_major_gemm(false, true, rows, out, in, 1.0f, x, in, w, in,
                                        b ? 1.0f : 0.0f, y, out);
  if (b && rows > 0 && out > 0 && in > 0 && bf16_operands_for(g)) {
    // On bfloat16 copies, as gemm_row_major would make them: the bias in the product's
    // epilogue where cuBLASLt takes it, else as below.
    const uint16_t* x16 = bf16_copy(kBf16A, x, stored_a(g));
    const uint16_t* w16 = bf16_copy(kBf16B, w, stored_b(g));
    if (lt_linear_forward(y, false, x16, w16, b, rows, in, out)) return;
    kern::broadcast_rows(stream_, y, b, rows, out);
    gemm_bf16(g, x16, w16);
    return;
  }
  // As on the CPU: start from the bias rows, so the product accumulates onto them.
  if (b) kern::broadcast_rows(stream_, y, b, rows, out);
  gemm_row_major(g);
}

void CudaOps::linear_backward(float* dx, bool accumulate_dx, float* dw, float* db,
                              const float* dy, const float* x, const float* w, int64_t rows,
                              int64_t in, int64_t out) {
  use_device();
  const RowMajorGemm gdx = row_major_gemm(false, false, rows, in, out, 1.0f, dy, out, w, in,
                                          accumulate_dx ? 1.0f : 0.0f, dx, in);
  const RowMajorGemm gdw = row_major_gemm(true, false, out, in, rows, 1.0f, dy, out, x, in, 1.0f,
                                          dw, in);
  // Both products read dy: where they run on bfloat16 copies, dy is converted once.
  const int64_t products = (int64_t(dx != nullptr) + int64_t(dw != nullptr)) * rows * in * out;
  const int64_t elements = rows * out + (dx ? out * in : 0) + (dw ? rows * in : 0);
  if (products > 0 && bf16_operands_for(products, elements)) {
    const uint16_t* dy16 = bf16_copy(kBf16A, dy, stored_a(gdx));  // stored_a(gdw) too
    if (dx) gemm_bf16(gdx, dy16, bf16_copy(kBf16B, w, stored_b(gdx)));
    if (dw) gemm_bf16(gdw, dy16, bf16_copy(kBf16B, x, stored_b(gdw)));
  } else {
    if (dx) gemm_row_major(gdx);
    if (dw) gemm_row_major(gdw);
  }
  if (db && rows > 0 && out > 0) {
    auto* partial = static_cast<float*>(
        scratch(kColumnPartial, size_t(kern::column_sums_partial_floats(rows, out)) * 4));
    kern::column_sums(stream_, db, dy, rows, out, partial);
  }
}

}  // namespace par::cuda
