// Cached decoding (spec/MODEL.md section 12) against uncached decoding and the training
// model: the same logits, across several refills of the self-attention caches.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <cstring>
#include <random>
#include <set>

#include "core/decoder.h"
#include "core/error.h"
#include "core/model.h"
#include "core/ops_decorator.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/decoder_model.h"
#include "tests/test_util.h"
#include "tests/token_attention_calls.h"

namespace par {
namespace {

using testing_util::random_vector;

ModelConfig config(PositionEncoding pe = PositionEncoding::kRotary) {
  return testing_util::small_decoder_config(pe);
}

template <typename T>
std::vector<T> params_for(const ModelConfig& c, uint64_t seed) {
  return testing_util::small_decoder_params<T>(c, seed);
}

// The parameters in the backend's memory (the caller deallocates them).
template <typename T>
T* upload_params(cpu::CpuOps<T>& ops, const std::vector<T>& host) {
  T* params = static_cast<T*>(ops.allocate(host.size() * sizeof(T)));
  ops.upload(params, host.data(), host.size() * sizeof(T));
  return params;
}

template <typename T>
double max_rel(const std::vector<T>& a, const std::vector<T>& b) {
  double err = 0, ref = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(double(a[i]) - double(b[i])));
    ref = std::max(ref, std::abs(double(b[i])));
  }
  return err / ref;
}

// With absolute positions the prompt and the appended tokens hold EOS tokens, after which
// the document positions start again.
template <typename T>
void check_cached_vs_uncached(double tol, TokenTables tables,
                              PositionEncoding pe = PositionEncoding::kRotary) {
  const ModelConfig c = config(pe);
  cpu::CpuOps<T> ops;
  const auto host = params_for<T>(c, 3);
  T* params = static_cast<T*>(ops.allocate(host.size() * sizeof(T)));
  ops.upload(params, host.data(), host.size() * sizeof(T));
  Decoder<T> cached(c, ops, params, true, tables), uncached(c, ops, params, false);
  std::mt19937_64 rng(4);
  std::vector<int32_t> prompt(10);
  for (auto& t : prompt) t = int32_t(rng() % 19);
  prompt[3] = 0;  // a PAD input is invisible to the cross-attention
  prompt[6] = 1;  // EOS
  cached.start(prompt);
  uncached.start(prompt);
  EXPECT_LE(max_rel(cached.logits(), uncached.logits()), tol);
  // 50 more tokens: 60 <= N = 64, so every cached input is still in the window.
  for (int step = 0; step < 50; ++step) {
    const int32_t t = step % 17 == 5 ? 1 : int32_t(rng() % 19);
    cached.append(t);
    uncached.append(t);
    EXPECT_EQ(cached.latents(), uncached.latents());
    EXPECT_LE(max_rel(cached.logits(), uncached.logits()), tol) << "step " << step;
  }
  EXPECT_GT(50, c.num_latents);
  EXPECT_GE(cached.refills(), 1 + 2) << "the caches were refilled fewer than twice";
  // A key depends on its position as well as its token with absolute positions.
  EXPECT_EQ(cached.token_tables(), tables == TokenTables::kOn && !c.absolute_positions());
  ops.deallocate(params);
}

// Double: the same arithmetic in another order (one latent at a time vs all at once).
TEST(Decoder, CachedMatchesUncachedDouble) {
  check_cached_vs_uncached<double>(1e-12, TokenTables::kOff);
}
// Float32 rounding.
TEST(Decoder, CachedMatchesUncachedFloat) {
  check_cached_vs_uncached<float>(2e-5, TokenTables::kOff);
}
// The cross-attention through per-token tables: the same sums in another order.
TEST(Decoder, TokenTablesMatchUncachedDouble) {
  check_cached_vs_uncached<double>(1e-12, TokenTables::kOn);
}
TEST(Decoder, TokenTablesMatchUncachedFloat) {
  check_cached_vs_uncached<float>(2e-5, TokenTables::kOn);
}
// Absolute positions (spec/MODEL.md section 13): every cached key and refilled latent
// carries its document position. Token tables are asked for and not used.
TEST(Decoder, CachedMatchesUncachedAbsoluteDouble) {
  check_cached_vs_uncached<double>(1e-12, TokenTables::kOn, PositionEncoding::kAbsolute);
}
TEST(Decoder, CachedMatchesUncachedAbsoluteFloat) {
  check_cached_vs_uncached<float>(2e-5, TokenTables::kAuto, PositionEncoding::kAbsolute);
}
TEST(Decoder, CachedMatchesUncachedBothDouble) {
  check_cached_vs_uncached<double>(1e-12, TokenTables::kOff, PositionEncoding::kBoth);
}

// With M latents over a full window, the decoder's last logits are the training model's
// logits for its last latent.
// For absolute positions, the window starts a document (the prompt counts from 1).
void check_matches_training_model(PositionEncoding pe) {
  const ModelConfig c = config(pe);
  cpu::CpuOps<double> ops;
  const auto host = params_for<double>(c, 5);
  double* params = static_cast<double*>(ops.allocate(host.size() * sizeof(double)));
  ops.upload(params, host.data(), host.size() * sizeof(double));
  std::mt19937_64 rng(6);
  std::vector<int32_t> window(size_t(c.context_length + 1));
  for (auto& t : window) t = int32_t(1 + rng() % 18);
  if (pe != PositionEncoding::kRotary) window[20] = 1;  // EOS
  for (int mode = 0; mode < 3; ++mode) {
    const bool cached = mode > 0;
    Decoder<double> dec(c, ops, params, cached, mode == 2 ? TokenTables::kOn : TokenTables::kOff);
    // Start with N - M/2 tokens (M/2 latents), then add M/2: M latents at T = N.
    const int64_t first = c.context_length - c.num_latents / 2;
    dec.start(std::vector<int32_t>(window.begin(), window.begin() + first));
    for (int64_t j = first; j < c.context_length; ++j) dec.append(window[size_t(j)]);
    ASSERT_EQ(dec.latents(), c.num_latents);
    PerceiverAR<double> model(c, ops, 1);
    ops.upload(model.params(), host.data(), host.size() * sizeof(double));
    model.forward(window.data(), 1, ForwardContext{});
    const auto all = model.logits();
    const std::vector<double> last(all.end() - c.vocab_size, all.end());
    EXPECT_LE(max_rel(dec.logits(), last), 1e-12) << "mode " << mode;
  }
  ops.deallocate(params);
}

TEST(Decoder, MatchesTheTrainingModel) { check_matches_training_model(PositionEncoding::kRotary); }
TEST(Decoder, MatchesTheTrainingModelAbsolute) {
  check_matches_training_model(PositionEncoding::kAbsolute);
}
TEST(Decoder, MatchesTheTrainingModelBoth) { check_matches_training_model(PositionEncoding::kBoth); }

TEST(Decoder, LongPromptsEmptyPromptsAndSlidingWindow) {
  const ModelConfig c = config();
  cpu::CpuOps<float> ops;
  const auto host = params_for<float>(c, 7);
  float* params = static_cast<float*>(ops.allocate(host.size() * sizeof(float)));
  ops.upload(params, host.data(), host.size() * sizeof(float));
  std::vector<int32_t> long_prompt(100);
  for (size_t i = 0; i < long_prompt.size(); ++i) long_prompt[i] = int32_t(3 + i % 16);
  Decoder<float> a(c, ops, params, true), b(c, ops, params, true);
  a.start(long_prompt);
  EXPECT_EQ(a.length(), c.context_length) << "a prompt longer than N keeps its last N tokens";
  b.start(std::vector<int32_t>(long_prompt.end() - c.context_length, long_prompt.end()));
  EXPECT_EQ(a.logits(), b.logits());
  a.start({});
  b.start({2});
  EXPECT_EQ(a.length(), 1);
  EXPECT_EQ(a.logits(), b.logits()) << "an empty prompt starts from SOS";
  // Past N tokens the window slides (the cross cache drops its oldest inputs and is
  // compacted); decoding goes on with finite logits, the same through token tables.
  Decoder<float> t(c, ops, params, true, TokenTables::kOn);
  t.start({});
  for (int i = 0; i < 150; ++i) {
    a.append(int32_t(3 + i % 7));
    t.append(int32_t(3 + i % 7));
    for (float x : a.logits()) ASSERT_TRUE(std::isfinite(x));
    ASSERT_LE(max_rel(t.logits(), a.logits()), 2e-5) << "token " << i;
  }
  EXPECT_EQ(a.length(), 151);
  EXPECT_THROW(a.append(99), UserError);
  ops.deallocate(params);
}

const std::vector<int32_t> kSamplesPrompt = {5, 7, 0, 9, 1, 4, 12, 3, 18, 6};

// K decoders of one sample each, on `ops`, for `batch`'s K samples; `batch` and they all
// started from kSamplesPrompt: the single runs that the samples decoded together must equal.
template <typename T>
std::vector<std::unique_ptr<Decoder<T>>> start_with_single_runs(
    Decoder<T>& batch, const ModelConfig& c, Ops<T>& ops, const T* params, bool cached,
    TokenTables tables, KeyValueStorage cache = KeyValueStorage::kNative) {
  std::vector<std::unique_ptr<Decoder<T>>> single;
  for (int64_t k = 0; k < batch.samples(); ++k)
    single.push_back(std::make_unique<Decoder<T>>(c, ops, params, cached, tables, 1, cache));
  batch.start(kSamplesPrompt);
  for (auto& d : single) d->start(kSamplesPrompt);
  return single;
}

// Several samples decoded as one batch against each decoded alone: sample k's token stream
// (PAD and EOS included) goes to one Decoder of K samples and to a Decoder of its own. Past
// N tokens the window slides: the prompt leaves the shared cache and the samples' own
// caches grow, then drop their oldest entries and move.
template <typename T>
void check_samples_equal_single_runs(bool cached, TokenTables tables, double tol,
                                     PositionEncoding pe = PositionEncoding::kRotary,
                                     KeyValueStorage cache = KeyValueStorage::kNative) {
  const ModelConfig c = config(pe);
  cpu::CpuOps<T> ops;
  T* params = upload_params(ops, params_for<T>(c, 11));
  const int64_t K = 3, V = c.vocab_size;
  Decoder<T> batch(c, ops, params, cached, tables, K, cache);
  const auto single = start_with_single_runs(batch, c, ops, params, cached, tables, cache);
  auto expect_rows = [&](int step) {
    for (int64_t k = 0; k < K; ++k) {
      const std::vector<T> row(batch.logits().begin() + k * V, batch.logits().begin() + (k + 1) * V);
      if (cached)
        ASSERT_LE(max_rel(row, single[size_t(k)]->logits()), tol) << "step " << step << " sample " << k;
      else  // one full pass per sample, as alone
        ASSERT_EQ(row, single[size_t(k)]->logits()) << "step " << step << " sample " << k;
    }
  };
  expect_rows(-1);
  const int steps = cached ? 100 : 12;  // 110 tokens: past N + M = 72, and N more
  for (int step = 0; step < steps; ++step) {
    std::vector<int32_t> next(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) {
      next[size_t(k)] = int32_t((step * 7 + k * 5 + 3) % 19);
      single[size_t(k)]->append(next[size_t(k)]);
    }
    batch.append(next);
    ASSERT_EQ(batch.latents(), single[0]->latents());
    ASSERT_EQ(batch.refills(), single[0]->refills());
    expect_rows(step);
  }
  EXPECT_EQ(batch.samples(), K);
  EXPECT_EQ(batch.token_tables(), single[0]->token_tables());
  ops.deallocate(params);
}

// Samples whose newest tokens are equal share the grouped keys' attention (one query per
// distinct token): samples 0 and 2 always draw the same token, and every third step all
// three do. Each still equals its single run, and the token attention saw fewer queries.
TEST(DecoderSamples, SamplesWithEqualTokensEqualSingleRuns) {
  const ModelConfig c = config();
  cpu::CpuOps<double> cpu;
  double* params = upload_params(cpu, params_for<double>(c, 29));
  const int64_t K = 3, V = c.vocab_size;
  testing_util::TokenAttentionCalls<double> ops(cpu);
  Decoder<double> batch(c, ops, params, true, TokenTables::kOn, K);
  const auto single =
      start_with_single_runs<double>(batch, c, cpu, params, true, TokenTables::kOn);
  int64_t steps = 0;
  for (int step = 0; step < 60; ++step) {  // 70 tokens: the window slides past N = 64
    std::vector<int32_t> next;
    for (int64_t k = 0; k < K; ++k)
      next.push_back(int32_t(step % 3 == 0 ? (step * 7 + 3) % 19 : (step * 7 + (k % 2) * 5 + 3) % 19));
    for (int64_t k = 0; k < K; ++k) single[size_t(k)]->append(next[size_t(k)]);
    batch.append(next);
    ++steps;
    for (int64_t k = 0; k < K; ++k) {
      const std::vector<double> row(batch.logits().begin() + k * V, batch.logits().begin() + (k + 1) * V);
      ASSERT_LE(max_rel(row, single[size_t(k)]->logits()), 1e-12) << "step " << step << " sample " << k;
    }
  }
  // Shared, a step asks 2 distinct questions, every third step 1 (5/3 a step), and the
  // few refills past N ask K * M/2 = 12 each: under 7/3 a call. Not shared, the steps
  // alone ask K = 3.
  EXPECT_GT(ops.taken, steps / 2);
  EXPECT_LE(ops.queries * 3, ops.taken * 7) << "the equal samples' queries were not shared ("
                                            << ops.queries << " in " << ops.taken << " calls)";
  cpu.deallocate(params);
}

// Several samples' own keys, grouped by token at refills (decoder_own_groups.cpp) and
// regrouped as they grow: still equal to single runs, whose newest keys join the shared
// groups at other refills, also after the window has slid past the prompt and the oldest
// own keys. Four backends:
//   - the CPU's: a step attends the own groups in its call over the shared ones, except
//     where the samples ask one question (every fourth step), which reads them apart;
//   - one that says it takes no such call (Ops::token_attention_takes_own_keys, as the
//     GPU): never asked one; the own keys are grouped from 8 V of them on and attended in a
//     call of their own (batch > 1);
//   - one that says it takes them but declines: asked once, then as the one before;
//   - one that declines that call too: asked again only until it declines a step's; the own
//     keys are then read as rows.
template <typename T>
void check_own_groups(double tol) {
  ModelConfig c = config();
  c.context_length = 192;  // 8 V = 152 own keys fit in the window
  cpu::CpuOps<T> cpu;
  T* params = upload_params(cpu, params_for<T>(c, 23));
  const int64_t K = 3, V = c.vocab_size;
  enum Backend { kMerges, kTakesNoMerge, kDeclinesMerged, kDeclinesBoth };
  for (Backend backend : {kMerges, kTakesNoMerge, kDeclinesMerged, kDeclinesBoth}) {
    testing_util::TokenAttentionCalls<T> ops(cpu);
    ops.decline_own = backend != kMerges;
    ops.says_takes_own = backend != kTakesNoMerge;
    if (backend == kDeclinesBoth) ops.max_batch = 1;
    Decoder<T> batch(c, ops, params, true, TokenTables::kOn, K);
    const auto single = start_with_single_runs<T>(batch, c, cpu, params, true, TokenTables::kOn);
    int64_t grouped_before_slide = 0;
    auto grouped_calls = [&] { return backend == kMerges ? ops.with_own : ops.batched; };
    for (int step = 0; step < 300; ++step) {  // 310 tokens: past N + M, and the own groups' start
      std::vector<int32_t> next;
      // Every fourth step all samples take the same token: one question for the grouped
      // keys, and the own groups (in the steps between, in the same call) apart.
      for (int64_t k = 0; k < K; ++k)
        next.push_back(int32_t((step * 7 + (step % 4 == 3 ? 0 : k * 5) + step / 9 + 3) % 19));
      for (int64_t k = 0; k < K; ++k) single[size_t(k)]->append(next[size_t(k)]);
      batch.append(next);
      if (batch.length() <= c.context_length) grouped_before_slide = grouped_calls();
      for (int64_t k = 0; k < K; ++k) {
        const std::vector<T> row(batch.logits().begin() + k * V, batch.logits().begin() + (k + 1) * V);
        ASSERT_LE(max_rel(row, single[size_t(k)]->logits()), tol)
            << "step " << step << " sample " << k << ", backend " << int(backend);
      }
    }
    if (backend == kMerges) {  // grouped from the first refill: in most of the 182 steps before
      EXPECT_LE(ops.with_own, 300 - 75) << "own keys in a call of the samples' one question";
      EXPECT_GT(grouped_before_slide, 100) << "the own keys were not grouped within the context";
      EXPECT_GT(grouped_calls(), grouped_before_slide + 50) << "nor after the window slid";
    } else if (backend != kDeclinesBoth) {  // grouped from 8 V own keys on
      EXPECT_GT(grouped_before_slide, 10) << "the own keys were not grouped within the context";
      EXPECT_GT(grouped_calls(), grouped_before_slide + 100) << "nor after the window slid";
    } else {
      EXPECT_GE(ops.batched, 1);
      EXPECT_LE(ops.batched, 2) << "asked again after a step's call was declined";
    }
    if (backend == kTakesNoMerge) {
      EXPECT_GE(ops.asked_takes_own, 1);
      EXPECT_EQ(ops.with_own, 0) << "asked for a call it said it does not take";
    } else if (backend != kMerges) {
      EXPECT_EQ(ops.with_own, 1) << "asked again after it declined";
    }
  }
  cpu.deallocate(params);
}

TEST(DecoderSamples, OwnKeysGroupedEqualSingleRunsDouble) { check_own_groups<double>(1e-12); }
TEST(DecoderSamples, OwnKeysGroupedEqualSingleRunsFloat) { check_own_groups<float>(2e-5); }

TEST(DecoderSamples, EqualSingleRunsCachedDouble) {
  check_samples_equal_single_runs<double>(true, TokenTables::kOff, 1e-12);
}
TEST(DecoderSamples, EqualSingleRunsCachedFloat) {
  check_samples_equal_single_runs<float>(true, TokenTables::kOff, 2e-5);
}
TEST(DecoderSamples, EqualSingleRunsThroughTokenTables) {
  check_samples_equal_single_runs<double>(true, TokenTables::kOn, 1e-12);
}
TEST(DecoderSamples, EqualSingleRunsAbsolutePositions) {
  check_samples_equal_single_runs<double>(true, TokenTables::kOff, 1e-12, PositionEncoding::kBoth);
}
// The cross caches in bfloat16: the samples' own caches hold the values a single run's
// shared cache holds, grown, moved and compacted at a bfloat16 row's width. (Not through
// token tables: there a single run's newest keys join the groups, unrounded, at a refill,
// while several samples' own keys stay in their caches.)
TEST(DecoderSamples, EqualSingleRunsBf16Caches) {
  check_samples_equal_single_runs<double>(true, TokenTables::kOff, 1e-12, PositionEncoding::kRotary,
                                          KeyValueStorage::kBf16);
  check_samples_equal_single_runs<float>(true, TokenTables::kOff, 2e-5, PositionEncoding::kBoth,
                                         KeyValueStorage::kBf16);
}
TEST(DecoderSamples, EqualSingleRunsUncached) {
  check_samples_equal_single_runs<float>(false, TokenTables::kOff, 0);
}

// Batched cached decoding against batched uncached decoding (within the context, where they
// agree), as for one sample.
TEST(DecoderSamples, CachedMatchesUncached) {
  const ModelConfig c = config();
  cpu::CpuOps<double> ops;
  double* params = upload_params(ops, params_for<double>(c, 13));
  const int64_t K = 4;
  Decoder<double> cached(c, ops, params, true, TokenTables::kAuto, K);
  Decoder<double> uncached(c, ops, params, false, TokenTables::kAuto, K);
  cached.start({3, 4, 5});
  uncached.start({3, 4, 5});
  EXPECT_LE(max_rel(cached.logits(), uncached.logits()), 1e-12);
  for (int step = 0; step < 50; ++step) {
    std::vector<int32_t> next;
    for (int64_t k = 0; k < K; ++k) next.push_back(int32_t((step * 3 + k * k + 1) % 19));
    cached.append(next);
    uncached.append(next);
    ASSERT_LE(max_rel(cached.logits(), uncached.logits()), 1e-12) << "step " << step;
  }
  EXPECT_GE(cached.refills(), 1 + 2);
  ops.deallocate(params);
}

// A backend that takes a step's K queries through the token tables and declines a
// refill's K * M/2 (as the GPU declines shapes beyond its kernel's sizing). Within the
// context a refill reuses its latents' cross-attention from their steps and attends with
// its newest latent only, K queries: nothing is declined, and cached decoding matches
// uncached. Past N tokens the window has moved since those steps, so a refill attends
// with all its latents: that call is declined and attends over the cross cache instead,
// and the next steps go through the tables again, matching a backend that takes every
// call. One sample and several.
TEST(DecoderSamples, RefillsReuseTheStepsAndDeclinedCallsFallBack) {
  const ModelConfig c = config();
  cpu::CpuOps<double> cpu;
  double* params = upload_params(cpu, params_for<double>(c, 19));
  const std::vector<int32_t> prompt = {5, 7, 0, 9, 1, 4, 12, 3, 18, 6};
  for (int64_t K : {1, 3}) {
    testing_util::TokenAttentionCalls<double> ops(cpu, K);
    Decoder<double> cached(c, ops, params, true, TokenTables::kOn, K);
    Decoder<double> taking(c, cpu, params, true, TokenTables::kOn, K);
    Decoder<double> uncached(c, cpu, params, false, TokenTables::kOff, K);
    cached.start(prompt);
    taking.start(prompt);
    uncached.start(prompt);
    for (int step = 0; step < 100; ++step) {  // 110 tokens: past N = 64 after 54 steps
      std::vector<int32_t> next;
      for (int64_t k = 0; k < K; ++k) next.push_back(int32_t((step * 5 + k * 7 + 2) % 19));
      cached.append(next);
      taking.append(next);
      ASSERT_LE(max_rel(cached.logits(), taking.logits()), 1e-12) << K << " samples, step " << step;
      if (cached.length() > c.context_length) continue;
      uncached.append(next);
      ASSERT_LE(max_rel(cached.logits(), uncached.logits()), 1e-12) << K << " samples, step " << step;
      ASSERT_EQ(ops.declined, 0) << "a refill within the context attended with all its latents";
    }
    EXPECT_GE(cached.refills(), 1 + 6);
    EXPECT_GE(ops.declined, 2) << "the refills past the context";
    EXPECT_GT(ops.taken_after_decline, 0) << "steps after a declined refill use the tables";
    EXPECT_TRUE(cached.token_tables());
  }
  cpu.deallocate(params);
}

// A backend that watches the captures (Ops::begin_capture) of decoding steps and refuses
// every third, as CUDA refuses a recording that would wait for the GPU: CaptureRefused from
// the fifth op inside it. On the CPU the ops before the refusal have run; the decoder then
// gives the whole step again outside a capture, which must change nothing. Nothing inside a
// capture may wait for the device.
class RefusingCaptures final : public ForwardingOps<double> {
 public:
  explicit RefusingCaptures(Ops<double>& inner) : ForwardingOps<double>(inner) {}
  void begin_capture() override {
    EXPECT_FALSE(capturing_) << "a capture inside a capture";
    capturing_ = true;
    ops_ = 0;
    ++begun;
  }
  void end_capture(uint64_t key) override {
    EXPECT_TRUE(capturing_) << "end_capture without begin_capture";
    capturing_ = false;
    ++ended;
    keys.insert(key);
  }
  int begun = 0, ended = 0, refused = 0;
  std::set<uint64_t> keys;

 protected:
  void around(const char* op, const OpCall& call) override {
    if (capturing_) {
      for (const char* waits : {"download", "synchronize", "sum_squares"})
        EXPECT_NE(std::strcmp(op, waits), 0) << op << " inside a capture";
      if (begun % 3 == 0 && ++ops_ == 5) {
        capturing_ = false;
        ++refused;
        throw CaptureRefused("refused by the test");
      }
    }
    call();
  }

 private:
  bool capturing_ = false;
  int ops_ = 0;
};

// Steps given as captures (refused ones given again) equal steps given as they are, bit for
// bit: one sample and several, through token tables and not, past N tokens.
TEST(DecoderSteps, CapturedStepsEqualPlainSteps) {
  const ModelConfig c = config();
  cpu::CpuOps<double> cpu;
  double* params = upload_params(cpu, params_for<double>(c, 23));
  const std::vector<int32_t> prompt = {5, 7, 0, 9, 1, 4, 12, 3, 18, 6};
  for (int64_t K : {1, 3})
    for (TokenTables tables : {TokenTables::kOn, TokenTables::kOff}) {
      RefusingCaptures ops(cpu);
      Decoder<double> captured(c, ops, params, true, tables, K);
      Decoder<double> plain(c, cpu, params, true, tables, K);
      plain.set_step_capture(false);
      captured.start(prompt);
      plain.start(prompt);
      for (int step = 0; step < 100; ++step) {  // 110 tokens: past N = 64
        std::vector<int32_t> next;
        for (int64_t k = 0; k < K; ++k) next.push_back(int32_t((step * 3 + k * 5 + 1) % 19));
        captured.append(next);
        plain.append(next);
        ASSERT_EQ(captured.logits(), plain.logits()) << K << " samples, step " << step;
      }
      EXPECT_GT(ops.begun, 50) << "the steps were captured";
      EXPECT_GT(ops.refused, 10);
      EXPECT_EQ(ops.ended + ops.refused, ops.begun);
      EXPECT_GE(ops.keys.size(), 1u);
    }
  cpu.deallocate(params);
}

// Any other failure inside a recorded step discards the recording (Ops::abort_capture: the
// backend takes work directly again) and reaches the caller with the way to run unrecorded;
// bad input stays a UserError.
class FailingCaptures final : public ForwardingOps<double> {
 public:
  explicit FailingCaptures(Ops<double>& inner) : ForwardingOps<double>(inner) {}
  void begin_capture() override {
    EXPECT_FALSE(capturing_) << "a capture inside a capture";
    capturing_ = true;
  }
  void end_capture(uint64_t) override { capturing_ = false; }
  void abort_capture() override {
    EXPECT_TRUE(capturing_) << "abort_capture without a capture";
    capturing_ = false;
    ++aborted;
  }
  bool capturing() const { return capturing_; }
  int aborted = 0;

 protected:
  void around(const char* op, const OpCall& call) override {
    if (capturing_ && std::strcmp(op, "attention_forward") == 0) {
      if (assertion) throw std::logic_error("an assertion failed");
      throw std::runtime_error("the device faulted");
    }
    call();
  }

 public:
  bool assertion = false;  // throw what PAR_ASSERT throws instead

 private:
  bool capturing_ = false;
};

TEST(DecoderSteps, AFailureInsideARecordingSaysHowToRunWithoutIt) {
  const ModelConfig c = config();
  cpu::CpuOps<double> cpu;
  double* params = upload_params(cpu, params_for<double>(c, 31));
  FailingCaptures ops(cpu);
  Decoder<double> dec(c, ops, params, true, TokenTables::kOff);
  dec.start({5, 7, 9});
  try {
    dec.append(4);
    ADD_FAILURE() << "the failure was not reported";
  } catch (const UserError&) {
    ADD_FAILURE() << "a backend failure reported as bad input";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("the device faulted"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--cuda-graphs off"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ops.aborted, 1);
  EXPECT_FALSE(ops.capturing());
  EXPECT_THROW(dec.append(99), UserError);  // outside the vocabulary, before any step
  cpu.deallocate(params);
}

// Whatever the failure (here a failed assertion, a logic_error), the stream does not stay
// recording: the destructors on the way out would free device memory inside it.
TEST(DecoderSteps, AnyFailureInsideARecordingEndsIt) {
  const ModelConfig c = config();
  cpu::CpuOps<double> cpu;
  double* params = upload_params(cpu, params_for<double>(c, 31));
  FailingCaptures ops(cpu);
  ops.assertion = true;
  Decoder<double> dec(c, ops, params, true, TokenTables::kOff);
  dec.start({5, 7, 9});
  EXPECT_THROW(dec.append(4), std::logic_error);
  EXPECT_EQ(ops.aborted, 1);
  EXPECT_FALSE(ops.capturing());
  cpu.deallocate(params);
}

// The next tokens chosen where the logits are (Decoder::choose, Ops::sample_tokens) are
// the host's choice on the downloaded logits, for every sample, cached and uncached (whose
// passes write one sample's row at a time).
TEST(DecoderSamples, ChoiceWhereTheLogitsAreEqualsTheHostChoice) {
  const ModelConfig c = config();
  cpu::CpuOps<float> ops;
  float* params = upload_params(ops, params_for<float>(c, 17));
  const int64_t K = 3, V = c.vocab_size;
  const SamplingOptions choices[] = {{0.0, 0, 1.0}, {1.0, 0, 1.0}, {0.7, 5, 1.0}, {1.3, 0, 0.8}};
  std::mt19937_64 rng(3);
  for (bool cached : {true, false}) {
    Decoder<float> dec(c, ops, params, cached, TokenTables::kAuto, K);
    dec.start({4, 9, 2});
    for (int step = 0; step < 12; ++step) {
      for (const SamplingOptions& o : choices) {
        std::vector<double> u(static_cast<size_t>(K));
        for (double& x : u) x = uniform_from_bits(rng());
        const std::vector<int32_t> ids = dec.choose(o, u);
        for (int64_t k = 0; k < K; ++k)
          ASSERT_EQ(ids[size_t(k)], choose_token(dec.logits().data() + k * V, V, o, u[size_t(k)]))
              << "step " << step << " sample " << k << (cached ? " cached" : " uncached");
      }
      dec.append(dec.choose(choices[1], std::vector<double>{0.1, 0.5, 0.9}));
    }
  }
  ops.deallocate(params);
}

// The cross caches in bfloat16 against float caches, one sample and three, past N (the
// window slides, the caches compact and grow): the keys and values differ by their
// rounding alone (up to 2^-9 relative), which the scores, the softmax and the layers of
// this small random model carry to a few percent of the largest logit (measured: 3.3e-2
// at most); a key in the wrong row, or a cache read at the wrong width, is off by the
// logits' own size. And they do differ: the caches are rounded. An uncached decoder keeps
// T caches. The first logits, one sample's cache filled in 3 blocks and three samples' in
// one, agree to double's rounding.
TEST(DecoderBf16Cache, LogitsWithinTheKeysRounding) {
  const ModelConfig c = config();
  cpu::CpuOps<double> ops;
  double* params = upload_params(ops, params_for<double>(c, 17));
  // 45 tokens: the full pass fills the cache in blocks of K * M * mlp_factor = 32 rows for
  // one sample (two blocks), 96 for three.
  std::vector<int32_t> prompt;
  for (int i = 0; i < 45; ++i) prompt.push_back(int32_t((i * 7 + 3) % 19));
  prompt[9] = 0;  // PAD
  std::vector<double> first_logits;  // of sample 0 after the prompt: the same cache
  for (int64_t K : {1, 3})
    for (TokenTables tables : {TokenTables::kOff, TokenTables::kOn}) {
      Decoder<double> rounded(c, ops, params, true, tables, K, KeyValueStorage::kBf16);
      Decoder<double> exact(c, ops, params, true, tables, K);
      Decoder<double> uncached(c, ops, params, false, tables, K, KeyValueStorage::kBf16);
      EXPECT_TRUE(rounded.bf16_cache());
      EXPECT_FALSE(exact.bf16_cache());
      EXPECT_FALSE(uncached.bf16_cache());
      rounded.start(prompt);
      exact.start(prompt);
      const std::vector<double> row0(rounded.logits().begin(),
                                     rounded.logits().begin() + c.vocab_size);
      if (first_logits.empty()) first_logits = row0;
      EXPECT_LE(max_rel(row0, first_logits), 1e-12)
          << K << " samples: the cache filled in blocks of another size holds other values";
      double largest = 0, smallest = 1;
      for (int step = 0; step < 60; ++step) {  // 105 tokens: past N + M = 72
        std::vector<int32_t> next;
        for (int64_t k = 0; k < K; ++k) next.push_back(int32_t((step * 5 + k * 7 + 2) % 19));
        rounded.append(next);
        exact.append(next);
        const double err = max_rel(rounded.logits(), exact.logits());
        largest = std::max(largest, err);
        smallest = std::min(smallest, err);
      }
      EXPECT_LE(largest, 6e-2) << K << " samples, tables " << int(tables);
      EXPECT_GT(smallest, 1e-7) << K << " samples, tables " << int(tables)
                                << ": the caches were not rounded";
    }
  ops.deallocate(params);
}

// bfloat16 rows fill whole words of T: d_model = 6 does for float, not for double.
TEST(DecoderBf16Cache, NeedsWholeWords) {
  ModelConfig c = config();
  c.d_model = 6;
  c.cross_heads = c.self_heads = 1;
  cpu::CpuOps<double> ops;
  EXPECT_THROW(Decoder<double>(c, ops, nullptr, true, TokenTables::kOff, 1, KeyValueStorage::kBf16),
               UserError);
}

}  // namespace
}  // namespace par
