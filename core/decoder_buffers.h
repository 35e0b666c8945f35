// The Decoder's device buffers (its caches and the scratch of one step), shared by its
// source files: decoder.cpp (the passes) and decoder_caches.cpp (filling and compacting the
// cross caches). Private to core/decoder*.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/arena.h"
#include "core/decoder.h"
#include "core/token_groups.h"

namespace par {

namespace decoder_detail {

// The position of cache rows that hold nothing yet: after every query, so invisible, and
// keeping the positions non-decreasing as Ops::attention_forward asks.
constexpr int64_t kFarPosition = std::numeric_limits<int64_t>::max() / 2;

// A block of the samples' own cross caches (Decoder::reserve_own): K samples' keys and
// values of `cap` rows of `width` T each, the rows' positions, and two keep masks
// (own_keep_, then own_keep_tail_).
template <typename T>
struct OwnCacheBlock {
  T *k = nullptr, *v = nullptr;
  int64_t* pos = nullptr;
  uint8_t* keep = nullptr;
  void carve(Carver& c, int64_t K, int64_t cap, int64_t width) {
    k = c.take<T>(K * cap * width);
    v = c.take<T>(K * cap * width);
    pos = c.take<int64_t>(cap);
    keep = c.take<uint8_t>(2 * K * cap);
  }
};

// A block of the samples' own keys grouped by token (Decoder::group_own): per sample the
// groups' offsets over V tokens, and `rows` positions and rotary rows of `bands` each.
template <typename T>
struct OwnGroupsBlock {
  int64_t *group = nullptr, *pos = nullptr;
  T *cos = nullptr, *sin = nullptr;
  void carve(Carver& c, int64_t K, int64_t V, int64_t bands, int64_t rows) {
    group = c.take<int64_t>(K * (V + 1));
    pos = c.take<int64_t>(K * rows);
    cos = c.take<T>(K * bands * rows);
    sin = c.take<T>(K * bands * rows);
  }
};

// One backend allocation for the pieces `carve` takes (a Carver's pass sizes it, a second
// pass over the memory places them, so size and layout cannot disagree).
template <typename T, typename F>
void* allocate_carved(Ops<T>& ops, F&& carve) {
  Carver sizing;
  carve(sizing);
  void* memory = ops.allocate(size_t(sizing.used));
  Carver real{static_cast<char*>(memory), 0};
  carve(real);
  return memory;
}

// Groups made on the host (group_tokens) into a block of backend buffers: the shared
// groups, or one sample's own.
template <typename T>
void upload_groups(Ops<T>& ops, const TokenGroups<T>& g, int64_t* group, int64_t* pos, T* cos,
                   T* sin) {
  ops.upload(group, g.group.data(), g.group.size() * sizeof(int64_t));
  ops.upload(pos, g.pos.data(), g.pos.size() * sizeof(int64_t));
  ops.upload(cos, g.cos.data(), g.cos.size() * sizeof(T));
  ops.upload(sin, g.sin.data(), g.sin.size() * sizeof(T));
}

}  // namespace decoder_detail

template <typename T>
struct Decoder<T>::Buffers {
  // Caches.
  // [N + M, d]: keys rotated at their positions (shared); rows of `cache_width` T, which
  // hold d bfloat16 values with Decoder::bf16_cache_.
  T *cross_k, *cross_v;
  int64_t* cross_pos;    // [N + M]
  uint8_t* cross_keep;   // [N + M]: not PAD
  // With token tables (Decoder::token_tables_): the window's keys grouped by token
  // (core/token_groups.h) and the tables of every token.
  int64_t* group;        // [V + 1]
  int64_t* group_pos;    // [N]
  T *group_cos, *group_sin;          // [cross bands, token_groups_stride(N)]
  T *key_table, *value_table;        // [V, d]: un-rotated keys and values of every token
  std::vector<T*> self_k, self_v;  // per layer [K, M, d], in one piece
  int64_t* self_pos;     // [M]
  // Work space of a full pass (W <= N inputs, L <= M latents) or of one new token per
  // sample; R = K * M latent rows, E = max(N, K, V) input rows.
  int32_t* tokens;       // [max(E, R)]
  int32_t* pos_ids;      // [max(E, R)]: document positions (absolute positions only)
  int32_t* dedup_ids;    // [(2 + Hc) K]: samples asking the same question (several, token tables)
  // A step's inputs, one after the other from step_cos to latent_pos + K, so that one
  // upload gives them all (Decoder::upload_step_inputs): its rotary rows (its newest
  // position), cross and self; the row of its latent in the self caches (latents_) and of
  // the newest inputs in the cross caches; the window's first position; the latents'
  // positions ([max(M, K)], a refill's too).
  T *step_cos, *step_sin, *step_self_cos, *step_self_sin;
  int64_t *step_row, *input_row;
  int64_t* first_position;  // the window's first position (token tables' first_position_at)
  int64_t* latent_pos;
  T *h, *kvn, *kv_mu, *kv_rs;          // [E, d], [E]
  T *zin, *z0, *qn, *q, *k, *v, *att, *tmp, *x, *ln;  // [R, d]
  T *mu, *rs;            // [R]
  T *fc1, *act;          // [R, F]
  T *lse;                // [max(Hc, H) * R]
  T *lse2;               // [max(Hc, H) * R], merging attentions (several parts of the keys)
  T *logits;             // [K, V]
  // The steps' cross-attention outputs and residual inputs for the next refill (cached
  // decoding): [K, max(1, M/2), d] each.
  T *saved_att, *saved_z0;  // one after the other: 2K blocks of M/2 rows
  T *step_att, *step_z0;    // a step's newest latent's, for saved_*: [K, d] one after the other
  T *cos, *sin;          // rotary tables for up to max(N, M) rows
  // Host: the groups as they are made (group_window, group_own), kept for their memory.
  TokenGroups<T> host_groups;

  void carve(Carver& c, const ModelConfig& cfg, int64_t K, int64_t cross_bands,
             int64_t self_bands, bool token_tables, bool cached, int64_t cache_width) {
    const int64_t bands = std::max(cross_bands, self_bands);
    const int64_t N = cfg.context_length, M = cfg.num_latents, d = cfg.d_model;
    const int64_t F = cfg.mlp_width(), V = cfg.vocab_size, cap = N + M, R = K * M;
    const int64_t E = std::max({N, K, token_tables ? V : 0});
    cross_k = c.take<T>(cap * cache_width);
    cross_v = c.take<T>(cap * cache_width);
    cross_pos = c.take<int64_t>(cap);
    cross_keep = c.take<uint8_t>(cap);
    const int64_t gkeys = token_tables ? N : 0, grows = token_tables ? token_groups_stride(N) : 0;
    group = c.take<int64_t>(token_tables ? V + 1 : 0);
    group_pos = c.take<int64_t>(gkeys);
    group_cos = c.take<T>(grows * cross_bands);
    group_sin = c.take<T>(grows * cross_bands);
    key_table = c.take<T>(token_tables ? V * d : 0);
    value_table = c.take<T>(token_tables ? V * d : 0);
    const int64_t layers = cfg.num_layers, block = R * d;
    T* self = c.take<T>(2 * layers * block);
    self_k.resize(size_t(layers));
    self_v.resize(size_t(layers));
    for (int64_t l = 0; l < layers; ++l) {
      self_k[size_t(l)] = self ? self + l * block : nullptr;
      self_v[size_t(l)] = self ? self + (layers + l) * block : nullptr;
    }
    self_pos = c.take<int64_t>(M);
    tokens = c.take<int32_t>(std::max(E, R));
    pos_ids = c.take<int32_t>(cfg.absolute_positions() ? std::max(E, R) : 0);
    dedup_ids = c.take<int32_t>(K > 1 && token_tables ? (2 + cfg.cross_heads) * K : 0);
    step_cos = c.take<T>(cross_bands);
    step_sin = c.take<T>(cross_bands);
    step_self_cos = c.take<T>(self_bands);
    step_self_sin = c.take<T>(self_bands);
    step_row = c.take<int64_t>(1);
    input_row = c.take<int64_t>(1);
    first_position = c.take<int64_t>(1);
    latent_pos = c.take<int64_t>(std::max(M, K));
    h = c.take<T>(E * d);
    kvn = c.take<T>(E * d);
    kv_mu = c.take<T>(E);
    kv_rs = c.take<T>(E);
    for (T** p : {&zin, &z0, &qn, &q, &k, &v, &att, &tmp, &x, &ln}) *p = c.take<T>(R * d);
    mu = c.take<T>(R);
    rs = c.take<T>(R);
    fc1 = c.take<T>(R * F);
    act = c.take<T>(R * F);
    const int64_t heads_rows = std::max(cfg.cross_heads, cfg.self_heads) * R;
    lse = c.take<T>(heads_rows);
    lse2 = c.take<T>(K > 1 || token_tables ? heads_rows : 0);
    logits = c.take<T>(K * V);
    const int64_t saved = cached ? K * std::max<int64_t>(1, M / 2) * d : 0;
    saved_att = c.take<T>(2 * saved);
    saved_z0 = saved_att ? saved_att + saved : nullptr;
    step_att = c.take<T>(cached ? 2 * K * d : 0);
    step_z0 = step_att ? step_att + K * d : nullptr;
    cos = c.take<T>(std::max(N, M) * bands);
    sin = c.take<T>(std::max(N, M) * bands);
  }
};

}  // namespace par
