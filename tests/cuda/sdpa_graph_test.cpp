// The cuDNN flash-attention graphs (kernels/cuda/sdpa_graph.h) on the CPU, without a GPU:
// their structure (every tensor defined before use and written once, the bound tensors
// the caller binds) and their meaning, evaluated by tests/cuda/sdpa_graph_interpreter.h
// against the CPU backend's attention in double precision -- forward and backward, with
// per-example key counts (the padding mask) and the causal mask.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/sdpa_graph.h"
#include "tests/cuda/sdpa_graph_interpreter.h"
#include "tests/test_util.h"

namespace par {
namespace {

namespace sdpa = cuda::sdpa;
using cuda_test::round_bf16;

void expect_well_formed(const sdpa::Graph& g, const std::set<int64_t>& outputs) {
  std::set<int64_t> uids, defined, written;
  for (const sdpa::Tensor& t : g.tensors) {
    EXPECT_TRUE(uids.insert(t.uid).second) << "uid " << t.uid << " twice";
    EXPECT_EQ(t.dims.size(), t.strides.size()) << t.name;
    if (!t.is_virtual && !outputs.count(t.uid)) defined.insert(t.uid);  // inputs, scalars
    if (t.by_value) {
      EXPECT_EQ(t.dims, (std::vector<int64_t>{1, 1, 1, 1})) << t.name;
    }
    if (t.is_virtual) {
      EXPECT_GE(t.uid, int64_t(sdpa::kFirstVirtual)) << t.name;
    }
  }
  for (const sdpa::Op& op : g.ops) {
    for (int64_t in : {op.x, op.b, op.t, op.m_override, op.n_override, op.k_override})
      if (in) {
        EXPECT_TRUE(defined.count(in)) << op.name << " reads " << in << " before it exists";
      }
    EXPECT_TRUE(uids.count(op.y)) << op.name;
    EXPECT_TRUE(written.insert(op.y).second) << op.name << " writes " << op.y << " again";
    defined.insert(op.y);
  }
  for (int64_t o : outputs) {
    EXPECT_TRUE(written.count(o)) << "output " << o << " never written";
  }
  for (const sdpa::Tensor& t : g.tensors)
    if (t.is_virtual) {
      EXPECT_TRUE(written.count(t.uid)) << t.name << " never written";
    }
}

TEST(SdpaGraph, ForwardAndBackwardAreWellFormed) {
  for (bool causal : {false, true}) {
    sdpa::Dims d{2, 3, 5, 7, 16, 0.25, causal};
    const sdpa::Graph f = sdpa::describe_forward(d);
    expect_well_formed(f, {sdpa::kO, sdpa::kStats});
    EXPECT_EQ(f.bound_uids(), (std::vector<int64_t>{sdpa::kQ, sdpa::kK, sdpa::kV, sdpa::kO,
                                                    sdpa::kStats, sdpa::kSeqLenQ,
                                                    sdpa::kSeqLenKV}));
    const sdpa::Graph b = sdpa::describe_backward(d);
    expect_well_formed(b, {sdpa::kDQ, sdpa::kDK, sdpa::kDV, sdpa::kSoftmaxSum});
    EXPECT_EQ(b.bound_uids(),
              (std::vector<int64_t>{sdpa::kQ, sdpa::kK, sdpa::kV, sdpa::kO, sdpa::kStats,
                                    sdpa::kDO, sdpa::kDQ, sdpa::kDK, sdpa::kDV, sdpa::kSeqLenQ,
                                    sdpa::kSeqLenKV, sdpa::kSoftmaxSum}));
  }
  // The backward whose dQ cuDNN adds up with atomics: into a float32 accumulator it binds,
  // then into dQ.
  for (bool causal : {false, true}) {
    sdpa::Dims d{2, 3, 5, 7, 16, 0.25, causal};
    d.deterministic = false;
    const sdpa::Graph b = sdpa::describe_backward(d);
    expect_well_formed(b, {sdpa::kDQ, sdpa::kDK, sdpa::kDV, sdpa::kSoftmaxSum, sdpa::kDQAccum});
    EXPECT_EQ(b.bound_uids(),
              (std::vector<int64_t>{sdpa::kQ, sdpa::kK, sdpa::kV, sdpa::kO, sdpa::kStats,
                                    sdpa::kDO, sdpa::kDQ, sdpa::kDK, sdpa::kDV, sdpa::kSeqLenQ,
                                    sdpa::kSeqLenKV, sdpa::kSoftmaxSum, sdpa::kDQAccum}));
    EXPECT_EQ(b.tensor(sdpa::kDQAccum).type, sdpa::DType::kFloat);
  }
  // cuDNN 9.0-9.9 take the padding mask twice in the backward; later versions once, and
  // before 9.10 the masked score is the lowest float rather than -inf.
  sdpa::Dims old{1, 1, 4, 4, 8, 1.0, false, 90500};
  sdpa::Dims now{1, 1, 4, 4, 8, 1.0, false, 91400};
  EXPECT_GT(sdpa::describe_backward(old).ops.size(), sdpa::describe_backward(now).ops.size());
  for (const sdpa::Tensor& t : sdpa::describe_forward(old).tensors)
    if (t.name == "masked") {
      EXPECT_TRUE(std::isfinite(t.value));
    }
  for (const sdpa::Tensor& t : sdpa::describe_forward(now).tensors)
    if (t.name == "masked") {
      EXPECT_TRUE(std::isinf(t.value) && t.value < 0);
    }
}

TEST(SdpaGraph, HeadSizes) {
  EXPECT_TRUE(sdpa::head_dim_supported(64, 8));
  EXPECT_TRUE(sdpa::head_dim_supported(128, 8));
  EXPECT_FALSE(sdpa::head_dim_supported(256, 8));
  EXPECT_TRUE(sdpa::head_dim_supported(256, 9));
  EXPECT_FALSE(sdpa::head_dim_supported(20, 9));
  EXPECT_FALSE(sdpa::head_dim_supported(0, 9));
}

// cuDNN 9.10.0 and 9.10.1 are refused (known bf16 flash-attention bugs); their neighbours
// are not.
TEST(SdpaGraph, RefusesTheCudnnVersionsWithKnownBugs) {
  EXPECT_NE(sdpa::version_refusal(91000), "");
  EXPECT_NE(sdpa::version_refusal(91001), "");
  for (int64_t fine : {90000, 90800, 91002, 91100, 91400, 91900})
    EXPECT_EQ(sdpa::version_refusal(fine), "") << fine;
}

// One case: random bf16 inputs, keys per example given (the rest is padding).
struct Case {
  int64_t B, H, nq, nk, D;
  bool causal;
  std::vector<int32_t> keys;  // seq_len_kv per example
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.B << "x" << c.H << " heads, " << c.nq << " queries, " << c.nk << " keys, D "
      << c.D << (c.causal ? ", causal" : "");
}

std::vector<double> bf16_vector(int64_t n, uint64_t seed) {
  std::vector<double> v;
  for (float x : testing_util::random_vector<float>(n, seed)) v.push_back(round_bf16(x));
  return v;
}

// The CPU backend's attention on the same inputs: key j of example b is visible to query i
// iff j < keys[b] and (causal: j <= i).
struct Reference {
  std::vector<double> o, lse, dq, dk, dv;
};

Reference reference(const Case& c, const std::vector<double>& q, const std::vector<double>& k,
                    const std::vector<double>& v, const std::vector<double>& d_o) {
  cpu::CpuOps<double> ops;
  std::vector<int64_t> q_pos(size_t(c.nq)), k_pos(size_t(c.nk));
  for (int64_t i = 0; i < c.nq; ++i) q_pos[size_t(i)] = c.causal ? i : c.nk;
  for (int64_t j = 0; j < c.nk; ++j) k_pos[size_t(j)] = j;
  std::vector<uint8_t> keep(size_t(c.B * c.nk));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t j = 0; j < c.nk; ++j) keep[size_t(b * c.nk + j)] = j < c.keys[size_t(b)];
  AttentionShape s{c.B, c.nq, c.nk, c.H, c.D, q_pos.data(), k_pos.data(), keep.data(),
                   1.0 / std::sqrt(double(c.D))};
  Reference r;
  r.o.resize(q.size());
  r.lse.resize(size_t(c.B * c.H * c.nq));
  r.dq.resize(q.size());
  r.dk.resize(k.size());
  r.dv.resize(v.size());
  ops.attention_forward(s, q.data(), k.data(), v.data(), r.o.data(), r.lse.data());
  ops.attention_backward(s, q.data(), k.data(), v.data(), r.o.data(), d_o.data(), r.lse.data(),
                         r.dq.data(), r.dk.data(), r.dv.data());
  return r;
}

// Largest |got - want| over the largest |want|, or over 1 where all of want is smaller
// (inputs are of order 1: with a single visible key the exact dq and dk are 0, and what
// remains is the rounding of O to bf16).
double rel_error(const std::vector<double>& got, const std::vector<double>& want) {
  double worst = 0, ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::abs(got[i] - want[i]));
    ref = std::max(ref, std::abs(want[i]));
  }
  return worst / std::max(ref, 1.0);
}

// Each example's rows of a [B, nk, ld] tensor, then `rows - nk` rows of `filler`: K, V,
// dK and dV as a call that reads them in place finds them (Dims::kv_example_rows = rows).
std::vector<double> taller(const Case& c, const std::vector<double>& packed, int64_t rows,
                           double filler) {
  const int64_t ld = c.H * c.D;
  std::vector<double> t(size_t(c.B * rows * ld), filler);
  for (int64_t b = 0; b < c.B; ++b)
    std::copy(packed.begin() + b * c.nk * ld, packed.begin() + (b + 1) * c.nk * ld,
              t.begin() + b * rows * ld);
  return t;
}

// Both graphs of the case on random bf16 inputs against the reference attention, with K, V
// and their gradients in [B, rows, ld] tensors (rows = nk: packed); the backward's bound
// tensors are returned.
std::map<int64_t, std::vector<double>> expect_graphs_match(const Case& c, int64_t rows,
                                                           bool deterministic = true) {
  const int64_t ld = c.H * c.D;
  const auto q = bf16_vector(c.B * c.nq * ld, 1), k = bf16_vector(c.B * c.nk * ld, 2);
  const auto v = bf16_vector(c.B * c.nk * ld, 3), d_o = bf16_vector(c.B * c.nq * ld, 4);
  const Reference want = reference(c, q, k, v, d_o);
  // Rows that are not the call's hold numbers that would show in any sum they entered.
  auto kv = [&](const std::vector<double>& packed, double filler) {
    return taller(c, packed, rows, filler);
  };

  sdpa::Dims d{c.B, c.H, c.nq, c.nk, c.D, 1.0 / std::sqrt(double(c.D)), c.causal};
  if (rows != c.nk) d.kv_example_rows = rows;
  d.deterministic = deterministic;
  std::vector<double> seq_q(size_t(c.B), double(c.nq)), seq_kv;
  for (int32_t n : c.keys) seq_kv.push_back(n);

  std::map<int64_t, std::vector<double>> fwd{
      {sdpa::kQ, q}, {sdpa::kK, kv(k, 1e30)}, {sdpa::kV, kv(v, 1e30)},
      {sdpa::kO, std::vector<double>(q.size(), NAN)},
      {sdpa::kStats, std::vector<double>(want.lse.size(), NAN)},
      {sdpa::kSeqLenQ, seq_q}, {sdpa::kSeqLenKV, seq_kv}};
  cuda_test::interpret(sdpa::describe_forward(d), fwd);
  // O is rounded to bf16 and so are the probabilities before P V: a few bf16 ulps.
  EXPECT_LT(rel_error(fwd[sdpa::kO], want.o), 1e-2);
  EXPECT_LT(rel_error(fwd[sdpa::kStats], want.lse), 1e-6);

  // The backward from the reference's own o (rounded, as the caller hands it over) and lse.
  std::vector<double> o_bf16;
  for (double x : want.o) o_bf16.push_back(round_bf16(x));
  std::map<int64_t, std::vector<double>> bwd{
      {sdpa::kQ, q}, {sdpa::kK, kv(k, 1e30)}, {sdpa::kV, kv(v, 1e30)}, {sdpa::kO, o_bf16},
      {sdpa::kDO, d_o}, {sdpa::kStats, want.lse}, {sdpa::kSeqLenQ, seq_q},
      {sdpa::kSeqLenKV, seq_kv},
      {sdpa::kDQ, std::vector<double>(q.size(), NAN)},
      {sdpa::kDK, kv(std::vector<double>(k.size(), NAN), 7.0)},
      {sdpa::kDV, kv(std::vector<double>(v.size(), NAN), 7.0)},
      {sdpa::kSoftmaxSum, std::vector<double>(want.lse.size(), NAN)}};
  if (!deterministic) bwd[sdpa::kDQAccum] = std::vector<double>(q.size(), NAN);
  cuda_test::interpret(sdpa::describe_backward(d), bwd);
  EXPECT_LT(rel_error(bwd[sdpa::kDQ], want.dq), 2e-2);
  // The rows past each example's keys keep what they held.
  EXPECT_LT(rel_error(bwd[sdpa::kDK], kv(want.dk, 7.0)), 2e-2);
  EXPECT_LT(rel_error(bwd[sdpa::kDV], kv(want.dv, 7.0)), 2e-2);
  return bwd;
}

class SdpaGraphMeaning : public ::testing::TestWithParam<Case> {};

TEST_P(SdpaGraphMeaning, MatchesTheReferenceAttention) {
  const Case c = GetParam();
  const int64_t ld = c.H * c.D;
  expect_graphs_match(c, c.nk, false);  // dQ through the accumulator
  std::map<int64_t, std::vector<double>> bwd = expect_graphs_match(c, c.nk);
  // Padding keys get no gradient.
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t j = c.keys[size_t(b)]; j < c.nk; ++j)
      for (int64_t e = 0; e < ld; ++e) {
        const size_t at = size_t((b * c.nk + j) * ld + e);
        ASSERT_EQ(bwd[sdpa::kDK][at], 0.0) << "example " << b << " key " << j;
        ASSERT_EQ(bwd[sdpa::kDV][at], 0.0) << "example " << b << " key " << j;
      }
}

// Keys and values read in place from taller tensors (Dims::kv_example_rows: the first nk of
// each example's `rows`, as the model stores them): the same results as from packed ones,
// the gradients written into those rows and no other.
TEST(SdpaGraph, ReadsKeysInPlaceFromTallerTensors) {
  expect_graphs_match(Case{2, 2, 5, 9, 8, false, {9, 9}}, 13);
  expect_graphs_match(Case{1, 3, 4, 12, 16, false, {12}}, 20);
  // With dQ added up in its accumulator: what a long cross-attention over keys kept in
  // bf16 with none masked takes.
  expect_graphs_match(Case{1, 3, 4, 12, 16, false, {12}}, 20, false);
}

// A forward whose keys run as S chunks (kernels/cuda/cudnn_key_splits.h): the packed graph
// of S * B examples of C = nk / S keys each, bound to the caller's [B, nk, ld] keys and
// values as they lie (chunk c of example b is element b * S + c), each chunk's key count
// stopping at the prefix's end, each example's queries repeated S times; the chunks'
// outputs (rounded to bf16) merged by their log-sum-exp are the attention over the prefix.
TEST(SdpaGraph, KeyChunksAsABatch) {
  const Case c{2, 2, 5, 12, 8, false, {10, 10}};  // every example's prefix: 10 of 12 rows
  const int64_t ld = c.H * c.D, keys = 10;
  const auto q = bf16_vector(c.B * c.nq * ld, 5), k = bf16_vector(c.B * c.nk * ld, 6);
  const auto v = bf16_vector(c.B * c.nk * ld, 7), d_o = bf16_vector(c.B * c.nq * ld, 8);
  const Reference want = reference(c, q, k, v, d_o);
  for (int64_t S : {2, 3, 4}) {
    SCOPED_TRACE(::testing::Message() << S << " chunks");
    const int64_t C = c.nk / S, n = c.B * S;
    std::vector<double> qs, seq_q(size_t(n), double(c.nq)), seq_kv;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = 0; j < S; ++j) {
        qs.insert(qs.end(), q.begin() + b * c.nq * ld, q.begin() + (b + 1) * c.nq * ld);
        seq_kv.push_back(double(std::clamp<int64_t>(keys - j * C, 0, C)));
      }
    // Rows past the prefix hold numbers that would show in any sum they entered.
    std::vector<double> kk = k, vv = v;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t e = (b * c.nk + keys) * ld; e < (b + 1) * c.nk * ld; ++e)
        kk[size_t(e)] = vv[size_t(e)] = 1e30;
    std::map<int64_t, std::vector<double>> fwd{
        {sdpa::kQ, qs}, {sdpa::kK, kk}, {sdpa::kV, vv},
        {sdpa::kO, std::vector<double>(size_t(n * c.nq * ld), NAN)},
        {sdpa::kStats, std::vector<double>(size_t(n * c.H * c.nq), NAN)},
        {sdpa::kSeqLenQ, seq_q}, {sdpa::kSeqLenKV, seq_kv}};
    cuda_test::interpret(
        sdpa::describe_forward(sdpa::Dims{n, c.H, c.nq, C, c.D, 1.0 / std::sqrt(double(c.D))}),
        fwd);
    std::vector<double> o(q.size()), lse(want.lse.size());
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t i = 0; i < c.nq; ++i) {
          auto stat = [&](int64_t j) {
            return fwd[sdpa::kStats][size_t(((b * S + j) * c.H + h) * c.nq + i)];
          };
          double m = -INFINITY, sum = 0;
          for (int64_t j = 0; j < S; ++j) m = std::max(m, stat(j));
          for (int64_t j = 0; j < S; ++j) sum += std::exp(stat(j) - m);
          lse[size_t((b * c.H + h) * c.nq + i)] = m + std::log(sum);
          for (int64_t e = 0; e < c.D; ++e) {
            double acc = 0;
            for (int64_t j = 0; j < S; ++j)
              acc += std::exp(stat(j) - m) *
                     fwd[sdpa::kO][size_t(((b * S + j) * c.nq + i) * ld + h * c.D + e)];
            o[size_t((b * c.nq + i) * ld + h * c.D + e)] = acc / sum;
          }
        }
    EXPECT_LT(rel_error(o, want.o), 1e-2);
    EXPECT_LT(rel_error(lse, want.lse), 1e-6);
  }
}

// The deterministic backward's workspace (every score's gradient in bf16, in tiles of 64 x
// 128) as cuDNN 9.19's plans report it, less their 256 bytes: for gpu-100m-131k's
// cross-attention 4,265,607,424 bytes, which is why its backward adds dQ with atomics,
// while its latent self-attention (32 MiB) and small calls stay deterministic.
TEST(SdpaGraph, DeterministicWhereTheWorkspaceIsSmall) {
  const sdpa::Dims cross{1, 16, 1024, 130049, 64};
  EXPECT_EQ(sdpa::deterministic_workspace_bytes(cross) + 256, 4265607424.0);
  EXPECT_FALSE(sdpa::backward_is_deterministic(cross));
  const sdpa::Dims self{1, 16, 1024, 1024, 64, 0.125, true};
  EXPECT_EQ(sdpa::deterministic_workspace_bytes(self), double(int64_t(32) << 20));
  EXPECT_TRUE(sdpa::backward_is_deterministic(self));
  EXPECT_TRUE(sdpa::backward_is_deterministic(sdpa::Dims{2, 2, 5, 9, 8}));
  // The bound: 8 x 16 heads x 1,024 x 1,024 is at it, one key block more is past it.
  EXPECT_TRUE(sdpa::backward_is_deterministic(sdpa::Dims{8, 16, 1024, 1024, 64}));
  EXPECT_FALSE(sdpa::backward_is_deterministic(sdpa::Dims{8, 16, 1024, 1025, 64}));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SdpaGraphMeaning,
    ::testing::Values(Case{2, 2, 5, 9, 8, false, {9, 6}}, Case{1, 3, 4, 12, 16, false, {1}},
                      Case{2, 2, 7, 7, 8, true, {7, 7}}, Case{1, 1, 6, 6, 32, true, {6}}));

}  // namespace
}  // namespace par
