// Blocked attention against a naive full-matrix attention, forward and backward, with
// PAD keys, cross-attend dropout masks, causal limits, several block sizes, one query per
// example (decoding: the one-query kernel) with keys at far positions, and one run at a
// 131072-token context (64-bit offsets).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>

#include "core/philox.h"
#include "kernels/cpu/attention_one_query.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::cast;
using testing_util::max_rel_err;
using testing_util::random_vector;

// Reference: materializes each query's whole score row, in double.
struct Naive {
  std::vector<double> o, lse, dq, dk, dv;
};

Naive naive_attention(const AttentionShape& s, const std::vector<double>& q,
                      const std::vector<double>& k, const std::vector<double>& v,
                      const std::vector<double>* d_o) {
  const int64_t D = s.head_dim, ld = s.heads * D;
  Naive r;
  r.o.assign(q.size(), 0.0);
  r.lse.assign(size_t(s.batch * s.heads * s.nq), -std::numeric_limits<double>::infinity());
  if (d_o) {
    r.dq.assign(q.size(), 0.0);
    r.dk.assign(k.size(), 0.0);
    r.dv.assign(v.size(), 0.0);
  }
  std::vector<double> p(size_t(s.nk));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.nq; ++i) {
        const double* qi = &q[(b * s.nq + i) * ld + h * D];
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < s.nk; ++j) {
          const bool visible = s.k_pos[j] <= s.q_pos[i] && (!s.k_keep || s.k_keep[b * s.nk + j]);
          if (!visible) {
            p[j] = -std::numeric_limits<double>::infinity();
            continue;
          }
          double t = 0;
          for (int64_t c = 0; c < D; ++c) t += qi[c] * k[(b * s.nk + j) * ld + h * D + c];
          p[j] = t * s.scale;
          mx = std::max(mx, p[j]);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;
        double sum = 0;
        for (int64_t j = 0; j < s.nk; ++j) {
          p[j] = std::isinf(p[j]) ? 0.0 : std::exp(p[j] - mx);
          sum += p[j];
        }
        double* oi = &r.o[(b * s.nq + i) * ld + h * D];
        for (int64_t j = 0; j < s.nk; ++j) {
          p[j] /= sum;
          for (int64_t c = 0; c < D; ++c) oi[c] += p[j] * v[(b * s.nk + j) * ld + h * D + c];
        }
        r.lse[(b * s.heads + h) * s.nq + i] = mx + std::log(sum);
        if (!d_o) continue;
        const double* gi = &(*d_o)[(b * s.nq + i) * ld + h * D];
        double delta = 0;
        for (int64_t c = 0; c < D; ++c) delta += gi[c] * oi[c];
        for (int64_t j = 0; j < s.nk; ++j) {
          if (p[j] == 0) continue;
          const double* vj = &v[(b * s.nk + j) * ld + h * D];
          const double* kj = &k[(b * s.nk + j) * ld + h * D];
          double dp = 0;
          for (int64_t c = 0; c < D; ++c) dp += gi[c] * vj[c];
          const double ds = p[j] * (dp - delta) * s.scale;
          for (int64_t c = 0; c < D; ++c) {
            r.dv[(b * s.nk + j) * ld + h * D + c] += p[j] * gi[c];
            r.dq[(b * s.nq + i) * ld + h * D + c] += ds * kj[c];
            r.dk[(b * s.nk + j) * ld + h * D + c] += ds * qi[c];
          }
        }
      }
  return r;
}

struct Case {
  int64_t batch, nq, nk, heads, head_dim;
  int64_t q_offset;  // q_pos[i] = q_offset + i (latents at the end: nk - nq)
  double pad_fraction, drop_p;
  cpu::AttentionBlocking blocking;
  // The last `far` keys sit at a far position, invisible (decoding's unfilled cache rows).
  int64_t far = 0;
  bool dead_first = false;  // example 0 keeps no key
};

constexpr int64_t kFar = int64_t(1) << 60;

template <typename T>
void check_case(const Case& c, double tol) {
  AttentionShape s{c.batch, c.nq, c.nk, c.heads, c.head_dim};
  s.scale = 1.0 / std::sqrt(double(c.head_dim));
  std::vector<int64_t> q_pos(size_t(c.nq)), k_pos(size_t(c.nk));
  for (int64_t i = 0; i < c.nq; ++i) q_pos[i] = c.q_offset + i;
  for (int64_t j = 0; j < c.nk; ++j) k_pos[j] = j < c.nk - c.far ? j : kFar;
  // PAD tokens at random places, then the model's own keep mask (PAD and dropout).
  std::vector<int32_t> tokens(size_t(c.batch * c.nk));
  std::mt19937_64 rng(c.nk * 31 + c.nq);
  std::uniform_real_distribution<double> u(0, 1);
  for (auto& t : tokens) t = u(rng) < c.pad_fraction ? 0 : 5;
  std::vector<uint8_t> keep(size_t(c.batch * c.nk));
  cpu::CpuOps<T> ops;
  ops.key_keep_mask(keep.data(), tokens.data(), c.batch, c.nk, c.nk, c.drop_p,
                    DropoutKey{99, 3, DropSite::kCrossAttend}, 17, 0);
  if (c.dead_first) std::fill(keep.begin(), keep.begin() + c.nk, uint8_t(0));
  s.q_pos = q_pos.data();
  s.k_pos = k_pos.data();
  s.k_keep = keep.data();
  const int64_t w = c.heads * c.head_dim;
  auto q = random_vector<double>(c.batch * c.nq * w, 1, 1.5), k = random_vector<double>(c.batch * c.nk * w, 2, 1.5),
       v = random_vector<double>(c.batch * c.nk * w, 3), g = random_vector<double>(c.batch * c.nq * w, 4);
  const Naive ref = naive_attention(s, q, k, v, &g);

  auto qt = cast<T>(q), kt = cast<T>(k), vt = cast<T>(v), gt = cast<T>(g);
  std::vector<T> o(q.size()), lse(ref.lse.size()), dq(q.size()), dk(k.size()), dv(v.size());
  cpu::Workspace ws;
  cpu::attention_forward_blocked<T>(s, qt.data(), kt.data(), vt.data(), o.data(), lse.data(), c.blocking,
                                    ws);
  cpu::attention_backward_blocked<T>(s, qt.data(), kt.data(), vt.data(), o.data(), gt.data(), lse.data(),
                                     dq.data(), dk.data(), dv.data(), c.blocking, ws);
  EXPECT_LE(max_rel_err(o, ref.o), tol) << "o";
  EXPECT_LE(max_rel_err(lse, ref.lse), tol) << "lse";
  EXPECT_LE(max_rel_err(dq, ref.dq), tol) << "dq";
  EXPECT_LE(max_rel_err(dk, ref.dk), tol) << "dk";
  EXPECT_LE(max_rel_err(dv, ref.dv), tol) << "dv";
}

const Case kCases[] = {
    // batch nq nk heads D  q_offset pad drop  blocking
    {1, 8, 8, 1, 4, 0, 0.0, 0.0, {3, 3}},        // self-attention, causal
    {2, 5, 23, 3, 4, 18, 0.2, 0.0, {2, 4}},      // PAD keys
    {2, 6, 40, 2, 8, 34, 0.1, 0.5, {4, 7}},      // PAD + cross-attend dropout
    {3, 16, 200, 4, 8, 184, 0.05, 0.3, {256, 512}},  // default blocks
    {1, 12, 64, 2, 16, 52, 0.0, 0.9, {5, 6}},    // heavy dropout: some rows see nothing
    // Head dimensions of the fused AVX-512 kernels (whole vectors): partial micro-tiles of
    // 8 queries, key counts that are not whole vectors, 32-wide slices plus a 16-wide one.
    {2, 13, 300, 2, 32, 287, 0.1, 0.3, {256, 64}},
    {1, 40, 40, 2, 32, 0, 0.0, 0.0, {16, 16}},   // causal self-attention
    {1, 20, 100, 1, 48, 80, 0.0, 0.0, {16, 33}},
    {1, 9, 50, 3, 64, 41, 0.05, 0.0, {5, 7}},
    {2, 30, 500, 1, 128, 470, 0.0, 0.5, {12, 100}},
    // One query per example (decoding), through the one-query kernel:
    // K = 4 samples' latents over blocks of 256 cached ones, 56 of them not filled yet;
    {4, 1, 256, 8, 32, 199, 0.0, 0.0, {256, 256}, 56},
    // one sample (its heads split over the threads), with PAD and dropped keys;
    {1, 1, 256, 8, 32, 199, 0.1, 0.2, {256, 256}, 56},
    // PAD and dropped keys, odd head sizes (the kernel's scalar loops), partial groups of 16;
    {3, 1, 300, 3, 20, 310, 0.3, 0.2, {64, 64}},
    {2, 1, 37, 5, 7, 30, 0.1, 0.0, {256, 256}, 4},
    // a query before every key, and an example whose keys are all dropped: o = 0, lse = -inf;
    {2, 1, 50, 2, 16, -1, 0.0, 0.0, {256, 256}},
    {3, 1, 20, 2, 16, 19, 0.0, 0.5, {256, 256}, 0, true},
    // one chunk of the kernel's keys at most, wide heads; one key more, two chunks;
    {2, 1, 4096, 2, 128, 4000, 0.1, 0.0, {256, 256}, 50},
    {2, 1, 4097, 1, 32, 5000, 0.1, 0.1, {256, 256}},
    // 4 samples' own keys past the context (3 chunks, the last one partial, rows not
    // filled yet), and one sample's heads split over the threads over 3 chunks.
    {4, 1, 9000, 8, 32, 8950, 0.05, 0.2, {256, 512}, 500},
    {1, 1, 12000, 4, 32, 11990, 0.0, 0.0, {256, 512}},
};

cpu::AttentionBlocking sgemm_only(cpu::AttentionBlocking b) {
  b.fused = false;
  b.one_query = false;
  return b;
}

// The case through each kernel that takes it: the fused ones or the one-query one where
// the shape allows (the default), and the sgemm path.
template <typename T>
void check_every_path(const Case& c, double tol) {
  SCOPED_TRACE(testing::Message() << "batch " << c.batch << " nq " << c.nq << " nk " << c.nk
                                  << " head_dim " << c.head_dim);
  check_case<T>(c, tol);
  Case s = c;
  s.blocking = sgemm_only(c.blocking);
  check_case<T>(s, tol);
}

// Float32 against the double reference: scores of O(1) summed over up to 200 keys
// leave ~1e-6 relative error; 2e-5 flags any wrong term.
TEST(BlockedAttention, MatchesNaiveFloat) {
  for (const Case& c : kCases) check_every_path<float>(c, 2e-5);
}

// Same algorithm in double: agreement to rounding shows the blocking itself is exact.
TEST(BlockedAttention, MatchesNaiveDouble) {
  for (const Case& c : kCases) check_every_path<double>(c, 1e-12);
}

// The one-query cases above do reach the one-query kernel, at any key count.
TEST(BlockedAttention, OneQueryKernelTakesDecodingShapes) {
  AttentionShape s;
  s.nq = 1;
  for (int64_t nk : {int64_t(1), int64_t(256), cpu::kOneQueryChunkKeys + 1, int64_t(131072 + 256)}) {
    s.nk = nk;
    EXPECT_TRUE(cpu::one_query_attention_supported(s)) << nk;
  }
  s.nk = 256;
  s.nq = 2;
  EXPECT_FALSE(cpu::one_query_attention_supported(s));
}

// One sample's heads split over the threads, two examples' or three's: each head's
// result has the same bits as from one thread over whole examples, whatever the split.
TEST(BlockedAttention, OneQueryHeadsSplitOverThreadsGiveTheSameBits) {
  const int64_t heads = 8, D = 32, w = heads * D;
  for (auto [batch, nk] : {std::pair<int64_t, int64_t>{1, 256}, {2, 256}, {3, 256}, {1, 9000}, {3, 9000}}) {
    AttentionShape s{batch, 1, nk, heads, D};
    s.scale = 1.0 / std::sqrt(double(D));
    std::vector<int64_t> q_pos(1, nk - 26), k_pos(static_cast<size_t>(nk));
    for (int64_t j = 0; j < nk; ++j) k_pos[size_t(j)] = j;
    std::vector<uint8_t> keep(size_t(batch * nk), 1);
    for (size_t j = 0; j < keep.size(); j += 7) keep[j] = 0;
    s.q_pos = q_pos.data();
    s.k_pos = k_pos.data();
    s.k_keep = keep.data();
    const auto q = random_vector<float>(batch * w, 1, 1.5), k = random_vector<float>(batch * nk * w, 2, 1.5),
               v = random_vector<float>(batch * nk * w, 3);
    std::vector<float> o1(q.size()), lse1(size_t(batch * heads));
    const int before = omp_get_max_threads();
    omp_set_num_threads(1);
    cpu::Workspace ws1;
    cpu::one_query_attention_forward<float>(s, q.data(), k.data(), v.data(), o1.data(), lse1.data(), ws1);
    for (int threads : {2, 3, 5}) {
      omp_set_num_threads(threads);
      std::vector<float> o(q.size(), -1), lse(lse1.size(), -1);
      cpu::Workspace ws;
      cpu::one_query_attention_forward<float>(s, q.data(), k.data(), v.data(), o.data(), lse.data(), ws);
      EXPECT_EQ(o, o1) << batch << " examples of " << nk << " keys, " << threads << " threads";
      EXPECT_EQ(lse, lse1) << batch << " examples of " << nk << " keys, " << threads << " threads";
    }
    omp_set_num_threads(before);
  }
}

// Keys past the first chunk that are all unkept or not yet visible leave one chunk: the
// same bits as a call over that chunk's keys alone (the cases above check the merge of
// several chunks against the double reference).
TEST(BlockedAttention, OneQueryChunksBeyondTheKeptKeysChangeNothing) {
  const int64_t heads = 2, D = 32, w = heads * D, n = cpu::kOneQueryChunkKeys, nk = n + 700;
  std::vector<int64_t> k_pos(static_cast<size_t>(nk));
  for (int64_t j = 0; j < nk; ++j) k_pos[size_t(j)] = j;
  const auto q = random_vector<float>(w, 1, 1.5), k = random_vector<float>(nk * w, 2, 1.5),
             v = random_vector<float>(nk * w, 3);
  auto attend = [&](int64_t keys, int64_t q_pos, const std::vector<uint8_t>& keep) {
    AttentionShape s{1, 1, keys, heads, D};
    s.scale = 1.0 / std::sqrt(double(D));
    s.q_pos = &q_pos;
    s.k_pos = k_pos.data();
    s.k_keep = keep.data();
    std::vector<float> o(static_cast<size_t>(w)), lse(static_cast<size_t>(heads));
    cpu::Workspace ws;
    cpu::one_query_attention_forward<float>(s, q.data(), k.data(), v.data(), o.data(), lse.data(), ws);
    o.insert(o.end(), lse.begin(), lse.end());
    return o;
  };
  std::vector<uint8_t> keep(size_t(nk), 1);
  const auto one_chunk = attend(n, n - 1, keep);
  EXPECT_EQ(attend(nk, n - 1, keep), one_chunk) << "keys past the query";
  std::fill(keep.begin() + n, keep.end(), uint8_t(0));
  EXPECT_EQ(attend(nk, nk - 1, keep), one_chunk) << "unkept keys past the chunk";
  keep[size_t(nk - 1)] = 1;  // a second chunk of one key: it is attended
  EXPECT_NE(attend(nk, nk - 1, keep), one_chunk);
}

// The 131072-token context of the cpu-131k config: 64 latent queries over all keys with
// PAD and dropout, forward and backward.
TEST(BlockedAttention, LongContext131k) {
  check_case<float>({1, 64, 131072, 2, 8, 131072 - 64, 0.01, 0.1, {256, 512}}, 2e-5);
  check_case<float>({1, 64, 131072, 1, 32, 131072 - 64, 0.01, 0.1, {256, 512}}, 2e-5);
}

}  // namespace
}  // namespace par
