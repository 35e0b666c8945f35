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
// decoder also keeps the window's keys grouped by token (core/token_groups.h) with the
// tables of every token, and attends through them (Ops::token_attention_forward) instead
// of reading N cached rows: memory traffic, not arithmetic, bounds a one-query step over
// 131072 keys. The groups hold the window up to some position; the keys after it (the
// newest, at most max(M, N/32) before the next refill groups them too) come from the cross
// cache, and the two attentions merge by their log-sum-exps (core/attention_merge.h).
//
// Several samples (continuations of one prompt) decode together as one batch: the latent
// layers run on K rows at once (one matrix product instead of K), and the samples share the
// prompt's cross cache. Each sample's own inputs go to a cache of its own (K blocks, grown
// as needed); a step attends over the shared part with the K queries in one call and over
// the own parts in another, and merges the two by their log-sum-exps (core/attention_merge.h).
// With token tables the shared part is the prompt's keys grouped by token: one call for the
// K queries (or the K samples' latents of a refill). Over long generations the own parts
// are grouped by token too, one block of groups per sample, all attended in one call
// (TokenAttentionShape::batch; core/decoder_own_groups.cpp); only the own keys after the
// groups are then read as rows.
// A refill's latents sit on the last M/2 inputs, and all but the newest of them were the
// newest latent of a step since the last refill. Within the context (at most N tokens at
// the refill) such a latent's cross-attention at the refill sees exactly the keys it saw
// at its step (its own position and before, none gone from the window), so the steps keep
// their cross-attention outputs and residual inputs for the next refill, and a refill
// computes the cross-attention of its newest latent only: a refill's cross-attention had
// cost as much as M/2 steps'. Past N tokens the window has moved since those steps and
// the refill computes every latent's.
//
// The samples have the same length, so they refill at the same steps. With one sample
// everything is in the shared cache, as it was before there were several.
//
// With absolute positions (spec/MODEL.md section 13) every embedding also gets P[p] of its
// document position: the prompt counts from 1 at its first token (restarting after each
// EOS), and generation continues the count. Keys then depend on the position as well as
// the token, so there are no token tables.
//
// Cached decoding may keep the cross caches (shared and own) in bfloat16
// (KeyValueStorage::kBf16): each key is rotated in T and rounded once as it enters, each
// value rounded once, and the attention reads them through the `_bf16_kv` operations. On
// a GPU under --precision bf16 the split attention rounds float32 keys and values to
// bfloat16 as it reads them anyway: the same numbers, half the bytes stored and read.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/absolute_positions.h"
#include "core/key_value_storage.h"
#include "core/model_config.h"
#include "core/ops.h"
#include "core/param_layout.h"
#include "core/rotary.h"

namespace par {

// Samples decoded as one batch, at most: each holds caches of the context's size, so far
// fewer fit any machine; the bound keeps their sizes' products inside int64 for every
// model shape that ModelConfig::validate accepts. (par sample and par bench --decode.)
inline constexpr int64_t kMaxDecodeSamples = 65'536;

// Whether cached decoding keeps the cross cache as tokens too: kAuto where the vocabulary
// is at most N/4 (the tables are then small next to the cache).
enum class TokenTables { kAuto, kOn, kOff };

// The most memory a Decoder holds over a generation (Decoder::memory), in bytes: backend
// memory -- its buffers (the caches and the work space of a pass), the samples' own cross
// caches and their groups (several samples: they grow as the samples generate, and while
// one grows its old and new blocks are both held) and the absolute positions' table -- and
// the host's copies of the sequences and logits. Not counted: the backend's kernel scratch.
struct DecoderMemory {
  double buffers = 0, own = 0, positions = 0, host = 0;
  double host_tables = 0;  // rotary rows and token groups made on the host
  double backend() const { return buffers + own + positions; }
  double total() const { return backend() + host + host_tables; }
};

template <typename T>
class Decoder {
 public:
  // params: the whole model (single-rank layout) in backend memory; must outlive this.
  // samples: how many sequences decode together (each append takes one token for each).
  // cache: the cross caches' element type (cached decoding; kBf16 needs an even d_model,
  // and 4 | d_model for T = double).
  Decoder(const ModelConfig& cfg, Ops<T>& ops, const T* params, bool cached,
          TokenTables tables = TokenTables::kAuto, int64_t samples = 1,
          KeyValueStorage cache = KeyValueStorage::kNative);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // What a decoder of these arguments holds at most while each sample appends `tokens`
  // after a prompt of `prompt_length`: the sizes alone, nothing allocated (the plan a
  // command checks before it makes one). `buffers` is exactly what the constructor takes.
  static DecoderMemory memory(const ModelConfig& cfg, bool cached, TokenTables tables,
                              int64_t samples, KeyValueStorage cache, int64_t prompt_length,
                              int64_t tokens);

  // Starts every sample from `prompt` (token ids; an empty prompt starts from SOS; only the
  // last N tokens are kept). Afterwards logits() predicts the token after the prompt.
  void start(std::vector<int32_t> prompt);
  // Appends a token (one sample); afterwards logits() predicts the next one.
  void append(int32_t token);
  // Appends tokens[k] to sample k, for every sample.
  void append(const std::vector<int32_t>& tokens);

  // The logits of every sample's next token, [samples, V], downloaded when asked.
  const std::vector<T>& logits() const;
  // The next token of every sample: choose_token (core/token_choice.h) on its logits with
  // u[k], on the backend, so that only the ids come back.
  std::vector<int32_t> choose(const SamplingOptions& opts, const std::vector<double>& u);
  int64_t samples() const { return int64_t(seqs_.size()); }
  // Waits for the work given to the backend so far (for timing: a GPU's is queued).
  void synchronize() { ops_.synchronize(); }
  int64_t length() const { return int64_t(seqs_[0].tokens.size()); }  // tokens so far, each
  int64_t latents() const { return latents_; }                // in the caches (or would be)
  int64_t refills() const { return refills_; }                // full passes so far
  bool token_tables() const { return token_tables_; }         // offered (a call may be declined)
  bool bf16_cache() const { return bf16_cache_; }             // the cross caches in bfloat16
  // Whether each decoding step goes to the backend as one capture (Ops::begin_capture: on
  // CUDA a graph, so the GPU runs the step's ~100 small kernels back to back). Where the
  // backend keeps captures (Ops::replays_captures), a step is captured once and replayed
  // while nothing it was captured with changes (see replay_plan). On by default; the
  // results are the same either way. Before start().
  void set_step_capture(bool on);
  // Steps so far: replayed, given as captures (recorded where the backend records), and
  // run as given (capture off, or a capture refused).
  struct StepCounts {
    int64_t replayed = 0, captured = 0, plain = 0;
  };
  const StepCounts& step_counts() const { return step_counts_; }

 private:
  struct Buffers;
  // One sample's sequence (host): its tokens, and with absolute positions the document
  // position of each and the carry after the last.
  struct Sequence {
    std::vector<int32_t> tokens, doc_pos;
    int64_t carry = 0;
  };
  // The constructor's choices, which memory() plans by too.
  static bool uses_bf16_cache(bool cached, KeyValueStorage cache) {
    return cached && cache == KeyValueStorage::kBf16;
  }
  static int64_t cache_width(const ModelConfig& cfg, bool bf16_cache) {
    return bf16_cache ? 2 * cfg.d_model / int64_t(sizeof(T)) : cfg.d_model;
  }
  static bool uses_token_tables(const ModelConfig& cfg, bool cached, TokenTables tables);
  // The rows of a new block of the samples' own caches that `count` entries move into
  // (reserve_own): twice as many as they need, at least M, at most N + M.
  static int64_t own_capacity(const ModelConfig& cfg, int64_t count) {
    return std::min(cfg.context_length + cfg.num_latents,
                    std::max(cfg.num_latents, 2 * (count + 1)));
  }
  void make_token_tables();
  // A refill's latents at most: M/2, at least 1.
  int64_t refill_latents() const { return std::max<int64_t>(1, cfg_.num_latents / 2); }
  void full_pass(int64_t sample, int64_t num_latents);
  void keys_values_into_cache(int64_t rows, int64_t first_position);
  // attention_forward over cross-cache keys and values k and v (bfloat16 where bf16_cache_).
  void attend_cache(const AttentionShape& s, const T* q, const T* k, const T* v, T* o, T* lse);
  void refill_from_cache(int64_t num_latents);
  void cross_attend_latents(int64_t batch, int64_t num_latents);
  void attend_windows(int64_t batch, int64_t nq);
  bool grouped_attention_of_distinct_tokens(const TokenAttentionShape& s, bool& own_attended);
  void push_inputs(int64_t position);
  void push_inputs_device();
  void group_window(int64_t first, int64_t count);
  void reserve_own();
  void upload_own_keeps();
  bool own_regroup_due(int64_t end) const;
  void group_own(int64_t end);
  bool attend_own_groups(int64_t batch, int64_t nq, T* o, T* lse);
  // Whether the own groups hold keys that calls may attend through them.
  bool own_groups_in_use() const { return own_groups_end_ > 0 && !own_groups_declined_; }
  // Whether the own groups are attended in the step's call over the shared ones
  // (TokenAttentionShape::own_group) where they can be: where the backend takes such calls,
  // until it declines one.
  bool own_groups_merge() const { return !replay_ && !own_merge_declined_; }
  // Whether a call of the own groups' own (attend_own_groups) costs less than reading
  // their keys as rows: from 8 V grouped keys on (own_regroup_due).
  bool own_groups_pay_alone() const { return own_groups_end_ - own_first_ >= 8 * cfg_.vocab_size; }
  // Whether a call may attend through the own groups, and so read own_keep_tail_, which is
  // kept up to date only then (one more upload per sample and step). Neither condition
  // turns true again before a regroup (group_own), which uploads every keep.
  bool own_tail_kept() const {
    return own_groups_in_use() && (own_groups_merge() || own_groups_pay_alone());
  }
  void release_own();
  void incremental(int64_t position);
  void cross_attend_newest();
  int64_t refill_row(int64_t position);
  void save_for_refill(int64_t row);
  bool refill_from_steps(int64_t num_latents);
  template <typename F>
  void run_step(const F& step);
  // Everything a captured step takes from the host rather than from device buffers: equal
  // plans, equal captured work (the step's inputs are uploaded before it: push_inputs,
  // upload_step_inputs).
  struct StepPlan {
    int64_t groups_end, group_stride;
    int64_t grouped_from, grouped_count;  // shared_rows(1, true)
    int64_t shared_from, shared_count;    // shared_rows(1, false): only if reads_all_rows
    const T* own_k;
    int64_t own_cap;
    bool own;
    const void* own_groups;  // own_groups_memory_
    int64_t own_groups_end;
    const T* position_table;  // absolute positions: grows with the documents
    bool reads_all_rows;      // the captured step attended the whole shared cache
    bool operator==(const StepPlan&) const = default;
    // Whether a step planned `now` would do the captured work of this plan.
    bool holds_for(StepPlan now) const {
      now.reads_all_rows = reads_all_rows;
      if (!reads_all_rows) {
        now.shared_from = shared_from;
        now.shared_count = shared_count;
      }
      return now == *this;
    }
  };
  StepPlan replay_plan() const;
  uint64_t step_key() const;
  void upload_step_inputs(int64_t position);
  void zero_rows_read_unfilled();
  // The rows [from, from + count) of the shared cross cache that a call with nq queries per
  // sample attends: those after the groups (after_groups) or all.
  std::pair<int64_t, int64_t> shared_rows(int64_t nq, bool after_groups) const;
  void upload_rotary_tables(const RotarySpec& spec, int64_t first_position, int64_t rows);
  void rotary_at(T* x, int64_t batch, int64_t rows, int64_t heads, int64_t head_dim,
                 const RotarySpec& spec, int64_t first_position);
  void latent_stack(int64_t batch, int64_t rows, int64_t first_position, bool fill_caches,
                    bool use_caches, int64_t logits_row = 0);
  void finish_logits(int64_t batch, int64_t rows, int64_t logits_row);
  void compact_cross_cache(int64_t next_position);
  void move_to_front(T* base, int64_t from, int64_t count, int64_t width);
  void embed(T* h, const int32_t* tokens, const int32_t* doc_pos, int64_t rows, T* scratch);
  void gather(int64_t first, int64_t count, std::vector<int32_t>& tokens,
              std::vector<int32_t>& doc_pos) const;
  std::vector<uint8_t> keep_of(const int32_t* tokens, int64_t n) const;

  ModelConfig cfg_;
  Ops<T>& ops_;
  ParamLayout layout_;
  ModelRef<T> p_;
  bool cached_;
  bool token_tables_ = false;  // the cross cache as tokens (Ops::token_attention_forward)
  bool bf16_cache_ = false;    // the cross caches in bfloat16 (KeyValueStorage::kBf16)
  int64_t cache_width_ = 0;    // a cross-cache row, in T: d, or d bfloat16 values
  RotarySpec rot_cross_, rot_self_;
  Buffers* b_ = nullptr;
  void* memory_ = nullptr;

  std::vector<Sequence> seqs_;  // one per sample; position p of a sample is tokens[p]
  std::unique_ptr<PositionTable<T>> positions_;  // with absolute positions
  mutable std::vector<T> logits_;  // a copy of b_->logits when logits_fresh_
  mutable bool logits_fresh_ = false;
  int64_t latents_ = 0, refills_ = 0;
  // Shared cross cache: entries [cross_head_, cross_head_ + cross_count_) of capacity N + M,
  // at consecutive positions from cross_first_, of the tokens of sample cross_sample_ (the
  // last full pass's; every sample's where they share the prompt).
  int64_t cross_head_ = 0, cross_count_ = 0, cross_first_ = 0, cross_sample_ = 0;
  // The samples' own cross caches (several samples): entries [own_head_, own_head_ +
  // own_count_) of each of `samples` blocks of own_cap_ rows, at positions from own_first_.
  T *own_k_ = nullptr, *own_v_ = nullptr;
  int64_t* own_pos_ = nullptr;   // [own_cap_]: past the entries, far beyond any query
  uint8_t* own_keep_ = nullptr;  // [samples, own_cap_]: 0 outside the entries
  uint8_t* own_keep_tail_ = nullptr;  // the same, 0 for the entries in the own groups too
  void* own_memory_ = nullptr;
  int64_t own_cap_ = 0, own_head_ = 0, own_count_ = 0, own_first_ = 0;
  // With token tables, each sample's own keys at positions [own_first_, own_groups_end_)
  // (those still in the window) are grouped by token too, in blocks of the shared groups'
  // layout, one per sample: own_group_ [samples, V + 1], own_group_pos_ [samples,
  // own_groups_stride_], own_group_cos_ and _sin_ [samples, cross bands,
  // own_groups_stride_]. None while own_groups_end_ == 0. The own cache keeps the grouped
  // entries too (own_keep_), for a call the backend declines; own_keep_tail_ leaves them
  // out where the groups are attended.
  int64_t* own_group_ = nullptr;
  int64_t* own_group_pos_ = nullptr;
  T *own_group_cos_ = nullptr, *own_group_sin_ = nullptr;
  void* own_groups_memory_ = nullptr;
  int64_t own_groups_stride_ = 0, own_groups_end_ = 0;
  bool own_groups_declined_ = false;  // by the backend, for a step (attend_own_groups)
  // By the backend, at the start (Ops::token_attention_takes_own_keys) or for a step's call
  // (own_groups_merge).
  bool own_merge_declined_ = false;
  // With token tables: the positions before groups_end_ (those still in the window) are in
  // the groups, whose rotary rows are group_stride_ apart; none when groups_end_ == 0 (a
  // full pass).
  int64_t groups_end_ = 0, group_stride_ = 0;
  std::unique_ptr<SlidingRotaryTables<T>> window_tables_;  // with token tables: the groups'
  // The steps' cross-attention kept for the next refill (refill_from_steps): rows for the
  // refill at length saved_for_length_, saved_rows_ of them so far.
  int64_t saved_for_length_ = -1, saved_rows_ = 0;
  bool capture_steps_ = true;
  // Steps replayed (set_step_capture on a backend that replays_captures): one sample's
  // steps attend over whole blocks of the self caches, as several samples' do, and over the
  // cross cache's newest rows in buckets of M rows, the rows not filled yet at a far
  // position, so that a step's work stays the same from one token to the next. The plan
  // each key's capture was made with.
  bool replay_ = false;
  StepCounts step_counts_;
  int64_t input_row_ = 0;  // the row of the newest inputs in the cross caches (push_inputs)
  // Whether the step being captured attended the whole shared cross cache (a token-table
  // call declined, or none offered), whose rows move with every token past N.
  bool step_reads_all_rows_ = false;
  std::vector<std::pair<uint64_t, StepPlan>> captured_plans_;
};

}  // namespace par
