// The CUDA backend's blocked attention plan (kernels/cuda/attention_plan.h) run with a
// host engine -- plain loops with the documented meaning of each step -- against the CPU
// backend in double precision. This checks the block bookkeeping (offsets, leading
// dimensions, strides, the running max and sum, partial last blocks) on any machine; the
// GPU test then checks the CUDA steps themselves. Runs without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/attention_plan.h"
#include "tests/attention_cases.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda::RowMajorGemm;
using cuda::ScoreBlock;
using testing_util::AttentionData;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct HostEngine {
  std::vector<std::vector<float>> buffers = std::vector<std::vector<float>>(8);
  int gemms = 0;

  // New scratch is NaN, so a step that reads what no earlier step wrote shows up.
  float* scratch(int slot, int64_t floats) {
    auto& b = buffers[size_t(slot)];
    if (int64_t(b.size()) < floats) b.assign(size_t(floats), std::nanf(""));
    return b.data();
  }
  void gemm(const RowMajorGemm& g) {
    ++gemms;
    EXPECT_TRUE(cuda::leading_dimensions_valid(g));
    for (int64_t bt = 0; bt < g.batch; ++bt)
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j) {
          double s = 0;
          for (int64_t l = 0; l < g.k; ++l) {
            const float a = g.trans_a ? g.a[bt * g.stride_a + l * g.lda + i]
                                      : g.a[bt * g.stride_a + i * g.lda + l];
            const float b = g.trans_b ? g.b[bt * g.stride_b + j * g.ldb + l]
                                      : g.b[bt * g.stride_b + l * g.ldb + j];
            s += double(a) * double(b);
          }
          float& c = g.c[bt * g.stride_c + i * g.ldc + j];
          // beta == 0 does not read C (BLAS semantics: it may hold NaN).
          c = float(double(g.alpha) * s + (g.beta == 0 ? 0.0 : double(g.beta) * double(c)));
        }
  }
  void zero(float* x, int64_t n) { std::fill(x, x + n, 0.0f); }
  void fwd_init(float* run_max, float* run_sum, int64_t n) {
    std::fill(run_max, run_max + n, kNegInf);
    std::fill(run_sum, run_sum + n, 0.0f);
  }
  static bool visible(const ScoreBlock& b, int64_t i, int64_t j) {
    return b.k_pos[j] <= b.q_pos[i] && (!b.k_keep || b.k_keep[j]);
  }
  void fwd_block(const ScoreBlock& b, float* run_max, float* run_sum, float* acc, int64_t ld_acc,
                 int64_t head_dim) {
    for (int64_t h = 0; h < b.heads; ++h)
      for (int64_t i = 0; i < b.nq; ++i) {
        const int64_t row = h * b.nq + i;
        float* s = b.s + row * b.ld;
        float mx = kNegInf;
        for (int64_t j = 0; j < b.keys; ++j)
          if (visible(b, i, j)) mx = std::max(mx, s[j]);
        if (mx == kNegInf) {
          std::fill(s, s + b.keys, 0.0f);
          continue;
        }
        const float m_new = std::max(run_max[row], mx);
        float sum = 0;
        for (int64_t j = 0; j < b.keys; ++j) {
          s[j] = visible(b, i, j) ? std::exp(s[j] - m_new) : 0.0f;
          sum += s[j];
        }
        const float alpha = run_max[row] == kNegInf ? 0.0f : std::exp(run_max[row] - m_new);
        run_sum[row] = run_sum[row] * alpha + sum;
        run_max[row] = m_new;
        for (int64_t d = 0; d < head_dim; ++d) acc[i * ld_acc + h * head_dim + d] *= alpha;
      }
  }
  void fwd_finish(float* o, int64_t ld_o, float* lse, const float* run_max,
                  const float* run_sum, int64_t heads, int64_t nq, int64_t head_dim) {
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t row = h * nq + i;
        float* out = o + i * ld_o + h * head_dim;
        if (run_sum[row] > 0) {
          for (int64_t d = 0; d < head_dim; ++d) out[d] *= 1.0f / run_sum[row];
          lse[row] = run_max[row] + std::log(run_sum[row]);
        } else {
          std::fill(out, out + head_dim, 0.0f);
          lse[row] = kNegInf;
        }
      }
  }
  void bwd_delta(float* delta, const float* o, const float* d_o, int64_t batch, int64_t nq,
                 int64_t heads, int64_t head_dim) {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t off = (b * nq + i) * heads * head_dim + h * head_dim;
          float t = 0;
          for (int64_t d = 0; d < head_dim; ++d) t += o[off + d] * d_o[off + d];
          delta[(b * heads + h) * nq + i] = t;
        }
  }
  void bwd_probs(const ScoreBlock& b, const float* lse) {
    for (int64_t h = 0; h < b.heads; ++h)
      for (int64_t i = 0; i < b.nq; ++i)
        for (int64_t j = 0; j < b.keys; ++j) {
          const int64_t row = h * b.nq + i;
          float& s = b.s[row * b.ld + j];
          s = lse[row] != kNegInf && visible(b, i, j) ? std::exp(s - lse[row]) : 0.0f;
        }
  }
  void bwd_dscores(float* dp, int64_t ld, const float* p, int64_t heads, int64_t nq,
                   int64_t keys, const float* delta) {
    for (int64_t row = 0; row < heads * nq; ++row)
      for (int64_t j = 0; j < keys; ++j)
        dp[row * ld + j] = p[row * ld + j] * (dp[row * ld + j] - delta[row]);
  }
};

std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }
std::vector<float> to_float(const std::vector<double>& x) { return {x.begin(), x.end()}; }

class AttentionPlan : public ::testing::TestWithParam<testing_util::AttentionCase> {};

TEST_P(AttentionPlan, MatchesTheCpuBackend) {
  const AttentionData data = testing_util::make_attention_data(GetParam(), 11);
  const AttentionShape s = data.shape();
  const int64_t nq_el = s.batch * s.nq * data.ld(), nk_el = s.batch * s.nk * data.ld();
  const int64_t stats = s.batch * s.heads * s.nq;

  // Reference: the CPU backend in double.
  cpu::CpuOps<double> ref;
  const auto q_size = static_cast<size_t>(nq_el), k_size = static_cast<size_t>(nk_el);
  std::vector<double> o_ref(q_size), lse_ref(static_cast<size_t>(stats)), dq_ref(q_size),
      dk_ref(k_size), dv_ref(k_size);
  const auto qd = to_double(data.q), kd = to_double(data.k), vd = to_double(data.v),
             dod = to_double(data.d_o);
  ref.attention_forward(s, qd.data(), kd.data(), vd.data(), o_ref.data(), lse_ref.data());
  ref.attention_backward(s, qd.data(), kd.data(), vd.data(), o_ref.data(), dod.data(),
                         lse_ref.data(), dq_ref.data(), dk_ref.data(), dv_ref.data());

  // The plan, with outputs pre-filled with NaN (everything must be written).
  HostEngine e;
  std::vector<float> o(size_t(nq_el), std::nanf("")), lse(size_t(stats), std::nanf(""));
  cuda::attention_forward_plan(e, s, data.q.data(), data.k.data(), data.v.data(), o.data(),
                               lse.data(), data.c.key_block);
  EXPECT_TRUE(cuda_test::close(o, to_float(o_ref), 1e-5)) << "o";
  EXPECT_TRUE(cuda_test::close(lse, to_float(lse_ref), 1e-5)) << "lse";

  std::vector<float> dq(size_t(nq_el), std::nanf("")), dk(size_t(nk_el), std::nanf("")),
      dv(size_t(nk_el), std::nanf(""));
  // The backward uses the reference's o and lse, as it would use merged ones.
  const auto o_in = to_float(o_ref), lse_in = to_float(lse_ref);
  cuda::attention_backward_plan(e, s, data.q.data(), data.k.data(), data.v.data(), o_in.data(),
                                data.d_o.data(), lse_in.data(), dq.data(), dk.data(), dv.data(),
                                data.c.key_block);
  EXPECT_TRUE(cuda_test::close(dq, to_float(dq_ref), 1e-5)) << "dq";
  EXPECT_TRUE(cuda_test::close(dk, to_float(dk_ref), 1e-5)) << "dk";
  EXPECT_TRUE(cuda_test::close(dv, to_float(dv_ref), 1e-5)) << "dv";
  EXPECT_GT(e.gemms, 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, AttentionPlan, ::testing::ValuesIn(testing_util::attention_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(AttentionPlan, KeyBlockChoice) {
  // The 100M config's cross-attention: 16 heads x 1024 latents -> 2048 keys (128 MiB).
  EXPECT_EQ(cuda::attention_key_block(16, 1024, 131072, 0), 2048);
  EXPECT_EQ(cuda::attention_key_block(16, 1024, 1024, 0), 1024);  // at most nk
  EXPECT_EQ(cuda::attention_key_block(4, 8, 100, 7), 7);          // forced
  EXPECT_EQ(cuda::attention_key_block(4, 8, 5, 7), 5);
  EXPECT_GE(cuda::attention_key_block(64, 1 << 20, 1 << 20, 0), 32);
}

}  // namespace
}  // namespace par
