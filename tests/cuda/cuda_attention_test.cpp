// The CUDA attention against the CPU backend's, forward and backward, for every case of
// attention_cases.h (PAD and dropped keys, rows and whole examples with no visible key,
// non-contiguous kept keys, several key blocks) in each matrix-product precision; the
// gradients of keys no query sees must be exactly zero, and two runs must give the same
// bits. Plus one run at a 131072-key context (64-bit offsets, many blocks), and one query
// over many keys (a decoding step) through the split kernel of attention_decode.cu.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <tuple>

#include "core/bf16.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cudnn_api.h"
#include "kernels/cuda/kernels.h"
#include "tests/attention_cases.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda::MatmulPrecision;
using testing_util::AttentionCase;
using testing_util::AttentionData;
using cuda_test::bitwise_equal;
using cuda_test::close;
using cuda_test::DeviceArray;

struct Outputs {
  std::vector<float> o, lse, dq, dk, dv;
};

Outputs cpu_attention(const AttentionData& d) {
  cpu::CpuOps<float> cpu;
  const AttentionShape s = d.shape();
  Outputs r;
  r.o.resize(d.q.size());
  r.lse.resize(size_t(s.batch * s.heads * s.nq));
  r.dq.resize(d.q.size());
  r.dk.resize(d.k.size());
  r.dv.resize(d.v.size());
  cpu.attention_forward(s, d.q.data(), d.k.data(), d.v.data(), r.o.data(), r.lse.data());
  cpu.attention_backward(s, d.q.data(), d.k.data(), d.v.data(), r.o.data(), d.d_o.data(),
                         r.lse.data(), r.dq.data(), r.dk.data(), r.dv.data());
  return r;
}

// A forward in place of Ops::attention_forward (a kernel called directly).
using Forward = std::function<void(const AttentionShape& s, const float* q, const float* k,
                                   const float* v, float* o, float* lse)>;

// A case's inputs on the device, and its shape with the device's positions and mask.
struct DeviceCase {
  DeviceArray<float> q, k, v, d_o;
  DeviceArray<int64_t> q_pos, k_pos;
  DeviceArray<uint8_t> keep;
  AttentionShape s;
  DeviceCase(Ops<float>& ops, const AttentionData& d)
      : q(ops, d.q), k(ops, d.k), v(ops, d.v), d_o(ops, d.d_o), q_pos(ops, d.q_pos),
        k_pos(ops, d.k_pos), keep(ops, d.keep.empty() ? std::vector<uint8_t>(1, 1) : d.keep),
        s(d.shape()) {
    s.q_pos = q_pos.get();
    s.k_pos = k_pos.get();
    s.k_keep = d.c.use_keep ? keep.get() : nullptr;
  }
};

// Runs forward and backward on the GPU. The backward takes o and lse as given (here the
// CPU's, as it would take the merged ones of several ranks) unless `own` is set.
Outputs gpu_attention(Ops<float>& ops, const AttentionData& d, const Outputs* given,
                      cuda::AttentionKernel kernel = cuda::AttentionKernel::kBlocked,
                      const Forward& forward = nullptr) {
  DeviceCase dc(ops, d);
  const AttentionShape& s = dc.s;
  const DeviceArray<float>& q = dc.q;
  const DeviceArray<float>& k = dc.k;
  const DeviceArray<float>& v = dc.v;
  const DeviceArray<float>& d_o = dc.d_o;
  const float nan = std::nanf("");
  // Outputs start as NaN: every entry must be written.
  DeviceArray<float> o(ops, d.q.size(), nan), lse(ops, size_t(s.batch * s.heads * s.nq), nan);
  DeviceArray<float> dq(ops, d.q.size(), nan), dk(ops, d.k.size(), nan), dv(ops, d.v.size(), nan);
  cuda::set_attention_key_block(ops, d.c.key_block);
  cuda::set_attention_kernel(ops, kernel);
  if (forward)
    forward(s, q.get(), k.get(), v.get(), o.get(), lse.get());
  else
    ops.attention_forward(s, q.get(), k.get(), v.get(), o.get(), lse.get());
  Outputs r;
  r.o = o.host();
  r.lse = lse.host();
  if (given) {
    o.set(given->o);
    lse.set(given->lse);
  }
  ops.attention_backward(s, q.get(), k.get(), v.get(), o.get(), d_o.get(), lse.get(), dq.get(),
                         dk.get(), dv.get());
  r.dq = dq.host();
  r.dk = dk.host();
  r.dv = dv.host();
  cuda::set_attention_key_block(ops, 0);
  cuda::set_attention_kernel(ops, cuda::AttentionKernel::kAuto);
  return r;
}

// Every output within tol of the reference's (close(): relative to its largest entry).
void expect_close(const Outputs& got, const Outputs& want, double tol) {
  EXPECT_TRUE(close(got.o, want.o, tol)) << "o";
  EXPECT_TRUE(close(got.lse, want.lse, tol)) << "lse";
  EXPECT_TRUE(close(got.dq, want.dq, tol)) << "dq";
  EXPECT_TRUE(close(got.dk, want.dk, tol)) << "dk";
  EXPECT_TRUE(close(got.dv, want.dv, tol)) << "dv";
}

// Every output of two runs the same bits.
void expect_same_bits(const Outputs& a, const Outputs& b) {
  EXPECT_TRUE(bitwise_equal(a.o, b.o)) << "o";
  EXPECT_TRUE(bitwise_equal(a.lse, b.lse)) << "lse";
  EXPECT_TRUE(bitwise_equal(a.dq, b.dq)) << "dq";
  EXPECT_TRUE(bitwise_equal(a.dk, b.dk)) << "dk";
  EXPECT_TRUE(bitwise_equal(a.dv, b.dv)) << "dv";
}

// Keys no query sees: gradients exactly zero (not merely small). Returns how many.
int64_t expect_unseen_keys_zero(const AttentionData& d, const Outputs& got) {
  const int64_t ld = d.ld();
  int64_t unseen = 0, nonzero = 0;
  for (int64_t b = 0; b < d.c.batch; ++b)
    for (int64_t j = 0; j < d.c.nk; ++j) {
      if (d.key_seen(b, j)) continue;
      ++unseen;
      for (int64_t e = 0; e < ld; ++e) {
        const size_t at = size_t((b * d.c.nk + j) * ld + e);
        nonzero += got.dk[at] != 0.0f || got.dv[at] != 0.0f;
      }
    }
  EXPECT_EQ(nonzero, 0) << "of " << unseen << " unseen keys";
  return unseen;
}

class CudaAttentionTest
    : public ::testing::TestWithParam<std::tuple<MatmulPrecision, AttentionCase>> {
 protected:
  void SetUp() override { PAR_SKIP_WITHOUT_GPU(); }
};

TEST_P(CudaAttentionTest, MatchesTheCpu) {
  const auto [precision, c] = GetParam();
  const AttentionData d = testing_util::make_attention_data(c, 21);
  const Outputs want = cpu_attention(d);
  auto ops = cuda::make_cuda_ops(0, precision);
  const Outputs got = gpu_attention(*ops, d, &want);
  const double tol = cuda_test::attention_tol(precision);
  expect_close(got, want, tol);

  expect_unseen_keys_zero(d, got);
  // Queries that see no key get o = 0 and lse = -inf, which close() compared exactly; the
  // case made for them must have some.
  int64_t empty_rows = 0;
  for (float l : want.lse) empty_rows += std::isinf(l);
  if (c.name == "rows_without_keys") {
    EXPECT_GT(empty_rows, 0);
  }
}

// The fused kernels (tf32 and bf16, head sizes 16, 32, 64, and 128 in the forward; the
// rest, and fp32, fall back to the blocked path, which must then give the same as without
// the request). Their products round like the blocked path's, so the tolerances are the
// same.
TEST_P(CudaAttentionTest, FusedMatchesTheCpu) {
  const auto [precision, c] = GetParam();
  const AttentionData d = testing_util::make_attention_data(c, 24);
  const Outputs want = cpu_attention(d);
  auto ops = cuda::make_cuda_ops(0, precision);
  const Outputs got = gpu_attention(*ops, d, &want, cuda::AttentionKernel::kFused);
  const double tol = cuda_test::attention_tol(precision);
  expect_close(got, want, tol);
  expect_unseen_keys_zero(d, got);
  const Outputs again = gpu_attention(*ops, d, &want, cuda::AttentionKernel::kFused);
  {
    SCOPED_TRACE("second run");
    expect_same_bits(got, again);
  }
}

TEST_P(CudaAttentionTest, IsBitwiseReproducible) {
  const auto [precision, c] = GetParam();
  const AttentionData d = testing_util::make_attention_data(c, 22);
  auto ops = cuda::make_cuda_ops(0, precision);
  const Outputs a = gpu_attention(*ops, d, nullptr);
  const Outputs b = gpu_attention(*ops, d, nullptr);
  expect_same_bits(a, b);
}

std::string case_name(
    const ::testing::TestParamInfo<std::tuple<MatmulPrecision, AttentionCase>>& info) {
  return std::get<1>(info.param).name + "_" + cuda::precision_name(std::get<0>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaAttentionTest,
    ::testing::Combine(::testing::Values(MatmulPrecision::kFloat32, MatmulPrecision::kTF32,
                                         MatmulPrecision::kBF16),
                       ::testing::ValuesIn(testing_util::attention_cases())),
    case_name);

// cuDNN's flash attention (bf16), for every case whose head size it takes (a multiple of
// 8): the prefix it runs with gathered keys, the diagonal the blocked path runs, their
// merge; rows and whole examples with no visible key. Its bf16 outputs (o and the
// gradients are rounded to bf16, 2^-9 relative) stay within the bf16 attention tolerance.
// The other head sizes are refused with the reason. Two runs give the same bits (the
// deterministic backward); the backward that adds dQ with atomics is within tolerance too.
// (few_queries_long's forward is a decoding step's shape, which the split kernel takes
// under kCudnn too: check_split_kernel.)
class CudnnAttentionTest : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override { PAR_SKIP_WITHOUT_GPU(); }
};

TEST_P(CudnnAttentionTest, MatchesTheCpu) {
  const AttentionCase c = GetParam();
  const MatmulPrecision precision = MatmulPrecision::kBF16;
  ASSERT_NE(cuda::cudnn_api(), nullptr) << "no cuDNN: " << cuda::cudnn_unavailable_reason();
  const AttentionData d = testing_util::make_attention_data(c, 25);
  auto ops = cuda::make_cuda_ops(0, precision);
  if (c.head_dim % 8 != 0) {
    try {
      gpu_attention(*ops, d, nullptr, cuda::AttentionKernel::kCudnn);
      FAIL() << "cuDNN ran heads of " << c.head_dim;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("does not take heads of"), std::string::npos)
          << e.what();
    }
    return;
  }
  const Outputs want = cpu_attention(d);
  const Outputs got = gpu_attention(*ops, d, &want, cuda::AttentionKernel::kCudnn);
  const double tol = cuda_test::attention_tol(precision);
  expect_close(got, want, tol);
  expect_unseen_keys_zero(d, got);
  const Outputs again = gpu_attention(*ops, d, &want, cuda::AttentionKernel::kCudnn);
  {
    SCOPED_TRACE("second run");
    expect_same_bits(got, again);
  }
  // The backward that adds dQ up with atomics (what a long cross-attention takes): within
  // the same tolerance, and o and lse still the bits of the run above (the same forward).
  cuda::set_cudnn_deterministic_workspace_max(*ops, 0);
  const Outputs atomic = gpu_attention(*ops, d, &want, cuda::AttentionKernel::kCudnn);
  SCOPED_TRACE("dQ added up with atomics");
  expect_close(atomic, want, tol);
  expect_unseen_keys_zero(d, atomic);
  EXPECT_TRUE(bitwise_equal(atomic.o, got.o)) << "o";
  EXPECT_TRUE(bitwise_equal(atomic.lse, got.lse)) << "lse";
}

INSTANTIATE_TEST_SUITE_P(Cases, CudnnAttentionTest,
                         ::testing::ValuesIn(testing_util::attention_cases()),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           return info.param.name;
                         });

// cuDNN's plans are kept per thread (cudnn_plans.h): a second backend on the same thread
// builds none and gives the first's bits; another thread builds its own, with the same
// bits; a backend destroyed in between leaves nothing the next one trips on (the handle
// is left on its stream no longer).
TEST(CudnnPlans, ThreadsKeepTheirPlansForTheirNextBackends) {
  PAR_SKIP_WITHOUT_GPU();
  ASSERT_NE(cuda::cudnn_api(), nullptr) << "no cuDNN: " << cuda::cudnn_unavailable_reason();
  // A shape no other test of this file uses, so the first run must build its plans.
  AttentionCase c{"plans", 2, 41, 173, 2, 32, 173 - 41, 0.2, 0};
  const AttentionData d = testing_util::make_attention_data(c, 31);
  const auto run = [&d] {
    auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
    return gpu_attention(*ops, d, nullptr, cuda::AttentionKernel::kCudnn);
  };
  const int64_t before = cuda::cudnn_plans_built();
  const Outputs first = run();
  const int64_t after_first = cuda::cudnn_plans_built();
  EXPECT_GT(after_first, before);
  const Outputs second = run();
  EXPECT_EQ(cuda::cudnn_plans_built(), after_first) << "the same thread built a plan again";
  {
    SCOPED_TRACE("a second backend on the same thread");
    expect_same_bits(first, second);
  }
  Outputs other;
  std::string error;
  std::thread([&] {
    try {
      other = run();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }).join();
  ASSERT_EQ(error, "");
  EXPECT_GT(cuda::cudnn_plans_built(), after_first) << "another thread used this one's plans";
  SCOPED_TRACE("another thread");
  expect_same_bits(first, other);
}

// Under --attention auto a kind of call takes its first two key counts to cuDNN (a plan
// each, forward and backward); a third count runs on the blocked path, with its bits, and
// builds no plan (cudnn_key_counts.h).
TEST(CudnnKeyCounts, AThirdKeyCountTakesTheBlockedPath) {
  PAR_SKIP_WITHOUT_GPU();
  ASSERT_NE(cuda::cudnn_api(), nullptr) << "no cuDNN: " << cuda::cudnn_unavailable_reason();
  auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
  // Shapes no other test uses (7 queries, 3 heads of 24), so each count builds its plans.
  for (const int64_t nk : {100, 120, 140}) {
    SCOPED_TRACE(::testing::Message() << nk << " keys");
    AttentionCase c{"counts", 1, 7, nk, 3, 24, nk - 7, 0.0, 0};
    const AttentionData d = testing_util::make_attention_data(c, 41);
    const int64_t before = cuda::cudnn_plans_built();
    const Outputs got = gpu_attention(*ops, d, nullptr, cuda::AttentionKernel::kAuto);
    const int64_t built = cuda::cudnn_plans_built() - before;
    if (nk < 140) {
      EXPECT_EQ(built, 2) << "the forward's and the backward's plans";
      continue;
    }
    EXPECT_EQ(built, 0);
    const Outputs blocked = gpu_attention(*ops, d, nullptr, cuda::AttentionKernel::kBlocked);
    expect_same_bits(got, blocked);
  }
}

// A 131072-key context: 64-bit offsets, 16 blocks of 8192 keys, a mask over all of it.
TEST(CudaAttentionLong, ContextOf131072Keys) {
  PAR_SKIP_WITHOUT_GPU();
  AttentionCase c{"long", 1, 64, 131072, 2, 16, 131072 - 64, 0.1, 8192};
  const AttentionData d = testing_util::make_attention_data(c, 23);
  const Outputs want = cpu_attention(d);
  auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kFloat32);
  const Outputs got = gpu_attention(*ops, d, &want);
  expect_close(got, want, 3e-5);
}

// The same through cuDNN in bf16: a prefix of ~118,000 gathered keys (10% dropped) and the
// 64-key diagonal.
TEST(CudaAttentionLong, ContextOf131072KeysThroughCudnn) {
  PAR_SKIP_WITHOUT_GPU();
  ASSERT_NE(cuda::cudnn_api(), nullptr) << "no cuDNN: " << cuda::cudnn_unavailable_reason();
  AttentionCase c{"long", 1, 64, 131072, 2, 16, 131072 - 64, 0.1, 8192};
  const AttentionData d = testing_util::make_attention_data(c, 26);
  const Outputs want = cpu_attention(d);
  auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
  const Outputs got = gpu_attention(*ops, d, &want, cuda::AttentionKernel::kCudnn);
  const double tol = cuda_test::attention_tol(MatmulPrecision::kBF16);
  expect_close(got, want, tol);
}

// One query (a decoding step): several splits of kern::kDecodeKeys keys with a partial last
// one, exactly one split, splits whose keys are all invisible (a query in the middle),
// an example with no visible key, odd and wide heads, no mask (the latents' cache).
std::vector<AttentionCase> one_query_cases() {
  const int64_t split = cuda::kern::kDecodeKeys;
  return {
      {"one_key", 2, 1, 1, 2, 32, 0, 0.0, 0},
      {"one_split", 1, 1, 200, 4, 64, 199, 0.2, 0},
      {"split_and_one_key", 1, 1, split + 1, 2, 64, split, 0.1, 0},
      {"split_boundary", 2, 1, split, 2, 32, split - 1, 0.1, 0},
      {"many_splits", 2, 1, 12 * split + 7, 3, 64, 12 * split + 6, 0.3, 0},
      {"query_in_the_middle", 1, 1, 4 * split, 2, 16, 2 * split - 3, 0.0, 0},
      {"dead_example", 2, 1, 600, 2, 20, 599, 0.2, 0, true, true},
      {"odd_head", 1, 1, 513, 3, 7, 512, 0.1, 0, true, false, true},
      {"wide_head", 1, 1, 700, 1, 160, 699, 0.1, 0},
      {"latent_cache", 1, 1, 37, 4, 64, 36, 0.0, 0, false},
  };
}

// o and lse of the split kernel called directly, for the data of `d`: the one-query kernel,
// or the one for a few queries.
Outputs split_forward(Ops<float>& ops, const AttentionData& d, int rounding) {
  const auto st = static_cast<cudaStream_t>(cuda::cuda_stream(ops));
  return gpu_attention(ops, d, nullptr, cuda::AttentionKernel::kBlocked,
                       [&](const AttentionShape& s, const float* q, const float* k,
                           const float* v, float* o, float* lse) {
                         DeviceArray<float> scratch(
                             ops, cuda::kern::decode_attention_scratch_floats(s));
                         if (s.nq == 1) {
                           cuda::kern::attention_forward_decode(st, s, q, k, v, o, lse, rounding,
                                                                scratch.get());
                           return;
                         }
                         EXPECT_TRUE(cuda::kern::decode_queries_cover(s));
                         cuda::kern::attention_forward_decode_queries(st, s, q, k, v, o, lse,
                                                                      rounding, scratch.get());
                       });
}

// o and lse of attention_forward alone under `kernel`.
Outputs forward_only(Ops<float>& ops, const AttentionData& d, cuda::AttentionKernel kernel) {
  DeviceCase dc(ops, d);
  const AttentionShape& s = dc.s;
  const float nan = std::nanf("");
  DeviceArray<float> o(ops, d.q.size(), nan), lse(ops, size_t(s.batch * s.heads * s.nq), nan);
  cuda::set_attention_kernel(ops, kernel);
  ops.attention_forward(s, dc.q.get(), dc.k.get(), dc.v.get(), o.get(), lse.get());
  cuda::set_attention_kernel(ops, cuda::AttentionKernel::kAuto);
  Outputs r;
  r.o = o.host();
  r.lse = lse.host();
  return r;
}

// attention_forward under kAuto and kFused for a call the split kernels take: the CPU's o
// and lse (and, through the backward that takes them, its gradients), and the same bits as
// the split kernel called directly -- so the call did take it. Under kCudnn too (bf16): a
// decoding step never builds a cuDNN plan, whose shape would change every token.
void check_split_kernel(MatmulPrecision precision, const AttentionCase& c, uint64_t seed) {
  const AttentionData d = testing_util::make_attention_data(c, seed);
  const Outputs want = cpu_attention(d);
  auto gpu = cuda::make_cuda_ops(0, precision);
  const int rounding = precision == MatmulPrecision::kFloat32 ? 0
                       : precision == MatmulPrecision::kTF32  ? 1
                                                              : 2;
  const Outputs direct = split_forward(*gpu, d, rounding);
  for (auto kernel : {cuda::AttentionKernel::kAuto, cuda::AttentionKernel::kFused}) {
    const Outputs got = gpu_attention(*gpu, d, &want, kernel);
    expect_close(got, want, cuda_test::attention_tol(precision));
    EXPECT_TRUE(bitwise_equal(got.o, direct.o)) << "o: not the split kernel's";
    EXPECT_TRUE(bitwise_equal(got.lse, direct.lse)) << "lse: not the split kernel's";
  }
  if (precision == MatmulPrecision::kBF16) {
    SCOPED_TRACE("--attention cudnn");
    const int64_t plans = cuda::cudnn_plans_built();
    const Outputs got = forward_only(*gpu, d, cuda::AttentionKernel::kCudnn);
    EXPECT_TRUE(bitwise_equal(got.o, direct.o)) << "o: not the split kernel's";
    EXPECT_TRUE(bitwise_equal(got.lse, direct.lse)) << "lse: not the split kernel's";
    EXPECT_EQ(cuda::cudnn_plans_built(), plans);
  }
  if (c.dead_example) {  // no visible key: o = 0 and lse = -infinity, as the CPU's
    EXPECT_EQ(direct.lse[0], -INFINITY);
  }
}

class CudaOneQueryAttentionTest : public CudaAttentionTest {};

TEST_P(CudaOneQueryAttentionTest, SplitKernelMatchesTheCpu) {
  const auto& [precision, c] = GetParam();
  check_split_kernel(precision, c, 71);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaOneQueryAttentionTest,
    ::testing::Combine(::testing::Values(MatmulPrecision::kFloat32, MatmulPrecision::kTF32,
                                         MatmulPrecision::kBF16),
                       ::testing::ValuesIn(one_query_cases())),
    case_name);

// A few queries over the same keys (several samples' step over their shared cache): 2 to
// 16 queries over at least kDecodeQueriesMinKeys keys, which the split kernel for a few
// queries takes. Splits no query sees, an example with no visible key, odd and wide heads.
std::vector<AttentionCase> few_queries_cases() {
  const int64_t split = cuda::kern::kDecodeKeys, least = cuda::kern::kDecodeQueriesMinKeys;
  return {
      {"two_queries", 1, 2, least, 4, 64, least - 1, 0.1, 0},
      {"sixteen_sparse", 2, 16, 1100, 2, 20, 300, 0.3, 0, true, true},
      {"queries_in_the_middle", 2, 8, 4 * split, 2, 64, 2 * split - 3, 0.0, 0},
      {"odd_head_queries", 1, 3, 1500, 3, 7, 1400, 0.1, 0, true, false, true},
      {"wide_head_queries", 1, 4, 1300, 1, 160, 1296, 0.1, 0},
  };
}

class CudaFewQueriesAttentionTest : public CudaAttentionTest {};

TEST_P(CudaFewQueriesAttentionTest, SplitKernelMatchesTheCpu) {
  const auto& [precision, c] = GetParam();
  check_split_kernel(precision, c, 73);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaFewQueriesAttentionTest,
    ::testing::Combine(::testing::Values(MatmulPrecision::kFloat32, MatmulPrecision::kTF32,
                                         MatmulPrecision::kBF16),
                       ::testing::ValuesIn(few_queries_cases())),
    case_name);

// One query over a 131072-key context (the cached step of gpu-100m-131k): 512 splits.
TEST(CudaAttentionLong, OneQueryOver131072KeysSplitAcrossTheGpu) {
  PAR_SKIP_WITHOUT_GPU();
  AttentionCase c{"long_one_query", 2, 1, 131072, 4, 64, 131071, 0.1, 0};
  const AttentionData d = testing_util::make_attention_data(c, 29);
  const Outputs want = cpu_attention(d);
  for (MatmulPrecision p : {MatmulPrecision::kFloat32, MatmulPrecision::kBF16}) {
    auto ops = cuda::make_cuda_ops(0, p);
    expect_close(gpu_attention(*ops, d, &want, cuda::AttentionKernel::kAuto), want,
                 cuda_test::attention_tol(p));
  }
}

}  // namespace
}  // namespace par

namespace par {
namespace {

class CudaBf16KeysInBlocks : public cuda_test::CudaTest {};

// An attention over bfloat16 keys and values that cuDNN does not take (here: its positions
// not given as ranges, as a decoder's refill over its cross cache) and that holds more keys
// than one widened block (2 examples x 70000 keys x 128: two blocks): widened a block at a
// time and merged by log-sum-exp, it is the float32 attention on the widened keys within
// float32 rounding. Queries at the start see the first block only, the last ones both;
// some keys are not kept. The blocked kernels, so that neither call goes to the split
// kernel for a few queries (which would read the bfloat16 keys as they lie and never reach
// the merge), in float32, so that both sides' products are exact and only the blocks' merge
// differs (bf16 products would round the probabilities relative to each block's maximum).
TEST_F(CudaBf16KeysInBlocks, MergeIsTheAttentionOverAllKeys) {
  auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kFloat32);
  cuda::set_attention_kernel(*ops, cuda::AttentionKernel::kBlocked);
  AttentionShape s{2, 5, 70000, 2, 64};
  s.scale = 1.0 / 8;
  const int64_t ld = s.heads * s.head_dim, nk = s.batch * s.nk * ld;
  std::vector<int64_t> q_pos = {10, 30000, 65535, 65536, 69999}, k_pos(size_t(s.nk));
  for (int64_t j = 0; j < s.nk; ++j) k_pos[size_t(j)] = j;
  std::vector<uint8_t> keep(size_t(s.batch * s.nk), 1);
  for (size_t j = 0; j < keep.size(); j += 7) keep[j] = 0;
  std::vector<uint16_t> k16, v16;
  for (float x : cuda_test::random_vector<float>(nk, 90, 1.5)) k16.push_back(bf16_bits(x));
  for (float x : cuda_test::random_vector<float>(nk, 91)) v16.push_back(bf16_bits(x));
  std::vector<float> kw, vw;
  for (uint16_t b : k16) kw.push_back(bf16_float(b));
  for (uint16_t b : v16) vw.push_back(bf16_float(b));
  const auto q = cuda_test::random_vector<float>(s.batch * s.nq * ld, 92, 1.5);
  DeviceArray<float> gq(*ops, q), gkw(*ops, kw), gvw(*ops, vw);
  DeviceArray<uint16_t> gk(*ops, k16), gv(*ops, v16);
  DeviceArray<int64_t> gqp(*ops, q_pos), gkp(*ops, k_pos);
  DeviceArray<uint8_t> gkeep(*ops, keep);
  s.q_pos = gqp.get();
  s.k_pos = gkp.get();
  s.k_keep = gkeep.get();
  const size_t rows = size_t(s.batch * s.nq * ld), stats = size_t(s.batch * s.heads * s.nq);
  DeviceArray<float> o(*ops, rows), lse(*ops, stats), o_t(*ops, rows), lse_t(*ops, stats);
  ops->attention_forward_bf16_kv(s, gq.get(), gk.get(), gv.get(), o.get(), lse.get());
  ops->attention_forward(s, gq.get(), gkw.get(), gvw.get(), o_t.get(), lse_t.get());
  EXPECT_TRUE(close(o.host(), o_t.host(), 1e-5));
  EXPECT_TRUE(close(lse.host(), lse_t.host(), 1e-5));
}

}  // namespace
}  // namespace par
