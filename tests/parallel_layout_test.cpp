// Sequence- and tensor-parallel layouts of the model compute what one rank computes: the
// loss, and every parameter's gradient once the ranks' parts are summed, with both kinds
// of dropout on. The ranks are threads of this process (tests/thread_communicator.h); the
// same model under MPI is checked in tests/mpi.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/layout_run.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::random_vector;

ModelConfig config() {
  ModelConfig c{.vocab_size = 13, .d_model = 16, .context_length = 16, .num_latents = 4,
                .num_layers = 2, .cross_heads = 4, .self_heads = 4, .mlp_factor = 2};
  return c;
}

using Layouts = std::vector<std::pair<int, int>>;  // (sp, tp)

template <typename T>
void check_layouts(const ModelConfig& cfg, const Layouts& layouts, double tol,
                   KeyValueStorage storage = KeyValueStorage::kNative) {
  const int64_t B = 3, W = cfg.context_length + 1;
  std::mt19937_64 rng(5);
  std::vector<int32_t> windows(size_t(B * W));
  for (auto& w : windows) w = int32_t(rng() % 13);  // some PAD (0) and EOS (1) tokens
  std::vector<T> params = random_vector<T>(ParamLayout(cfg).total(), 9, 0.4);
  const int64_t carry[B] = {5, 0, 2};  // where documents begun before the windows stand
  ForwardContext ctx;
  ctx.position_carry = carry;
  ctx.training = true;
  ctx.dropout = 0.2;
  ctx.cross_attend_dropout = 0.25;
  ctx.seed = 77;
  ctx.step = 4;
  ctx.example_base = 6;

  // The single-rank reference.
  cpu::CpuOps<T> ops;
  PerceiverAR<T> ref(cfg, ops, B, {}, storage);
  ops.upload(ref.params(), params.data(), params.size() * sizeof(T));
  const LossSums want = ref.forward(windows.data(), B, ctx);
  ASSERT_GT(want.valid, 0);
  ref.zero_grads();
  ref.backward(1.0 / double(want.valid));
  std::vector<T> want_grads(params.size());
  ops.download(want_grads.data(), ref.grads(), want_grads.size() * sizeof(T));
  double grad_scale = 0;
  for (T g : want_grads) grad_scale = std::max(grad_scale, double(std::abs(g)));

  for (auto [sp, tp] : layouts) {
    SCOPED_TRACE(cat("sp ", sp, " tp ", tp));
    const testing_util::RankBackend<T> cpu{[] { return std::make_unique<cpu::CpuOps<T>>(); }, {},
                                           storage};
    const testing_util::LayoutResult<T> got =
        testing_util::run_layout(cfg, sp, tp, windows, B, ctx, params, want.valid, cpu);
    EXPECT_EQ(got.sums.valid, want.valid);
    EXPECT_NEAR(got.sums.objective, want.objective, tol * std::abs(want.objective));
    EXPECT_NEAR(got.sums.ce, want.ce, tol * std::abs(want.ce));
    EXPECT_TRUE(got.replicas_agree) << "replicated gradients differ between tensor ranks";
    const ParamLayout full(cfg);
    for (const ParamInfo& p : full.params()) {
      double err = 0;
      for (int64_t i = 0; i < p.numel; ++i)
        err = std::max(err, std::abs(double(got.grads[size_t(p.offset + i)]) -
                                     double(want_grads[size_t(p.offset + i)])));
      EXPECT_LE(err, tol * grad_scale) << p.name;
    }
  }
}

// sp 8: slices of 2 positions, fewer than the 4 latents, which then span two ranks.
const Layouts kLayouts = {{1, 1}, {2, 1}, {4, 1}, {1, 2}, {1, 4}, {2, 2}, {8, 1}, {8, 2}};

// Double precision: the layouts sum the same terms in another order, so they agree with
// one rank to ~1e-15 relative; 1e-11 catches any missing or doubled term.
TEST(ParallelLayout, MatchesOneRankInDouble) { check_layouts<double>(config(), kLayouts, 1e-11); }

// Float32: agreement to float rounding, relative to the largest gradient.
TEST(ParallelLayout, MatchesOneRankInFloat) { check_layouts<float>(config(), kLayouts, 2e-5); }

// Heads 16 wide and 8 latents: the cross-attention runs in the fused AVX-512 kernels (where
// the build has them), whose scores and running sums are in base 2 while the log-sum-exp
// that the sequence ranks merge is in nats; every rank sees all 8 latent queries.
TEST(ParallelLayout, MatchesOneRankInFloatWithFusedAttentionShapes) {
  ModelConfig c = config();
  c.d_model = 32;
  c.context_length = 32;
  c.num_latents = 8;
  c.cross_heads = 2;
  c.self_heads = 2;
  check_layouts<float>(c, {{2, 1}, {4, 1}, {1, 2}, {2, 2}}, 2e-5);
}

// Absolute positions (spec/MODEL.md section 13): each sequence rank adds the encodings of
// its own slice, counting from the carry of its first column.
TEST(ParallelLayout, MatchesOneRankWithAbsolutePositions) {
  ModelConfig c = config();
  c.position_encoding = PositionEncoding::kAbsolute;
  check_layouts<double>(c, kLayouts, 1e-11);
  c.position_encoding = PositionEncoding::kBoth;
  check_layouts<float>(c, {{2, 1}, {4, 1}, {1, 2}, {2, 2}, {8, 2}}, 2e-5);
}

// Keys and values stored in bfloat16: each rank rounds the same numbers (to ~1e-16 in
// double, far from any midpoint), so the layouts agree as in double storage, the input
// side's regions under tensor parallelism (d/tp-wide keys in d-wide regions) included.
TEST(ParallelLayout, MatchesOneRankWithBf16KeysAndValues) {
  check_layouts<double>(config(), kLayouts, 1e-11, KeyValueStorage::kBf16);
  ModelConfig c = config();
  c.position_encoding = PositionEncoding::kBoth;
  check_layouts<double>(c, {{2, 1}, {1, 2}, {2, 2}, {8, 2}}, 1e-11, KeyValueStorage::kBf16);
}

TEST(ParallelLayout, RejectsLayoutsThatDoNotFit) {
  ModelConfig c = config();
  EXPECT_THROW(validate_layout(c, 1, 3), UserError);  // 3 does not divide 4 heads
  EXPECT_THROW(validate_layout(c, 3, 1), UserError);  // 3 does not divide N = 16
  EXPECT_THROW(validate_layout(c, 5, 1), UserError);  // 5 does not divide N = 16
  try {
    validate_layout(c, 1, 3);
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("--tp 3"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(validate_layout(c, 4, 4));
  EXPECT_NO_THROW(validate_layout(c, 16, 1));  // one position per rank
}

}  // namespace
}  // namespace par
