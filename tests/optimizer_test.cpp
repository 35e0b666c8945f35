// Adam over the whole parameter buffer at once (core/optimizer.h, adam_spans): the spans
// cover the buffer and give each tensor its decay, and a step through them equals, bit for
// bit, the update made one tensor at a time.
#include <gtest/gtest.h>

#include <cmath>

#include <algorithm>
#include <cstring>

#include "core/init.h"
#include "core/optimizer.h"
#include "core/param_layout.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

ModelConfig small_model() {
  ModelConfig c{.d_model = 32, .context_length = 64, .num_latents = 16, .num_layers = 2,
                .cross_heads = 2, .self_heads = 2, .mlp_factor = 2};
  return c;
}

bool decays(const ParamInfo& p) {
  return p.kind == ParamKind::kMatrix || p.kind == ParamKind::kEmbedding;
}

TEST(AdamSpans, CoverTheBufferWithEachTensorsDecay) {
  const ParamLayout layout(small_model());
  const std::vector<AdamSpan> none = adam_spans(layout, false);
  ASSERT_EQ(none.size(), 1u);  // no decay: one span, one launch
  EXPECT_EQ(none[0].begin, 0);
  EXPECT_EQ(none[0].end, layout.total());

  const std::vector<AdamSpan> spans = adam_spans(layout, true);
  ASSERT_GT(spans.size(), 1u);
  EXPECT_EQ(spans.front().begin, 0);
  EXPECT_EQ(spans.back().end, layout.total());
  for (size_t k = 1; k < spans.size(); ++k) {
    EXPECT_EQ(spans[k].begin, spans[k - 1].end) << "spans must tile the buffer";
    EXPECT_NE(spans[k].decays, spans[k - 1].decays) << "neighbours with the same decay merge";
  }
  for (const ParamInfo& p : layout.params()) {
    const AdamSpan* in = nullptr;
    for (const AdamSpan& s : spans)
      if (p.offset >= s.begin && p.offset + p.numel <= s.end) in = &s;
    ASSERT_NE(in, nullptr) << p.name << " is not inside one span";
    EXPECT_EQ(in->decays, decays(p)) << p.name;
  }
}

TEST(AdamSpans, StepEqualsTheUpdateTensorByTensor) {
  const ModelConfig mc = small_model();
  const ParamLayout layout(mc);
  cpu::CpuOps<float> ops;
  OptimizerConfig oc;
  oc.weight_decay = 0.1;
  oc.clip_norm = 0;  // the reference below does not clip
  Adam<float> adam(oc, layout, ops);
  std::vector<float> params;
  init_parameters(layout, 3, params);
  std::vector<float> ref = params, m(params.size(), 0.0f), v(params.size(), 0.0f);
  // Gradients are zero in the alignment gaps between tensors, as the model leaves them.
  const std::vector<float> noise = testing_util::random_vector<float>(layout.total(), 4, 0.1);
  std::vector<float> grads(noise.size(), 0.0f);
  for (const ParamInfo& p : layout.params())
    std::copy(noise.begin() + p.offset, noise.begin() + p.offset + p.numel,
              grads.begin() + p.offset);
  for (int64_t step = 0; step < 3; ++step) {
    adam.step(params.data(), grads.data(), step);
    AdamStep a;
    a.lr = learning_rate(oc, step);
    a.t = step + 1;
    for (const ParamInfo& p : layout.params()) {
      a.weight_decay = decays(p) ? oc.weight_decay : 0.0;
      ops.adam_update(ref.data() + p.offset, m.data() + p.offset, v.data() + p.offset,
                      grads.data() + p.offset, p.numel, a);
    }
  }
  ASSERT_EQ(params.size(), ref.size());
  EXPECT_EQ(std::memcmp(params.data(), ref.data(), params.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace par

namespace par {
namespace {

// The schedule: warm-up's last step reaches --lr, the decay's first is below it, and the
// run's last step reaches --min-lr (each step's rate is where the schedule stands once the
// step is done).
TEST(LearningRate, WarmsUpThenDecaysToTheFloorAtTheLastStep) {
  OptimizerConfig c;
  c.lr = 1e-3;
  c.min_lr = 1e-4;
  c.warmup_steps = 4;
  c.total_steps = 12;
  c.schedule = "cosine";
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 2.5e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 3), 1e-3);
  EXPECT_LT(learning_rate(c, 4), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(c, 4), 1e-4 + 0.9e-3 * 0.5 * (1 + std::cos(M_PI / 8)));
  EXPECT_DOUBLE_EQ(learning_rate(c, 7), 1e-4 + 0.9e-3 * 0.5);  // half way: 4 of 8 steps
  EXPECT_DOUBLE_EQ(learning_rate(c, 11), 1e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 20), 1e-4);  // past the end (a longer resumed run)
  for (int64_t s = 4; s < 11; ++s) EXPECT_GT(learning_rate(c, s), learning_rate(c, s + 1)) << s;
  c.schedule = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(c, 11), 1e-3);
  // No warm-up: the first step is already a step into the decay.
  c.schedule = "cosine";
  c.warmup_steps = 0;
  c.total_steps = 2;
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 1e-4 + 0.9e-3 * 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(c, 1), 1e-4);
}

}  // namespace
}  // namespace par
