// CudaOps: core/ops.h on one GPU. Host code: the backend's making, and the orchestration
// of the kernels declared in kernels/cuda/kernels.h for the elementwise, loss, optimizer,
// sampling and token-table operations. See kernels/cuda/cuda_ops.h for the contract; the
// class is in cuda_ops_impl.h, which names the files of its other parts.
//
// Everything is enqueued on one non-blocking stream owned by the object; calls that hand
// data to the host (download, sum_squares) wait for it. cuBLAS gets a fixed workspace of
// its own, so it picks the same algorithms -- and gives the same bits -- every run.
#include "kernels/cuda/cuda_ops_impl.h"
#include "kernels/cuda/device_wait.h"

namespace par::cuda {

CudaOps::CudaOps(int device, MatmulPrecision precision) : device_(device), precision_(precision) {
  use_device();
  PAR_CUDA_CHECK(cudaDeviceGetAttribute(&sm_major_, cudaDevAttrComputeCapabilityMajor, device_));
  PAR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  PAR_CUBLAS_CHECK(cublasCreate(&cublas_));
  PAR_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  // After cublasSetStream, which resets the workspace to cuBLAS's default pool.
  PAR_CUDA_CHECK(cudaMalloc(&cublas_workspace_, kCublasWorkspace));
  track(int64_t(kCublasWorkspace));
  PAR_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspace));
  // Tensor-core use is chosen per call by the compute type; the handle stays at the
  // default (no TF32 for CUBLAS_COMPUTE_32F).
  PAR_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  PAR_CUBLAS_CHECK(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_HOST));
  // Here, not on first use, which may fall inside a decoding step's recording.
  lt_ = std::make_unique<LtLinear>();
  PAR_CUDA_CHECK(cudaMallocHost(&pinned_, 64));
  PAR_CUDA_CHECK(cudaMallocHost(&staging_, kStagingBytes));
  graphs_ = std::make_unique<StepGraphs>(stream_);
}

CudaOps::~CudaOps() {
  // No throwing from here: errors at teardown are ignored (the process is ending or the
  // context is already broken, and the original error has been reported).
  cudaSetDevice(device_);
  graphs_.reset();
  if (stream_) cudaStreamSynchronize(stream_);
  cudnn_.reset();
  lt_.reset();
  for (auto& s : scratch_)
    if (s.p) cudaFree(s.p);
  if (pinned_) cudaFreeHost(pinned_);
  if (staging_) cudaFreeHost(staging_);
  if (cublas_) cublasDestroy(cublas_);
  if (cublas_workspace_) cudaFree(cublas_workspace_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaOps::fill(float* x, int64_t n, float value) {
  use_device();
  kern::fill(stream_, x, n, value);
}

void CudaOps::copy(float* dst, const float* src, int64_t n) {
  if (dst == src || n <= 0) return;
  use_device();
  PAR_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice,
                                 stream_));
}

void CudaOps::add(float* y, const float* x, int64_t n) {
  use_device();
  kern::add(stream_, y, x, n);
}

void CudaOps::scale(float* x, int64_t n, double s) {
  use_device();
  kern::scale(stream_, x, n, float(s));
}

void CudaOps::copy_blocks(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                          int64_t batch, int64_t count, bool accumulate) {
  use_device();
  kern::copy_blocks(stream_, dst, dst_stride, src, src_stride, batch, count, accumulate);
}

void CudaOps::copy_blocks_to_row(float* dst, int64_t dst_stride, const int64_t* row,
                                 int64_t row_width, const float* src, int64_t src_stride,
                                 int64_t batch, int64_t count) {
  use_device();
  kern::copy_blocks_to_row(stream_, dst, dst_stride, row, row_width, src, src_stride, batch,
                           count);
}

void CudaOps::embedding_forward(float* h, const int32_t* ids, const float* table, int64_t rows,
                                int64_t d) {
  use_device();
  kern::embedding_forward(stream_, h, ids, table, rows, d);
}

void CudaOps::embedding_backward(float* dtable, const int32_t* ids, const float* dh,
                                 int64_t rows, int64_t d) {
  if (rows <= 0 || d <= 0) return;
  use_device();
  const size_t bytes = kern::embedding_backward_scratch_bytes(rows, d);
  void* s = scratch(kEmbedding, bytes);
  kern::embedding_backward(stream_, dtable, ids, dh, rows, d, s, bytes);
}

void CudaOps::layernorm_forward(float* y, float* mean, float* rstd, const float* x,
                                const float* w, const float* b, int64_t rows, int64_t d,
                                double eps) {
  use_device();
  kern::layernorm_forward(stream_, y, mean, rstd, x, w, b, rows, d, float(eps));
}

void CudaOps::layernorm_backward(float* dx, bool accumulate_dx, float* dw, float* db,
                                 const float* dy, const float* x, const float* mean,
                                 const float* rstd, const float* w, int64_t rows, int64_t d) {
  if (rows <= 0 || d <= 0) return;
  use_device();
  auto* partial = static_cast<float*>(
      scratch(kLayerNormPartial, size_t(kern::layernorm_backward_partial_floats(rows, d)) * 4));
  kern::layernorm_backward(stream_, dx, accumulate_dx, dw, db, dy, x, mean, rstd, w, rows, d,
                           partial);
}

void CudaOps::rotary(float* x, int64_t batch, int64_t n, int64_t heads, int64_t head_dim,
                     int64_t bands, const float* cos_table, const float* sin_table,
                     bool inverse) {
  use_device();
  kern::rotary(stream_, x, batch, n, heads, head_dim, bands, cos_table, sin_table, inverse);
}

void CudaOps::sqrelu_forward(float* y, const float* x, int64_t n) {
  use_device();
  kern::sqrelu_forward(stream_, y, x, n);
}

void CudaOps::sqrelu_backward(float* dx, const float* dy, const float* x, int64_t n) {
  use_device();
  kern::sqrelu_backward(stream_, dx, dy, x, n);
}

void CudaOps::dropout(float* y, const float* x, int64_t batch, int64_t per_example, double p,
                      const DropoutKey& key, uint64_t example_base) {
  if (p <= 0) {
    copy(y, x, batch * per_example);
    return;
  }
  use_device();
  // The CPU backend's roundings of the threshold and the scale, so masks and values agree.
  kern::dropout(stream_, y, x, batch, per_example, float(p), float(1.0 / (1.0 - p)), key,
                example_base);
}

void CudaOps::key_keep_mask(uint8_t* keep, const int32_t* tokens, int64_t batch, int64_t n,
                            int64_t token_stride, double p, const DropoutKey& key,
                            uint64_t example_base, int64_t position_base) {
  use_device();
  kern::key_keep_mask(stream_, keep, tokens, batch, n, token_stride, p > 0, float(p), key,
                      example_base, position_base);
}

void CudaOps::cross_entropy_forward(float* ce, float* lse, const float* logits,
                                    const int32_t* targets, int64_t rows, int64_t vocab) {
  use_device();
  kern::cross_entropy_forward(stream_, ce, lse, logits, targets, rows, vocab);
}

void CudaOps::cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                                     const int32_t* targets, int64_t rows, int64_t vocab,
                                     double scale, double z_loss) {
  use_device();
  kern::cross_entropy_backward(stream_, dlogits, logits, lse, targets, rows, vocab, scale,
                               z_loss);
}

double CudaOps::sum_squares(const float* x, int64_t n) {
  use_device();
  refuse_in_graph("sum_squares");
  const int64_t parts = kern::sum_squares_partial_doubles(n);
  auto* buf = static_cast<double*>(scratch(kSquares, size_t(parts + 1) * sizeof(double)));
  kern::sum_squares(stream_, buf, x, n, buf + 1);
  PAR_CUDA_CHECK(cudaMemcpyAsync(pinned_, buf, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  wait_for_stream(stream_, "sum_squares");
  return pinned_[0];
}

namespace {

// The CPU backend's constants, rounded the same way.
kern::AdamConstants adam_constants(const AdamStep& a) {
  const double bc1 = 1.0 - std::pow(a.beta1, double(a.t));
  const double bc2 = 1.0 - std::pow(a.beta2, double(a.t));
  kern::AdamConstants c;
  c.b1 = float(a.beta1);
  c.b2 = float(a.beta2);
  c.grad_scale = float(a.grad_scale);
  c.step_size = float(a.lr / bc1);
  c.inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  c.eps = float(a.eps);
  c.decay = float(1.0 - a.lr * a.weight_decay);
  return c;
}

}  // namespace

void CudaOps::adam_update(float* param, float* m, float* v, const float* grad, int64_t n,
                          const AdamStep& a) {
  use_device();
  kern::adam_update(stream_, param, m, v, grad, n, adam_constants(a));
}

void CudaOps::adam_update_spans(float* param, float* m, float* v, const float* grad,
                                const AdamSpan* spans, int64_t count, const AdamStep& a) {
  if (count <= 0) return;
  use_device();
  const kern::AdamConstants c = adam_constants(a);
  AdamStep no_decay = a;
  no_decay.weight_decay = 0;
  const float undecayed = adam_constants(no_decay).decay;
  std::vector<int64_t> begin, end;
  std::vector<float> decay;
  for (int64_t k = 0; k < count; ++k) {
    begin.push_back(spans[k].begin);
    end.push_back(spans[k].end);
    decay.push_back(spans[k].decays ? c.decay : undecayed);
  }
  kern::adam_update_spans(stream_, param, m, v, grad, begin.data(), end.data(), decay.data(),
                          count, c);
}

void CudaOps::sample_tokens(int32_t* ids, const float* logits, int64_t rows, int64_t vocab,
                            const SamplingOptions& opts, const double* u) {
  if (rows <= 0) return;
  use_device();
  // The uniform numbers in, the ids out, around the sort's and the scan's scratch.
  const size_t head = (size_t(rows) * (sizeof(double) + sizeof(int32_t)) + 255) / 256 * 256;
  char* s = static_cast<char*>(
      scratch(kSampling, head + kern::sample_tokens_scratch_bytes(rows, vocab)));
  auto* u_dev = reinterpret_cast<double*>(s);
  auto* ids_dev = reinterpret_cast<int32_t*>(s + size_t(rows) * sizeof(double));
  upload(u_dev, u, size_t(rows) * sizeof(double));
  kern::sample_tokens(stream_, ids_dev, logits, rows, vocab, opts, u_dev, s + head);
  download(ids, ids_dev, size_t(rows) * sizeof(int32_t));
}

// The kernel has no scan of a query's own keys (TokenAttentionShape::own_group): decoding
// attends them in a call of their own.
bool CudaOps::token_attention_takes_own_keys() { return false; }

// Shapes the kernels are not sized for (many query-heads: a refill's latents) are declined;
// decoding then attends over the materialized cross cache for that call. So are calls with
// own keys (token_attention_takes_own_keys).
bool CudaOps::token_attention_forward(const TokenAttentionShape& s, const float* q,
                                      const float* key_table, const float* value_table,
                                      const float* cos, const float* sin, float* o, float* lse) {
  if (s.own_group) return false;
  const kern::TokenAttentionPlan plan = kern::token_attention_plan(s);
  if (!plan.covered) return false;
  if (plan.bytes == 0) return true;  // no query or no head: nothing to write
  use_device();
  kern::token_attention_forward(stream_, s, plan, q, key_table, value_table, cos, sin, o, lse,
                                scratch(kTokenAttention, plan.bytes));
  return true;
}

}  // namespace par::cuda
