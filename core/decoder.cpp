#include "core/decoder.h"

#include <algorithm>
#include <cmath>

#include "core/arena.h"
#include "core/blocks.h"
#include "core/constants.h"
#include "core/error.h"

namespace par {

template <typename T>
struct Decoder<T>::Buffers {
  // Caches.
  T *cross_k, *cross_v;  // [N + M, d]: keys rotated at their positions
  int64_t* cross_pos;    // [N + M]
  uint8_t* cross_keep;   // [N + M]: not PAD
  // With token tables (Decoder::token_tables_): the cache as tokens and rotary tables.
  int32_t* cross_tok;    // [N + M]
  T *cross_cos, *cross_sin;          // [N + M, cross bands]
  T *key_table, *value_table;        // [V, d]: un-rotated keys and values of every token
  std::vector<T*> self_k, self_v;  // per layer [M, d]
  int64_t* self_pos;     // [M]
  // Work space of a full pass (W <= N inputs, L <= M latents) or of one new token.
  int32_t* tokens;       // [N]
  int32_t* pos_ids;      // [N]: document positions (absolute positions only)
  int64_t* latent_pos;   // [M]
  T *h, *kvn, *kv_mu, *kv_rs;          // [N, d], [N]
  T *zin, *z0, *qn, *q, *k, *v, *att, *tmp, *x, *ln;  // [M, d]
  T *mu, *rs;            // [M]
  T *fc1, *act;          // [M, F]
  T *lse;                // [max(Hc, H) * M]
  T *logits;             // [V]
  T *cos, *sin;          // rotary tables for up to max(N, M) rows

  void carve(Carver& c, const ModelConfig& cfg, int64_t bands, int64_t cross_bands,
             bool token_tables) {
    const int64_t N = cfg.context_length, M = cfg.num_latents, d = cfg.d_model;
    const int64_t F = cfg.mlp_width(), V = cfg.vocab_size, cap = N + M;
    cross_k = c.take<T>(cap * d);
    cross_v = c.take<T>(cap * d);
    cross_pos = c.take<int64_t>(cap);
    cross_keep = c.take<uint8_t>(cap);
    const int64_t tcap = token_tables ? cap : 0;
    cross_tok = c.take<int32_t>(tcap);
    cross_cos = c.take<T>(tcap * cross_bands);
    cross_sin = c.take<T>(tcap * cross_bands);
    key_table = c.take<T>(token_tables ? V * d : 0);
    value_table = c.take<T>(token_tables ? V * d : 0);
    self_k.resize(size_t(cfg.num_layers));
    self_v.resize(size_t(cfg.num_layers));
    for (int64_t l = 0; l < cfg.num_layers; ++l) {
      self_k[size_t(l)] = c.take<T>(M * d);
      self_v[size_t(l)] = c.take<T>(M * d);
    }
    self_pos = c.take<int64_t>(M);
    tokens = c.take<int32_t>(N);
    pos_ids = c.take<int32_t>(cfg.absolute_positions() ? N : 0);
    latent_pos = c.take<int64_t>(M);
    h = c.take<T>(N * d);
    kvn = c.take<T>(N * d);
    kv_mu = c.take<T>(N);
    kv_rs = c.take<T>(N);
    for (T** p : {&zin, &z0, &qn, &q, &k, &v, &att, &tmp, &x, &ln}) *p = c.take<T>(M * d);
    mu = c.take<T>(M);
    rs = c.take<T>(M);
    fc1 = c.take<T>(M * F);
    act = c.take<T>(M * F);
    lse = c.take<T>(std::max(cfg.cross_heads, cfg.self_heads) * M);
    logits = c.take<T>(V);
    cos = c.take<T>(std::max(N, M) * bands);
    sin = c.take<T>(std::max(N, M) * bands);
  }
};

template <typename T>
Decoder<T>::Decoder(const ModelConfig& cfg, Ops<T>& ops, const T* params, bool cached,
                    TokenTables tables)
    : cfg_(cfg), ops_(ops), layout_(cfg), cached_(cached) {
  cfg_.validate();
  p_ = bind(layout_, const_cast<T*>(params));  // read only
  rot_cross_ = make_rotary_spec(cfg.cross_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength());
  rot_self_ = make_rotary_spec(cfg.self_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength());
  // Token tables pay when they are much smaller than the cache they stand for; with
  // absolute positions a key is not a function of its token alone.
  token_tables_ = cached && !cfg.absolute_positions() &&
                  (tables == TokenTables::kAuto ? 4 * cfg.vocab_size <= cfg.context_length
                                                : tables == TokenTables::kOn);
  if (cfg.absolute_positions()) positions_ = std::make_unique<PositionTable<T>>(ops_, cfg.d_model);
  b_ = new Buffers;
  const int64_t bands = std::max(rot_cross_.bands, rot_self_.bands);
  Carver sizing;
  b_->carve(sizing, cfg_, bands, rot_cross_.bands, token_tables_);
  memory_ = ops_.allocate(size_t(sizing.used));
  Carver real{static_cast<char*>(memory_), 0};
  b_->carve(real, cfg_, bands, rot_cross_.bands, token_tables_);
  logits_.resize(size_t(cfg.vocab_size));
  if (token_tables_) make_token_tables();
}

// The cross-attention's un-rotated keys and values of every token: its inputs are the
// embeddings alone (positions enter only through rotary), so these are what the cache holds.
template <typename T>
void Decoder<T>::make_token_tables() {
  const int64_t V = cfg_.vocab_size, d = cfg_.d_model;
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  std::vector<int32_t> ids(static_cast<size_t>(V));
  for (int64_t t = 0; t < V; ++t) ids[size_t(t)] = int32_t(t);
  ops_.upload(b.tokens, ids.data(), ids.size() * sizeof(int32_t));
  ops_.embedding_forward(b.h, b.tokens, p_.embed, V, d);
  cross_keys_values(ops_, cp, b.h, V, d, d, NormActs<T>{b.kvn, b.kv_mu, b.kv_rs}, b.key_table,
                    b.value_table);
}

template <typename T>
Decoder<T>::~Decoder() {
  ops_.deallocate(memory_);
  delete b_;
}

// The rotary tables of `rows` positions from first_position into b.cos and b.sin.
template <typename T>
void Decoder<T>::upload_rotary_tables(const RotarySpec& spec, int64_t first_position,
                                      int64_t rows) {
  if (spec.bands == 0 || rows == 0) return;
  std::vector<T> c, s;
  make_rotary_tables(spec, first_position, rows, c, s);
  ops_.upload(b_->cos, c.data(), c.size() * sizeof(T));
  ops_.upload(b_->sin, s.data(), s.size() * sizeof(T));
}

template <typename T>
void Decoder<T>::rotary_at(T* x, int64_t rows, int64_t heads, int64_t head_dim,
                           const RotarySpec& spec, int64_t first_position) {
  if (spec.bands == 0 || rows == 0) return;
  upload_rotary_tables(spec, first_position, rows);
  ops_.rotary(x, 1, rows, heads, head_dim, spec.bands, b_->cos, b_->sin, false);
}

// Embeddings of `rows` tokens (backend memory) that are seq_[first ..]: E[x], plus P[p] of
// their document positions with absolute positions (scratch: [rows, d] of work space).
template <typename T>
void Decoder<T>::embed(T* h, const int32_t* tokens, int64_t first, int64_t rows, T* scratch) {
  ops_.embedding_forward(h, tokens, p_.embed, rows, cfg_.d_model);
  if (positions_) positions_->add(h, doc_pos_.data() + first, rows, b_->pos_ids, scratch);
}

template <typename T>
void Decoder<T>::start(std::vector<int32_t> prompt) {
  for (int32_t t : prompt)
    if (t < 0 || t >= cfg_.vocab_size)
      fail_user("prompt token ", t, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  if (prompt.empty()) prompt.push_back(kSosToken);
  const int64_t n = int64_t(prompt.size());
  if (positions_) {  // counted over the whole prompt, before it is cut to the context
    doc_pos_.resize(size_t(n));
    document_positions(prompt.data(), n, 0, doc_pos_.data());
    carry_ = carry_after(prompt.data(), n, 0);
  }
  if (n > cfg_.context_length) {
    prompt.erase(prompt.begin(), prompt.end() - cfg_.context_length);
    if (positions_) doc_pos_.erase(doc_pos_.begin(), doc_pos_.end() - cfg_.context_length);
  }
  seq_ = std::move(prompt);
  refills_ = 0;
  latents_ = 0;
  full_pass(std::min<int64_t>(std::max<int64_t>(1, cfg_.num_latents / 2), length()));
}

template <typename T>
void Decoder<T>::append(int32_t token) {
  if (token < 0 || token >= cfg_.vocab_size)
    fail_user("token ", token, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  seq_.push_back(token);
  if (positions_) {
    int32_t p = 0;
    document_positions(&token, 1, carry_, &p);
    doc_pos_.push_back(p);
    carry_ = carry_after(&token, 1, carry_);
  }
  const int64_t window = std::min<int64_t>(length(), cfg_.context_length);
  const int64_t refill = std::min<int64_t>(std::max<int64_t>(1, cfg_.num_latents / 2), window);
  if (!cached_) {
    full_pass(latents_ == cfg_.num_latents ? refill : latents_ + 1);
    return;
  }
  push_input(token, length() - 1);
  if (latents_ == cfg_.num_latents) {
    refill_from_cache(refill);
  } else {
    incremental(length() - 1);
  }
}

// A forward pass over the window (the last min(T, N) tokens) with `num_latents` latents on
// its last positions; refills the caches.
template <typename T>
void Decoder<T>::full_pass(int64_t L) {
  const int64_t T_ = length(), W = std::min<int64_t>(T_, cfg_.context_length);
  const int64_t p0 = T_ - W, d = cfg_.d_model;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  PAR_ASSERT(L >= 1 && L <= W && L <= cfg_.num_latents);
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  ops_.upload(b.tokens, seq_.data() + p0, size_t(W) * sizeof(int32_t));
  embed(b.h, b.tokens, p0, W, b.kvn);
  ops_.key_keep_mask(b.cross_keep, b.tokens, 1, W, W, 0.0, DropoutKey{}, 0, p0);
  cross_keys_values(ops_, cp, b.h, W, d, d, NormActs<T>{b.kvn, b.kv_mu, b.kv_rs}, b.cross_k,
                    b.cross_v);
  rotary_at(b.cross_k, W, Hc, Dc, rot_cross_, p0);
  if (token_tables_) {  // rotary_at left the window's tables in b.cos and b.sin
    const int64_t bands = rot_cross_.bands;
    ops_.copy(b.cross_cos, b.cos, W * bands);
    ops_.copy(b.cross_sin, b.sin, W * bands);
    ops_.upload(b.cross_tok, seq_.data() + p0, size_t(W) * sizeof(int32_t));
  }
  std::vector<int64_t> cross_pos(static_cast<size_t>(W));
  for (int64_t j = 0; j < W; ++j) cross_pos[size_t(j)] = p0 + j;
  ops_.upload(b.cross_pos, cross_pos.data(), size_t(W) * sizeof(int64_t));
  cross_head_ = 0;
  cross_count_ = W;

  // The latents: the last L inputs.
  ops_.copy(b.zin, b.h + (W - L) * d, L * d);
  cross_attend_latents(L);
  latent_stack(L, T_ - L, cached_, false);
}

// A refill of cached decoding: the same as full_pass(L), with the window's keys and values
// taken from the cross cache instead of computed again.
template <typename T>
void Decoder<T>::refill_from_cache(int64_t L) {
  const int64_t T_ = length();
  Buffers& b = *b_;
  ops_.upload(b.tokens, seq_.data() + T_ - L, size_t(L) * sizeof(int32_t));
  embed(b.zin, b.tokens, T_ - L, L, b.tmp);
  cross_attend_latents(L);
  latent_stack(L, T_ - L, true, false);
}

// L latents on the last L inputs (embeddings in b.zin) through the cross-attention over the
// cache; leaves z0 and the attention output (b.att) for latent_stack.
template <typename T>
void Decoder<T>::cross_attend_latents(int64_t L) {
  const int64_t T_ = length(), d = cfg_.d_model;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  std::vector<int64_t> lpos(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) lpos[size_t(i)] = T_ - L + i;
  ops_.upload(b.latent_pos, lpos.data(), lpos.size() * sizeof(int64_t));
  cross_queries(ops_, cp, b.zin, L, d, d, b.z0, NormActs<T>{b.qn, b.mu, b.rs}, b.q);
  rotary_at(b.q, L, Hc, Dc, rot_cross_, T_ - L);
  const int64_t h0 = cross_head_;
  AttentionShape s{1,         L,         cross_count_, Hc, Dc, b.latent_pos, b.cross_pos + h0,
                   b.cross_keep + h0, 1.0 / std::sqrt(double(Dc))};
  ops_.attention_forward(s, b.q, b.cross_k + h0 * d, b.cross_v + h0 * d, b.att, b.lse);
  latents_ = L;
  ++refills_;
}

// The newest input at `position` into the cross cache (the oldest leaves when it holds N).
template <typename T>
void Decoder<T>::push_input(int32_t token, int64_t position) {
  const int64_t d = cfg_.d_model, N = cfg_.context_length;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  if (cross_count_ == N) {
    ++cross_head_;
    --cross_count_;
  }
  if (cross_head_ + cross_count_ == N + cfg_.num_latents) compact_cross_cache(position);
  const int64_t slot = cross_head_ + cross_count_;
  ops_.upload(b.tokens, &token, sizeof(int32_t));
  embed(b.h, b.tokens, position, 1, b.kvn);
  T* k = b.cross_k + slot * d;
  cross_keys_values(ops_, cp, b.h, 1, d, d, NormActs<T>{b.kvn, b.kv_mu, b.kv_rs}, k,
                    b.cross_v + slot * d);
  rotary_at(k, 1, Hc, Dc, rot_cross_, position);
  if (token_tables_) {
    const int64_t bands = rot_cross_.bands;
    ops_.copy(b.cross_cos + slot * bands, b.cos, bands);
    ops_.copy(b.cross_sin + slot * bands, b.sin, bands);
    ops_.upload(b.cross_tok + slot, &token, sizeof(int32_t));
  }
  const uint8_t keep = token != kPadToken;
  ops_.upload(b.cross_pos + slot, &position, sizeof(int64_t));
  ops_.upload(b.cross_keep + slot, &keep, 1);
  ++cross_count_;
}

// The latent on the newest input (already in the cross cache) through every layer,
// attending over the caches.
template <typename T>
void Decoder<T>::incremental(int64_t position) {
  const int64_t d = cfg_.d_model, h0 = cross_head_;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  const double scale = 1.0 / std::sqrt(double(Dc));
  ops_.upload(b.latent_pos, &position, sizeof(int64_t));
  cross_queries(ops_, cp, b.h, 1, d, d, b.z0, NormActs<T>{b.qn, b.mu, b.rs}, b.q);
  rotary_at(b.q, 1, Hc, Dc, rot_cross_, position);
  bool done = false;
  if (token_tables_) {
    const int64_t bands = rot_cross_.bands;
    TokenAttentionShape s{cross_count_,     Hc, Dc, bands, cfg_.vocab_size, b.cross_tok + h0,
                          b.cross_keep + h0, scale};
    done = ops_.token_attention_forward(s, b.q, b.key_table, b.value_table,
                                        b.cross_cos + h0 * bands, b.cross_sin + h0 * bands,
                                        b.att);
    token_tables_ = done;  // a backend without the kernel: materialized keys from now on
  }
  if (!done) {
    AttentionShape s{1, 1, cross_count_, Hc, Dc, b.latent_pos, b.cross_pos + h0,
                     b.cross_keep + h0, scale};
    ops_.attention_forward(s, b.q, b.cross_k + h0 * d, b.cross_v + h0 * d, b.att, b.lse);
  }
  latent_stack(1, position, false, true);
  ++latents_;
}

// Moves `count` rows of `width` from row `from` to row 0. Copies are not defined for
// overlapping ranges, so it goes in pieces of `from` rows, each clear of the next.
template <typename T>
void Decoder<T>::move_to_front(T* base, int64_t from, int64_t count, int64_t width) {
  for (int64_t r = 0; r < count; r += from)
    ops_.copy(base + r * width, base + (from + r) * width, std::min(from, count - r) * width);
}

// Moves the live cross-cache entries (the inputs before `next_position`) to the front.
template <typename T>
void Decoder<T>::compact_cross_cache(int64_t next_position) {
  const int64_t d = cfg_.d_model, h0 = cross_head_, n = cross_count_;
  Buffers& b = *b_;
  move_to_front(b.cross_k, h0, n, d);
  move_to_front(b.cross_v, h0, n, d);
  const int64_t first = next_position - n;  // consecutive positions
  std::vector<int64_t> pos(static_cast<size_t>(n));
  std::vector<uint8_t> keep(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    pos[size_t(j)] = first + j;
    keep[size_t(j)] = seq_[size_t(first + j)] != kPadToken;
  }
  ops_.upload(b.cross_pos, pos.data(), pos.size() * sizeof(int64_t));
  ops_.upload(b.cross_keep, keep.data(), keep.size());
  if (token_tables_) {
    const int64_t bands = rot_cross_.bands;
    move_to_front(b.cross_cos, h0, n, bands);
    move_to_front(b.cross_sin, h0, n, bands);
    ops_.upload(b.cross_tok, seq_.data() + first, size_t(n) * sizeof(int32_t));
  }
  cross_head_ = 0;
}

// From the cross-attention output (b.att, `rows` latents from first_position) to the
// logits of the last latent. With fill_caches, the latents' keys and values become the
// self-attention caches; with use_caches (one latent), it attends over them too.
template <typename T>
void Decoder<T>::latent_stack(int64_t rows, int64_t first_position, bool fill_caches,
                              bool use_caches) {
  const int64_t d = cfg_.d_model, F = cfg_.mlp_width();
  const int64_t H = cfg_.self_heads, D = cfg_.self_head_dim();
  Buffers& b = *b_;
  const LatentPass<T> pass{ops_, 1, rows, d};
  const NormActs<T> ln{b.ln, b.mu, b.rs};
  const MlpActs<T> mlp{ln, b.fc1, b.act};
  output_residual(pass, p_.cross.attn.o, b.att, d, b.z0, b.x, b.tmp, DropSite::kCrossAttn);
  mlp_block_forward(pass, p_.cross.ln_mlp, p_.cross.mlp, F, mlp, b.x, b.x, b.tmp,
                    DropSite::kCrossMlp);

  std::vector<int64_t> pos(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) pos[size_t(i)] = first_position + i;
  ops_.upload(use_caches ? b.self_pos + latents_ : b.self_pos, pos.data(),
              pos.size() * sizeof(int64_t));
  const RotaryTables<T> rot{b.cos, b.sin, rot_self_.bands, H, D};
  upload_rotary_tables(rot_self_, first_position, rows);
  const double scale = 1.0 / std::sqrt(double(D));
  // One latent over the cached ones and itself; or the rows among themselves, causally.
  const AttentionShape shape =
      use_caches ? AttentionShape{1, 1, latents_ + 1, H, D, b.self_pos + latents_, b.self_pos,
                                  nullptr, scale}
                 : AttentionShape{1, rows, rows, H, D, b.self_pos, b.self_pos, nullptr, scale};
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    T* cache_k = b.self_k[size_t(l)];
    T* cache_v = b.self_v[size_t(l)];
    const AttentionActs<T> at{ln,
                              b.q,
                              use_caches ? cache_k + latents_ * d : b.k,
                              use_caches ? cache_v + latents_ * d : b.v,
                              b.att,
                              b.lse};
    latent_layer_forward(pass, p_.layers[size_t(l)], l, d, F, rot, shape,
                         use_caches ? cache_k : at.k, use_caches ? cache_v : at.v, at, mlp, b.x,
                         b.x, b.x, b.tmp);
    if (fill_caches) {
      ops_.copy(cache_k, at.k, rows * d);
      ops_.copy(cache_v, at.v, rows * d);
    }
  }
  finish_logits(rows);
}

template <typename T>
void Decoder<T>::finish_logits(int64_t rows) {
  const int64_t d = cfg_.d_model, V = cfg_.vocab_size;
  Buffers& b = *b_;
  logits_forward(ops_, p_, b.x + (rows - 1) * d, 1, d, V, NormActs<T>{b.ln, b.mu, b.rs},
                 b.logits);
  ops_.download(logits_.data(), b.logits, size_t(V) * sizeof(T));
}

template class Decoder<float>;
template class Decoder<double>;

}  // namespace par
