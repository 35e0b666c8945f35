// Every op's backward against central finite differences of its forward, in double
// precision on the CPU backend. Each check uses a random linear functional
// f = sum(R * forward(x)), so the analytic gradient is backward(dy = R).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::dot;
using testing_util::expect_gradient;
using testing_util::random_vector;
using V = std::vector<double>;

cpu::CpuOps<double> ops;

TEST(OpGradient, Linear) {
  const int64_t rows = 5, in = 4, out = 3;
  V x = random_vector<double>(rows * in, 1), w = random_vector<double>(out * in, 2),
    b = random_vector<double>(out, 3), R = random_vector<double>(rows * out, 4);
  auto f = [&] {
    V y(rows * out);
    ops.linear_forward(y.data(), x.data(), w.data(), b.data(), rows, in, out);
    return dot(R, y);
  };
  V dx(rows * in), dw(out * in, 0.0), db(out, 0.0);
  ops.linear_backward(dx.data(), false, dw.data(), db.data(), R.data(), x.data(), w.data(), rows,
                      in, out);
  expect_gradient("dx", x, dx, f);
  expect_gradient("dw", w, dw, f);
  expect_gradient("db", b, db, f);
  // accumulate_dx adds onto what is there.
  V dx2(rows * in, 1.0);
  ops.linear_backward(dx2.data(), true, nullptr, nullptr, R.data(), x.data(), w.data(), rows, in,
                      out);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx2[i], dx[i] + 1.0, 1e-12);
}

TEST(OpGradient, LayerNorm) {
  const int64_t rows = 4, d = 7;
  V x = random_vector<double>(rows * d, 5, 2.0), w = random_vector<double>(d, 6),
    b = random_vector<double>(d, 7), R = random_vector<double>(rows * d, 8);
  V mean(rows), rstd(rows);
  auto f = [&] {
    V y(rows * d);
    ops.layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows,
                          d, 1e-5);
    return dot(R, y);
  };
  f();
  V dx(rows * d), dw(d, 0.0), db(d, 0.0);
  ops.layernorm_backward(dx.data(), false, dw.data(), db.data(), R.data(), x.data(), mean.data(),
                         rstd.data(), w.data(), rows, d);
  expect_gradient("dx", x, dx, f);
  expect_gradient("dw", w, dw, f);
  expect_gradient("db", b, db, f);
}

TEST(OpGradient, Embedding) {
  const int64_t vocab = 6, d = 3, rows = 8;
  std::vector<int32_t> ids = {0, 5, 2, 2, 5, 1, 2, 4};
  V table = random_vector<double>(vocab * d, 9), R = random_vector<double>(rows * d, 10);
  auto f = [&] {
    V h(rows * d);
    ops.embedding_forward(h.data(), ids.data(), table.data(), rows, d);
    return dot(R, h);
  };
  V dt(vocab * d, 0.0);
  ops.embedding_backward(dt.data(), ids.data(), R.data(), rows, d);
  expect_gradient("dtable", table, dt, f);
  for (int64_t c = 0; c < d; ++c) EXPECT_EQ(dt[3 * d + c], 0.0) << "unused row 3";
}

TEST(OpGradient, Rotary) {
  const int64_t batch = 2, n = 3, heads = 2, hd = 6, bands = 2;
  std::vector<int64_t> pos = {5, 9, 100};  // the rows' positions: tables are per row
  V cs(n * bands), sn(n * bands);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < bands; ++k) {
      cs[i * bands + k] = std::cos(pos[i] * (0.3 + k));
      sn[i * bands + k] = std::sin(pos[i] * (0.3 + k));
    }
  V x = random_vector<double>(batch * n * heads * hd, 11), R = random_vector<double>(x.size(), 12);
  auto f = [&] {
    V y = x;
    ops.rotary(y.data(), batch, n, heads, hd, bands, cs.data(), sn.data(), false);
    return dot(R, y);
  };
  V g = R;
  ops.rotary(g.data(), batch, n, heads, hd, bands, cs.data(), sn.data(), true);
  expect_gradient("dx", x, g, f);
  // The unrotated tail of each head passes through unchanged.
  V y = x;
  ops.rotary(y.data(), batch, n, heads, hd, bands, cs.data(), sn.data(), false);
  for (int64_t r = 0; r < batch * n; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t c = 2 * bands; c < hd; ++c)
        EXPECT_EQ(y[(r * heads + h) * hd + c], x[(r * heads + h) * hd + c]);
}

TEST(OpGradient, SquaredRelu) {
  const int64_t n = 50;
  V x = random_vector<double>(n, 13), R = random_vector<double>(n, 14);
  auto f = [&] {
    V y(n);
    ops.sqrelu_forward(y.data(), x.data(), n);
    return dot(R, y);
  };
  V g(n);
  ops.sqrelu_backward(g.data(), R.data(), x.data(), n);
  expect_gradient("dx", x, g, f);
}

TEST(OpGradient, DropoutIsItsOwnBackward) {
  const int64_t batch = 3, per = 40;
  const DropoutKey key{1234, 7, 3};
  V x = random_vector<double>(batch * per, 15), R = random_vector<double>(batch * per, 16);
  auto f = [&] {
    V y(x.size());
    ops.dropout(y.data(), x.data(), batch, per, 0.3, key, 10);
    return dot(R, y);
  };
  V g(x.size());
  ops.dropout(g.data(), R.data(), batch, per, 0.3, key, 10);
  expect_gradient("dx", x, g, f);
}

TEST(OpGradient, CrossEntropyWithZLoss) {
  const int64_t rows = 4, vocab = 5;
  std::vector<int32_t> targets = {3, 0, 1, 4};  // row 1 is PAD: excluded
  V logits = random_vector<double>(rows * vocab, 17, 3.0);
  const double scale = 0.37, z = 1e-2;
  auto f = [&] {
    V ce(rows), lse(rows);
    ops.cross_entropy_forward(ce.data(), lse.data(), logits.data(), targets.data(), rows, vocab);
    double s = 0;
    for (int64_t r = 0; r < rows; ++r)
      if (targets[r] != 0) s += ce[r] + z * lse[r] * lse[r];
    return scale * s;
  };
  V ce(rows), lse(rows);
  ops.cross_entropy_forward(ce.data(), lse.data(), logits.data(), targets.data(), rows, vocab);
  EXPECT_EQ(ce[1], 0.0);
  V g(rows * vocab);
  ops.cross_entropy_backward(g.data(), logits.data(), lse.data(), targets.data(), rows, vocab,
                             scale, z);
  expect_gradient("dlogits", logits, g, f);
}

TEST(OpGradient, AttentionWithMasks) {
  // Two examples, queries at the last positions, keys with PAD/dropped entries and a query
  // (position 0 of example 1) whose only key is dropped, so it sees nothing.
  AttentionShape s;
  s.batch = 2;
  s.nq = 4;
  s.nk = 9;
  s.heads = 2;
  s.head_dim = 3;
  std::vector<int64_t> q_pos = {0, 6, 7, 8}, k_pos = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> keep = {1, 1, 0, 1, 1, 1, 0, 1, 1,   // example 0
                               0, 1, 1, 0, 0, 1, 1, 1, 1};  // example 1
  s.q_pos = q_pos.data();
  s.k_pos = k_pos.data();
  s.k_keep = keep.data();
  s.scale = 0.6;
  const int64_t w = s.heads * s.head_dim;
  V q = random_vector<double>(s.batch * s.nq * w, 18), k = random_vector<double>(s.batch * s.nk * w, 19),
    v = random_vector<double>(s.batch * s.nk * w, 20), R = random_vector<double>(q.size(), 21);
  const cpu::AttentionBlocking small{3, 2};  // several query tiles and key blocks
  cpu::Workspace ws;
  V o(q.size()), lse(s.batch * s.heads * s.nq);
  auto f = [&] {
    cpu::attention_forward_blocked<double>(s, q.data(), k.data(), v.data(), o.data(), lse.data(), small,
                                           ws);
    return dot(R, o);
  };
  f();
  // Example 1, query 0 sees no key: zero output, lse = -inf.
  for (int64_t c = 0; c < w; ++c) EXPECT_EQ(o[(1 * s.nq + 0) * w + c], 0.0);
  EXPECT_EQ(lse[(1 * s.heads + 0) * s.nq + 0], -std::numeric_limits<double>::infinity());
  V dq(q.size()), dk(k.size()), dv(v.size());
  cpu::attention_backward_blocked<double>(s, q.data(), k.data(), v.data(), o.data(), R.data(),
                                          lse.data(), dq.data(), dk.data(), dv.data(), small, ws);
  expect_gradient("dq", q, dq, f);
  expect_gradient("dk", k, dk, f);
  expect_gradient("dv", v, dv, f);
}

TEST(OpGradient, SumSquaresAndAdam) {
  V x = random_vector<double>(1000, 22);
  double ss = 0;
  for (double t : x) ss += t * t;
  EXPECT_NEAR(ops.sum_squares(x.data(), int64_t(x.size())), ss, 1e-9 * ss);

  // One AdamW step against the textbook formula.
  const int64_t n = 8;
  V p = random_vector<double>(n, 23), g = random_vector<double>(n, 24);
  V m = random_vector<double>(n, 25, 0.1), v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = 0.01 * (i + 1);
  AdamStep st;
  st.lr = 0.01;
  st.weight_decay = 0.1;
  st.t = 3;
  st.grad_scale = 0.5;
  V p_ref = p, m_ref = m, v_ref = v;
  for (int64_t i = 0; i < n; ++i) {
    const double gi = g[i] * 0.5;
    m_ref[i] = 0.9 * m_ref[i] + 0.1 * gi;
    v_ref[i] = 0.999 * v_ref[i] + 0.001 * gi * gi;
    const double mh = m_ref[i] / (1 - std::pow(0.9, 3)), vh = v_ref[i] / (1 - std::pow(0.999, 3));
    p_ref[i] = p_ref[i] - 0.01 * 0.1 * p_ref[i] - 0.01 * mh / (std::sqrt(vh) + 1e-8);
  }
  ops.adam_update(p.data(), m.data(), v.data(), g.data(), n, st);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(p[i], p_ref[i], 1e-12);
    EXPECT_NEAR(m[i], m_ref[i], 1e-15);
    EXPECT_NEAR(v[i], v_ref[i], 1e-15);
  }
}

}  // namespace
}  // namespace par
