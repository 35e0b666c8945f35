// The stated tf32 and bf16 tolerances of the CUDA tests (cuda_test_util.h, model_case.h)
// against an emulation on the CPU: the CPU backend with the inputs of every matrix product
// rounded as the tensor cores round them (tf32: 10 stored mantissa bits, bf16: 7, both
// round-to-nearest-even) and float32 accumulation. The GPU also rounds the products'
// intermediate operands inside the attention (probabilities, score gradients), which this
// does not see, so each emulated error must stay within half its tolerance. This guards
// the GPU tests against tolerances too tight to pass; it runs without a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "core/ops_decorator.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/attention_cases.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/model_case.h"

namespace par {
namespace {

using cuda::MatmulPrecision;
using cuda_test::close;
using cuda_test::round_to;

// The CPU backend with the operands of its matrix products rounded; everything else goes
// to it as it is.
struct CpuBackend {
  cpu::CpuOps<float> cpu_;
};
class RoundingOps final : private CpuBackend, public ForwardingOps<float> {
 public:
  explicit RoundingOps(MatmulPrecision p) : ForwardingOps<float>(cpu_), p_(p) {}
  const char* name() const override { return "cpu, rounded products"; }

  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override {
    const auto ra = rounded(a, ta ? k : m, ta ? m : k, lda);
    const auto rb = rounded(b, tb ? n : k, tb ? k : n, ldb);
    cpu_.gemm(ta, tb, m, n, k, alpha, ra.data(), lda, rb.data(), ldb, beta, c, ldc);
  }
  void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t rows,
                      int64_t in, int64_t out) override {
    cpu_.linear_forward(y, rounded(x, rows * in).data(), rounded(w, out * in).data(), b, rows,
                        in, out);
  }
  void linear_backward(float* dx, bool acc, float* dw, float* db, const float* dy,
                       const float* x, const float* w, int64_t rows, int64_t in,
                       int64_t out) override {
    const auto rdy = rounded(dy, rows * out);
    cpu_.linear_backward(dx, acc, dw, nullptr, rdy.data(), rounded(x, rows * in).data(),
                         rounded(w, out * in).data(), rows, in, out);
    // The bias gradient is a float32 column sum on the GPU, not a product.
    if (db) cpu_.linear_backward(nullptr, false, nullptr, db, dy, x, w, rows, in, out);
  }
  void attention_forward(const AttentionShape& s, const float* q, const float* k,
                         const float* v, float* o, float* lse) override {
    const int64_t nq = s.batch * s.nq * s.heads * s.head_dim;
    const int64_t nk = s.batch * s.nk * s.heads * s.head_dim;
    cpu_.attention_forward(s, rounded(q, nq).data(), rounded(k, nk).data(),
                           rounded(v, nk).data(), o, lse);
  }
  void attention_backward(const AttentionShape& s, const float* q, const float* k,
                          const float* v, const float* o, const float* d_o, const float* lse,
                          float* dq, float* dk, float* dv) override {
    const int64_t nq = s.batch * s.nq * s.heads * s.head_dim;
    const int64_t nk = s.batch * s.nk * s.heads * s.head_dim;
    cpu_.attention_backward(s, rounded(q, nq).data(), rounded(k, nk).data(),
                            rounded(v, nk).data(), o, rounded(d_o, nq).data(), lse, dq, dk, dv);
  }
  // Declined: decoding then attends over the materialized keys, whose products are rounded
  // here (the GPU's token attention rounds nothing: it computes in float32).
  bool token_attention_forward(const TokenAttentionShape&, const float*, const float*,
                               const float*, const float*, const float*, float*, float*) override {
    return false;
  }

 private:
  // A copy of `rows` rows of `cols` values, `ld` apart, rounded (the gaps copied as they are).
  std::vector<float> rounded(const float* x, int64_t rows, int64_t cols, int64_t ld) const {
    if (rows <= 0 || cols <= 0) return {};
    std::vector<float> r(x, x + (rows - 1) * ld + cols);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) r[size_t(i * ld + j)] = round_to(r[size_t(i * ld + j)], p_);
    return r;
  }
  std::vector<float> rounded(const float* x, int64_t n) const { return rounded(x, 1, n, n); }

  MatmulPrecision p_;
};

class PrecisionEmulation : public ::testing::TestWithParam<MatmulPrecision> {};

TEST_P(PrecisionEmulation, RoundingIsWhatTheTensorCoresDo) {
  const MatmulPrecision p = GetParam();
  // unit: the spacing of the rounded values just above 1.
  const float unit = p == MatmulPrecision::kBF16 ? 0x1p-7f : 0x1p-10f;
  EXPECT_EQ(round_to(1.0f + unit / 2.5f, p), 1.0f);
  EXPECT_EQ(round_to(1.0f + unit * 0.75f, p), 1.0f + unit);
  EXPECT_EQ(round_to(1.0f + unit / 2, p), 1.0f);  // a tie goes to the even neighbour
  EXPECT_EQ(round_to(-3.0f, p), -3.0f);
}

TEST_P(PrecisionEmulation, OneProductStaysWithinHalfItsTolerance) {
  const MatmulPrecision p = GetParam();
  const int64_t m = 67, n = 45, k = 301;
  const auto a = cuda_test::random_vector<float>(m * k, 1), b = cuda_test::random_vector<float>(k * n, 2);
  std::vector<float> want(size_t(m * n)), got(size_t(m * n));
  cpu::CpuOps<float> cpu;
  RoundingOps rounding(p);
  cpu.gemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, want.data(), n);
  rounding.gemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, got.data(), n);
  EXPECT_FALSE(close(got, want, 0.0)) << "the emulation rounds nothing";
  EXPECT_TRUE(close(got, want, cuda_test::matmul_tol(p) / 2));
}

TEST_P(PrecisionEmulation, AttentionStaysWithinHalfItsTolerance) {
  const MatmulPrecision p = GetParam();
  for (const testing_util::AttentionCase& c : testing_util::attention_cases()) {
    SCOPED_TRACE(c.name);
    const testing_util::AttentionData d = testing_util::make_attention_data(c, 31);
    const AttentionShape s = d.shape();
    const size_t stats = size_t(s.batch * s.heads * s.nq);
    cpu::CpuOps<float> cpu;
    RoundingOps rounding(p);
    struct Out {
      std::vector<float> o, lse, dq, dk, dv;
    };
    auto run = [&](Ops<float>& ops) {
      Out r{std::vector<float>(d.q.size()), std::vector<float>(stats),
            std::vector<float>(d.q.size()), std::vector<float>(d.k.size()),
            std::vector<float>(d.v.size())};
      ops.attention_forward(s, d.q.data(), d.k.data(), d.v.data(), r.o.data(), r.lse.data());
      ops.attention_backward(s, d.q.data(), d.k.data(), d.v.data(), r.o.data(), d.d_o.data(),
                             r.lse.data(), r.dq.data(), r.dk.data(), r.dv.data());
      return r;
    };
    const Out want = run(cpu), got = run(rounding);
    const double tol = cuda_test::attention_tol(p) / 2;
    EXPECT_TRUE(close(got.o, want.o, tol)) << "o";
    EXPECT_TRUE(close(got.lse, want.lse, tol)) << "lse";
    EXPECT_TRUE(close(got.dq, want.dq, tol)) << "dq";
    EXPECT_TRUE(close(got.dk, want.dk, tol)) << "dk";
    EXPECT_TRUE(close(got.dv, want.dv, tol)) << "dv";
  }
}

TEST_P(PrecisionEmulation, TheModelStaysWithinHalfItsTolerances) {
  const MatmulPrecision p = GetParam();
  const ModelConfig cfg = cuda_test::odd_config();
  const ParamLayout layout(cfg);
  const auto params = cuda_test::parameters(layout, cfg.d_model);
  const auto w = cuda_test::windows(cfg, 7);
  cpu::CpuOps<float> cpu;
  RoundingOps rounding(p);
  const cuda_test::Result want = cuda_test::forward_backward(cpu, cfg, params, w);
  const cuda_test::Result got = cuda_test::forward_backward(rounding, cfg, params, w);
  const cuda_test::ModelTol tol = cuda_test::model_tol(p);
  EXPECT_NEAR(got.loss.objective, want.loss.objective,
              tol.loss / 2 * std::abs(want.loss.objective));
  EXPECT_TRUE(close(got.logits, want.logits, tol.logits / 2)) << "logits";
  for (const ParamInfo& info : layout.params()) {
    const std::vector<float> g(got.grads.begin() + info.offset,
                               got.grads.begin() + info.offset + info.numel);
    const std::vector<float> e(want.grads.begin() + info.offset,
                               want.grads.begin() + info.offset + info.numel);
    EXPECT_TRUE(close(g, e, tol.grads / 2)) << info.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, PrecisionEmulation,
                         ::testing::Values(MatmulPrecision::kTF32, MatmulPrecision::kBF16),
                         cuda_test::precision_test_name);

}  // namespace
}  // namespace par
