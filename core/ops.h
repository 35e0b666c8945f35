// The backend interface: every numeric operation the model needs, as plain functions on
// buffers that live wherever the backend keeps its memory (host for the CPU backend,
// device for CUDA). core/ calls only this; kernels/cpu and kernels/cuda implement it.
//
// Conventions:
// - Row-major everywhere. A "[rows, d]" buffer holds rows of d contiguous elements.
// - Linear weights are [out, in] (spec/MODEL.md section 10), so y = x W^T + b.
// - Backward methods that produce parameter gradients accumulate (+=) into them, so
//   micro-batches and the two uses of one parameter add up without extra buffers.
//   Gradients of activations are written (=) unless an `accumulate` flag says otherwise.
// - Sizes and offsets are 64-bit: a context of 131072 tokens times a width of 4096 does
//   not fit in 32 bits.
//
// The operations are written once, in PAR_OPS_METHODS below: the interface declares them
// from it (all pure virtual), the backends declare their overrides from it, the decorators
// (core/ops_decorator.h) forward every one through it, and the cross-backend parity table
// (tests/op_cases.cpp) must have a case for every name in it (tests/op_parity_test.cpp
// fails for a name without one). So an operation is added by one entry of the list, its
// implementations and its cases.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "core/philox.h"
#include "core/token_choice.h"

namespace par {

// One attention call: `batch` independent examples, `heads` heads of `head_dim`.
// q is [batch, nq, heads*head_dim], k and v are [batch, nk, heads*head_dim],
// o is like q, lse is [batch, heads, nq].
// Key j is visible to query i iff k_pos[j] <= q_pos[i] and (k_keep == null or
// k_keep[b*nk + j] != 0). k_pos must be non-decreasing. A query that sees no key gets
// o = 0 and lse = -infinity (spec/MODEL.md section 4, "differs").
struct AttentionShape {
  int64_t batch = 1;
  int64_t nq = 0;
  int64_t nk = 0;
  int64_t heads = 1;
  int64_t head_dim = 0;
  const int64_t* q_pos = nullptr;  // [nq], backend memory
  const int64_t* k_pos = nullptr;  // [nk], backend memory
  const uint8_t* k_keep = nullptr; // [batch, nk] or null, backend memory
  double scale = 1.0;              // applied to q.k (1/sqrt(head_dim) in the model)
  // Where the caller knows it: q_pos[i] == q_pos_first + i and k_pos[j] == k_pos_first + j
  // (the model's calls). A backend may then plan the mask on the host, without reading the
  // arrays, which stay the definition. kUnknownPosition: not known.
  static constexpr int64_t kUnknownPosition = INT64_MIN;
  int64_t q_pos_first = kUnknownPosition;
  int64_t k_pos_first = kUnknownPosition;
  // The caller knows that k_keep (if given) keeps every key (no PAD, no key dropout): a
  // backend may ignore it, and read the keys where they lie rather than gather the kept ones.
  bool keeps_every_key = false;
};

// Attention of nq queries over keys and values that are functions of a token id, rotated
// at their own positions: key j is R(pos[j]) key_table[token_j] and value j is
// value_table[token_j] (tables [vocab, heads*head_dim], keys un-rotated). This is the
// cross-attention cache of decoding: its inputs' keys and values depend only on their
// token (spec/MODEL.md sections 3 and 12), so a step need not read N cached rows.
// The keys come grouped by token (core/token_groups.h builds the arrays): group t is the
// keys [group[t], group[t+1]), in increasing position. pos, cos and sin are in that order;
// cos and sin are [bands, stride] (band b of key j at b*stride + j, stride >= n + 15, the
// rows padded with numbers), the rotary tables at each key's position (pairs as in
// Ops::rotary). Key j is visible to every query iff pos[j] >= first_position: the keys all
// precede the queries (no causal mask). q and o are [nq, heads*head_dim], lse is
// [heads, nq], as attention_forward's with batch 1; a query that sees no key gets o = 0 and
// lse = -infinity.
// With batch > 1 there are `batch` such calls in one, each example b with keys of its own
// (decoding's samples, each over its own generated keys): its groups at group + b*(vocab+1),
// its keys' positions at pos + b*stride, its cos and sin rows at cos + b*bands*stride (and
// sin likewise); q and o are [batch, nq, heads*head_dim], lse [batch, heads, nq], as
// attention_forward's. A backend may decline batch > 1 alone.
// With own_group set (batch 1), query i also sees keys of its own besides the shared ones
// (decoding's samples, query i sample i, over their generated keys): grouped the same way,
// its groups at own_group + i*(vocab+1), positions at own_pos + i*own_stride, cos and sin
// rows at own_cos + i*bands*own_stride (own_sin likewise; of the call's element type), with
// the same window (first_position). One call then gives each query its attention over both:
// the coefficients of a query and a token, most of the cost of a token with few keys, are
// found once for both. A backend may decline such a call alone.
struct TokenAttentionShape {
  int64_t nq = 1;
  int64_t heads = 1;
  int64_t head_dim = 0;
  int64_t bands = 0;
  int64_t vocab = 0;
  const int64_t* group = nullptr;  // [vocab + 1], backend memory
  const int64_t* pos = nullptr;    // [group[vocab]], backend memory
  int64_t stride = 0;              // of the cos and sin rows
  int64_t first_position = 0;
  double scale = 1.0;
  // When set, first_position is *first_position_at, in backend memory: a captured decoding
  // step's, which moves with every token past N.
  const int64_t* first_position_at = nullptr;
  int64_t batch = 1;
  const int64_t* own_group = nullptr;  // [nq, vocab + 1], backend memory; null: none
  const int64_t* own_pos = nullptr;    // [nq, own_stride], backend memory
  int64_t own_stride = 0;
  const void* own_cos = nullptr;  // [nq, bands, own_stride] of T, backend memory
  const void* own_sin = nullptr;
};

struct AdamStep {
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;  // decoupled (AdamW); 0 is plain Adam
  int64_t t = 1;            // 1-based step, for bias correction
  double grad_scale = 1.0;  // gradient clipping factor, applied before the moments
};

// Elements [begin, end) of the parameter buffers, with or without weight decay.
struct AdamSpan {
  int64_t begin = 0, end = 0;
  bool decays = true;
};

// Every operation of a backend, as X(return type, name, (parameters), (arguments)), with
// what it does. T is the element type where the list is expanded.
// Thrown by a backend when the work given inside a capture (Ops::begin_capture) cannot be
// recorded, because it would wait for the device (a download, a scratch buffer that must
// grow): the recording is discarded, none of it has run, and the caller may give the same
// work again outside a capture.
struct CaptureRefused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#define PAR_OPS_METHODS(X)                                                                         \
  /* ---- memory ---- */                                                                           \
  X(void*, allocate, (size_t bytes), (bytes))                                                      \
  X(void, deallocate, (void* p), (p))                                                              \
  X(void, upload, (void* dst, const void* host_src, size_t bytes), (dst, host_src, bytes))         \
  X(void, download, (void* host_dst, const void* src, size_t bytes), (host_dst, src, bytes))       \
  /* Waits for queued work (nothing to do on the CPU). */                                          \
  X(void, synchronize, (), ())                                                                     \
  /* The work given between begin_capture and end_capture(key) may be recorded and launched */    \
  /* as one unit (CUDA graphs: `key` names the work's shapes, and a later recording under the */  \
  /* same key updates the kept one in place); a backend without such a thing runs it as */        \
  /* given. Inside, nothing may wait for the device: CaptureRefused otherwise. */                 \
  X(void, begin_capture, (), ())                                                                   \
  X(void, end_capture, (uint64_t key), (key))                                                      \
  /* Discards a capture whose work failed (an error other than CaptureRefused, which */          \
  /* discards its own): nothing recorded is launched, and work runs as given again. What ran */   \
  /* as given (the CPU's) stays done. Nothing to do without a capture. */                          \
  X(void, abort_capture, (), ())                                                                   \
  /* Whether a capture is kept so that replay_capture may launch it again (false on the CPU). */  \
  X(bool, replays_captures, (), ())                                                                \
  /* Launches again the work last captured under `key`, exactly as captured: the same buffers, */ \
  /* sizes and values given to the ops, with whatever the buffers hold now. false (nothing */     \
  /* run) when no capture is kept under key, or it copied from the host. */                       \
  X(bool, replay_capture, (uint64_t key), (key))                                                   \
  /* ---- element-wise basics ---- */                                                              \
  X(void, fill, (T* x, int64_t n, T value), (x, n, value))                                         \
  X(void, copy, (T* dst, const T* src, int64_t n), (dst, src, n))                                  \
  /* y += x */                                                                                     \
  X(void, add, (T* y, const T* x, int64_t n), (y, x, n))                                           \
  X(void, scale, (T* x, int64_t n, double s), (x, n, s))                                           \
  /* For b < batch: dst[b*dst_stride + i] = (or +=) src[b*src_stride + i], i < count. */           \
  X(void, copy_blocks,                                                                             \
    (T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t batch,                  \
     int64_t count, bool accumulate),                                                              \
    (dst, dst_stride, src, src_stride, batch, count, accumulate))                                  \
  /* For b < batch: dst[b*dst_stride + row[0]*row_width + i] = src[b*src_stride + i], i < */    \
  /* count, with row[0] read from device memory: a captured step writes a cache row that */       \
  /* changes from one replay to the next. */                                                      \
  X(void, copy_blocks_to_row,                                                                      \
    (T* dst, int64_t dst_stride, const int64_t* row, int64_t row_width, const T* src,              \
     int64_t src_stride, int64_t batch, int64_t count),                                            \
    (dst, dst_stride, row, row_width, src, src_stride, batch, count))                              \
  /* ---- matrix products ---- */                                                                  \
  /* C[m,n] = alpha * op(A)[m,k] op(B)[k,n] + beta * C, row-major with leading dimensions. */      \
  X(void, gemm,                                                                                    \
    (bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,             \
     int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc),                             \
    (trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))                              \
  /* y[rows,out] = x[rows,in] w[out,in]^T + b  (b may be null) */                                  \
  X(void, linear_forward,                                                                          \
    (T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in, int64_t out),             \
    (y, x, w, b, rows, in, out))                                                                   \
  /* dx = (or +=) dy w; dw += dy^T x; db += sum_rows dy. dx or db may be null. */                  \
  X(void, linear_backward,                                                                         \
    (T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x, const T* w,                 \
     int64_t rows, int64_t in, int64_t out),                                                       \
    (dx, accumulate_dx, dw, db, dy, x, w, rows, in, out))                                          \
  /* ---- embedding ---- */                                                                        \
  X(void, embedding_forward,                                                                       \
    (T* h, const int32_t* ids, const T* table, int64_t rows, int64_t d),                           \
    (h, ids, table, rows, d))                                                                      \
  /* dtable += scatter(dh) */                                                                      \
  X(void, embedding_backward,                                                                      \
    (T* dtable, const int32_t* ids, const T* dh, int64_t rows, int64_t d),                         \
    (dtable, ids, dh, rows, d))                                                                    \
  /* ---- layer norm (mean and rstd are [rows], kept for backward) ---- */                         \
  X(void, layernorm_forward,                                                                       \
    (T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows, int64_t d,          \
     double eps),                                                                                  \
    (y, mean, rstd, x, w, b, rows, d, eps))                                                        \
  X(void, layernorm_backward,                                                                      \
    (T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x, const T* mean,              \
     const T* rstd, const T* w, int64_t rows, int64_t d),                                          \
    (dx, accumulate_dx, dw, db, dy, x, mean, rstd, w, rows, d))                                    \
  /* ---- rotary (in place) ---- */                                                                \
  /* x is [batch, n, heads*head_dim]. The first 2*bands dims of each head of row (b, i) */         \
  /* are rotated in adjacent pairs by the angle of band k at that row's position, whose */         \
  /* cosine and sine are cos_table[i*bands + k] and sin_table[i*bands + k] (tables */              \
  /* [n, bands], made for the rows' positions). `inverse` rotates by minus the angle, which */     \
  /* is the backward of the forward rotation. */                                                   \
  X(void, rotary,                                                                                  \
    (T* x, int64_t batch, int64_t n, int64_t heads, int64_t head_dim, int64_t bands,               \
     const T* cos_table, const T* sin_table, bool inverse),                                        \
    (x, batch, n, heads, head_dim, bands, cos_table, sin_table, inverse))                          \
  /* ---- bfloat16 storage (uint16_t buffers hold bfloat16 bits, core/bf16.h) ---- */              \
  /* Where the model keeps the input side's keys and values, their gradients and LN_kv's */       \
  /* output in bfloat16 (KeyValueStorage::kBf16): half the memory of its largest tensors, */       \
  /* which cuDNN and cuBLAS read as they are. Each operation computes in T from the values */      \
  /* its bfloat16 inputs hold and rounds what it stores to the nearest bfloat16 (ties to */        \
  /* even): it is its T operation on the widened values, rounded. */                               \
  X(void, round_to_bf16, (uint16_t* dst, const T* src, int64_t n), (dst, src, n))                  \
  /* layernorm_forward with y rounded to bfloat16 (mean and rstd in T). */                         \
  X(void, layernorm_forward_bf16,                                                                  \
    (uint16_t* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows, int64_t d,   \
     double eps),                                                                                  \
    (y, mean, rstd, x, w, b, rows, d, eps))                                                        \
  /* LN_kv of the embeddings, without them: layernorm_forward_bf16 of the rows */                  \
  /* table[ids[b*id_stride + j]] (b < batch, j < n; y, mean, rstd [batch*n, ...]), as */           \
  /* embedding_forward then layernorm_forward_bf16 give them. */                                  \
  X(void, embedding_layernorm_forward_bf16,                                                        \
    (uint16_t* y, T* mean, T* rstd, const int32_t* ids, int64_t batch, int64_t n,                  \
     int64_t id_stride, const T* table, const T* w, const T* b, int64_t d, double eps),            \
    (y, mean, rstd, ids, batch, n, id_stride, table, w, b, d, eps))                                \
  /* Its backward: layernorm_backward (dx written) with x those embedding rows. */                 \
  X(void, embedding_layernorm_backward,                                                            \
    (T* dx, T* dw, T* db, const T* dy, const int32_t* ids, int64_t batch, int64_t n,               \
     int64_t id_stride, const T* table, const T* mean, const T* rstd, const T* w, int64_t d),      \
    (dx, dw, db, dy, ids, batch, n, id_stride, table, mean, rstd, w, d))                           \
  /* linear_forward of a bfloat16 x (y in T). */                                                   \
  X(void, linear_forward_bf16_x,                                                                   \
    (T* y, const uint16_t* x, const T* w, const T* b, int64_t rows, int64_t in, int64_t out),      \
    (y, x, w, b, rows, in, out))                                                                   \
  /* linear_forward_bf16_x with y rounded to bfloat16: the values' projection, stored as */      \
  /* they are kept. staging ([rows, out] of T) is the backend's to use on the way or not: */      \
  /* the CPU runs linear_forward_bf16_x into it, then round_to_bf16; CUDA rounds in the */        \
  /* product's epilogue where cuBLASLt can (no pass over a float y), else goes as the CPU. */     \
  X(void, linear_forward_to_bf16,                                                                  \
    (uint16_t* y, T* staging, const uint16_t* x, const T* w, const T* b, int64_t rows, int64_t in, \
     int64_t out),                                                                                 \
    (y, staging, x, w, b, rows, in, out))                                                          \
  /* dst = the bfloat16 rounding of src rotated as Ops::rotary does (src is left alone): */       \
  /* the keys' rotation and rounding in one pass. */                                               \
  X(void, rotary_to_bf16,                                                                          \
    (uint16_t* dst, const T* src, int64_t batch, int64_t n, int64_t heads, int64_t head_dim,       \
     int64_t bands, const T* cos_table, const T* sin_table),                                       \
    (dst, src, batch, n, heads, head_dim, bands, cos_table, sin_table))                            \
  /* Ops::rotary on a bfloat16 tensor: each rotated pair rounded once. */                          \
  X(void, rotary_bf16,                                                                             \
    (uint16_t* x, int64_t batch, int64_t n, int64_t heads, int64_t head_dim, int64_t bands,        \
     const T* cos_table, const T* sin_table, bool inverse),                                        \
    (x, batch, n, heads, head_dim, bands, cos_table, sin_table, inverse))                          \
  /* attention_forward and attention_backward with bfloat16 keys and values (and key and */        \
  /* value gradients, written rounded; rows of invisible keys zero). */                           \
  X(void, attention_forward_bf16_kv,                                                               \
    (const AttentionShape& s, const T* q, const uint16_t* k, const uint16_t* v, T* o, T* lse),     \
    (s, q, k, v, o, lse))                                                                          \
  X(void, attention_backward_bf16_kv,                                                              \
    (const AttentionShape& s, const T* q, const uint16_t* k, const uint16_t* v, const T* o,        \
     const T* d_o, const T* lse, T* dq, uint16_t* dk, uint16_t* dv),                               \
    (s, q, k, v, o, d_o, lse, dq, dk, dv))                                                         \
  /* linear_backward of a bfloat16 x, with a bfloat16 output gradient dy (dx, dw, db in T). */   \
  X(void, linear_backward_bf16,                                                                    \
    (T* dx, bool accumulate_dx, T* dw, T* db, const uint16_t* dy, const uint16_t* x, const T* w,   \
     int64_t rows, int64_t in, int64_t out),                                                       \
    (dx, accumulate_dx, dw, db, dy, x, w, rows, in, out))                                          \
  /* ---- activation and regularization ---- */                                                    \
  X(void, sqrelu_forward, (T* y, const T* x, int64_t n), (y, x, n))                                \
  X(void, sqrelu_backward, (T* dx, const T* dy, const T* x, int64_t n), (dx, dy, x, n))            \
  /* y = x * keep / (1 - p), keep = dropout_keep(key, example_base + b, i) for element i */        \
  /* of example b. Forward and backward are the same call. y may equal x. */                       \
  X(void, dropout,                                                                                 \
    (T* y, const T* x, int64_t batch, int64_t per_example, double p, const DropoutKey& key,        \
     uint64_t example_base),                                                                       \
    (y, x, batch, per_example, p, key, example_base))                                              \
  /* keep[b*n + j] = tokens[b*token_stride + j] != PAD and, when p > 0, */                         \
  /* dropout_keep(key, example_base + b, position_base + j, p). */                                 \
  X(void, key_keep_mask,                                                                           \
    (uint8_t* keep, const int32_t* tokens, int64_t batch, int64_t n, int64_t token_stride,         \
     double p, const DropoutKey& key, uint64_t example_base, int64_t position_base),               \
    (keep, tokens, batch, n, token_stride, p, key, example_base, position_base))                   \
  /* ---- attention (blocked over keys; never holds a [nq, nk] score matrix) ---- */               \
  X(void, attention_forward,                                                                       \
    (const AttentionShape& s, const T* q, const T* k, const T* v, T* o, T* lse),                   \
    (s, q, k, v, o, lse))                                                                          \
  /* Uses the forward's o and lse (after any cross-rank merge). dq, dk, dv are written; */         \
  /* dk and dv rows of invisible keys are zero. */                                                 \
  X(void, attention_backward,                                                                      \
    (const AttentionShape& s, const T* q, const T* k, const T* v, const T* o, const T* d_o,        \
     const T* lse, T* dq, T* dk, T* dv),                                                           \
    (s, q, k, v, o, d_o, lse, dq, dk, dv))                                                         \
  /* o and lse of the (rotated) queries q. Returns false, doing nothing, where the backend */      \
  /* has no such kernel; the caller then attends over materialized keys. */                        \
  X(bool, token_attention_forward,                                                                 \
    (const TokenAttentionShape& s, const T* q, const T* key_table, const T* value_table,           \
     const T* cos, const T* sin, T* o, T* lse),                                                    \
    (s, q, key_table, value_table, cos, sin, o, lse))                                              \
  /* Whether token_attention_forward may take a call with own keys (TokenAttentionShape:: */       \
  /* own_group). One that says false declines every such call, so callers need not make */         \
  /* one, nor keep up what only such a call would read. */                                         \
  X(bool, token_attention_takes_own_keys, (), ())                                                  \
  /* ---- merging partial attention across ranks (sequence parallelism) ---- */                    \
  /* Each rank attends over its own slice of the keys, giving o (normalized within the */          \
  /* slice) and lse. To combine them, every rank rescales its part by w = exp(lse - lse_max) */    \
  /* (lse_max: the maximum over ranks): o *= w and lse := w; the ranks then sum o and w, and */    \
  /* attention_merge_finish sets o /= sum_w and lse = lse_max + log(sum_w). Shapes as in */        \
  /* attention_forward; a slice or a whole row with no visible key contributes weight 0. */        \
  X(void, attention_merge_scale,                                                                   \
    (T* o, T* lse, const T* lse_max, int64_t batch, int64_t nq, int64_t heads, int64_t head_dim),  \
    (o, lse, lse_max, batch, nq, heads, head_dim))                                                 \
  X(void, attention_merge_finish,                                                                  \
    (T* o, T* lse, const T* lse_max, int64_t batch, int64_t nq, int64_t heads, int64_t head_dim),  \
    (o, lse, lse_max, batch, nq, heads, head_dim))                                                 \
  /* The same merge of two attentions of the same rows on one device: o, lse (laid out as */      \
  /* `batch` examples of `nq` queries) and o2, lse2 (`batch2` of `nq2`; batch * nq == batch2 */   \
  /* * nq2) over disjoint keys become, in o and lse, the attention over both. Per row and */      \
  /* head, with l, l2 its lse in each and m = max(l, l2): w = exp(l - m), w2 = exp(l2 - m) (0 */  \
  /* where l or l2 is -inf), o = (o w + o2 w2) / (w + w2), lse = m + log(w + w2); a row */        \
  /* with no key in either gets o = 0 and lse = -inf. o2 and lse2 are left alone. */              \
  X(void, attention_merge_pair,                                                                    \
    (T* o, T* lse, int64_t batch, int64_t nq, const T* o2, const T* lse2, int64_t batch2,          \
     int64_t nq2, int64_t heads, int64_t head_dim),                                                \
    (o, lse, batch, nq, o2, lse2, batch2, nq2, heads, head_dim))                                   \
  /* ---- loss ---- */                                                                             \
  /* lse[r] = logsumexp(logits[r]); ce[r] = lse[r] - logits[r, target[r]], or 0 where the */       \
  /* target is PAD. */                                                                             \
  X(void, cross_entropy_forward,                                                                   \
    (T* ce, T* lse, const T* logits, const int32_t* targets, int64_t rows, int64_t vocab),         \
    (ce, lse, logits, targets, rows, vocab))                                                       \
  /* Gradient of scale * sum over valid rows of (ce + z_loss * lse^2); PAD rows get 0. */          \
  X(void, cross_entropy_backward,                                                                  \
    (T* dlogits, const T* logits, const T* lse, const int32_t* targets, int64_t rows,              \
     int64_t vocab, double scale, double z_loss),                                                  \
    (dlogits, logits, lse, targets, rows, vocab, scale, z_loss))                                   \
  /* ---- sampling ---- */                                                                         \
  /* ids[r] = choose_token(row r of logits [rows, vocab], vocab, opts, u[r]) (the rule of */       \
  /* core/token_choice.h) for r < rows. ids and u are host memory: only the ids come back. */      \
  X(void, sample_tokens,                                                                           \
    (int32_t* ids, const T* logits, int64_t rows, int64_t vocab, const SamplingOptions& opts,      \
     const double* u),                                                                             \
    (ids, logits, rows, vocab, opts, u))                                                           \
  /* ---- optimizer ---- */                                                                        \
  X(double, sum_squares, (const T* x, int64_t n), (x, n))                                          \
  X(void, adam_update, (T* param, T* m, T* v, const T* grad, int64_t n, const AdamStep& step),     \
    (param, m, v, grad, n, step))                                                                  \
  /* The same update over several spans of the buffers at once (the whole model: one */            \
  /* launch on a GPU instead of one per tensor); spans with decays == false take weight */         \
  /* decay 0. Spans are ordered and disjoint; elements outside them are left alone. */             \
  /* (adam_update_each_span below: the same through one adam_update per span.) */                  \
  X(void, adam_update_spans,                                                                       \
    (T* param, T* m, T* v, const T* grad, const AdamSpan* spans, int64_t count,                    \
     const AdamStep& step),                                                                        \
    (param, m, v, grad, spans, count, step))

// Expansions of the list: in the interface, in a backend's class body.
#define PAR_OPS_PURE(ret, op, params, args) virtual ret op params = 0;
#define PAR_OPS_OVERRIDE(ret, op, params, args) ret op params override;

template <typename T>
class Ops {
 public:
  virtual ~Ops() = default;
  virtual const char* name() const = 0;
  // The operations: add them to PAR_OPS_METHODS, nowhere else.
  PAR_OPS_METHODS(PAR_OPS_PURE)
};

// Ops::adam_update_spans as one adam_update per span, for a backend without a kernel that
// takes them all at once.
template <typename T>
void adam_update_each_span(Ops<T>& ops, T* param, T* m, T* v, const T* grad,
                           const AdamSpan* spans, int64_t count, const AdamStep& step) {
  for (int64_t k = 0; k < count; ++k) {
    AdamStep s = step;
    if (!spans[k].decays) s.weight_decay = 0;
    const int64_t b = spans[k].begin;
    ops.adam_update(param + b, m + b, v + b, grad + b, spans[k].end - b, s);
  }
}

}  // namespace par
