// The model with its input side's keys and values stored in bfloat16
// (KeyValueStorage::kBf16, core/model.h): what it computes, against the same storage in
// double and against float storage, and the memory it saves. Its sequence- and
// tensor-parallel layouts are checked in tests/parallel_layout_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/attention_hook.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::random_vector;

// Rotary keys (half of each 16-wide head), dropout of both kinds, PAD tokens, 2 examples;
// with absolute positions too (`absolute`: the embeddings are stored, not looked up again
// by LN_kv).
ModelConfig config(bool absolute) {
  ModelConfig c{.vocab_size = 29, .d_model = 32, .context_length = 48, .num_latents = 8,
                .num_layers = 2, .cross_heads = 2, .self_heads = 2, .mlp_factor = 2};
  c.position_encoding = absolute ? PositionEncoding::kBoth : PositionEncoding::kRotary;
  return c;
}

struct Step {
  LossSums sums;
  std::vector<double> grads;
};

template <typename T>
Step train_step(KeyValueStorage storage, bool absolute) {
  const ModelConfig cfg = config(absolute);
  const int64_t B = 2, W = cfg.context_length + 1;
  std::mt19937_64 rng(3);
  std::vector<int32_t> windows(size_t(B * W));
  for (auto& w : windows) w = int32_t(rng() % uint64_t(cfg.vocab_size));  // PAD (0) some
  cpu::CpuOps<T> ops;
  PerceiverAR<T> model(cfg, ops, B, {}, storage);
  const std::vector<T> params = random_vector<T>(model.layout().total(), 4, 0.4);
  ops.upload(model.params(), params.data(), params.size() * sizeof(T));
  const int64_t carry[B] = {3, 0};
  ForwardContext ctx;
  if (absolute) ctx.position_carry = carry;
  ctx.training = true;
  ctx.dropout = 0.1;
  ctx.cross_attend_dropout = 0.25;
  ctx.seed = 11;
  ctx.step = 2;
  Step s;
  s.sums = model.forward(windows.data(), B, ctx);
  model.zero_grads();
  model.backward(1.0 / double(s.sums.valid));
  std::vector<T> g(params.size());
  ops.download(g.data(), model.grads(), g.size() * sizeof(T));
  s.grads.assign(g.begin(), g.end());
  return s;
}

// Largest difference of the gradients over the largest gradient of `want`.
double relative_difference(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

// Float and double round the same LN_kv outputs, keys and values to bfloat16, but for the
// few a float's error moves across a midpoint between two bfloat16 numbers.
TEST(ModelBf16Storage, FloatAgreesWithDouble) {
  for (bool absolute : {false, true}) {
    SCOPED_TRACE(absolute ? "absolute positions" : "rotary only");
    const Step want = train_step<double>(KeyValueStorage::kBf16, absolute);
    const Step got = train_step<float>(KeyValueStorage::kBf16, absolute);
    ASSERT_GT(want.sums.valid, 0);
    EXPECT_EQ(got.sums.valid, want.sums.valid);
    // Measured: 7.4e-9 and 1.5e-5 (rotary only: a rounding of LN_kv's output moved), 2.7e-8
    // and 2.5e-7 (absolute); far below the rounding's own effect (next test).
    EXPECT_NEAR(got.sums.objective, want.sums.objective, 2e-7 * std::abs(want.sums.objective));
    EXPECT_LE(relative_difference(got.grads, want.grads), 1e-4);
  }
}

// Bfloat16 storage rounds (the step differs from double storage by far more than double's
// own error), but no more than bfloat16's 2^-8 per stored value allows.
TEST(ModelBf16Storage, DiffersFromNativeStorageByTheRounding) {
  for (bool absolute : {false, true}) {
    SCOPED_TRACE(absolute ? "absolute positions" : "rotary only");
    const Step bf16 = train_step<double>(KeyValueStorage::kBf16, absolute);
    const Step native = train_step<double>(KeyValueStorage::kNative, absolute);
    const double loss_diff = std::abs(bf16.sums.objective - native.sums.objective) /
                             std::abs(native.sums.objective);
    // Measured: 7.4e-5 and 2.6e-3 (rotary only), 3.7e-5 and 7.7e-4 (absolute).
    EXPECT_GT(loss_diff, 1e-7);
    EXPECT_LT(loss_diff, 1e-3);
    const double grad_diff = relative_difference(bf16.grads, native.grads);
    EXPECT_GT(grad_diff, 3e-4);
    EXPECT_LT(grad_diff, 1e-2);
  }
}

TEST(ModelBf16Storage, RepeatsItsBits) {
  for (bool absolute : {false, true}) {
    const Step a = train_step<float>(KeyValueStorage::kBf16, absolute);
    const Step b = train_step<float>(KeyValueStorage::kBf16, absolute);
    EXPECT_EQ(a.sums.objective, b.sums.objective);
    EXPECT_EQ(a.grads, b.grads);
  }
}

// Counted in bfloat16-sized halves of a [B, N/sp, d] float tensor, float storage takes 8
// without tensor parallelism, 6 at tp = 2 and 10 at tp = 4 (its d-wide tensors, the
// embeddings, LN_kv's output and their gradients, outweigh the d/tp-wide keys and values).
// Bfloat16 storage takes 5 where LN_kv looks the embeddings up itself (rotary positions:
// 768 MiB less at the 100M GPU config) and 6 where they are stored (absolute positions).
TEST(ModelBf16Storage, SavesThreeOfTheInputSidesEightHalves) {
  ModelConfig c{.vocab_size = 259, .d_model = 1024, .context_length = 131072,
                .num_latents = 1024, .num_layers = 6, .cross_heads = 16, .self_heads = 16,
                .mlp_factor = 4};
  for (bool absolute : {false, true})
    for (int tp : {1, 2, 4})
      for (int sp : {1, 4}) {
        SCOPED_TRACE(cat(absolute ? "absolute" : "rotary", " sp ", sp, " tp ", tp));
        c.position_encoding = absolute ? PositionEncoding::kBoth : PositionEncoding::kRotary;
        const int64_t B = 2;
        const ModelMemory native = PerceiverAR<float>::memory(c, B, sp, tp);
        const ModelMemory bf16 =
            PerceiverAR<float>::memory(c, B, sp, tp, KeyValueStorage::kBf16);
        EXPECT_EQ(bf16.params, native.params);
        const double half = double(B) * double(c.context_length / sp) * double(c.d_model) * 2;
        const double native_halves = tp == 1 ? 8 : tp == 2 ? 6 : 10;
        const double saved_halves = native_halves - (absolute ? 6 : 5);
        // Pieces start 64-byte aligned: a few such gaps either way.
        EXPECT_NEAR(native.activations - bf16.activations, saved_halves * half, 1024);
      }
}

// Records, for each cross-attention call (more keys than queries), whether the model said
// every key is kept and whether its mask keeps every key.
class KeyMaskRecorder final : public testing_util::AttentionHook {
 public:
  using testing_util::AttentionHook::AttentionHook;
  struct Call {
    bool said_all = false, all = false;
  };
  std::vector<Call> calls;

 private:
  void on_attention(const AttentionShape& s, bool bf16_kv) override {
    if (!bf16_kv) return;  // the cross-attention's keys are bfloat16 here
    Call c{s.keeps_every_key, true};
    if (s.k_keep)
      for (int64_t i = 0; i < s.batch * s.nk; ++i) c.all = c.all && s.k_keep[i] != 0;
    calls.push_back(c);
  }
};

// The model tells the backend that every key is kept (AttentionShape::keeps_every_key, on
// which the GPU reads bfloat16 keys in place, ignoring the mask) exactly when its mask keeps
// every key: no PAD among the inputs and no cross-attend dropout.
TEST(ModelBf16Storage, SaysEveryKeyIsKeptOnlyWhenItIs) {
  const ModelConfig cfg = config(false);
  const int64_t B = 2, W = cfg.context_length + 1;
  cpu::CpuOps<float> cpu;
  KeyMaskRecorder ops(cpu);
  PerceiverAR<float> model(cfg, ops, B, {}, KeyValueStorage::kBf16);
  const std::vector<float> params = random_vector<float>(model.layout().total(), 4, 0.4);
  ops.upload(model.params(), params.data(), params.size() * sizeof(float));
  std::vector<int32_t> windows(size_t(B * W));
  for (size_t i = 0; i < windows.size(); ++i) windows[i] = int32_t(1 + i % 7);
  auto step = [&](double cad) {
    ops.calls.clear();
    ForwardContext ctx;
    ctx.training = true;
    ctx.cross_attend_dropout = cad;
    ctx.seed = 5;
    const LossSums sums = model.forward(windows.data(), B, ctx);
    model.backward(1.0 / double(sums.valid));
    EXPECT_EQ(ops.calls.size(), 2u);  // the forward and the backward
    for (const auto& c : ops.calls) EXPECT_TRUE(!c.said_all || c.all) << "said so wrongly";
    return !ops.calls.empty() && ops.calls[0].said_all && ops.calls[1].said_all;
  };
  EXPECT_TRUE(step(0.0));
  EXPECT_FALSE(step(0.25));
  windows[size_t(W + 3)] = kPadToken;  // one PAD input in the second example
  EXPECT_FALSE(step(0.0));
  windows[size_t(W + 3)] = 4;
  windows[size_t(W - 1)] = kPadToken;  // the first example's last column: a target only
  EXPECT_TRUE(step(0.0));
}

}  // namespace
}  // namespace par
