// PerceiverAR's activations (core/model.cpp): the buffers of one micro-batch carved from
// one allocation, and where the input side keeps what. Private to the model's source files
// (model.cpp, model_inputs.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "core/model.h"

namespace par {

// A region of T that holds bfloat16 values (KeyValueStorage::kBf16).
template <typename T>
uint16_t* bf16_view(T* region) {
  return reinterpret_cast<uint16_t*>(region);
}

template <typename T>
struct PerceiverAR<T>::Acts {
  int32_t* tokens;      // [B, cols] this rank's columns of each window
  int32_t* doc_pos;     // [B, Nl] document positions of the inputs (absolute positions only)
  int32_t* targets;     // [B, M]
  uint8_t* keep;        // [B, Nl] keys visible to the cross-attention (not PAD, not dropped)
  int64_t* pos;         // [Nl] global positions of this rank's inputs
  int64_t* latent_pos;  // [M] positions N-M .. N-1
  // Rotary tables for the positions they serve: this rank's keys [Nl, bands], the latent
  // queries of the cross-attention [M, bands], the latents in self-attention [M, bands].
  T *key_cos, *key_sin, *query_cos, *query_sin, *self_cos, *self_sin;

  // Cross-attention. Inputs: [B, Nl, d], their keys/values [B, Nl, dc] (dc: local width);
  // latents: [B, M, d], queries and attention output [B, M, dc].
  T *h, *kvn, *kv_mu, *kv_rs, *ck, *cv;
  // In bfloat16 storage (KeyValueStorage::kBf16) the keys and values, and their gradients,
  // in place of ck, cv, dck and dcv (null then); and the third region of the input side.
  uint16_t *ck16 = nullptr, *cv16 = nullptr, *dck16 = nullptr, *dcv16 = nullptr;
  T* region_c = nullptr;
  bool bf16_kv = false;
  // In bfloat16 storage without absolute positions, LN_kv reads the embedding table by id
  // (Ops::embedding_layernorm_forward_bf16): the embeddings h are never stored (h null),
  // LN_kv's output lives in a region of its own size (kvn16) and the projections' float
  // output in `projection`.
  bool fused_embedding = false;
  uint16_t* kvn16 = nullptr;
  T* projection = nullptr;
  T *zin, *z0, *qn, *qn_mu, *qn_rs, *cq, *catt, *clse, *lse_max, *x1;

  std::vector<MlpActs<T>> mlp;  // slot 0: the cross-attention's MLP; slot 1+l: layer l's
  std::vector<AttentionActs<T>> attn;  // latent self-attention of layer l
  // Residual stream: xs[0] after the cross MLP, x_mid[l] after layer l's attention block,
  // xs[l+1] after layer l.
  std::vector<T*> xs, x_mid;

  T *lnf, *lnf_mu, *lnf_rs, *logits, *ce, *lse;

  // Backward and scratch.
  T *tmp, *dx, *d_ln, *dq, *dk, *dv, *datt, *dfc1, *dact, *dlogits;
  T *dh, *dkvn, *dck, *dcv;
  bool recompute_kvn = false;  // kvn in dck for the forward, in ck for the backward
  T* position_scratch = nullptr;  // [BN, d] for the forward's absolute positions

  // I: int64_t to carve real memory; double to size it (no overflow, see Carver).
  template <typename I>
  void carve(Carver& c, const ModelConfig& cfg, I B, I Nl, I dc, I ds, I F, I hc, I hs,
             I cross_bands, I self_bands, bool absolute, bool bf16) {
    const int64_t M = cfg.num_latents, d = cfg.d_model;
    const int64_t V = cfg.vocab_size, L = cfg.num_layers;
    const I BM = B * M, BN = B * Nl, dq_width = std::max(dc, ds);
    tokens = c.take<int32_t>(B * (Nl + 1));
    doc_pos = absolute ? c.take<int32_t>(BN) : nullptr;
    targets = c.take<int32_t>(BM);
    keep = c.take<uint8_t>(BN);
    pos = c.take<int64_t>(Nl);
    latent_pos = c.take<int64_t>(M);
    key_cos = c.take<T>(Nl * cross_bands);
    key_sin = c.take<T>(Nl * cross_bands);
    query_cos = c.take<T>(M * cross_bands);
    query_sin = c.take<T>(M * cross_bands);
    self_cos = c.take<T>(M * self_bands);
    self_sin = c.take<T>(M * self_bands);
    bf16_kv = bf16;
    fused_embedding = bf16 && !absolute;
    if (bf16) carve_bf16_inputs(c, BN, I(d), dc, fused_embedding);
    // Where the keys and values together hold a [BN, d] tensor (dc >= d/2: up to 2
    // tensor-parallel ranks), buffers dead by then live in them: the embeddings h until
    // LN_kv has read them (the projections then write the keys and values; the backward
    // gathers h again, into kvn), and later the gradient dkvn (below).
    const bool reuse = 2 * dc >= I(d);
    // Where each of them holds a [BN, d] tensor (no tensor parallelism), LN_kv's output
    // kvn has no buffer of its own either: in the forward it lives in the keys' gradient,
    // which holds nothing until the backward, and the backward computes it again (the
    // same bits) in the keys' place once the attention's backward has read them.
    recompute_kvn = dc >= I(d);
    if (!bf16) {
      ck = c.take<T>(BN * dc);
      cv = c.take<T>(BN * dc);
      h = reuse ? ck : c.take<T>(BN * d);
      kvn = recompute_kvn ? nullptr : c.take<T>(BN * d);
    }
    kv_mu = c.take<T>(BN);
    kv_rs = c.take<T>(BN);
    zin = c.take<T>(BM * d);
    z0 = c.take<T>(BM * d);
    qn = c.take<T>(BM * d);
    qn_mu = c.take<T>(BM);
    qn_rs = c.take<T>(BM);
    cq = c.take<T>(BM * dc);
    catt = c.take<T>(BM * dc);
    clse = c.take<T>(B * hc * M);
    lse_max = c.take<T>(B * hc * M);
    x1 = c.take<T>(BM * d);
    mlp.resize(size_t(L + 1));
    for (auto& m : mlp) {
      m.ln = NormActs<T>{c.take<T>(BM * d), c.take<T>(BM), c.take<T>(BM)};
      m.fc1 = c.take<T>(BM * F);
      m.act = c.take<T>(BM * F);
    }
    attn.resize(size_t(L));
    x_mid.resize(size_t(L));
    for (int64_t l = 0; l < L; ++l) {
      AttentionActs<T>& a = attn[size_t(l)];
      a.ln = NormActs<T>{c.take<T>(BM * d), c.take<T>(BM), c.take<T>(BM)};
      a.q = c.take<T>(BM * ds);
      a.k = c.take<T>(BM * ds);
      a.v = c.take<T>(BM * ds);
      a.att = c.take<T>(BM * ds);
      a.lse = c.take<T>(B * hs * M);
      x_mid[size_t(l)] = c.take<T>(BM * d);
    }
    xs.resize(size_t(L + 1));
    for (auto& x : xs) x = c.take<T>(BM * d);
    lnf = c.take<T>(BM * d);
    lnf_mu = c.take<T>(BM);
    lnf_rs = c.take<T>(BM);
    logits = c.take<T>(BM * V);
    ce = c.take<T>(BM);
    lse = c.take<T>(BM);
    tmp = c.take<T>(BM * d);
    dx = c.take<T>(BM * d);
    d_ln = c.take<T>(BM * d);
    dq = c.take<T>(BM * dq_width);
    dk = c.take<T>(BM * ds);
    dv = c.take<T>(BM * ds);
    datt = c.take<T>(BM * dq_width);
    dfc1 = c.take<T>(BM * F);
    dact = c.take<T>(BM * F);
    dlogits = c.take<T>(BM * V);
    // The input side's gradients, likewise (1 GiB at N = 131072, d = 1024): dkvn (written by
    // the key/value projections' backward) in the keys and values, which the attention's
    // backward read last; dh (written by LN_kv's backward) in their gradients dck and dcv,
    // which the projections' backward read last. dh is also scratch for the embeddings'
    // absolute positions, in the forward and when the backward gathers h again, while
    // dck and dcv hold nothing.
    if (bf16) return;
    dck = c.take<T>(BN * dc);
    dcv = c.take<T>(BN * dc);
    dkvn = recompute_kvn ? cv : reuse ? ck : c.take<T>(BN * d);
    dh = reuse ? dck : c.take<T>(BN * d);
    if (recompute_kvn) kvn = dck;
    position_scratch = dh;
  }

  // The input side in bfloat16 storage: regions A and C of [BN, max(d, dc)] T, each
  // holding a [BN, d] tensor of T or a pair of [BN, dc] bfloat16 ones, and B, used in turn
  // (the order of model.cpp's keys_values_forward and keys_values_backward).
  // With the embeddings stored (absolute positions), B is like A and C:
  //   forward:  h in A; LN_kv's output kvn (bfloat16) in B; each projection in T in A (h
  //             read), its rounding into C (keys, values);
  //   backward: the keys' and values' gradients (bfloat16) in A; h again in B, kvn again
  //             in C; dkvn in B (h read); h once more in C (kvn read); dh in A.
  // Without (fused_embedding), B holds only kvn ([BN, d] bfloat16), kept from the forward
  // to the backward:
  //   forward:  kvn in B; each projection in T in A, its rounding into C;
  //   backward: the gradients in A; dkvn in C (the keys and values read); dh in A.
  template <typename I>
  void carve_bf16_inputs(Carver& c, I BN, I d, I dc, bool fused) {
    const I region = BN * std::max(d, dc);
    T* a = c.take<T>(region);
    T* b = fused ? nullptr : c.take<T>(region);
    kvn16 = fused ? c.take<uint16_t>(BN * d) : reinterpret_cast<uint16_t*>(b);
    region_c = c.take<T>(region);
    auto pair = [&](T* r, uint16_t** first, uint16_t** second) {
      *first = reinterpret_cast<uint16_t*>(r);
      *second = r ? *first + int64_t(BN * dc) : nullptr;
    };
    pair(region_c, &ck16, &cv16);
    pair(a, &dck16, &dcv16);
    projection = a;
    dh = a;
    h = fused ? nullptr : a;
    kvn = b;
    dkvn = fused ? region_c : b;
    position_scratch = b;  // free until LN_kv writes it
    ck = cv = dck = dcv = nullptr;
  }
};

}  // namespace par
