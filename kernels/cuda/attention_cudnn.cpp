// The cuDNN attention path (attention_cudnn.h): which pieces a call has, the buffers they
// use, and the order of the conversions, cuDNN runs and merges on the backend's stream.
#include "kernels/cuda/attention_cudnn.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

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
  kDOb, kDQb, kDKb, kDVb, kSoftmaxSumBuf, kBwdStats, kDQAccumBuf,
  kDiagQ, kDiagK, kDiagV, kDiagKeep, kDiagO, kDiagLse, kDiagDO, kDiagDQ, kDiagDK, kDiagDV,
  kDiagBf16,  // the diagonal's bfloat16 keys or values, or gradients, on their way
  kSlotCount
};
static_assert(kSlotCount <= CudnnAttention::kScratchSlots);

// The piece of a call cuDNN runs: query rows [row0, row0 + rows) over its first `keys`
// keys (the visible ones among them, gathered), causal or not; the rest of the call (the
// diagonal of `seg`) goes to the blocked path.
struct Piece {
  int64_t row0 = 0, rows = 0, keys = 0;
  bool causal = false;
  const uint8_t* keep = nullptr;
  AttentionSegments seg;  // has_diag() when there is a diagonal to merge
};

Piece piece_of(const AttentionShape& s) {
  Piece p;
  if (s.k_keep == nullptr && is_top_left_causal(s.q_pos_first, s.k_pos_first)) {
    // One causal call: query i sees keys j <= i; keys past the last query none.
    p.rows = s.nq;
    p.keys = std::min(s.nq, s.nk);
    p.causal = true;
    return p;
  }
  p.seg = split_attention(s.nq, s.nk, s.q_pos_first, s.k_pos_first);
  p.row0 = p.seg.empty_rows;
  p.rows = p.seg.prefix_rows();
  p.keys = p.seg.prefix_keys;
  p.keep = s.keeps_every_key ? nullptr : s.k_keep;
  return p;
}

// Rows between examples of the keys cuDNN would read in place: the caller's own tensor's
// (nk) for bfloat16 keys, none masked; 0 (packed: the gathered copy) otherwise.
int64_t in_place_rows(const AttentionShape& s, const Piece& p, bool kv_bf16) {
  const bool masked = !p.causal && p.keep != nullptr;
  return kv_bf16 && !masked ? s.nk : 0;
}

// The chunks of keys a forward's piece runs as (cudnn_key_splits.h): only a prefix read in
// place; splits 1 otherwise.
KeySplit key_split(const AttentionShape& s, const Piece& p, bool kv_bf16, int64_t requested,
                   int64_t sm_count) {
  if (p.causal || in_place_rows(s, p, kv_bf16) == 0) return {};
  return forward_key_split(requested, s.batch, s.heads, p.rows, s.nk, p.keys, sm_count);
}

std::string describe_shape(bool backward, int64_t b, int64_t h, int64_t nq, int64_t nk,
                           int64_t d, bool causal) {
  return cat(backward ? "backward" : "forward", " of ", b, " x ", h, " heads of ", d, ", ", nq,
             " queries over ", nk, " keys", causal ? ", causal" : "");
}

// One copy or memset per example, not one 2D call over all: a 2D call's pitch (an
// example's bytes: 4 GiB at N = 1,048,576, d = 1024) may not exceed 2^31 - 1.

// Rows [row0, row0 + rows) of every example of src [batch, total, width] into dst
// [batch, rows, width] (elements of `bytes_per` bytes).
void copy_rows(cudaStream_t st, void* dst, const void* src, int64_t batch, int64_t total,
               int64_t row0, int64_t rows, int64_t width, size_t bytes_per) {
  if (batch <= 0 || rows <= 0 || width <= 0) return;
  const size_t row_bytes = size_t(width) * bytes_per;
  for (int64_t b = 0; b < batch; ++b)
    PAR_CUDA_CHECK(cudaMemcpyAsync(
        static_cast<char*>(dst) + size_t(b * rows) * row_bytes,
        static_cast<const char*>(src) + size_t(b * total + row0) * row_bytes,
        size_t(rows) * row_bytes, cudaMemcpyDeviceToDevice, st));
}

// The reverse: src [batch, rows, width] into rows [row0, row0 + rows) of dst.
void place_rows(cudaStream_t st, void* dst, const void* src, int64_t batch, int64_t total,
                int64_t row0, int64_t rows, int64_t width, size_t bytes_per) {
  if (batch <= 0 || rows <= 0 || width <= 0) return;
  const size_t row_bytes = size_t(width) * bytes_per;
  for (int64_t b = 0; b < batch; ++b)
    PAR_CUDA_CHECK(cudaMemcpyAsync(
        static_cast<char*>(dst) + size_t(b * total + row0) * row_bytes,
        static_cast<const char*>(src) + size_t(b * rows) * row_bytes,
        size_t(rows) * row_bytes, cudaMemcpyDeviceToDevice, st));
}

// Zeroes rows [row0, total) of every example of a [batch, total, width] tensor of
// elements of `bytes_per` bytes (zero bits are 0 in float32 and in bfloat16).
void zero_rows_from(cudaStream_t st, void* x, int64_t batch, int64_t total, int64_t row0,
                    int64_t width, size_t bytes_per) {
  if (batch <= 0 || row0 >= total || width <= 0) return;
  const size_t row_bytes = size_t(width) * bytes_per;
  for (int64_t b = 0; b < batch; ++b)
    PAR_CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(x) + size_t(b * total + row0) * row_bytes,
                                   0, size_t(total - row0) * row_bytes, st));
}

}  // namespace

CudnnAttention::CudnnAttention(cudaStream_t stream, int device, int sm_major, Scratch scratch,
                               Blocked blocked)
    : api_(cudnn_api()),
      stream_(stream),
      device_(device),
      sm_major_(sm_major),
      scratch_(std::move(scratch)),
      blocked_(std::move(blocked)) {
  if (api_) plans().forget_transient();
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess)
    sm_count_ = sms;
  else
    cudaGetLastError();  // not left for a later check to find; without the count, no split
  if (const char* env = std::getenv("PAR_CUDNN_KEY_SPLITS"); env && *env) {
    const std::string v = env;
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (v == "auto")
      key_splits_ = 0;
    else if (*end == '\0' && n >= 0)
      key_splits_ = n;
    else
      throw std::runtime_error(cat("PAR_CUDNN_KEY_SPLITS=", v,
                                   ": expected auto (or 0) or a count of key chunks (1: no "
                                   "split)"));
  }
}

CudnnAttention::~CudnnAttention() {
  // The plans stay for the thread's next backend; its handle must not keep our stream.
  if (api_) plans().forget_stream(stream_);
}

sdpa::Dims CudnnAttention::dims(bool backward, int64_t batch, int64_t heads, int64_t nq,
                                int64_t nk, int64_t head_dim, bool causal, double scale,
                                int64_t kv_rows) const {
  sdpa::Dims d{batch, heads, nq, nk, head_dim, scale, causal, api_->version, kv_rows};
  d.deterministic = deterministic(backward, batch, heads, nq, nk, head_dim);
  return d;
}

const CudnnGraph* CudnnAttention::graph(bool backward, int64_t batch, int64_t heads,
                                        int64_t nq, int64_t nk, int64_t head_dim, bool causal,
                                        double scale, int64_t kv_rows, std::string* why,
                                        int64_t splits) {
  const sdpa::Dims d = dims(backward, batch, heads, nq, nk, head_dim, causal, scale, kv_rows);
  bool made = false;
  const CudnnPlans::Entry& e = plans().get(backward, d, &made);
  if (made) {
    // Said once per shape and thread (and per try after a refusal for want of memory): a
    // later backend of the thread runs the same plan.
    const std::string what =
        describe_shape(backward, batch, heads, nq, nk, head_dim, causal) +
        (kv_rows > 0 ? ", keys read in place" : "") +
        (splits > 1 ? cat(": ", batch / splits, " example(s) with their keys in ", splits,
                          " chunks, read in place")
                    : std::string());
    if (e.graph) {
      std::string dq;
      if (backward && d.deterministic)
        dq = ", deterministic";
      else if (backward)
        dq = cat(", dQ added up with atomics (the deterministic kernels would need ",
                 int64_t(std::ceil(sdpa::deterministic_workspace_bytes(d) / (1 << 20))),
                 " MiB of workspace: dQ's last bits may differ from run to run)");
      backend_log(LogLevel::kInfo,
                  cat("attention ", what, ": cuDNN ", api_->version_string(), " ",
                      e.graph->engine(), ", workspace ",
                      (e.graph->workspace_bytes() + (1 << 20) - 1) >> 20, " MiB", dq,
                      "; plan built in ", int64_t(e.build_ms + 0.5), " ms",
                      e.tries > 1 ? cat(" (try ", e.tries, ")") : std::string()));
    } else {
      const std::string again =
          e.transient ? cat(" (try ", e.tries, "; tried again in ", e.retry_wait, " calls)")
                      : std::string();
      backend_log(LogLevel::kWarning,
                  cat("attention ", what, ": cuDNN cannot run it (", e.refusal, ")", again,
                      "; ",
                      splits > 1    ? "the keys run in one piece instead"
                      : kv_rows > 0 ? "the keys are gathered for it instead"
                                    : "par's blocked attention runs it"));
    }
  }
  if (!e.graph && why) *why = e.refusal;
  return e.graph.get();
}

std::string CudnnAttention::prepare(const AttentionShape& s, bool backward, bool kv_bf16) {
  if (!api_) return "cuDNN is not available: " + cudnn_unavailable_reason();
  if (std::string bad = sdpa::version_refusal(api_->version); !bad.empty()) return bad;
  if (s.q_pos_first == AttentionShape::kUnknownPosition ||
      s.k_pos_first == AttentionShape::kUnknownPosition)
    return "the positions are not given as contiguous ranges";
  if (!sdpa::head_dim_supported(s.head_dim, sm_major_))
    return cat("cuDNN's flash attention does not take heads of ", s.head_dim,
               " (a multiple of 8, at most ", sm_major_ >= 9 ? 256 : 128, ")");
  if (s.batch <= 0 || s.heads <= 0 || s.nq <= 0 || s.nk <= 0) return "an empty call";
  const Piece p = piece_of(s);
  if (p.rows <= 0 || p.keys <= 0) return "no query sees a key";
  if (backward && p.rows == 1 && p.keys == 1)
    return "cuDNN's backward does not take one query over one key";
  bool first_refusal = false;
  if (limit_key_counts_ &&
      !key_counts_.admit({backward, s.batch, s.heads, p.rows, s.head_dim, p.causal}, p.keys,
                         &first_refusal)) {
    const std::string why =
        cat("calls like it have come with more than ", key_counts_.max_counts(),
            " key counts, and cuDNN builds (compiles) a plan per count");
    if (first_refusal)
      backend_log(LogLevel::kInfo,
                  cat("attention ",
                      describe_shape(backward, s.batch, s.heads, p.rows, p.keys, s.head_dim,
                                     p.causal),
                      ": ", why, "; par's blocked attention runs such calls from now on"));
    return why;
  }
  std::string why;
  if (!backward) {
    const KeySplit k = key_split(s, p, kv_bf16, key_splits_, sm_count_);
    if (k.splits > 1 && graph(false, s.batch * k.splits, s.heads, p.rows, k.chunk, s.head_dim,
                              false, s.scale, 0, &why, k.splits))
      return "";
  }
  const int64_t in_place = in_place_rows(s, p, kv_bf16);
  if (in_place > 0 && graph(backward, s.batch, s.heads, p.rows, p.keys, s.head_dim, p.causal,
                            s.scale, in_place, &why))
    return "";
  // Where cuDNN refuses the keys where they lie (kv_rows() then says so), the gathered copy.
  return graph(backward, s.batch, s.heads, p.rows, p.keys, s.head_dim, p.causal, s.scale, 0,
               &why)
             ? std::string()
             : why;
}

int64_t CudnnAttention::kv_rows(const AttentionShape& s, bool backward, bool kv_bf16) const {
  const Piece p = piece_of(s);
  const int64_t in_place = in_place_rows(s, p, kv_bf16);
  if (in_place == 0) return 0;
  const CudnnPlans::Entry* e =
      plans().find(backward, dims(backward, s.batch, s.heads, p.rows, p.keys, s.head_dim,
                                  p.causal, s.scale, in_place));
  return e && e->graph ? in_place : 0;
}

bool CudnnAttention::forward_in_chunks(const AttentionShape& s, const float* q, KeyValues kv,
                                       float* o, float* lse) {
  const Piece p = piece_of(s);
  const KeySplit k = key_split(s, p, kv.bf16, key_splits_, sm_count_);
  if (k.splits <= 1) return false;
  const int64_t B = s.batch, S = k.splits, H = s.heads, D = s.head_dim, ld = H * D;
  const CudnnPlans::Entry* e =
      plans().find(false, dims(false, B * S, H, p.rows, k.chunk, D, false, s.scale, 0));
  if (!e || !e->graph) return false;
  // Chunk c of example b is batch element b * S + c: its own copy of the example's query
  // rows, its keys and values C rows into the example's (cudnn_key_splits.h).
  auto* qb = buffer<uint16_t>(kQb, B * S * p.rows * ld);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < S; ++c)
      kern::rows_to_bf16(stream_, qb + (b * S + c) * p.rows * ld, q + b * s.nq * ld, 1, s.nq,
                         p.row0, p.rows, ld);
  auto* seq_q = buffer<int32_t>(kSeqQ, B * S);
  kern::fill_int32(stream_, seq_q, B * S, int32_t(p.rows));
  auto* seq_kv = buffer<int32_t>(kCount, B * S);
  kern::key_split_counts(stream_, seq_kv, B, S, k.chunk, p.keys);
  auto* ob = buffer<uint16_t>(kOb, B * S * p.rows * ld);
  auto* stats = buffer<float>(kStatsBuf, B * S * H * p.rows);
  run(*e->graph, {{sdpa::kQ, qb},
                  {sdpa::kK, const_cast<void*>(kv.k)},
                  {sdpa::kV, const_cast<void*>(kv.v)},
                  {sdpa::kO, ob},
                  {sdpa::kStats, stats},
                  {sdpa::kSeqLenQ, seq_q},
                  {sdpa::kSeqLenKV, seq_kv}});
  kern::merge_key_splits(stream_, o, lse, ob, stats, B, S, s.nq, p.row0, H, D);
  return true;
}

void CudnnAttention::run(const CudnnGraph& g,
                         const std::vector<std::pair<int64_t, void*>>& bound) {
  void* workspace = g.workspace_bytes() > 0 ? scratch_(kWorkspace, size_t(g.workspace_bytes()))
                                            : nullptr;
  plans().run(g, stream_, bound, workspace);
}

CudnnAttention::Operands CudnnAttention::operands(const AttentionShape& s, const float* q,
                                                  KeyValues kv, bool backward) {
  const int64_t B = s.batch, ld = s.heads * s.head_dim;
  const Piece p = piece_of(s);
  Operands x;
  x.row0 = p.row0;
  x.rows = p.rows;
  x.keys = p.keys;
  x.graph_causal = p.causal;
  x.q = buffer<uint16_t>(kQb, B * p.rows * ld);
  kern::rows_to_bf16(stream_, x.q, q, B, s.nq, p.row0, p.rows, ld);
  x.seq_q = buffer<int32_t>(kSeqQ, B);
  kern::fill_int32(stream_, x.seq_q, B, int32_t(p.rows));
  x.kv_rows = kv_rows(s, backward, kv.bf16);
  if (x.kv_rows > 0) {
    // Every one of the first p.keys keys is visible: cuDNN reads them where they lie.
    x.in_place = true;
    x.k = const_cast<uint16_t*>(static_cast<const uint16_t*>(kv.k));
    x.v = const_cast<uint16_t*>(static_cast<const uint16_t*>(kv.v));
    x.flags = x.pos = nullptr;
    x.seq_kv = buffer<int32_t>(kCount, B);
    kern::fill_int32(stream_, x.seq_kv, B, int32_t(p.keys));
    return x;
  }
  x.flags = buffer<int32_t>(kFlags, B * p.keys);
  x.pos = buffer<int32_t>(kPos, B * p.keys);
  x.seq_kv = buffer<int32_t>(kCount, B);
  const size_t scan_bytes = kern::key_scan_scratch_bytes(B * p.keys);
  void* scan = scratch_(kScanTemp, std::max<size_t>(scan_bytes, 1));
  kern::scan_visible_keys(stream_, x.flags, x.pos, x.seq_kv, p.keep, B, s.nk, p.keys, scan,
                          scan_bytes);
  x.k = buffer<uint16_t>(kKb, B * p.keys * ld);
  x.v = buffer<uint16_t>(kVb, B * p.keys * ld);
  if (kv.bf16)
    kern::gather_keys(stream_, x.k, x.v, static_cast<const uint16_t*>(kv.k),
                      static_cast<const uint16_t*>(kv.v), x.flags, x.pos, x.seq_kv, B, s.nk,
                      p.keys, ld);
  else
    kern::gather_keys(stream_, x.k, x.v, static_cast<const float*>(kv.k),
                      static_cast<const float*>(kv.v), x.flags, x.pos, x.seq_kv, B, s.nk,
                      p.keys, ld);
  return x;
}

CudnnAttention::Diagonal CudnnAttention::diagonal(const AttentionShape& s,
                                                  const AttentionSegments& seg,
                                                  const float* q, KeyValues kv) {
  const int64_t B = s.batch, ld = s.heads * s.head_dim;
  Diagonal d;
  d.row0 = seg.diag_first_row;
  const int64_t rows = seg.diag_rows(), k0 = seg.prefix_keys, keys = seg.diag_keys();
  auto* qd = buffer<float>(kDiagQ, B * rows * ld);
  auto* kd = buffer<float>(kDiagK, B * keys * ld);
  auto* vd = buffer<float>(kDiagV, B * keys * ld);
  copy_rows(stream_, qd, q, B, s.nq, d.row0, rows, ld, sizeof(float));
  // Float32 copies for the blocked path: of bfloat16 keys and values, widened.
  auto rows_of = [&](float* dst, const void* src) {
    if (!kv.bf16) {
      copy_rows(stream_, dst, src, B, s.nk, k0, keys, ld, sizeof(float));
      return;
    }
    auto* half = buffer<uint16_t>(kDiagBf16, B * keys * ld);
    copy_rows(stream_, half, src, B, s.nk, k0, keys, ld, sizeof(uint16_t));
    kern::bf16_to_float(stream_, dst, half, B * keys * ld);
  };
  rows_of(kd, kv.k);
  rows_of(vd, kv.v);
  d.q = qd, d.k = kd, d.v = vd;
  uint8_t* keep = nullptr;
  if (s.k_keep) {
    keep = buffer<uint8_t>(kDiagKeep, B * keys);
    copy_rows(stream_, keep, s.k_keep, B, s.nk, k0, keys, 1, 1);
  }
  d.shape = AttentionShape{B, rows, keys, s.heads, s.head_dim, s.q_pos + d.row0, s.k_pos + k0,
                           keep, s.scale};
  return d;
}

void CudnnAttention::forward(const AttentionShape& s, const float* q, KeyValues kv, float* o,
                             float* lse) {
  const int64_t B = s.batch, H = s.heads, D = s.head_dim, ld = H * D, nq = s.nq;
  if (!forward_in_chunks(s, q, kv, o, lse)) {
    const Operands x = operands(s, q, kv, false);
    const CudnnGraph* g =
        graph(false, B, H, x.rows, x.keys, D, x.graph_causal, s.scale, x.kv_rows, nullptr);
    PAR_ASSERT(g, "cuDNN attention forward without a successful prepare()");
    auto* ob = buffer<uint16_t>(kOb, B * x.rows * ld);
    auto* stats = buffer<float>(kStatsBuf, B * H * x.rows);
    run(*g, {{sdpa::kQ, x.q}, {sdpa::kK, x.k}, {sdpa::kV, x.v}, {sdpa::kO, ob},
             {sdpa::kStats, stats}, {sdpa::kSeqLenQ, x.seq_q}, {sdpa::kSeqLenKV, x.seq_kv}});
    kern::attention_results(stream_, o, lse, ob, stats, x.seq_kv, B, nq, x.row0, H, D);
  }

  const Piece p = piece_of(s);
  if (!p.seg.has_diag()) return;
  // The diagonal: the blocked path over its rows and keys, merged into theirs.
  const Diagonal d = diagonal(s, p.seg, q, kv);
  auto* od = buffer<float>(kDiagO, B * d.shape.nq * ld);
  auto* lsed = buffer<float>(kDiagLse, B * H * d.shape.nq);
  blocked_.forward(d.shape, d.q, d.k, d.v, od, lsed);
  kern::merge_attention_rows(stream_, o, lse, od, lsed, B, nq, d.row0, d.shape.nq, H, D);
}

void CudnnAttention::backward(const AttentionShape& s, const float* q, KeyValues kv,
                              const float* o, const float* d_o, const float* lse, float* dq,
                              KeyValueGrads grads) {
  const int64_t B = s.batch, H = s.heads, D = s.head_dim, ld = H * D, nq = s.nq, nk = s.nk;
  const size_t bytes_per = grads.bf16 ? sizeof(uint16_t) : sizeof(float);
  const Operands x = operands(s, q, kv, true);
  const CudnnGraph* g =
      graph(true, B, H, x.rows, x.keys, D, x.graph_causal, s.scale, x.kv_rows, nullptr);
  PAR_ASSERT(g, "cuDNN attention backward without a successful prepare()");
  auto* ob = buffer<uint16_t>(kOb, B * x.rows * ld);
  auto* dob = buffer<uint16_t>(kDOb, B * x.rows * ld);
  auto* dqb = buffer<uint16_t>(kDQb, B * x.rows * ld);
  PAR_ASSERT(!x.in_place || grads.bf16, "keys read in place take bfloat16 gradients");
  // In place, cuDNN writes the keys' and values' gradients into the caller's rows.
  auto* dkb = x.in_place ? static_cast<uint16_t*>(grads.dk)
                         : buffer<uint16_t>(kDKb, B * x.keys * ld);
  auto* dvb = x.in_place ? static_cast<uint16_t*>(grads.dv)
                         : buffer<uint16_t>(kDVb, B * x.keys * ld);
  auto* stats = buffer<float>(kBwdStats, B * H * x.rows);
  auto* softmax_sum = buffer<float>(kSoftmaxSumBuf, B * H * x.rows);
  kern::rows_to_bf16(stream_, ob, o, B, nq, x.row0, x.rows, ld);
  kern::rows_to_bf16(stream_, dob, d_o, B, nq, x.row0, x.rows, ld);
  kern::backward_stats(stream_, stats, lse, B, H, nq, x.row0, x.rows);
  std::vector<std::pair<int64_t, void*>> bound{
      {sdpa::kQ, x.q},           {sdpa::kK, x.k},         {sdpa::kV, x.v},
      {sdpa::kO, ob},            {sdpa::kDO, dob},        {sdpa::kStats, stats},
      {sdpa::kSeqLenQ, x.seq_q}, {sdpa::kSeqLenKV, x.seq_kv}, {sdpa::kDQ, dqb},
      {sdpa::kDK, dkb},          {sdpa::kDV, dvb},        {sdpa::kSoftmaxSum, softmax_sum}};
  if (!deterministic(true, B, H, x.rows, x.keys, D)) {
    // The accumulator cuDNN adds dQ into starts at zero (cuDNN before 9.6 leaves that to
    // the caller, as cudnn-frontend does it).
    const int64_t count = B * H * x.rows * D;
    void* accum = buffer<float>(kDQAccumBuf, count);
    PAR_CUDA_CHECK(cudaMemsetAsync(accum, 0, size_t(count) * sizeof(float), stream_));
    bound.emplace_back(sdpa::kDQAccum, accum);
  }
  run(*g, bound);
  kern::query_grads(stream_, dq, dqb, x.seq_kv, B, nq, x.row0, ld);
  if (x.in_place) {
    // Written already.
  } else if (grads.bf16)
    kern::scatter_key_grads(stream_, static_cast<uint16_t*>(grads.dk),
                            static_cast<uint16_t*>(grads.dv), dkb, dvb, x.flags, x.pos, B, nk,
                            x.keys, ld);
  else
    kern::scatter_key_grads(stream_, static_cast<float*>(grads.dk),
                            static_cast<float*>(grads.dv), dkb, dvb, x.flags, x.pos, B, nk,
                            x.keys, ld);

  int64_t seen_keys = x.keys;  // keys past the ones some query sees get zero gradients
  const Piece p = piece_of(s);
  if (p.seg.has_diag()) {
    const Diagonal d = diagonal(s, p.seg, q, kv);
    const int64_t rows = d.shape.nq, keys = d.shape.nk, k0 = p.seg.prefix_keys;
    auto* od = buffer<float>(kDiagO, B * rows * ld);
    auto* dod = buffer<float>(kDiagDO, B * rows * ld);
    auto* lsed = buffer<float>(kDiagLse, B * H * rows);
    auto* dqd = buffer<float>(kDiagDQ, B * rows * ld);
    auto* dkd = buffer<float>(kDiagDK, B * keys * ld);
    auto* dvd = buffer<float>(kDiagDV, B * keys * ld);
    copy_rows(stream_, od, o, B, nq, d.row0, rows, ld, sizeof(float));
    copy_rows(stream_, dod, d_o, B, nq, d.row0, rows, ld, sizeof(float));
    // lse is [batch, heads, nq]: rows of every (example, head) pair.
    copy_rows(stream_, lsed, lse, B * H, nq, d.row0, rows, 1, sizeof(float));
    blocked_.backward(d.shape, d.q, d.k, d.v, od, dod, lsed, dqd, dkd, dvd);
    kern::copy_blocks(stream_, dq + d.row0 * ld, nq * ld, dqd, rows * ld, B, rows * ld, true);
    // Into bfloat16 gradients rounded once, as the other keys' are.
    auto place = [&](void* dst, const float* src) {
      if (!grads.bf16) {
        place_rows(stream_, dst, src, B, nk, k0, keys, ld, sizeof(float));
        return;
      }
      auto* half = buffer<uint16_t>(kDiagBf16, B * keys * ld);
      kern::matrix_to_bf16(stream_, half, src, 1, B * keys * ld, B * keys * ld);
      place_rows(stream_, dst, half, B, nk, k0, keys, ld, sizeof(uint16_t));
    };
    place(grads.dk, dkd);
    place(grads.dv, dvd);
    seen_keys = p.seg.diag_keys_end;
  }
  zero_rows_from(stream_, grads.dk, B, nk, seen_keys, ld, bytes_per);
  zero_rows_from(stream_, grads.dv, B, nk, seen_keys, ld, bytes_per);
}

}  // namespace par::cuda
