// Products with the bias in cuBLASLt's epilogue (lt_linear.h).
#include "kernels/cuda/lt_linear.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "kernels/cuda/backend_log.h"
#include "kernels/cuda/cuda_check.h"

namespace par::cuda {

int pointer_alignment(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  int alignment = 1;
  while (alignment < 256 && address % (2 * uintptr_t(alignment)) == 0) alignment *= 2;
  return alignment;
}

LtShapes lt_shapes(const ColumnMajorGemm& c) {
  LtShapes s;
  s.first_rows = uint64_t(c.trans_first ? c.k : c.m);
  s.first_cols = uint64_t(c.trans_first ? c.m : c.k);
  s.second_rows = uint64_t(c.trans_second ? c.n : c.k);
  s.second_cols = uint64_t(c.trans_second ? c.k : c.n);
  s.d_rows = uint64_t(c.m);
  s.d_cols = uint64_t(c.n);
  s.ld_first = c.ld_first;
  s.ld_second = c.ld_second;
  s.ld_d = c.ldc;
  return s;
}

ColumnMajorGemm linear_as_column_major(int64_t rows, int64_t in, int64_t out) {
  return to_column_major(with_compact_operands(
      row_major_gemm(false, true, rows, out, in, 1.0f, nullptr, in, nullptr, in, 0.0f, nullptr, out)));
}

struct LtLinear::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t first = nullptr, second = nullptr, d = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  ~Plan() {
    if (preference) cublasLtMatmulPreferenceDestroy(preference);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (second) cublasLtMatrixLayoutDestroy(second);
    if (first) cublasLtMatrixLayoutDestroy(first);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

namespace {

// The plan of a call, or null where any step of making it fails (cuBLASLt declines).
std::unique_ptr<LtLinear::Plan> make_plan(cublasLtHandle_t handle, const ColumnMajorGemm& c,
                                          const void* first16, const void* second16,
                                          const void* d, bool d_bf16, const float* bias,
                                          size_t workspace_bytes) {
  auto p = std::make_unique<LtLinear::Plan>();
  const LtShapes s = lt_shapes(c);
  const cublasOperation_t trans_first = c.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t trans_second = c.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  // The bias stays float32 whatever D's type (cuBLASLt's default is D's): the model's
  // parameters, added to the float32 sums before the one rounding to D.
  const int32_t bias_type = CUDA_R_32F;
  const uint64_t workspace = workspace_bytes;
  const uint32_t align_first = uint32_t(pointer_alignment(first16));
  const uint32_t align_second = uint32_t(pointer_alignment(second16));
  const uint32_t align_d = uint32_t(pointer_alignment(d));
  const cudaDataType_t d_type = d_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const bool ok =
      cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_first,
                                     sizeof(trans_first)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_second,
                                     sizeof(trans_second)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                     sizeof(epilogue)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                     sizeof(bias_type)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                     sizeof(bias)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutCreate(&p->first, CUDA_R_16BF, s.first_rows, s.first_cols,
                                 s.ld_first) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutCreate(&p->second, CUDA_R_16BF, s.second_rows, s.second_cols,
                                 s.ld_second) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutCreate(&p->d, d_type, s.d_rows, s.d_cols, s.ld_d) ==
          CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceCreate(&p->preference) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(p->preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace, sizeof(workspace)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(p->preference,
                                           CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first,
                                           sizeof(align_first)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(p->preference,
                                           CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                           &align_second, sizeof(align_second)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(p->preference,
                                           CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                           sizeof(align_d)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(p->preference,
                                           CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                           sizeof(align_d)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulAlgoGetHeuristic(handle, p->op, p->first, p->second, p->d, p->d,
                                     p->preference, 1, &result, &found) == CUBLAS_STATUS_SUCCESS &&
      found > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
      result.workspaceSize <= workspace_bytes;
  if (!ok) return nullptr;
  // The heuristic's algorithm, checked against the call as it will be made.
  cublasLtMatmulHeuristicResult_t checked{};
  if (cublasLtMatmulAlgoCheck(handle, p->op, p->first, p->second, p->d, p->d, &result.algo,
                              &checked) != CUBLAS_STATUS_SUCCESS ||
      checked.workspaceSize > workspace_bytes)
    return nullptr;
  p->algo = result.algo;
  p->workspace = std::max(result.workspaceSize, checked.workspaceSize);  // both fit (above)
  return p;
}

}  // namespace

LtLinear::LtLinear() { PAR_CUBLAS_CHECK(cublasLtCreate(&handle_)); }

LtLinear::~LtLinear() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

bool LtLinear::forward(cudaStream_t stream, void* workspace, size_t workspace_bytes,
                       const ColumnMajorGemm& c, const uint16_t* first16,
                       const uint16_t* second16, void* d, bool d_bf16, const float* bias) {
  PAR_ASSERT(c.batch == 1 && c.alpha == 1 && c.beta == 0 && bias != nullptr,
             "LtLinear::forward: one product, alpha 1, beta 0, with a bias");
  const Key key{c.m, c.n, c.k, c.ld_first, c.ld_second, c.ldc, c.trans_first, c.trans_second,
                d_bf16, pointer_alignment(first16), pointer_alignment(second16),
                pointer_alignment(d), pointer_alignment(bias), workspace_bytes};
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    it = plans_.emplace(key, make_plan(handle_, c, first16, second16, d, d_bf16, bias,
                                       workspace_bytes)).first;
    if (!it->second) declined(c, d_bf16, "no algorithm");
  }
  Plan* p = it->second.get();
  if (!p) return false;
  const float alpha = 1, beta = 0;
  PAR_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                  &bias, sizeof(bias)));
  const cublasStatus_t status =
      cublasLtMatmul(handle_, p->op, &alpha, first16, p->first, second16, p->second, &beta, d,
                     p->d, d, p->d, &p->algo, workspace, p->workspace, stream);
  // A refusal at launch launches nothing: this shape goes the cuBLAS way from now on.
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
    it->second.reset();
    declined(c, d_bf16, "a refused launch");
    return false;
  }
  PAR_CUBLAS_CHECK(status);
  return true;
}

void LtLinear::declined(const ColumnMajorGemm& c, bool d_bf16, const char* why) {
  backend_log(LogLevel::kInfo,
              std::string("cuBLASLt's bias epilogue declined a ") + std::to_string(c.m) + " x " +
                  std::to_string(c.n) + " x " + std::to_string(c.k) + " product into " +
                  (d_bf16 ? "bfloat16" : "float32") + " (" + why + "): " +
                  (d_bf16 ? "it is computed in float32 and rounded in a second pass"
                          : "its bias is broadcast into the output before the product"));
}

}  // namespace par::cuda
