// The tests' claim-checking decorator (claim_checking_ops.h), on the CPU backend: a
// decoder's calls through it make claims, which hold; a wrong claim stops the call before
// the backend sees it. No GPU needed.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "core/decoder.h"
#include "core/ops_decorator.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/cuda/claim_checking_ops.h"
#include "tests/cuda/model_case.h"

namespace par {
namespace {

// Counts the forward attention calls that reach the backend.
class ReachingOps final : public ForwardingOps<float> {
 public:
  using ForwardingOps<float>::ForwardingOps;
  void attention_forward(const AttentionShape& s, const float* q, const float* k,
                         const float* v, float* o, float* lse) override {
    ++reached;
    ForwardingOps<float>::attention_forward(s, q, k, v, o, lse);
  }
  int reached = 0;
};

TEST(ClaimCheckingOps, ADecoderMakesClaimsThatHold) {
  const ModelConfig cfg = cuda_test::odd_config();
  std::vector<float> params = cuda_test::parameters(ParamLayout(cfg), cfg.d_model);
  cpu::CpuOps<float> cpu;
  cuda_test::ClaimCheckingOps checked(cpu);
  Decoder<float> dec(cfg, checked, params.data(), true, TokenTables::kOff, 3);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 23; ++i) prompt.push_back(int32_t(3 + (i * 7) % 30));
  dec.start(prompt);
  for (int i = 0; i < 60; ++i) dec.append({3 + i % 30, 4 + i % 29, 5 + i % 28});
  EXPECT_GT(checked.checked(), 0);
}

TEST(ClaimCheckingOps, AWrongClaimStopsTheCall) {
  cpu::CpuOps<float> cpu;
  ReachingOps reaching(cpu);
  cuda_test::ClaimCheckingOps checked(reaching);
  const int64_t nq = 2, nk = 5, d = 4;
  std::vector<int64_t> q_pos = {3, 4}, k_pos = {0, 1, 2, 3, 4};
  std::vector<uint8_t> keep = {1, 1, 0, 1, 1};
  std::vector<float> q(nq * d, 0.5f), k(nk * d, 0.25f), v(nk * d, 1.0f), o(nq * d), lse(nq);
  AttentionShape s{1, nq, nk, 1, d, q_pos.data(), k_pos.data(), keep.data(), 0.5, 3, 0};
  checked.attention_forward(s, q.data(), k.data(), v.data(), o.data(), lse.data());
  EXPECT_EQ(checked.checked(), 1);
  EXPECT_EQ(reaching.reached, 1);
  for (const AttentionShape& wrong :
       {AttentionShape{1, nq, nk, 1, d, q_pos.data(), k_pos.data(), keep.data(), 0.5, 2, 0},
        AttentionShape{1, nq, nk, 1, d, q_pos.data(), k_pos.data(), keep.data(), 0.5, 3, 1},
        AttentionShape{1, nq, nk, 1, d, q_pos.data(), k_pos.data(), keep.data(), 0.5, 3, 0,
                       true}}) {
    EXPECT_THROW(checked.attention_forward(wrong, q.data(), k.data(), v.data(), o.data(),
                                           lse.data()),
                 std::logic_error);
  }
  EXPECT_EQ(reaching.reached, 1) << "a call with a wrong claim reached the backend";
  EXPECT_EQ(checked.checked(), 1);
}

}  // namespace
}  // namespace par
