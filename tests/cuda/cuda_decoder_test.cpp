// Generation on the CUDA backend: cached decoding (MODEL.md section 12) gives the CPU
// backend's logits token by token, through several refills of the latent caches, once per
// matrix-product precision, over the materialized cross cache and through the token
// tables; and on the GPU cached equals uncached decoding. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/decoder.h"
#include "core/error.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/claim_checking_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/model_case.h"
#include "tests/token_attention_calls.h"

namespace par {
namespace {

using cuda::MatmulPrecision;
using cuda_test::close;

// The model's parameters in the backend's memory, for a decoder's lifetime.
struct DeviceParams {
  DeviceParams(Ops<float>& ops, const std::vector<float>& host) : ops_(ops) {
    p = static_cast<float*>(ops.allocate(host.size() * sizeof(float)));
    ops.upload(p, host.data(), host.size() * sizeof(float));
  }
  ~DeviceParams() { ops_.deallocate(p); }
  Ops<float>& ops_;
  float* p;
};

class CudaDecoderTest : public cuda_test::CudaPrecisionTest {};

void check_cached_against_cpu(const ModelConfig& cfg, Ops<float>& gpu_ops, MatmulPrecision precision,
                              TokenTables tables = TokenTables::kAuto, int64_t samples = 1,
                              int tokens = 40) {
  const auto host = cuda_test::parameters(ParamLayout(cfg), cfg.d_model);
  cpu::CpuOps<float> cpu;
  const DeviceParams cpu_params(cpu, host), gpu_params(gpu_ops, host);
  Decoder<float> want(cfg, cpu, cpu_params.p, true, tables, samples);
  Decoder<float> got(cfg, gpu_ops, gpu_params.p, true, tables, samples);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 23; ++i) prompt.push_back(int32_t(3 + (i * 7) % 30));
  if (cfg.absolute_positions()) prompt[11] = 1;  // an EOS: the count starts again after it
  want.start(prompt);
  got.start(prompt);
  const double tol = cuda_test::model_tol(precision).logits;
  ASSERT_TRUE(close(got.logits(), want.logits(), tol)) << "after the prompt";
  // 40 more tokens: past M latents, so the caches are refilled several times.
  for (int i = 0; i < tokens; ++i) {
    std::vector<int32_t> next;
    for (int64_t k = 0; k < samples; ++k) next.push_back(int32_t(3 + (i * 11 + k * 5) % 31));
    want.append(next);
    got.append(next);
    ASSERT_TRUE(close(got.logits(), want.logits(), tol)) << "token " << i;
  }
}

TEST_P(CudaDecoderTest, CachedDecodingMatchesTheCpu) {
  auto gpu = make_ops();
  check_cached_against_cpu(cuda_test::odd_config(), *gpu, GetParam());  // M = 17: refills every 8 or 9 tokens
}

// The cross-attention of every step and refill through the token tables, by the GPU's
// token_attention_forward (no call declined), one sample and three.
TEST_P(CudaDecoderTest, CachedDecodingThroughTokenTablesMatchesTheCpu) {
  for (int64_t samples : {1, 3}) {
    auto gpu = make_ops();
    testing_util::TokenAttentionCalls<float> calls(*gpu);
    check_cached_against_cpu(cuda_test::odd_config(), calls, GetParam(), TokenTables::kOn, samples);
    EXPECT_GT(calls.taken, 0) << samples << " samples";
    EXPECT_EQ(calls.declined, 0) << samples << " samples: every call is within the kernels' sizing";
  }
}

// The decoder's claims of its calls (positions as ranges, every key kept: core/
// attention_claims.h), which the CUDA backend trusts, hold on the GPU too, where token
// tables and recorded steps take branches the CPU's do not: each checked against the
// arrays (claim_checking_ops.h), 60 tokens past a 23-token prompt, past N = 70, so that
// the window slides and the caches compact; one sample and three.
TEST(CudaDecoderClaims, HoldOnTheGpu) {
  PAR_SKIP_WITHOUT_GPU();
  for (TokenTables tables : {TokenTables::kOff, TokenTables::kOn})
    for (int64_t samples : {1, 3}) {
      SCOPED_TRACE(::testing::Message() << samples << " samples, token tables "
                                        << (tables == TokenTables::kOn ? "on" : "off"));
      auto gpu = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
      cuda_test::ClaimCheckingOps checked(*gpu);
      check_cached_against_cpu(cuda_test::odd_config(), checked, MatmulPrecision::kBF16, tables,
                               samples, 60);
      EXPECT_GT(checked.checked(), 0);
    }
}

// Absolute positions: every cached key and refilled latent carries its document position.
TEST_P(CudaDecoderTest, CachedDecodingWithAbsolutePositionsMatchesTheCpu) {
  ModelConfig cfg = cuda_test::odd_config();
  cfg.position_encoding = PositionEncoding::kAbsolute;
  auto gpu = make_ops();
  check_cached_against_cpu(cfg, *gpu, GetParam());
}

TEST_P(CudaDecoderTest, CachedEqualsUncachedOnTheGpu) {
  const ModelConfig cfg = cuda_test::odd_config();
  const auto host = cuda_test::parameters(ParamLayout(cfg), cfg.d_model);
  auto gpu = make_ops();
  const DeviceParams params(*gpu, host);
  Decoder<float> cached(cfg, *gpu, params.p, true), uncached(cfg, *gpu, params.p, false);
  cached.start({5, 6, 7});
  uncached.start({5, 6, 7});
  const double tol = cuda_test::model_tol(GetParam()).logits;
  for (int i = 0; i < 30; ++i) {
    cached.append(int32_t(3 + i % 29));
    uncached.append(int32_t(3 + i % 29));
    ASSERT_TRUE(close(cached.logits(), uncached.logits(), tol)) << "token " << i;
  }
}

// Decoding steps recorded as CUDA graphs (the default: recorded when the step's plan
// changes, the kept graph updated in place, and replayed while it holds) against steps
// launched kernel by kernel, one sample and three,
// through the token tables and not, through several refills; and both against uncached
// decoding (where the steps' recordings are refused now and then, as a scratch buffer
// grows, and given again unrecorded).
TEST_P(CudaDecoderTest, GraphStepsEqualPlainSteps) {
  const ModelConfig cfg = cuda_test::odd_config();
  const auto host = cuda_test::parameters(ParamLayout(cfg), cfg.d_model);
  const double tol = cuda_test::model_tol(GetParam()).logits;
  for (int64_t samples : {1, 3})
    for (TokenTables tables : {TokenTables::kOn, TokenTables::kOff}) {
      auto graphs = make_ops(), plain = make_ops();
      const DeviceParams pg(*graphs, host), pp(*plain, host);
      Decoder<float> a(cfg, *graphs, pg.p, true, tables, samples);
      Decoder<float> b(cfg, *plain, pp.p, true, tables, samples);
      Decoder<float> u(cfg, *plain, pp.p, false, tables, samples);
      b.set_step_capture(false);
      std::vector<int32_t> prompt;
      for (int i = 0; i < 23; ++i) prompt.push_back(int32_t(3 + (i * 7) % 30));
      a.start(prompt);
      b.start(prompt);
      u.start(prompt);
      for (int i = 0; i < 40; ++i) {
        std::vector<int32_t> next;
        for (int64_t k = 0; k < samples; ++k) next.push_back(int32_t(3 + (i * 13 + k * 3) % 31));
        a.append(next);
        b.append(next);
        u.append(next);
        ASSERT_TRUE(close(a.logits(), b.logits(), 1e-6)) << samples << " samples, token " << i;
        ASSERT_TRUE(close(a.logits(), u.logits(), tol)) << samples << " samples, token " << i;
      }
      // A step is recorded when its plan changes (refills, every M tokens of the newest
      // cross rows), and replayed otherwise: most of the 36 steps between the 4 refills.
      const cuda::GraphStats st = cuda::graph_stats(*graphs);
      const int64_t replayed = st.launched - st.instantiated - st.updated;
      EXPECT_GE(st.instantiated, 1) << samples << " samples";
      EXPECT_GE(replayed, 15) << samples << " samples: " << st.instantiated << " instantiated, "
                              << st.updated << " updated";
      EXPECT_EQ(cuda::graph_stats(*plain).launched, 0);
    }
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaDecoderTest, PAR_ALL_PRECISIONS);

class CudaDecoderBf16Cache : public cuda_test::CudaTest {};

// The cross caches in bfloat16 (decoding's default under --precision bf16 with one sample)
// on the GPU, against the CPU's decoder with bfloat16 caches (model tolerance). Over the
// materialized caches (token tables off), one sample and three, rotary and absolute
// positions, 60 tokens past a 23-token prompt: past N = 70, so the caches compact and the
// samples' own ones grow and move. Also said, not asserted: how far float32 caches on the
// same GPU are. A step's split attention rounds float32 keys and values to bf16 as it reads
// them, the same numbers; the calls of several queries (the prompt's pass, refills past N,
// three samples' shared part) go to cuDNN where it takes their heads (bf16 operands and
// outputs), else to cuBLAS's bf16 mode, which may round its float32 operands otherwise
// than to nearest.
TEST_F(CudaDecoderBf16Cache, MatchesTheCpu) {
  const double tol = cuda_test::model_tol(MatmulPrecision::kBF16).logits;
  for (PositionEncoding pe : {PositionEncoding::kRotary, PositionEncoding::kAbsolute})
    for (int64_t samples : {1, 3}) {
      ModelConfig cfg = cuda_test::odd_config();
      cfg.position_encoding = pe;
      const auto host = cuda_test::parameters(ParamLayout(cfg), cfg.d_model);
      cpu::CpuOps<float> cpu;
      auto gpu = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
      const DeviceParams cpu_params(cpu, host), gpu_params(*gpu, host);
      Decoder<float> want(cfg, cpu, cpu_params.p, true, TokenTables::kOff, samples,
                          KeyValueStorage::kBf16);
      Decoder<float> got(cfg, *gpu, gpu_params.p, true, TokenTables::kOff, samples,
                         KeyValueStorage::kBf16);
      Decoder<float> wide(cfg, *gpu, gpu_params.p, true, TokenTables::kOff, samples);
      ASSERT_TRUE(got.bf16_cache());
      std::vector<int32_t> prompt;
      for (int i = 0; i < 23; ++i) prompt.push_back(int32_t(3 + (i * 7) % 30));
      for (Decoder<float>* d : {&want, &got, &wide}) d->start(prompt);
      bool same_bits = true;
      double apart = 0;
      for (int i = 0; i < 60; ++i) {
        std::vector<int32_t> next;
        for (int64_t k = 0; k < samples; ++k) next.push_back(int32_t(3 + (i * 11 + k * 5) % 31));
        for (Decoder<float>* d : {&want, &got, &wide}) d->append(next);
        const std::string at = cat(samples, " samples, token ", i);
        ASSERT_TRUE(close(got.logits(), want.logits(), tol)) << at << ": against the CPU";
        same_bits = same_bits && got.logits() == wide.logits();
        double scale = 0, err = 0;
        for (size_t j = 0; j < got.logits().size(); ++j) {
          scale = std::max(scale, std::abs(double(wide.logits()[j])));
          err = std::max(err, std::abs(double(got.logits()[j]) - double(wide.logits()[j])));
        }
        apart = std::max(apart, err / std::max(scale, 1e-30));
      }
      std::printf("note: bfloat16 against float32 caches, %lld sample(s), %s: %s (%.2e of the "
                  "largest logit at most)\n",
                  static_cast<long long>(samples), pe == PositionEncoding::kRotary ? "rotary" : "absolute",
                  same_bits ? "the same bits" : "apart", apart);
    }
}

}  // namespace
}  // namespace par
