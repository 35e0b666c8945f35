// Attention through per-token tables on the GPU (kernels/cuda/token_attention.cu). The plan
// on the host (runs anywhere): which shapes the kernels cover, the grid's bound on the work
// items against the items of actual groupings, the scratch layout. On a GPU (skips
// without): gpu-100m-131k's decoding shapes (131072 keys, 259 tokens, 16 heads of 64, 16
// bands) against the CPU backend, a refill's 4112 query-heads declined without a write,
// two runs and a run recorded into a CUDA graph giving the same bits. The small shapes are
// the parity table's (tests/op_cases.cpp, CudaOpParity).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/rotary.h"
#include "core/token_groups.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda_test::bitwise_equal;
using cuda_test::close;
using cuda_test::DeviceArray;
namespace tk = cuda::kern;

constexpr int64_t kVocab = 259, kHeads = 16, kHeadDim = 64, kKeys = 131072;

TokenAttentionShape decoding_shape(int64_t nq) {
  TokenAttentionShape s;
  s.nq = nq;
  s.heads = kHeads;
  s.head_dim = kHeadDim;
  s.bands = 16;
  s.vocab = kVocab;
  s.stride = token_groups_stride(kKeys);
  s.scale = 0.125;
  return s;
}

// The work items of a grouping: per token, its keys at or after first_position in pieces of
// kTokenItemKeys (the plan kernel's rule).
int64_t items_of(const TokenGroups<float>& g, int64_t first_position) {
  int64_t items = 0;
  for (size_t t = 0; t + 1 < g.group.size(); ++t) {
    const auto b = g.pos.begin() + g.group[t], e = g.pos.begin() + g.group[t + 1];
    const int64_t visible = e - std::lower_bound(b, e, first_position);
    items += (visible + tk::kTokenItemKeys - 1) / tk::kTokenItemKeys;
  }
  return items;
}

TEST(TokenAttentionPlan, CoversDecodingShapesAndDeclinesLargeOnes) {
  for (int64_t nq : {1, 16, 256}) {  // a step of 1 and 16 samples, a refill of 256 latents
    const tk::TokenAttentionPlan p = tk::token_attention_plan(decoding_shape(nq));
    EXPECT_TRUE(p.covered) << nq;
    EXPECT_EQ(p.tiles, (nq * kHeads + tk::kTokenTile - 1) / tk::kTokenTile);
    EXPECT_LE(p.shared_bytes, size_t(48 * 1024));
  }
  // A refill of 257 latents (or 16 samples of 17): more query-heads than sized for.
  EXPECT_FALSE(tk::token_attention_plan(decoding_shape(257)).covered);
  TokenAttentionShape wide = decoding_shape(1);
  wide.head_dim = tk::kTokenMaxHeadDim + 1;
  EXPECT_FALSE(tk::token_attention_plan(wide).covered);
  wide.head_dim = tk::kTokenMaxHeadDim;
  wide.bands = tk::kTokenMaxHeadDim / 2;  // every dimension rotated
  const tk::TokenAttentionPlan p = tk::token_attention_plan(wide);
  EXPECT_TRUE(p.covered);
  EXPECT_LE(p.shared_bytes, size_t(48 * 1024));
  TokenAttentionShape bad = decoding_shape(1);
  bad.bands = kHeadDim / 2 + 1;
  EXPECT_FALSE(tk::token_attention_plan(bad).covered) << "more bands than pairs of dimensions";
  TokenAttentionShape batched = decoding_shape(1);
  batched.batch = 4;  // samples over keys of their own: the decoder reads those as rows
  EXPECT_FALSE(tk::token_attention_plan(batched).covered);
  TokenAttentionShape none = decoding_shape(0);
  EXPECT_TRUE(tk::token_attention_plan(none).covered);
  EXPECT_EQ(tk::token_attention_plan(none).bytes, 0u) << "no query: nothing to do";
}

TEST(TokenAttentionPlan, ItemBoundHoldsTheItemsOfAnyGrouping) {
  const RotarySpec spec = make_rotary_spec(kHeadDim, 0.5, 4096);
  std::mt19937_64 rng(5);
  auto check = [&](const std::vector<int32_t>& tokens, int64_t first_position, const char* what) {
    const int64_t n = int64_t(tokens.size());
    const TokenGroups<float> g = group_tokens<float>(tokens.data(), n, 1000, kVocab, spec);
    TokenAttentionShape s = decoding_shape(1);
    s.stride = g.stride;
    s.first_position = first_position;
    const tk::TokenAttentionPlan p = tk::token_attention_plan(s);
    ASSERT_TRUE(p.covered) << what;
    EXPECT_GE(p.items, items_of(g, first_position)) << what;
    EXPECT_GE(p.items, 1) << what;
    // The scratch: prefix sums [V + 1], then the items, then the partials, apart.
    EXPECT_GE(p.items_offset, size_t(kVocab + 1) * sizeof(int64_t)) << what;
    EXPECT_GT(p.partials_offset, p.items_offset) << what;
    EXPECT_GE(p.bytes, p.partials_offset + size_t(kHeads * p.items) * 2 * sizeof(float)) << what;
    EXPECT_EQ(p.items_offset % 256, 0u);
    EXPECT_EQ(p.partials_offset % 256, 0u);
  };
  // Every token with one key more than a piece: two pieces each, the most per key.
  std::vector<int32_t> tokens;
  for (int32_t t = 0; t < kVocab; ++t)
    for (int64_t j = 0; j <= tk::kTokenItemKeys; ++j) tokens.push_back(t);
  check(tokens, 0, "every token kTokenItemKeys + 1 times");
  // One token: all pieces full.
  check(std::vector<int32_t>(size_t(kKeys), 42), 0, "one token");
  check(std::vector<int32_t>(size_t(kKeys), 42), 1000 + 777, "one token, cut");
  // Uniform tokens, one dominant, cut inside the groups.
  tokens.assign(size_t(kKeys), 0);
  for (auto& t : tokens) t = rng() % 3 == 0 ? 7 : int32_t(1 + rng() % (kVocab - 1));
  check(tokens, 0, "random");
  check(tokens, 1000 + 50000, "random, cut");
  check(std::vector<int32_t>(1, 3), 0, "one key");
  check(std::vector<int32_t>(), 0, "no key");
}

// gpu-100m-131k's window: 131072 keys (a PAD among them), token 42 one in 7 (over 10,000
// keys: several pieces), the rest uniform; the first visible position inside the groups.
struct Window {
  Window() : spec(make_rotary_spec(kHeadDim, 0.5, 4096)) {
    std::mt19937_64 rng(1);
    std::vector<int32_t> tokens(static_cast<size_t>(kKeys));
    for (auto& t : tokens) t = rng() % 7 == 0 ? 42 : int32_t(rng() % kVocab);  // 0 is PAD
    g = group_tokens<float>(tokens.data(), kKeys, kFirst, kVocab, spec);
  }
  TokenAttentionShape shape(int64_t nq) const {
    TokenAttentionShape s = decoding_shape(nq);
    s.stride = g.stride;
    s.first_position = kFirst + 3000;
    return s;
  }
  static constexpr int64_t kFirst = 5000;
  RotarySpec spec;
  TokenGroups<float> g;
};

struct Inputs {
  Inputs(Ops<float>& ops, const Window& w, int64_t nq)
      : q(ops, cuda_test::random_vector<float>(nq * kHeads * kHeadDim, 2)),
        key_table(ops, cuda_test::random_vector<float>(kVocab * kHeads * kHeadDim, 3)),
        value_table(ops, cuda_test::random_vector<float>(kVocab * kHeads * kHeadDim, 4)),
        cos(ops, w.g.cos),
        sin(ops, w.g.sin),
        group(ops, w.g.group),
        pos(ops, w.g.pos),
        o(ops, size_t(nq * kHeads * kHeadDim), 7.0f),
        lse(ops, size_t(nq * kHeads), 7.0f) {}
  bool run(Ops<float>& ops, TokenAttentionShape s) {
    s.group = group.get();
    s.pos = pos.get();
    return ops.token_attention_forward(s, q.get(), key_table.get(), value_table.get(), cos.get(),
                                       sin.get(), o.get(), lse.get());
  }
  DeviceArray<float> q, key_table, value_table, cos, sin;
  DeviceArray<int64_t> group, pos;
  DeviceArray<float> o, lse;
};

class CudaTokenAttention : public cuda_test::CudaTest {};

TEST_F(CudaTokenAttention, DecodingShapesOf100mMatchTheCpu) {
  const Window w;
  cpu::CpuOps<float> cpu;
  for (int64_t nq : {1, 16}) {  // one sample's step, 16 samples'
    auto gpu = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kBF16);  // float32 whatever the mode
    Inputs want(cpu, w, nq), got(*gpu, w, nq);
    ASSERT_TRUE(want.run(cpu, w.shape(nq)));
    ASSERT_TRUE(got.run(*gpu, w.shape(nq))) << "the GPU declined " << nq << " queries";
    EXPECT_TRUE(close(got.o.host(), want.o.host(), 1e-5)) << nq << " queries";
    EXPECT_TRUE(close(got.lse.host(), want.lse.host(), 1e-5)) << nq << " queries";
    const std::vector<float> o = got.o.host(), lse = got.lse.host();
    got.o.set(std::vector<float>(o.size(), 0.0f));
    got.lse.set(std::vector<float>(lse.size(), 0.0f));
    ASSERT_TRUE(got.run(*gpu, w.shape(nq)));
    EXPECT_TRUE(bitwise_equal(got.o.host(), o)) << "a second run";
    EXPECT_TRUE(bitwise_equal(got.lse.host(), lse)) << "a second run";
  }
}

TEST_F(CudaTokenAttention, TooManyQueryHeadsAreDeclinedWithoutAWrite) {
  const Window w;
  auto gpu = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  const int64_t nq = tk::kTokenMaxQueryHeads / kHeads + 1;
  Inputs in(*gpu, w, nq);
  EXPECT_FALSE(in.run(*gpu, w.shape(nq)));
  for (float x : in.o.host()) ASSERT_EQ(x, 7.0f);
  for (float x : in.lse.host()) ASSERT_EQ(x, 7.0f);
}

// No host synchronization inside: the call records into a step's graph, and the graph's
// run gives the bits of the direct one.
TEST_F(CudaTokenAttention, RecordsIntoAGraph) {
  const Window w;
  auto gpu = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  Inputs in(*gpu, w, 16);
  ASSERT_TRUE(in.run(*gpu, w.shape(16)));  // unrecorded first: sizes the scratch
  const std::vector<float> o = in.o.host(), lse = in.lse.host();
  in.o.set(std::vector<float>(o.size(), 0.0f));
  in.lse.set(std::vector<float>(lse.size(), 0.0f));
  cuda::begin_graph(*gpu);
  ASSERT_TRUE(in.run(*gpu, w.shape(16)));
  cuda::end_graph(*gpu, 1);
  EXPECT_TRUE(bitwise_equal(in.o.host(), o));
  EXPECT_TRUE(bitwise_equal(in.lse.host(), lse));
  in.o.set(std::vector<float>(o.size(), 0.0f));
  in.lse.set(std::vector<float>(lse.size(), 0.0f));
  ASSERT_TRUE(cuda::replay_graph(*gpu, 1));
  EXPECT_TRUE(bitwise_equal(in.o.host(), o)) << "replayed";
  EXPECT_TRUE(bitwise_equal(in.lse.host(), lse)) << "replayed";
}

}  // namespace
}  // namespace par
