// Decoder: starting and extending a sequence, the full pass, the latent stack and the
// logits. The cross caches are filled and compacted in decoder_caches.cpp, the
// cross-attention over them runs in decoder_attention.cpp, refills in decoder_refills.cpp,
// the steps (captured and replayed) in decoder_steps.cpp.
#include "core/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/arena.h"
#include "core/blocks.h"
#include "core/constants.h"
#include "core/decoder_buffers.h"
#include "core/error.h"

namespace par {

using decoder_detail::kFarPosition;

template <typename T>
Decoder<T>::Decoder(const ModelConfig& cfg, Ops<T>& ops, const T* params, bool cached,
                    TokenTables tables, int64_t samples, KeyValueStorage cache)
    : cfg_(cfg), ops_(ops), layout_(cfg), cached_(cached) {
  cfg_.validate();
  if (samples < 1) fail_user("the number of samples must be at least 1 (got ", samples, ")");
  // Uncached decoding computes the caches afresh for every token: no point in rounding them.
  bf16_cache_ = uses_bf16_cache(cached, cache);
  if (bf16_cache_ && (2 * cfg.d_model) % int64_t(sizeof(T)) != 0)
    fail_user("cross caches in bfloat16 need d_model (", cfg.d_model, ") to fill whole ",
              sizeof(T), "-byte words");
  cache_width_ = cache_width(cfg, bf16_cache_);
  p_ = bind(layout_, const_cast<T*>(params));  // read only
  rot_cross_ = make_rotary_spec(cfg.cross_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength());
  rot_self_ = make_rotary_spec(cfg.self_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength());
  token_tables_ = uses_token_tables(cfg, cached, tables);
  if (token_tables_)
    window_tables_ = std::make_unique<SlidingRotaryTables<T>>(rot_cross_, cfg.context_length);
  if (cfg.absolute_positions()) positions_ = std::make_unique<PositionTable<T>>(ops_, cfg.d_model);
  seqs_.resize(size_t(samples));
  b_ = new Buffers;
  // The host's side of the groups at their largest, as memory() counts them.
  if (token_tables_)
    reserve_token_groups(b_->host_groups, cfg.vocab_size, rot_cross_.bands, cfg.context_length);
  memory_ = decoder_detail::allocate_carved(ops_, [&](Carver& c) {
    b_->carve(c, cfg_, samples, rot_cross_.bands, rot_self_.bands, token_tables_, cached,
              cache_width_);
  });
  logits_.resize(size_t(samples * cfg.vocab_size));
  if (token_tables_) make_token_tables();
  // Steps are replayed by default where the backend keeps captures (set_step_capture).
  replay_ = cached_ && ops_.replays_captures();
  if (samples > 1 || replay_) zero_rows_read_unfilled();
}

// Token tables pay when they are much smaller than the cache they stand for (with several
// samples too: on the CPU, K reads of the tables cost less than one of the cache); with
// absolute positions a key is not a function of its token alone.
template <typename T>
bool Decoder<T>::uses_token_tables(const ModelConfig& cfg, bool cached, TokenTables tables) {
  return cached && !cfg.absolute_positions() &&
         (tables == TokenTables::kAuto ? 4 * cfg.vocab_size <= cfg.context_length
                                       : tables == TokenTables::kOn);
}

template <typename T>
DecoderMemory Decoder<T>::memory(const ModelConfig& cfg, bool cached, TokenTables tables,
                                 int64_t samples, KeyValueStorage cache, int64_t prompt_length,
                                 int64_t tokens) {
  const int64_t N = cfg.context_length, M = cfg.num_latents, V = cfg.vocab_size, K = samples;
  const bool token_tables = uses_token_tables(cfg, cached, tables);
  const int64_t width = cache_width(cfg, uses_bf16_cache(cached, cache));
  const int64_t cross_bands =
      make_rotary_spec(cfg.cross_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength()).bands;
  const int64_t self_bands =
      make_rotary_spec(cfg.self_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength()).bands;
  // Past 2^40 tokens every figure below is far beyond any machine; the bound keeps the
  // arithmetic in int64.
  constexpr int64_t kFar = int64_t(1) << 40;
  const int64_t prompt = std::min(std::max<int64_t>(prompt_length, 1), kFar);
  const int64_t appends = std::min(std::max<int64_t>(tokens, 0), kFar);
  DecoderMemory m;
  Carver sizing;
  Buffers().carve(sizing, cfg, K, cross_bands, self_bands, token_tables, cached, width);
  m.buffers = sizing.used;
  // Several samples keep their appended keys apart: push_inputs and reserve_own, followed
  // append by append. The window holds the prompt's last N keys (shared) and the own ones;
  // each append adds an own entry, dropping the oldest shared (else own) one when the
  // window is full, and moves the entries into a new block (own_capacity) where the block
  // is full, the old one held until they are in.
  if (cached && K > 1) {
    auto block = [&](int64_t cap) {
      Carver c;
      decoder_detail::OwnCacheBlock<T>().carve(c, K, cap, width);
      return c.used;
    };
    int64_t shared = std::min(prompt, N), head = 0, count = 0, cap = 0;
    for (int64_t a = 0; a < appends; ++a) {
      if (shared + count == N) {
        if (shared > 0) {
          --shared;
        } else {
          ++head;
          --count;
        }
      }
      if (head + count == cap) {
        const int64_t next = own_capacity(cfg, count);
        m.own = std::max(m.own, block(cap) + block(next));
        cap = next;
        head = 0;
        // At the largest block every later move is to another of N + M rows, every
        // cap - count appends.
        if (cap == N + M) {
          if (appends - a > cap - count) m.own = std::max(m.own, 2 * block(cap));
          break;
        }
      }
      ++count;
    }
    if (token_tables) {  // group_own: the old block goes before the new one comes
      Carver groups;
      decoder_detail::OwnGroupsBlock<T>().carve(
          groups, K, V, cross_bands,
          std::min(2 * token_groups_stride(std::min(appends, N)), token_groups_stride(N)));
      m.own += groups.used;
    }
  }
  // The table of absolute positions grows to hold the furthest document position, and is
  // made on the host first (PositionTable::reserve).
  if (cfg.absolute_positions()) {
    const int64_t furthest = prompt + appends;
    m.positions = double(PositionTable<T>::grown_rows(furthest, furthest)) *
                  double(cfg.d_model) * sizeof(T);
  }
  // The sequences (tokens and document positions), the logits' copy, the positions' table
  // as it is made.
  m.host = double(K) * double(prompt + appends) * 2 * sizeof(int32_t) +
           double(K) * double(V) * sizeof(T) + m.positions;
  // A full pass's rotary rows and positions of the window, made on the host for upload;
  // with token tables, the groups' rotary rows and the groups themselves, held.
  m.host_tables = 2.0 * double(N) * double(cross_bands) * sizeof(T) +
                  double(N + M) * sizeof(int64_t) + double(N);
  if (token_tables)
    m.host_tables += SlidingRotaryTables<T>::host_bytes(cross_bands, N) +
                     token_groups_host_bytes<T>(V, cross_bands, N);
  return m;
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
  release_own();
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

// Rotates `batch` blocks of `rows` rows, each at positions first_position, ...
template <typename T>
void Decoder<T>::rotary_at(T* x, int64_t batch, int64_t rows, int64_t heads, int64_t head_dim,
                           const RotarySpec& spec, int64_t first_position) {
  if (spec.bands == 0 || rows == 0) return;
  upload_rotary_tables(spec, first_position, rows);
  ops_.rotary(x, batch, rows, heads, head_dim, spec.bands, b_->cos, b_->sin, false);
}

// Embeddings of `rows` tokens (host) into h: E[x], plus P[p] of their document positions
// (host; absolute positions only). Leaves the tokens in b.tokens; scratch: [rows, d].
template <typename T>
void Decoder<T>::embed(T* h, const int32_t* tokens, const int32_t* doc_pos, int64_t rows,
                       T* scratch) {
  ops_.upload(b_->tokens, tokens, size_t(rows) * sizeof(int32_t));
  ops_.embedding_forward(h, b_->tokens, p_.embed, rows, cfg_.d_model);
  if (positions_) positions_->add(h, doc_pos, rows, b_->pos_ids, scratch);
}

// Positions [first, first + count) of every sample, one after the other: their tokens and
// (absolute positions) document positions.
template <typename T>
void Decoder<T>::gather(int64_t first, int64_t count, std::vector<int32_t>& tokens,
                        std::vector<int32_t>& doc_pos) const {
  tokens.clear();
  doc_pos.clear();
  for (const Sequence& s : seqs_) {
    tokens.insert(tokens.end(), s.tokens.begin() + first, s.tokens.begin() + first + count);
    if (positions_)
      doc_pos.insert(doc_pos.end(), s.doc_pos.begin() + first, s.doc_pos.begin() + first + count);
  }
}

template <typename T>
std::vector<uint8_t> Decoder<T>::keep_of(const int32_t* tokens, int64_t n) const {
  std::vector<uint8_t> keep(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) keep[size_t(j)] = tokens[j] != kPadToken;
  return keep;
}

template <typename T>
void Decoder<T>::start(std::vector<int32_t> prompt) {
  for (int32_t t : prompt)
    if (t < 0 || t >= cfg_.vocab_size)
      fail_user("prompt token ", t, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  if (prompt.empty()) prompt.push_back(kSosToken);
  const int64_t n = int64_t(prompt.size());
  Sequence s;
  if (positions_) {  // counted over the whole prompt, before it is cut to the context
    s.doc_pos.resize(size_t(n));
    document_positions(prompt.data(), n, 0, s.doc_pos.data());
    s.carry = carry_after(prompt.data(), n, 0);
  }
  if (n > cfg_.context_length) {
    prompt.erase(prompt.begin(), prompt.end() - cfg_.context_length);
    if (positions_) s.doc_pos.erase(s.doc_pos.begin(), s.doc_pos.end() - cfg_.context_length);
  }
  s.tokens = std::move(prompt);
  for (Sequence& q : seqs_) q = s;
  refills_ = 0;
  latents_ = 0;
  captured_plans_.clear();
  release_own();
  groups_end_ = 0;
  saved_for_length_ = -1;
  saved_rows_ = 0;
  // Every sample starts from the same window: one pass, whose caches and logits they share.
  const int64_t L = std::min(refill_latents(), length());
  full_pass(0, L);
  if (token_tables_) group_window(0, length());
  const int64_t K = samples(), V = cfg_.vocab_size, d = cfg_.d_model, M = cfg_.num_latents;
  for (int64_t k = 1; k < K; ++k) ops_.copy(b_->logits + k * V, b_->logits, V);
  if (cached_)
    for (int64_t l = 0; l < cfg_.num_layers; ++l)
      for (int64_t k = 1; k < K; ++k) {
        ops_.copy(b_->self_k[size_t(l)] + k * M * d, b_->self_k[size_t(l)], L * d);
        ops_.copy(b_->self_v[size_t(l)] + k * M * d, b_->self_v[size_t(l)], L * d);
      }
  if (replay_ && K == 1) {  // the rows after the window: far, for the bucketed steps
    const int64_t end = cross_head_ + cross_count_, cap = cfg_.context_length + M;
    const std::vector<int64_t> far(static_cast<size_t>(cap - end), kFarPosition);
    ops_.upload(b_->cross_pos + end, far.data(), far.size() * sizeof(int64_t));
  }
}

template <typename T>
void Decoder<T>::append(int32_t token) {
  append(std::vector<int32_t>{token});
}

template <typename T>
void Decoder<T>::append(const std::vector<int32_t>& tokens) {
  PAR_ASSERT(int64_t(tokens.size()) == samples(), "one token per sample");
  for (int32_t token : tokens)
    if (token < 0 || token >= cfg_.vocab_size)
      fail_user("token ", token, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  for (size_t k = 0; k < tokens.size(); ++k) {
    Sequence& s = seqs_[k];
    s.tokens.push_back(tokens[k]);
    if (positions_) {
      int32_t p = 0;
      document_positions(&tokens[k], 1, s.carry, &p);
      s.doc_pos.push_back(p);
      s.carry = carry_after(&tokens[k], 1, s.carry);
    }
  }
  const int64_t window = std::min<int64_t>(length(), cfg_.context_length);
  const int64_t refill = std::min(refill_latents(), window);
  if (!cached_) {
    const int64_t L = latents_ == cfg_.num_latents ? refill : latents_ + 1, before = refills_;
    for (int64_t k = 0; k < samples(); ++k) full_pass(k, L);
    refills_ = before + 1;  // one full pass of the batch
    return;
  }
  push_inputs(length() - 1);
  upload_step_inputs(length() - 1);
  if (latents_ == cfg_.num_latents) {
    push_inputs_device();
    refill_from_cache(refill);
  } else {
    incremental(length() - 1);
  }
}

// A forward pass of one sample over its window (the last min(T, N) tokens) with
// `num_latents` latents on its last positions; refills the shared cross cache (and, cached,
// the self-attention caches of sample 0). Its logits go to row `sample`.
template <typename T>
void Decoder<T>::full_pass(int64_t sample, int64_t L) {
  const Sequence& seq = seqs_[size_t(sample)];
  const int64_t T_ = length(), W = std::min<int64_t>(T_, cfg_.context_length);
  const int64_t p0 = T_ - W, d = cfg_.d_model;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  PAR_ASSERT(L >= 1 && L <= W && L <= cfg_.num_latents);
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  embed(b.h, seq.tokens.data() + p0, positions_ ? seq.doc_pos.data() + p0 : nullptr, W, b.kvn);
  ops_.key_keep_mask(b.cross_keep, b.tokens, 1, W, W, 0.0, DropoutKey{}, 0, p0);
  if (bf16_cache_) {
    keys_values_into_cache(W, p0);
  } else {
    cross_keys_values(ops_, cp, b.h, W, d, d, NormActs<T>{b.kvn, b.kv_mu, b.kv_rs}, b.cross_k,
                      b.cross_v);
    rotary_at(b.cross_k, 1, W, Hc, Dc, rot_cross_, p0);
  }
  std::vector<int64_t> cross_pos(static_cast<size_t>(W));
  for (int64_t j = 0; j < W; ++j) cross_pos[size_t(j)] = p0 + j;
  ops_.upload(b.cross_pos, cross_pos.data(), size_t(W) * sizeof(int64_t));
  cross_head_ = 0;
  cross_count_ = W;
  cross_first_ = p0;
  cross_sample_ = sample;

  // The latents: the last L inputs.
  ops_.copy(b.zin, b.h + (W - L) * d, L * d);
  cross_attend_latents(1, L);
  latent_stack(1, L, T_ - L, cached_, false, sample);
}

// From the cross-attention output (b.att: `batch` samples of `rows` latents from
// first_position) to the logits of each sample's last latent, into b.logits from row
// logits_row. With fill_caches, the latents' keys and values become the self-attention
// caches; with use_caches (one latent per sample), it attends over them too.
template <typename T>
void Decoder<T>::latent_stack(int64_t batch, int64_t rows, int64_t first_position,
                              bool fill_caches, bool use_caches, int64_t logits_row) {
  const int64_t d = cfg_.d_model, F = cfg_.mlp_width(), M = cfg_.num_latents;
  const int64_t H = cfg_.self_heads, D = cfg_.self_head_dim();
  Buffers& b = *b_;
  const LatentPass<T> pass{ops_, batch, rows, d};
  const NormActs<T> ln{b.ln, b.mu, b.rs};
  const MlpActs<T> mlp{ln, b.fc1, b.act};
  output_residual(pass, p_.cross.attn.o, b.att, d, b.z0, b.x, b.tmp, DropSite::kCrossAttn);
  mlp_block_forward(pass, p_.cross.ln_mlp, p_.cross.mlp, F, mlp, b.x, b.x, b.tmp,
                    DropSite::kCrossMlp);

  // The caches are blocks of M rows. Several samples' steps, and replayed steps, attend over
  // a whole block, the rows not filled yet at a far position, the new latent's row copied
  // into it first (CacheRows). One sample's plain step writes into its cache directly and
  // attends over the rows filled so far.
  const bool blocks = samples() > 1 || replay_;
  if (!use_caches) {  // a step's positions and rotary rows are uploaded before it
    std::vector<int64_t> pos(static_cast<size_t>(fill_caches && blocks ? M : rows), kFarPosition);
    for (int64_t i = 0; i < rows; ++i) pos[size_t(i)] = first_position + i;
    ops_.upload(b.self_pos, pos.data(), pos.size() * sizeof(int64_t));
    upload_rotary_tables(rot_self_, first_position, rows);
  }
  const RotaryTables<T> rot{use_caches ? b.step_self_cos : b.cos,
                            use_caches ? b.step_self_sin : b.sin, rot_self_.bands, H, D};
  const double scale = 1.0 / std::sqrt(double(D));
  // One latent over the cached ones and itself; or the rows among themselves, causally.
  const AttentionShape shape =
      use_caches ? AttentionShape{batch, 1, blocks ? M : latents_ + 1, H, D, b.latent_pos,
                                  b.self_pos, nullptr, scale}
                 : AttentionShape{batch, rows, rows, H, D, b.self_pos, b.self_pos, nullptr, scale,
                                  first_position, first_position};
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    T* cache_k = b.self_k[size_t(l)];
    T* cache_v = b.self_v[size_t(l)];
    const bool direct = use_caches && !blocks;
    const AttentionActs<T> at{ln,
                              b.q,
                              direct ? cache_k + latents_ * d : b.k,
                              direct ? cache_v + latents_ * d : b.v,
                              b.att,
                              b.lse};
    const CacheRows<T> rows_of_cache =
        use_caches && blocks ? CacheRows<T>{cache_k, cache_v, M, b.step_row} : CacheRows<T>{};
    latent_layer_forward(pass, p_.layers[size_t(l)], l, d, F, rot, shape,
                         use_caches ? cache_k : at.k, use_caches ? cache_v : at.v, at, mlp, b.x,
                         b.x, b.x, b.tmp, rows_of_cache);
    if (fill_caches) {
      ops_.copy_blocks(cache_k, M * d, at.k, rows * d, batch, rows * d, false);
      ops_.copy_blocks(cache_v, M * d, at.v, rows * d, batch, rows * d, false);
    }
  }
  finish_logits(batch, rows, logits_row);
}

template <typename T>
void Decoder<T>::finish_logits(int64_t batch, int64_t rows, int64_t logits_row) {
  const int64_t d = cfg_.d_model, V = cfg_.vocab_size;
  Buffers& b = *b_;
  const T* last = b.x + (rows - 1) * d;
  if (batch > 1 && rows > 1) {  // each sample's last row
    ops_.copy_blocks(b.q, d, last, rows * d, batch, d, false);
    last = b.q;
  }
  logits_forward(ops_, p_, last, batch, d, V, NormActs<T>{b.ln, b.mu, b.rs},
                 b.logits + logits_row * V);
  logits_fresh_ = false;
}

template <typename T>
const std::vector<T>& Decoder<T>::logits() const {
  if (!logits_fresh_) {
    ops_.download(logits_.data(), b_->logits, logits_.size() * sizeof(T));
    logits_fresh_ = true;
  }
  return logits_;
}

template <typename T>
std::vector<int32_t> Decoder<T>::choose(const SamplingOptions& opts, const std::vector<double>& u) {
  PAR_ASSERT(int64_t(u.size()) == samples(), "one random number per sample");
  std::vector<int32_t> ids(u.size());
  ops_.sample_tokens(ids.data(), b_->logits, samples(), cfg_.vocab_size, opts, u.data());
  return ids;
}

template class Decoder<float>;
template class Decoder<double>;

}  // namespace par
