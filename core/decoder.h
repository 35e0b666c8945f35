// Autoregressive decoding with the caches of spec/MODEL.md section 12.
//
// The sequence grows one token at a time; each call gives the logits of the next token,
// predicted by the latent sitting on the newest input. Cached decoding keeps
//   - a cross-attention cache: the keys and values of the last N inputs, with their
//     positions (absolute positions in the sequence; rotary depends only on differences);
//   - one self-attention cache per latent layer: the keys and values of up to M latents.
// A new token then costs one embedding, one latent through every layer, and attention
// over the caches. When the self-attention caches are full (M latents), a full forward
// pass over the current window with M/2 latents refills them (the official scheme:
// caching would otherwise make latents depend on more earlier latents than in training).
//
// Uncached decoding runs that full forward pass for every token, with the number of
// latents the cached decoder would have at that step, so the two give the same logits
// (float32 rounding) as long as the sequence fits in the context (at most N tokens; after
// that the cached latents remember inputs that have left the window).
//
// Keys are rotated once, when they enter a cache, at their own position: positions are
// absolute and never re-based, so this equals caching them un-rotated and rotating at use,
// and saves rotating all N cached keys for every token. A refill takes the window's keys
// and values from the cross cache rather than computing them again.
//
// The cross-attention's keys and values depend only on the input token (its embedding;
// positions enter through rotary alone), so where the vocabulary is small next to N the
// decoder also keeps the cache as tokens with their rotary tables, and a step attends
// through per-token tables (Ops::token_attention_forward) instead of reading N cached
// rows: memory traffic, not arithmetic, bounds a one-query step over 131072 keys.
//
// With absolute positions (spec/MODEL.md section 13) every embedding also gets P[p] of its
// document position: the prompt counts from 1 at its first token (restarting after each
// EOS), and generation continues the count. Keys then depend on the position as well as
// the token, so there are no token tables.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/absolute_positions.h"
#include "core/model_config.h"
#include "core/ops.h"
#include "core/param_layout.h"
#include "core/rotary.h"

namespace par {

// Whether cached decoding keeps the cross cache as tokens too: kAuto where the vocabulary
// is at most N/4 (the tables are then small next to the cache).
enum class TokenTables { kAuto, kOn, kOff };

template <typename T>
class Decoder {
 public:
  // params: the whole model (single-rank layout) in backend memory; must outlive this.
  Decoder(const ModelConfig& cfg, Ops<T>& ops, const T* params, bool cached,
          TokenTables tables = TokenTables::kAuto);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Starts a sequence from `prompt` (token ids; an empty prompt starts from SOS; only the
  // last N tokens are kept). Afterwards logits() predicts the token after the prompt.
  void start(std::vector<int32_t> prompt);
  // Appends a token; afterwards logits() predicts the next one.
  void append(int32_t token);

  const std::vector<T>& logits() const { return logits_; }  // [V], host
  int64_t length() const { return int64_t(seq_.size()); }     // tokens so far
  int64_t latents() const { return latents_; }                // in the caches (or would be)
  int64_t refills() const { return refills_; }                // full passes so far
  bool token_tables() const { return token_tables_; }         // in use

 private:
  struct Buffers;
  void make_token_tables();
  void full_pass(int64_t num_latents);
  void refill_from_cache(int64_t num_latents);
  void cross_attend_latents(int64_t num_latents);
  void push_input(int32_t token, int64_t position);
  void incremental(int64_t position);
  void upload_rotary_tables(const RotarySpec& spec, int64_t first_position, int64_t rows);
  void rotary_at(T* x, int64_t rows, int64_t heads, int64_t head_dim, const RotarySpec& spec,
                 int64_t first_position);
  void latent_stack(int64_t rows, int64_t first_position, bool fill_caches, bool use_caches);
  void finish_logits(int64_t rows);
  void compact_cross_cache(int64_t next_position);
  void move_to_front(T* base, int64_t from, int64_t count, int64_t width);
  void embed(T* h, const int32_t* tokens, int64_t first, int64_t rows, T* scratch);

  ModelConfig cfg_;
  Ops<T>& ops_;
  ParamLayout layout_;
  ModelRef<T> p_;
  bool cached_;
  bool token_tables_ = false;  // the cross cache as tokens (Ops::token_attention_forward)
  RotarySpec rot_cross_, rot_self_;
  Buffers* b_ = nullptr;
  void* memory_ = nullptr;

  std::vector<int32_t> seq_;   // the whole sequence (host)
  // With absolute positions: the document position of every token of seq_, the carry after
  // the last one, and the table of encodings.
  std::vector<int32_t> doc_pos_;
  int64_t carry_ = 0;
  std::unique_ptr<PositionTable<T>> positions_;
  std::vector<T> logits_;
  int64_t latents_ = 0, refills_ = 0;
  // Cross cache: entries [cross_head_, cross_head_ + cross_count_) of capacity N + M.
  int64_t cross_head_ = 0, cross_count_ = 0;
};

}  // namespace par
