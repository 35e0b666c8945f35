// The pieces of Perceiver AR that training (PerceiverAR, core/model.cpp) and decoding
// (Decoder, core/decoder.cpp) both run, written once: the cross-attention's key/value and
// query projections, an attention output projection with its residual, the MLP block, the
// latent self-attention block, the latent layer made of those two, and the logits
// (spec/MODEL.md sections 4 to 6). Training adds the backward of the latent blocks.
//
// The caller owns every buffer (the model's activation arena; the decoder's work space and
// caches) and passes it in: a block only sequences backend calls. Rotary tables, attention
// shapes and caches stay with the caller too, because training and decoding make them
// differently.
//
// Under tensor parallelism a rank holds a slice of the heads and of the MLP's hidden units:
// q, k, v and fc1 are column-parallel (their outputs have the local `width`), o and fc2 are
// row-parallel (each rank's product is a partial sum, completed over the group, and rank 0
// adds the bias).
#pragma once

#include <cstdint>

#include "core/groups.h"
#include "core/ops.h"
#include "core/param_layout.h"
#include "core/philox.h"

namespace par {

// What the blocks of one pass over latent rows share: `batch` examples of `rows` rows of
// width d, the tensor-parallel group, and residual dropout.
template <typename T>
struct LatentPass {
  Ops<T>& ops;
  int64_t batch = 1;
  int64_t rows = 0;  // per example
  int64_t d = 0;
  DeviceGroup tp{};  // empty: this rank alone
  int tp_rank = 0;
  // Residual dropout: probability (0 outside training), and what keys the masks: site s
  // draws with DropoutKey{seed, step, s}, example b of the batch being example_base + b.
  double dropout = 0;
  uint64_t seed = 0;
  uint32_t step = 0;
  uint64_t example_base = 0;

  int64_t total_rows() const { return batch * rows; }
  // Completes a row-parallel product: each tensor-parallel rank holds a partial sum.
  void tp_sum(T* x, int64_t n) const;
  // y = dropout of x ([batch * rows, d]) at `site`; nothing when p = 0.
  void drop(T* y, const T* x, uint32_t site) const;
  // The gradient before the dropout at `site` of the gradient dx after it: dx itself when
  // p = 0, else its dropped copy in tmp (the mask is its own backward).
  const T* undrop(const T* dx, T* tmp, uint32_t site) const;
};

// A LayerNorm's output and the statistics its backward needs.
template <typename T>
struct NormActs {
  T *y, *mean, *rstd;
};

template <typename T>
struct MlpActs {
  NormActs<T> ln;
  T *fc1, *act;  // [rows, local width]
};

template <typename T>
struct AttentionActs {
  NormActs<T> ln;
  T *q, *k, *v, *att;  // [rows, local width]; q and k rotated
  T* lse;              // [batch, local heads, rows]
};

// The rotary tables for `rows` rows of each example ([rows, bands]) and the heads they turn.
template <typename T>
struct RotaryTables {
  const T* cos = nullptr;
  const T* sin = nullptr;
  int64_t bands = 0;
  int64_t heads = 0;  // local
  int64_t head_dim = 0;
};

// Rows of a decoding cache that a latent layer's own keys and values are copied into before
// its attention reads the cache: row at[0] (in backend memory, so that a captured step is
// replayed into the row of its turn) of each of the pass's `batch` blocks of `stride` rows.
// Each sample's cache is a block of M rows, so the new rows are not contiguous. k == null:
// none.
template <typename T>
struct CacheRows {
  T* k = nullptr;
  T* v = nullptr;
  int64_t stride = 0;
  const int64_t* at = nullptr;
};

// Buffers of the backward of the latent blocks (the model's activation arena): tmp and d_ln
// [rows, d], dact and dfc1 [rows, local MLP width], datt, dq, dk, dv [rows, local width].
template <typename T>
struct BlockGradScratch {
  T *tmp, *d_ln, *dact, *dfc1, *datt, *dq, *dk, *dv;
};

// The cross-attention's key/value side over `rows` inputs: kvn = LN_kv(h), k = kvn W_k,
// v = kvn W_v (width: the local heads' columns). Rotating k is the caller's.
template <typename T>
void cross_keys_values(Ops<T>& ops, const CrossRef<T>& p, const T* h, int64_t rows, int64_t d,
                       int64_t width, const NormActs<T>& kvn, T* k, T* v);

// The cross-attention's query side over `rows` latents: z0 = z_linear(zin), q = LN_q(z0) W_q.
// Rotating q is the caller's.
template <typename T>
void cross_queries(Ops<T>& ops, const CrossRef<T>& p, const T* zin, int64_t rows, int64_t d,
                   int64_t width, T* z0, const NormActs<T>& qn, T* q);

// x_out = x_res + dropout(att W_o + b) (row-parallel o); tmp: [rows, d]. x_out may be x_res.
template <typename T>
void output_residual(const LatentPass<T>& pass, const LinearRef<T>& o, const T* att,
                     int64_t width, const T* x_res, T* x_out, T* tmp, uint32_t site);

// The MLP block: x_out = x_in + dropout(sqrelu(LN(x_in) W_1 + b_1) W_2 + b_2). x_out may be
// x_in; tmp: [rows, d].
template <typename T>
void mlp_block_forward(const LatentPass<T>& pass, const NormRef<T>& ln, const MlpRef<T>& mlp,
                       int64_t width, const MlpActs<T>& a, const T* x_in, T* x_out, T* tmp,
                       uint32_t site);

// Latent layer l: the self-attention block, x_mid = x_in + dropout(Attn(LN(x_in)) W_o + b_o)
// with the queries and keys rotated by `rot`, then the MLP block (x_mid -> x_out). This
// call's keys and values go to attn.k and attn.v; the attention reads `keys` and `values` as
// `shape` says: attn.k and attn.v themselves, or a cache that holds them after those of
// earlier rows (decoding; `cache` copies them there first where they are not written there
// directly). x_mid and x_out may be x_in.
template <typename T>
void latent_layer_forward(const LatentPass<T>& pass, const LayerRef<T>& p, int64_t l,
                          int64_t attn_width, int64_t mlp_width, const RotaryTables<T>& rot,
                          const AttentionShape& shape, const T* keys, const T* values,
                          const AttentionActs<T>& attn, const MlpActs<T>& mlp, const T* x_in,
                          T* x_mid, T* x_out, T* tmp, const CacheRows<T>& cache = {});

// The backward of latent_layer_forward where the attention read attn.k and attn.v: dx (the
// gradient of x_out on entry) becomes that of x_in; parameter gradients accumulate into g.
template <typename T>
void latent_layer_backward(const LatentPass<T>& pass, const LayerRef<T>& p,
                           const LayerRef<T>& grad, int64_t l, int64_t attn_width,
                           int64_t mlp_width, const RotaryTables<T>& rot,
                           const AttentionShape& shape, const AttentionActs<T>& attn,
                           const MlpActs<T>& mlp, const T* x_in, const T* x_mid, T* dx,
                           const BlockGradScratch<T>& g);

// The backward of mlp_block_forward: dx (the gradient of x_out on entry) becomes that of
// x_in; parameter gradients accumulate into dln and dmlp.
template <typename T>
void mlp_block_backward(const LatentPass<T>& pass, const NormRef<T>& ln, const MlpRef<T>& mlp,
                        const NormRef<T>& dln, const MlpRef<T>& dmlp, int64_t width,
                        const MlpActs<T>& a, const T* x_in, T* dx,
                        const BlockGradScratch<T>& g, uint32_t site);

// logits = LN_f(x) W_head + b_head over `rows` rows.
template <typename T>
void logits_forward(Ops<T>& ops, const ModelRef<T>& p, const T* x, int64_t rows, int64_t d,
                    int64_t vocab, const NormActs<T>& lnf, T* logits);

}  // namespace par
