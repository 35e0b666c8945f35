// The cuDNN attention path (attention_cudnn.h): which pieces a call has, the buffers they
// use, and the order of the conversions, cuDNN runs and merges on the backend's stream.
#include "kernels/cuda/attention_cudnn.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/cuda/attention_cudnn_kernels.h"
#include "kernels/cuda/attention_segments.h"
#include "kernels/cuda/backend_log.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/sdpa_graph.h"

namespace par::cuda {

namespace {

// This object's scratch buffers (CudnnAttention::Scratch slots).
enum Slot : int {
  kQb, kKb, kVb, kOb, kStatsBuf, kSeqQ, kCount, kFlags, kPos, kScanTemp, kWorkspace,
  kDOb, kDQb, kDKb, kDVb, kSoftmaxSumBuf, kBwdStats,
  kDiagQ, kDiagK, kDiagV, kDiagKeep, kDiagO, kDiagLse, kDiagDO, kDiagDQ, kDiagDK, kDiagDV,
  kSlotCount
};
static_assert(kSlotCount <= CudnnAttention::kScratchSlots);

bool whole_causal(const AttentionShape& s) {
  return s.k_keep == nullptr && is_top_left_causal(s.q_pos_first, s.k_pos_first);
}

std::string describe_shape(bool backward, int64_t b, int64_t h, int64_t nq, int64_t nk,
                           int64_t d, bool causal) {
  return cat(backward ? "backward" : "forward", " of ", b, " x ", h, " heads of ", d, ", ", nq,
             " queries over ", nk, " keys", causal ? ", causal" : "");
}

// Rows [row0, row0 + rows) of every example of src [batch, total, width] into dst
// [batch, rows, width] (elements of `bytes_per` bytes).
void copy_rows(cudaStream_t st, void* dst, const void* src, int64_t batch, int64_t total,
               int64_t row0, int64_t rows, int64_t width, size_t bytes_per) {
  if (batch <= 0 || rows <= 0 || width <= 0) return;
  const size_t row_bytes = size_t(width) * bytes_per;
  PAR_CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(rows) * row_bytes,
                                   static_cast<const char*>(src) + size_t(row0) * row_bytes,
                                   size_t(total) * row_bytes, size_t(rows) * row_bytes,
                                   size_t(batch), cudaMemcpyDeviceToDevice, st));
}

// The reverse: src [batch, rows, width] into rows [row0, row0 + rows) of dst.
void place_rows(cudaStream_t st, void* dst, const void* src, int64_t batch, int64_t total,
                int64_t row0, int64_t rows, int64_t width, size_t bytes_per) {
  if (batch <= 0 || rows <= 0 || width <= 0) return;
  const size_t row_bytes = size_t(width) * bytes_per;
  PAR_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(dst) + size_t(row0) * row_bytes,
                                   size_t(total) * row_bytes, src, size_t(rows) * row_bytes,
                                   size_t(rows) * row_bytes, size_t(batch),
                                   cudaMemcpyDeviceToDevice, st));
}

// Zeroes rows [row0, total) of every example of a float [batch, total, width] tensor.
void zero_rows_from(cudaStream_t st, float* x, int64_t batch, int64_t total, int64_t row0,
                    int64_t width) {
  if (batch <= 0 || row0 >= total || width <= 0) return;
  const size_t row_bytes = size_t(width) * sizeof(float);
  PAR_CUDA_CHECK(cudaMemset2DAsync(x + row0 * width, size_t(total) * row_bytes, 0,
                                   size_t(total - row0) * row_bytes, size_t(batch), st));
}

}  // namespace

CudnnAttention::CudnnAttention(cudaStream_t stream, int sm_major, Scratch scratch,
                               Blocked blocked)
    : api_(cudnn_api()),
      stream_(stream),
      sm_major_(sm_major),
      scratch_(std::move(scratch)),
      blocked_(std::move(blocked)) {}

CudnnAttention::~CudnnAttention() {
  graphs_.clear();  // their descriptors before the handle
  if (handle_) api_->Destroy(handle_);
}

const CudnnGraph* CudnnAttention::graph(bool backward, int64_t batch, int64_t heads,
                                        int64_t nq, int64_t nk, int64_t head_dim, bool causal,
                                        double scale, std::string* why) {
  const Key key{backward, batch, heads, nq, nk, head_dim, causal, scale};
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    Entry e;
    const std::string what = describe_shape(backward, batch, heads, nq, nk, head_dim, causal);
    try {
      if (!handle_) {
        cudnnStatus_t st = api_->Create(&handle_);
        if (st != CUDNN_STATUS_SUCCESS) {
          handle_ = nullptr;
          throw CudnnError(cat("cudnnCreate: ", api_->describe(st)));
        }
        st = api_->SetStream(handle_, stream_);
        if (st != CUDNN_STATUS_SUCCESS)
          throw CudnnError(cat("cudnnSetStream: ", api_->describe(st)));
      }
      const sdpa::Dims d{batch, heads, nq, nk, head_dim, scale, causal, api_->version};
      const sdpa::Graph g = backward ? sdpa::describe_backward(d) : sdpa::describe_forward(d);
      e.graph = std::make_unique<CudnnGraph>(*api_, g, handle_);
      e.graph->build_plan(handle_);
      backend_log(LogLevel::kInfo,
                  cat("attention ", what, ": cuDNN ", api_->version_string(), " ",
                      e.graph->engine(), ", workspace ",
                      (e.graph->workspace_bytes() + (1 << 20) - 1) >> 20, " MiB"));
    } catch (const CudnnError& err) {
      e.graph.reset();
      e.refusal = err.what();
      backend_log(LogLevel::kWarning, cat("attention ", what, ": cuDNN cannot run it (",
                                          e.refusal, "); par's blocked attention runs it"));
    }
    it = graphs_.emplace(key, std::move(e)).first;
  }
  if (!it->second.graph && why) *why = it->second.refusal;
  return it->second.graph.get();
}

std::string CudnnAttention::prepare(const AttentionShape& s, bool backward) {
  if (!api_) return "cuDNN is not available: " + cudnn_unavailable_reason();
  if (s.q_pos_first == AttentionShape::kUnknownPosition ||
      s.k_pos_first == AttentionShape::kUnknownPosition)
    return "the positions are not given as contiguous ranges";
  if (!sdpa::head_dim_supported(s.head_dim, sm_major_))
    return cat("cuDNN's flash attention does not take heads of ", s.head_dim,
               " (a multiple of 8, at most ", sm_major_ >= 9 ? 256 : 128, ")");
  if (s.batch <= 0 || s.heads <= 0 || s.nq <= 0 || s.nk <= 0) return "an empty call";
  int64_t rows = s.nq, keys = std::min(s.nq, s.nk);
  bool causal = true;
  if (!whole_causal(s)) {
    const AttentionSegments seg = split_attention(s.nq, s.nk, s.q_pos_first, s.k_pos_first);
    if (!seg.has_prefix()) return "no query sees a key";
    rows = seg.prefix_rows();
    keys = seg.prefix_keys;
    causal = false;
  }
  if (backward && rows == 1 && keys == 1)
    return "cuDNN's backward does not take one query over one key";
  std::string why;
  return graph(backward, s.batch, s.heads, rows, keys, s.head_dim, causal, s.scale, &why)
             ? std::string()
             : why;
}

void CudnnAttention::run(const CudnnGraph& g,
                         const std::vector<std::pair<int64_t, void*>>& bound) {
  void* workspace = g.workspace_bytes() > 0 ? scratch_(kWorkspace, size_t(g.workspace_bytes()))
                                            : nullptr;
  g.execute(handle_, bound, workspace);
}

void CudnnAttention::forward(const AttentionShape& s, const float* q, const float* k,
                             const float* v, float* o, float* lse) {
  const int64_t B = s.batch, H = s.heads, D = s.head_dim, ld = H * D, nq = s.nq, nk = s.nk;
  auto* seq_q = buffer<int32_t>(kSeqQ, B);
  auto* stats = buffer<float>(kStatsBuf, B * H * nq);
  auto* ob = buffer<uint16_t>(kOb, B * nq * ld);

  if (whole_causal(s)) {
    const int64_t keys = std::min(nq, nk);
    const CudnnGraph* g = graph(false, B, H, nq, keys, D, true, s.scale, nullptr);
    PAR_ASSERT(g, "cuDNN attention forward without a successful prepare()");
    auto* qb = buffer<uint16_t>(kQb, B * nq * ld);
    auto* kb = buffer<uint16_t>(kKb, B * keys * ld);
    auto* vb = buffer<uint16_t>(kVb, B * keys * ld);
    auto* seq_kv = buffer<int32_t>(kCount, B);
    kern::rows_to_bf16(stream_, qb, q, B, nq, 0, nq, ld);
    kern::rows_to_bf16(stream_, kb, k, B, nk, 0, keys, ld);
    kern::rows_to_bf16(stream_, vb, v, B, nk, 0, keys, ld);
    kern::fill_int32(stream_, seq_q, B, int32_t(nq));
    kern::fill_int32(stream_, seq_kv, B, int32_t(keys));
    run(*g, {{sdpa::kQ, qb}, {sdpa::kK, kb}, {sdpa::kV, vb}, {sdpa::kO, ob},
             {sdpa::kStats, stats}, {sdpa::kSeqLenQ, seq_q}, {sdpa::kSeqLenKV, seq_kv}});
    kern::attention_results(stream_, o, lse, ob, stats, nullptr, B, nq, 0, H, D);
    return;
  }

  // The prefix: the visible keys gathered densely, every query over them.
  const AttentionSegments seg = split_attention(nq, nk, s.q_pos_first, s.k_pos_first);
  const int64_t rows = seg.prefix_rows(), P = seg.prefix_keys, r0 = seg.empty_rows;
  const CudnnGraph* g = graph(false, B, H, rows, P, D, false, s.scale, nullptr);
  PAR_ASSERT(g, "cuDNN attention forward without a successful prepare()");
  auto* flags = buffer<int32_t>(kFlags, B * P);
  auto* pos = buffer<int32_t>(kPos, B * P);
  auto* count = buffer<int32_t>(kCount, B);
  const size_t scan_bytes = kern::key_scan_scratch_bytes(B * P);
  void* scan = scratch_(kScanTemp, std::max<size_t>(scan_bytes, 1));
  kern::scan_visible_keys(stream_, flags, pos, count, s.k_keep, B, nk, P, scan, scan_bytes);
  auto* kb = buffer<uint16_t>(kKb, B * P * ld);
  auto* vb = buffer<uint16_t>(kVb, B * P * ld);
  kern::gather_keys(stream_, kb, vb, k, v, flags, pos, count, B, nk, P, ld);
  auto* qb = buffer<uint16_t>(kQb, B * rows * ld);
  kern::rows_to_bf16(stream_, qb, q, B, nq, r0, rows, ld);
  kern::fill_int32(stream_, seq_q, B, int32_t(rows));
  run(*g, {{sdpa::kQ, qb}, {sdpa::kK, kb}, {sdpa::kV, vb}, {sdpa::kO, ob},
           {sdpa::kStats, stats}, {sdpa::kSeqLenQ, seq_q}, {sdpa::kSeqLenKV, count}});
  kern::attention_results(stream_, o, lse, ob, stats, count, B, nq, r0, H, D);
  if (!seg.has_diag()) return;

  // The diagonal: the blocked path over its rows and keys, merged into theirs.
  const int64_t r1 = seg.diag_first_row, dr = seg.diag_rows();
  const int64_t k0 = seg.prefix_keys, dk = seg.diag_keys();
  auto* qd = buffer<float>(kDiagQ, B * dr * ld);
  auto* kd = buffer<float>(kDiagK, B * dk * ld);
  auto* vd = buffer<float>(kDiagV, B * dk * ld);
  auto* od = buffer<float>(kDiagO, B * dr * ld);
  auto* lsed = buffer<float>(kDiagLse, B * H * dr);
  copy_rows(stream_, qd, q, B, nq, r1, dr, ld, sizeof(float));
  copy_rows(stream_, kd, k, B, nk, k0, dk, ld, sizeof(float));
  copy_rows(stream_, vd, v, B, nk, k0, dk, ld, sizeof(float));
  uint8_t* keep = nullptr;
  if (s.k_keep) {
    keep = buffer<uint8_t>(kDiagKeep, B * dk);
    copy_rows(stream_, keep, s.k_keep, B, nk, k0, dk, 1, 1);
  }
  AttentionShape ds{B, dr, dk, H, D, s.q_pos + r1, s.k_pos + k0, keep, s.scale};
  blocked_.forward(ds, qd, kd, vd, od, lsed);
  kern::merge_attention_rows(stream_, o, lse, od, lsed, B, nq, r1, dr, H, D);
}

void CudnnAttention::backward(const AttentionShape& s, const float* q, const float* k,
                              const float* v, const float* o, const float* d_o,
                              const float* lse, float* dq, float* dk, float* dv) {
  const int64_t B = s.batch, H = s.heads, D = s.head_dim, ld = H * D, nq = s.nq, nk = s.nk;
  auto* seq_q = buffer<int32_t>(kSeqQ, B);
  auto* softmax_sum = buffer<float>(kSoftmaxSumBuf, B * H * nq);
  auto* stats = buffer<float>(kBwdStats, B * H * nq);
  auto* ob = buffer<uint16_t>(kOb, B * nq * ld);
  auto* dob = buffer<uint16_t>(kDOb, B * nq * ld);
  auto* dqb = buffer<uint16_t>(kDQb, B * nq * ld);

  if (whole_causal(s)) {
    const int64_t keys = std::min(nq, nk);
    const CudnnGraph* g = graph(true, B, H, nq, keys, D, true, s.scale, nullptr);
    PAR_ASSERT(g, "cuDNN attention backward without a successful prepare()");
    auto* qb = buffer<uint16_t>(kQb, B * nq * ld);
    auto* kb = buffer<uint16_t>(kKb, B * keys * ld);
    auto* vb = buffer<uint16_t>(kVb, B * keys * ld);
    auto* dkb = buffer<uint16_t>(kDKb, B * keys * ld);
    auto* dvb = buffer<uint16_t>(kDVb, B * keys * ld);
    auto* seq_kv = buffer<int32_t>(kCount, B);
    kern::rows_to_bf16(stream_, qb, q, B, nq, 0, nq, ld);
    kern::rows_to_bf16(stream_, kb, k, B, nk, 0, keys, ld);
    kern::rows_to_bf16(stream_, vb, v, B, nk, 0, keys, ld);
    kern::rows_to_bf16(stream_, ob, o, B, nq, 0, nq, ld);
    kern::rows_to_bf16(stream_, dob, d_o, B, nq, 0, nq, ld);
    kern::backward_stats(stream_, stats, lse, B, H, nq, 0, nq);
    kern::fill_int32(stream_, seq_q, B, int32_t(nq));
    kern::fill_int32(stream_, seq_kv, B, int32_t(keys));
    run(*g, {{sdpa::kQ, qb}, {sdpa::kK, kb}, {sdpa::kV, vb}, {sdpa::kO, ob},
             {sdpa::kDO, dob}, {sdpa::kStats, stats}, {sdpa::kSeqLenQ, seq_q},
             {sdpa::kSeqLenKV, seq_kv}, {sdpa::kDQ, dqb}, {sdpa::kDK, dkb}, {sdpa::kDV, dvb},
             {sdpa::kSoftmaxSum, softmax_sum}});
    kern::rows_from_bf16(stream_, dq, dqb, B, nq, 0, nq, ld);
    kern::rows_from_bf16(stream_, dk, dkb, B, nk, 0, keys, ld);
    kern::rows_from_bf16(stream_, dv, dvb, B, nk, 0, keys, ld);
    zero_rows_from(stream_, dk, B, nk, keys, ld);  // keys past the last query: unseen
    zero_rows_from(stream_, dv, B, nk, keys, ld);
    return;
  }

  const AttentionSegments seg = split_attention(nq, nk, s.q_pos_first, s.k_pos_first);
  const int64_t rows = seg.prefix_rows(), P = seg.prefix_keys, r0 = seg.empty_rows;
  const CudnnGraph* g = graph(true, B, H, rows, P, D, false, s.scale, nullptr);
  PAR_ASSERT(g, "cuDNN attention backward without a successful prepare()");
  auto* flags = buffer<int32_t>(kFlags, B * P);
  auto* pos = buffer<int32_t>(kPos, B * P);
  auto* count = buffer<int32_t>(kCount, B);
  const size_t scan_bytes = kern::key_scan_scratch_bytes(B * P);
  void* scan = scratch_(kScanTemp, std::max<size_t>(scan_bytes, 1));
  kern::scan_visible_keys(stream_, flags, pos, count, s.k_keep, B, nk, P, scan, scan_bytes);
  auto* kb = buffer<uint16_t>(kKb, B * P * ld);
  auto* vb = buffer<uint16_t>(kVb, B * P * ld);
  kern::gather_keys(stream_, kb, vb, k, v, flags, pos, count, B, nk, P, ld);
  auto* qb = buffer<uint16_t>(kQb, B * rows * ld);
  auto* dkb = buffer<uint16_t>(kDKb, B * P * ld);
  auto* dvb = buffer<uint16_t>(kDVb, B * P * ld);
  kern::rows_to_bf16(stream_, qb, q, B, nq, r0, rows, ld);
  kern::rows_to_bf16(stream_, ob, o, B, nq, r0, rows, ld);
  kern::rows_to_bf16(stream_, dob, d_o, B, nq, r0, rows, ld);
  kern::backward_stats(stream_, stats, lse, B, H, nq, r0, rows);
  kern::fill_int32(stream_, seq_q, B, int32_t(rows));
  run(*g, {{sdpa::kQ, qb}, {sdpa::kK, kb}, {sdpa::kV, vb}, {sdpa::kO, ob}, {sdpa::kDO, dob},
           {sdpa::kStats, stats}, {sdpa::kSeqLenQ, seq_q}, {sdpa::kSeqLenKV, count},
           {sdpa::kDQ, dqb}, {sdpa::kDK, dkb}, {sdpa::kDV, dvb},
           {sdpa::kSoftmaxSum, softmax_sum}});
  kern::query_grads(stream_, dq, dqb, count, B, nq, r0, ld);
  kern::scatter_key_grads(stream_, dk, dv, dkb, dvb, flags, pos, B, nk, P, ld);

  int64_t seen_keys = P;  // keys past the ones some query sees get zero gradients
  if (seg.has_diag()) {
    const int64_t r1 = seg.diag_first_row, dr = seg.diag_rows();
    const int64_t k0 = seg.prefix_keys, dkn = seg.diag_keys();
    auto* qd = buffer<float>(kDiagQ, B * dr * ld);
    auto* kd = buffer<float>(kDiagK, B * dkn * ld);
    auto* vd = buffer<float>(kDiagV, B * dkn * ld);
    auto* od = buffer<float>(kDiagO, B * dr * ld);
    auto* dod = buffer<float>(kDiagDO, B * dr * ld);
    auto* lsed = buffer<float>(kDiagLse, B * H * dr);
    auto* dqd = buffer<float>(kDiagDQ, B * dr * ld);
    auto* dkd = buffer<float>(kDiagDK, B * dkn * ld);
    auto* dvd = buffer<float>(kDiagDV, B * dkn * ld);
    copy_rows(stream_, qd, q, B, nq, r1, dr, ld, sizeof(float));
    copy_rows(stream_, kd, k, B, nk, k0, dkn, ld, sizeof(float));
    copy_rows(stream_, vd, v, B, nk, k0, dkn, ld, sizeof(float));
    copy_rows(stream_, od, o, B, nq, r1, dr, ld, sizeof(float));
    copy_rows(stream_, dod, d_o, B, nq, r1, dr, ld, sizeof(float));
    // lse is [batch, heads, nq]: rows of every (example, head) pair.
    copy_rows(stream_, lsed, lse, B * H, nq, r1, dr, 1, sizeof(float));
    uint8_t* keep = nullptr;
    if (s.k_keep) {
      keep = buffer<uint8_t>(kDiagKeep, B * dkn);
      copy_rows(stream_, keep, s.k_keep, B, nk, k0, dkn, 1, 1);
    }
    AttentionShape ds{B, dr, dkn, H, D, s.q_pos + r1, s.k_pos + k0, keep, s.scale};
    blocked_.backward(ds, qd, kd, vd, od, dod, lsed, dqd, dkd, dvd);
    kern::copy_blocks(stream_, dq + r1 * ld, nq * ld, dqd, dr * ld, B, dr * ld, true);
    place_rows(stream_, dk, dkd, B, nk, k0, dkn, ld, sizeof(float));
    place_rows(stream_, dv, dvd, B, nk, k0, dkn, ld, sizeof(float));
    seen_keys = seg.diag_keys_end;
  }
  zero_rows_from(stream_, dk, B, nk, seen_keys, ld);
  zero_rows_from(stream_, dv, B, nk, seen_keys, ld);
}

}  // namespace par::cuda
