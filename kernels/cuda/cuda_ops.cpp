// CudaOps: core/ops.h on one GPU. Host code: memory, streams, cuBLAS calls (with the
// compute type of the chosen MatmulPrecision) and the orchestration of the kernels
// declared in kernels/cuda/kernels.h. See kernels/cuda/cuda_ops.h for the contract; the
// class is in cuda_ops_impl.h, its matrix products in cuda_ops_matmul.cpp, its attention
// routing in cuda_ops_attention.cpp.
//
// Everything is enqueued on one non-blocking stream owned by the object; calls that hand
// data to the host (download, sum_squares) wait for it. cuBLAS gets a fixed workspace of
// its own, so it picks the same algorithms -- and gives the same bits -- every run.
#include "kernels/cuda/backend_log.h"
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_ops_impl.h"
#include "kernels/cuda/device_wait.h"

namespace par::cuda {

namespace {

// Uploads up to this size go through a pinned staging ring without waiting for the GPU
// (decoding uploads a token and its position every step); larger ones wait.
constexpr size_t kStagingBytes = size_t(1) << 20;
constexpr size_t kStagedUploadMax = size_t(64) << 10;
// Recordings instantiated afresh (not updated in place) or refused before the backend may
// give recording up (give_up_graphs_if_they_do_not_pay).
constexpr int64_t kCostlyRecordingsBeforeGivingUp = 32;

std::string gib(int64_t bytes) { return cat(double(bytes) / double(int64_t(1) << 30), " GiB"); }

}  // namespace

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

void CudaOps::track(int64_t delta) {
  allocated_ += delta;
  peak_ = std::max(peak_, allocated_);
}

MemoryStats CudaOps::memory() {
  use_device();
  MemoryStats m;
  m.allocated_bytes = allocated_;
  m.peak_bytes = peak_;
  size_t free_b = 0, total_b = 0;
  PAR_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  m.device_free_bytes = int64_t(free_b);
  m.device_total_bytes = int64_t(total_b);
  return m;
}

void* CudaOps::allocate(size_t bytes) {
  use_device();
  refuse_in_graph("an allocation");  // cudaMalloc is not allowed while the stream records
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, rounded);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: the process may recover (e.g. try a smaller batch)
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw std::runtime_error(cat("cudaMalloc of ", gib(int64_t(rounded)), " failed on device ",
                                 device_, ", ", where(), ": ", cudaGetErrorString(e), " (",
                                 gib(int64_t(free_b)), " free of ", gib(int64_t(total_b)),
                                 "; this process holds ", gib(allocated_), ")"));
  }
  sizes_[p] = rounded;
  track(int64_t(rounded));
  return p;
}

void CudaOps::deallocate(void* p) {
  if (!p) return;
  auto it = sizes_.find(p);
  PAR_ASSERT(it != sizes_.end(), "deallocate of a pointer this backend did not allocate");
  track(-int64_t(it->second));
  sizes_.erase(it);
  // cudaFree while the stream records would invalidate the recording without a word (a
  // destructor unwinding out of a step): end the recording first.
  if (graphs_ && graphs_->capturing()) graphs_->abort();
  // A kept step may point into p, and a later allocation may hand its address out again
  // for another use: such steps are recorded again before they are replayed.
  if (graphs_) graphs_->forget_replays();
  // cudaFree waits for the device, so no queued kernel still uses p. Destructors call
  // this, so a failure is reported rather than thrown: it only happens once the context
  // is broken, and the error that broke it has been thrown where it happened. Where a
  // collective may hang, the wait is a poll first (cudaFree's own would not end).
  try {
    wait_if_watched(stream_, "freeing device memory");
  } catch (const std::exception& err) {
    std::fprintf(stderr, "par: device memory not freed on device %d, %s: %s\n", device_,
                 where().c_str(), err.what());
    return;
  }
  cudaError_t e = cudaSetDevice(device_);
  if (e == cudaSuccess) e = cudaFree(p);
  if (e != cudaSuccess)
    std::fprintf(stderr, "par: cudaFree failed on device %d, %s: %s (%s)\n", device_,
                 where().c_str(), cudaGetErrorString(e), cudaGetErrorName(e));
}

void* CudaOps::scratch(int slot, size_t bytes) {
  Scratch& s = scratch_[size_t(slot)];
  if (s.bytes < bytes) {
    refuse_in_graph("a scratch buffer that must grow (run the step once unrecorded first)");
    if (s.p) {
      // Kept graphs may point into it: they are recorded again before they are replayed.
      graphs_->forget_replays();
      wait_if_watched(stream_, "a scratch buffer that grows");  // cudaFree's wait never ends
      PAR_CUDA_CHECK(cudaFree(s.p));  // synchronizes: earlier kernels are done with it
      track(-int64_t(s.bytes));
      s.p = nullptr;
      s.bytes = 0;
    }
    // Some headroom, so that a slowly growing size does not reallocate every call.
    const size_t want = (bytes + bytes / 8 + 255) / 256 * 256;
    const cudaError_t e = cudaMalloc(&s.p, want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      s.p = nullptr;
      throw std::runtime_error(cat("cudaMalloc of ", gib(int64_t(want)),
                                   " of scratch failed on device ", device_, ", ", where(),
                                   ": ", cudaGetErrorString(e), " (this process holds ",
                                   gib(allocated_), ")"));
    }
    s.bytes = want;
    track(int64_t(want));
  }
  return s.p;
}

void CudaOps::upload(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  use_device();
  // The caller may reuse src as soon as this returns: a small upload is copied into the
  // staging ring first, from which the GPU copies in stream order, and does not wait; the
  // ring is reused only after the stream has drained.
  if (bytes <= kStagedUploadMax) {
    graph_uploaded_ = graph_uploaded_ || graphs_->capturing();
    if (staging_used_ + bytes > kStagingBytes) {
      refuse_in_graph("more than 1 MiB of uploads in one step");
      wait_for_stream(stream_, "upload");
      staging_used_ = 0;
    }
    char* slot = staging_ + staging_used_;
    std::memcpy(slot, src, bytes);
    staging_used_ += (bytes + 255) / 256 * 256;
    PAR_CUDA_CHECK(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream_));
    return;
  }
  refuse_in_graph("an upload of more than 64 KiB");
  wait_if_watched(stream_, "upload");  // from pageable memory the copy may wait unseen
  PAR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  wait_for_stream(stream_, "upload");
  staging_used_ = 0;
}

void CudaOps::refuse_in_graph(const char* what) {
  if (!graphs_->capturing()) return;
  graphs_->abort();
  give_up_graphs_if_they_do_not_pay();
  throw CaptureRefused(cat(what, " cannot be part of a CUDA graph (it waits for the GPU); "
                           "the step's recording is discarded"));
}

void CudaOps::begin_capture() { begin_graph(); }

void CudaOps::end_capture(uint64_t key) { end_graph(key); }

void CudaOps::abort_capture() { graphs_->abort(); }

bool CudaOps::replays_captures() { return graphs_on_; }

bool CudaOps::replay_capture(uint64_t key) {
  if (!graphs_on_ || !graphs_->replayable(key)) return false;
  return replay_graph(key);
}

void CudaOps::begin_graph() {
  if (!graphs_on_) return;
  use_device();
  // Room in the staging ring for the step's uploads, which cannot wait for it to drain.
  if (staging_used_ > kStagingBytes / 2) synchronize();
  graph_uploaded_ = false;
  graphs_->begin();
}

void CudaOps::end_graph(uint64_t key) {
  if (!graphs_on_) return;
  use_device();
  graphs_->end(key, !graph_uploaded_);
  give_up_graphs_if_they_do_not_pay();
}

// A recording that cannot update the kept graph (its topology changed) is instantiated
// afresh, which costs more than launching its kernels one by one; a refused one is given
// again. Where that is most of the graphs' uses, recording is given up. A use that pays is
// a recording that updated a kept graph or a replay with no recording at all (launches
// less fresh instantiations): a decoder replays most steps and records anew only at its
// refills and bucket changes, which must not count against it for a long generation.
void CudaOps::give_up_graphs_if_they_do_not_pay() {
  const GraphStats& st = graphs_->stats();
  const int64_t costly = st.instantiated + st.refused;
  const int64_t paying = st.launched - st.instantiated;
  if (costly < kCostlyRecordingsBeforeGivingUp || 2 * costly <= paying) return;
  graphs_on_ = false;
  backend_log(LogLevel::kWarning,
              cat("CUDA graphs off: of ", costly + st.updated, " recorded steps (and ",
                  paying - st.updated, " replayed), ",
                  st.instantiated, " could not update a kept graph (their kernels changed) and ",
                  st.refused, " were refused (something in them would wait for the GPU); "
                  "that costs more than it saves, so steps now launch kernel by kernel"));
}

bool CudaOps::replay_graph(uint64_t key) {
  use_device();
  return graphs_->replay(key);
}

void CudaOps::download(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  use_device();
  refuse_in_graph("download");
  // Into pageable memory the copy returns only once the stream's earlier work is done:
  // where a collective may hang, wait for that work first, polling (device_wait.h).
  wait_if_watched(stream_, "download");
  PAR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  wait_for_stream(stream_, "download");
  staging_used_ = 0;  // the stream has drained: the staged uploads are done
}

void CudaOps::synchronize() {
  use_device();
  refuse_in_graph("synchronize");
  wait_for_stream(stream_, "synchronize");
  staging_used_ = 0;
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

// ---- the public functions of cuda_ops.h ----

MatmulPrecision parse_precision(const std::string& name) {
  std::string s = name;
  for (char& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (s == "fp32" || s == "float32" || s == "f32") return MatmulPrecision::kFloat32;
  if (s == "tf32") return MatmulPrecision::kTF32;
  if (s == "bf16" || s == "bfloat16") return MatmulPrecision::kBF16;
  fail_user("--precision must be fp32, tf32 or bf16 (got '", name, "')");
}

const char* precision_name(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kFloat32: return "fp32";
    case MatmulPrecision::kTF32: return "tf32";
    case MatmulPrecision::kBF16: return "bf16";
  }
  return "?";
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // not sticky, but clear it anyway
    return 0;
  }
  return n;
}

std::string no_device_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cat(cudaGetErrorString(e), " (", cudaGetErrorName(e), ")");
  }
  return n > 0 ? std::string() : std::string("no CUDA device is visible");
}

int select_device(int local_rank) {
  const int n = device_count();
  if (n == 0)
    fail_user("--device cuda: no usable CUDA device on ", where(), ": ", no_device_reason());
  PAR_ASSERT(local_rank >= 0, "select_device: negative local rank ", local_rank);
  const int device = local_rank % n;
  PAR_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::string describe_device(int device) {
  cudaDeviceProp p{};
  PAR_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  int driver = 0, runtime = 0;
  PAR_CUDA_CHECK(cudaDriverGetVersion(&driver));
  PAR_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  char mem[32];
  std::snprintf(mem, sizeof mem, "%.1f GiB", double(p.totalGlobalMem) / double(1 << 30));
  return cat(p.name, " (sm_", p.major, p.minor, ", ", p.multiProcessorCount, " SMs, ", mem,
             ", driver ", driver / 1000, ".", (driver % 1000) / 10, ", runtime ", runtime / 1000,
             ".", (runtime % 1000) / 10, ")");
}

std::unique_ptr<Ops<float>> make_cuda_ops(int device, MatmulPrecision precision) {
  return std::make_unique<CudaOps>(device, precision);
}

namespace {

CudaOps& as_cuda(Ops<float>& ops) {
  auto* c = dynamic_cast<CudaOps*>(&ops);
  if (!c)
    throw std::invalid_argument(cat("expected the CUDA backend, got '", ops.name(),
                                    "' (pass the CudaOps itself, not a decorator)"));
  return *c;
}

}  // namespace

bool is_cuda_ops(const Ops<float>& ops) { return dynamic_cast<const CudaOps*>(&ops) != nullptr; }

void* cuda_stream(Ops<float>& ops) { return static_cast<void*>(as_cuda(ops).stream()); }

void cuda_synchronize(Ops<float>& ops) { as_cuda(ops).synchronize(); }

MatmulPrecision matmul_precision(const Ops<float>& ops) {
  return as_cuda(const_cast<Ops<float>&>(ops)).precision();
}

MemoryStats memory_stats(Ops<float>& ops) { return as_cuda(ops).memory(); }

void begin_graph(Ops<float>& ops) { as_cuda(ops).begin_graph(); }
void end_graph(Ops<float>& ops, uint64_t key) { as_cuda(ops).end_graph(key); }
bool replay_graph(Ops<float>& ops, uint64_t key) { return as_cuda(ops).replay_graph(key); }
void set_graphs(Ops<float>& ops, bool enabled) { as_cuda(ops).set_graphs(enabled); }

void set_bf16_operands(Ops<float>& ops, Bf16Operands mode) { as_cuda(ops).set_bf16_operands(mode); }
GraphStats graph_stats(Ops<float>& ops) { return as_cuda(ops).graph_stats(); }

void set_attention_key_block(Ops<float>& ops, int64_t keys) { as_cuda(ops).set_key_block(keys); }

void set_cudnn_deterministic_workspace_max(Ops<float>& ops, int64_t bytes) {
  as_cuda(ops).set_cudnn_deterministic_max(bytes);
}

void set_cudnn_key_splits(Ops<float>& ops, int64_t splits) {
  as_cuda(ops).set_cudnn_key_splits(splits);
}

int64_t cudnn_plans_built() { return CudnnPlans::built(); }

void set_attention_kernel(Ops<float>& ops, AttentionKernel kernel) {
  as_cuda(ops).set_attention_kernel(kernel);
}

std::string attention_description(Ops<float>& ops) { return as_cuda(ops).attention_description(); }

AttentionKernel parse_attention_kernel(const std::string& name) {
  if (name == "auto") return AttentionKernel::kAuto;
  if (name == "blocked") return AttentionKernel::kBlocked;
  if (name == "fused") return AttentionKernel::kFused;
  if (name == "cudnn") return AttentionKernel::kCudnn;
  fail_user("--attention must be auto, blocked, fused or cudnn (got '", name, "')");
}

}  // namespace par::cuda
