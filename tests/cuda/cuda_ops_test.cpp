// Every op of the CUDA backend against the CPU backend (kernels/cpu), on odd shapes (sizes
// that are not multiples of 32 or of a warp, batch > 1). Tolerances are relative to the
// expected tensor's largest entry; ops whose arithmetic is the same expression on both
// backends (copies, element-wise products, dropout masks) must match bit for bit.
// Attention has its own file. Each test skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "core/philox.h"
#include "core/rotary.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/op_cases.h"

namespace par {
namespace {

using cuda_test::bitwise_equal;
using cuda_test::close;
using cuda_test::DeviceArray;
using cuda_test::random_vector;

class CudaOpsTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped()) return;
    ops_ = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  }
  Ops<float>& gpu() { return *ops_; }
  cpu::CpuOps<float> cpu_;
  std::unique_ptr<Ops<float>> ops_;
};

TEST_F(CudaOpsTest, DescribesTheDevice) {
  const std::string d = cuda::describe_device(0);
  EXPECT_NE(d.find("sm_"), std::string::npos) << d;
  std::printf("device: %s\n", d.c_str());
  EXPECT_EQ(std::string(gpu().name()), "cuda");
  EXPECT_TRUE(cuda::is_cuda_ops(gpu()));
  EXPECT_NE(cuda::cuda_stream(gpu()), nullptr);
  EXPECT_FALSE(cuda::is_cuda_ops(cpu_));
  EXPECT_THROW(cuda::cuda_stream(cpu_), std::invalid_argument);
}

TEST_F(CudaOpsTest, MemoryRoundTripAndStats) {
  const cuda::MemoryStats before = cuda::memory_stats(gpu());
  std::vector<uint8_t> bytes(1000003);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(i * 7919u >> 3);
  void* p = gpu().allocate(bytes.size());
  gpu().upload(p, bytes.data(), bytes.size());
  std::vector<uint8_t> back(bytes.size());
  gpu().download(back.data(), p, back.size());
  EXPECT_EQ(back, bytes);
  const cuda::MemoryStats during = cuda::memory_stats(gpu());
  EXPECT_GE(during.allocated_bytes, before.allocated_bytes + int64_t(bytes.size()));
  EXPECT_GE(during.peak_bytes, during.allocated_bytes);
  EXPECT_GT(during.device_total_bytes, 0);
  gpu().deallocate(p);
  EXPECT_EQ(cuda::memory_stats(gpu()).allocated_bytes, before.allocated_bytes);
  void* empty = gpu().allocate(0);  // a valid, distinct pointer, as on the CPU
  EXPECT_NE(empty, nullptr);
  gpu().deallocate(empty);
  gpu().deallocate(nullptr);
}

TEST_F(CudaOpsTest, ElementwiseBasicsAreExact) {
  const int64_t n = 10007;
  const auto x = random_vector<float>(n, 1), y0 = random_vector<float>(n, 2);
  DeviceArray<float> dx(gpu(), x), dy(gpu(), y0);

  std::vector<float> y = y0;
  cpu_.add(y.data(), x.data(), n);
  gpu().add(dy.get(), dx.get(), n);
  EXPECT_TRUE(bitwise_equal(dy.host(), y)) << "add";

  cpu_.scale(y.data(), n, -0.37);
  gpu().scale(dy.get(), n, -0.37);
  EXPECT_TRUE(bitwise_equal(dy.host(), y)) << "scale";

  cpu_.fill(y.data(), n, 2.5f);
  gpu().fill(dy.get(), n, 2.5f);
  EXPECT_TRUE(bitwise_equal(dy.host(), y)) << "fill";

  gpu().copy(dy.get(), dx.get(), n);
  EXPECT_TRUE(bitwise_equal(dy.host(), x)) << "copy";

  // copy_blocks: 3 blocks of 101 elements between strides 130 and 117, copy and add.
  const int64_t batch = 3, count = 101, ds = 130, ss = 117;
  const auto src = random_vector<float>(batch * ss, 3);
  const auto dst0 = random_vector<float>(batch * ds, 4);
  for (bool acc : {false, true}) {
    std::vector<float> want = dst0;
    cpu_.copy_blocks(want.data(), ds, src.data(), ss, batch, count, acc);
    DeviceArray<float> dd(gpu(), dst0), dsrc(gpu(), src);
    gpu().copy_blocks(dd.get(), ds, dsrc.get(), ss, batch, count, acc);
    EXPECT_TRUE(bitwise_equal(dd.host(), want)) << "copy_blocks accumulate=" << acc;
  }
}

TEST_F(CudaOpsTest, SquaredReluIsExact) {
  const int64_t n = 4099;
  const auto x = random_vector<float>(n, 5), dy = random_vector<float>(n, 6);
  std::vector<float> y(n), dx(n);
  cpu_.sqrelu_forward(y.data(), x.data(), n);
  cpu_.sqrelu_backward(dx.data(), dy.data(), x.data(), n);
  DeviceArray<float> gx(gpu(), x), gdy(gpu(), dy), gy(gpu(), n), gdx(gpu(), n);
  gpu().sqrelu_forward(gy.get(), gx.get(), n);
  gpu().sqrelu_backward(gdx.get(), gdy.get(), gx.get(), n);
  EXPECT_TRUE(bitwise_equal(gy.host(), y));
  EXPECT_TRUE(bitwise_equal(gdx.host(), dx));
}

// The same Philox numbers on both backends: the same elements dropped, the same scaling.
TEST_F(CudaOpsTest, DropoutMasksMatchTheCpuBitwise) {
  const int64_t batch = 3, per = 1001;  // not a multiple of the 4 lanes of a Philox draw
  const auto x = random_vector<float>(batch * per, 7);
  const DropoutKey key{0x1234567890abcdefull, 17, DropSite::layer_mlp(2)};
  for (double p : {0.0, 0.1, 0.5}) {
    std::vector<float> want(x.size());
    cpu_.dropout(want.data(), x.data(), batch, per, p, key, 5);
    DeviceArray<float> gx(gpu(), x), gy(gpu(), x.size());
    gpu().dropout(gy.get(), gx.get(), batch, per, p, key, 5);
    EXPECT_TRUE(bitwise_equal(gy.host(), want)) << "p = " << p;
    gpu().dropout(gx.get(), gx.get(), batch, per, p, key, 5);  // in place
    EXPECT_TRUE(bitwise_equal(gx.host(), want)) << "in place, p = " << p;
    if (p > 0) {
      int64_t dropped = 0;
      for (float v : want) dropped += v == 0.0f;
      EXPECT_NEAR(double(dropped) / double(want.size()), p, 0.05);
    }
  }
}

TEST_F(CudaOpsTest, KeyKeepMaskMatchesTheCpuBitwise) {
  const int64_t batch = 2, n = 777, stride = 800;
  std::vector<int32_t> tokens(size_t(batch * stride));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = (i * 2654435761u) % 11 < 2 ? 0 : int32_t(3 + i % 50);
  const DropoutKey key{99, 4, DropSite::kCrossAttend};
  DeviceArray<int32_t> gt(gpu(), tokens);
  for (double p : {0.0, 0.25}) {
    std::vector<uint8_t> want(size_t(batch * n));
    cpu_.key_keep_mask(want.data(), tokens.data(), batch, n, stride, p, key, 3, 1000);
    DeviceArray<uint8_t> gk(gpu(), size_t(batch * n), uint8_t(7));
    gpu().key_keep_mask(gk.get(), gt.get(), batch, n, stride, p, key, 3, 1000);
    EXPECT_EQ(gk.host(), want) << "p = " << p;
  }
}

TEST_F(CudaOpsTest, EmbeddingForwardIsExact) {
  const int64_t V = 37, d = 70, rows = 1001;
  const auto table = random_vector<float>(V * d, 8);
  std::vector<int32_t> ids(rows);
  for (int64_t r = 0; r < rows; ++r) ids[size_t(r)] = int32_t((r * 13 + r / 7) % V);
  std::vector<float> want(size_t(rows * d));
  cpu_.embedding_forward(want.data(), ids.data(), table.data(), rows, d);
  DeviceArray<float> gt(gpu(), table), gh(gpu(), size_t(rows * d));
  DeviceArray<int32_t> gi(gpu(), ids);
  gpu().embedding_forward(gh.get(), gi.get(), gt.get(), rows, d);
  EXPECT_TRUE(bitwise_equal(gh.host(), want));
}

// Ids spread over the vocabulary, one id for everything (a segment of thousands of rows,
// summed in pieces), and a mix; added onto a non-zero table. Two runs give the same bits.
TEST_F(CudaOpsTest, EmbeddingBackwardMatchesTheCpuAndIsDeterministic) {
  const int64_t V = 41, d = 70;
  struct Ids {
    const char* name;
    std::vector<int32_t> ids;
  };
  std::vector<Ids> cases;
  {
    std::vector<int32_t> spread(1500), same(5000, 7), mixed(3333);
    for (size_t r = 0; r < spread.size(); ++r) spread[r] = int32_t((r * 31 + 5) % V);
    for (size_t r = 0; r < mixed.size(); ++r) mixed[r] = r % 3 == 0 ? int32_t(r % V) : 2;
    cases = {{"spread", spread}, {"one id", same}, {"mixed", mixed}, {"one row", {40}}};
  }
  const auto table0 = random_vector<float>(V * d, 9);
  for (const Ids& c : cases) {
    const int64_t rows = int64_t(c.ids.size());
    const auto dh = random_vector<float>(rows * d, 10);
    std::vector<float> want = table0;
    cpu_.embedding_backward(want.data(), c.ids.data(), dh.data(), rows, d);
    DeviceArray<float> gdh(gpu(), dh), gt(gpu(), table0);
    DeviceArray<int32_t> gi(gpu(), c.ids);
    gpu().embedding_backward(gt.get(), gi.get(), gdh.get(), rows, d);
    const auto got = gt.host();
    EXPECT_TRUE(close(got, want, 1e-5)) << c.name;
    gt.set(table0);
    gpu().embedding_backward(gt.get(), gi.get(), gdh.get(), rows, d);
    EXPECT_TRUE(bitwise_equal(gt.host(), got)) << c.name << ": second run differs";
  }
}

TEST_F(CudaOpsTest, LayerNormMatchesTheCpu) {
  struct Shape {
    int64_t rows, d;
  };
  // The backward's chunks: one row each up to 1024 rows, then more (2500 rows: 3 per chunk,
  // the last one short; 70000: 64 per chunk, several groups of chunks). Widths of 6130 and
  // 6144: the backward's shared memory just past 48 KiB with its static part.
  for (Shape sh : {Shape{333, 300}, Shape{7, 8}, Shape{130, 1024}, Shape{65, 33}, Shape{2500, 48},
                   Shape{70000, 16}, Shape{3, 6130}, Shape{2, 6144}}) {
    const int64_t rows = sh.rows, d = sh.d, n = rows * d;
    auto x = random_vector<float>(n, 11, 2.0);
    for (int64_t i = 0; i < n; ++i) x[size_t(i)] += 0.5f;  // a non-zero mean
    auto w = random_vector<float>(d, 12, 0.3), b = random_vector<float>(d, 13);
    for (auto& v : w) v += 1.0f;
    const auto dy = random_vector<float>(n, 14);
    const auto dx0 = random_vector<float>(n, 15), dw0 = random_vector<float>(d, 16),
               db0 = random_vector<float>(d, 17);

    std::vector<float> y(n), mean(rows), rstd(rows);
    cpu_.layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                           rows, d, 1e-5);
    DeviceArray<float> gx(gpu(), x), gw(gpu(), w), gb(gpu(), b), gy(gpu(), n), gm(gpu(), rows),
        gr(gpu(), rows);
    gpu().layernorm_forward(gy.get(), gm.get(), gr.get(), gx.get(), gw.get(), gb.get(), rows, d,
                            1e-5);
    EXPECT_TRUE(close(gy.host(), y, 1e-5)) << rows << "x" << d << " y";
    EXPECT_TRUE(close(gm.host(), mean, 1e-5)) << "mean";
    EXPECT_TRUE(close(gr.host(), rstd, 1e-5)) << "rstd";

    for (bool acc : {false, true}) {
      std::vector<float> dx = dx0, dw = dw0, db = db0;
      cpu_.layernorm_backward(dx.data(), acc, dw.data(), db.data(), dy.data(), x.data(),
                              mean.data(), rstd.data(), w.data(), rows, d);
      DeviceArray<float> gdx(gpu(), dx0), gdw(gpu(), dw0), gdb(gpu(), db0), gdy(gpu(), dy);
      gpu().layernorm_backward(gdx.get(), acc, gdw.get(), gdb.get(), gdy.get(), gx.get(),
                               gm.get(), gr.get(), gw.get(), rows, d);
      EXPECT_TRUE(close(gdx.host(), dx, 1e-5)) << rows << "x" << d << " dx acc=" << acc;
      EXPECT_TRUE(close(gdw.host(), dw, 1e-5)) << rows << "x" << d << " dw";
      EXPECT_TRUE(close(gdb.host(), db, 1e-5)) << rows << "x" << d << " db";
    }
  }
}

TEST_F(CudaOpsTest, RotaryMatchesTheCpu) {
  const int64_t batch = 2, n = 13, heads = 3, head_dim = 10;
  const RotarySpec spec = make_rotary_spec(head_dim, 0.5, 131072.0);
  ASSERT_EQ(spec.bands, 2);
  std::vector<float> cos_t, sin_t;
  make_rotary_tables(spec, 131072 - n, n, cos_t, sin_t);
  const auto x = random_vector<float>(batch * n * heads * head_dim, 18);
  DeviceArray<float> gc(gpu(), cos_t), gs(gpu(), sin_t);
  for (bool inverse : {false, true}) {
    std::vector<float> want = x;
    cpu_.rotary(want.data(), batch, n, heads, head_dim, spec.bands, cos_t.data(), sin_t.data(),
                inverse);
    DeviceArray<float> gx(gpu(), x);
    gpu().rotary(gx.get(), batch, n, heads, head_dim, spec.bands, gc.get(), gs.get(), inverse);
    EXPECT_TRUE(close(gx.host(), want, 1e-6)) << "inverse=" << inverse;
  }
}

TEST_F(CudaOpsTest, AttentionMergeMatchesTheCpu) {
  const int64_t batch = 2, nq = 9, heads = 3, hd = 5;
  const int64_t stats = batch * heads * nq, n = batch * nq * heads * hd;
  const auto o0 = random_vector<float>(n, 19);
  auto lse0 = random_vector<float>(stats, 20);
  auto lse_max = random_vector<float>(stats, 21);
  for (int64_t s = 0; s < stats; ++s) {
    if (s % 5 == 0) lse0[size_t(s)] = -INFINITY;  // this slice saw no key
    lse_max[size_t(s)] = std::max(lse_max[size_t(s)], lse0[size_t(s)]);
  }
  std::vector<float> o = o0, lse = lse0;
  cpu_.attention_merge_scale(o.data(), lse.data(), lse_max.data(), batch, nq, heads, hd);
  DeviceArray<float> go(gpu(), o0), gl(gpu(), lse0), gm(gpu(), lse_max);
  gpu().attention_merge_scale(go.get(), gl.get(), gm.get(), batch, nq, heads, hd);
  EXPECT_TRUE(close(go.host(), o, 1e-6)) << "scale o";
  EXPECT_TRUE(close(gl.host(), lse, 1e-6)) << "scale weights";
  // As if the other ranks contributed nothing: finish on these sums.
  cpu_.attention_merge_finish(o.data(), lse.data(), lse_max.data(), batch, nq, heads, hd);
  gpu().attention_merge_finish(go.get(), gl.get(), gm.get(), batch, nq, heads, hd);
  EXPECT_TRUE(close(go.host(), o, 1e-6)) << "finish o";
  EXPECT_TRUE(close(gl.host(), lse, 1e-6)) << "finish lse";
}

TEST_F(CudaOpsTest, CrossEntropyMatchesTheCpu) {
  const int64_t rows = 50, vocab = 259;
  const auto logits = random_vector<float>(rows * vocab, 22, 3.0);
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) targets[size_t(r)] = r % 7 == 3 ? 0 : int32_t((r * 37) % vocab);
  std::vector<float> ce(rows), lse(rows), dl(size_t(rows * vocab));
  cpu_.cross_entropy_forward(ce.data(), lse.data(), logits.data(), targets.data(), rows, vocab);
  cpu_.cross_entropy_backward(dl.data(), logits.data(), lse.data(), targets.data(), rows, vocab,
                              1.0 / 43, 1e-4);
  DeviceArray<float> gz(gpu(), logits), gce(gpu(), rows), gl(gpu(), rows),
      gdl(gpu(), size_t(rows * vocab), 5.0f);
  DeviceArray<int32_t> gt(gpu(), targets);
  gpu().cross_entropy_forward(gce.get(), gl.get(), gz.get(), gt.get(), rows, vocab);
  EXPECT_TRUE(close(gce.host(), ce, 1e-6)) << "ce";
  EXPECT_TRUE(close(gl.host(), lse, 1e-6)) << "lse";
  gpu().cross_entropy_backward(gdl.get(), gz.get(), gl.get(), gt.get(), rows, vocab, 1.0 / 43,
                               1e-4);
  EXPECT_TRUE(close(gdl.host(), dl, 1e-6)) << "dlogits";
}

TEST_F(CudaOpsTest, SumOfSquaresMatchesTheCpuAndIsDeterministic) {
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000003), int64_t(3) << 20}) {
    const auto x = random_vector<float>(n, 23);
    const double want = cpu_.sum_squares(x.data(), n);
    DeviceArray<float> gx(gpu(), x);
    const double got = gpu().sum_squares(gx.get(), n);
    EXPECT_NEAR(got, want, 1e-12 * std::max(1.0, want)) << "n = " << n;
    EXPECT_EQ(got, gpu().sum_squares(gx.get(), n)) << "n = " << n << ": not reproducible";
  }
}

TEST_F(CudaOpsTest, AdamMatchesTheCpu) {
  const int64_t n = 5003;
  const auto p0 = random_vector<float>(n, 24), g = random_vector<float>(n, 25, 0.1);
  std::vector<float> m0(n, 0.0f), v0(n, 0.0f);
  std::vector<float> p = p0, m = m0, v = v0;
  DeviceArray<float> gp(gpu(), p0), gm(gpu(), m0), gv(gpu(), v0), gg(gpu(), g);
  for (const AdamStep& a : op_parity::adam_steps()) {
    cpu_.adam_update(p.data(), m.data(), v.data(), g.data(), n, a);
    gpu().adam_update(gp.get(), gm.get(), gv.get(), gg.get(), n, a);
  }
  EXPECT_TRUE(close(gp.host(), p, 1e-6)) << "param";
  EXPECT_TRUE(close(gm.host(), m, 1e-6)) << "m";
  EXPECT_TRUE(close(gv.host(), v, 1e-6)) << "v";
}

// The multi-tensor form: one launch over spans with and without decay and a gap left
// alone, against the CPU's span-by-span updates; and against the single-span update on
// the GPU itself, bit for bit (the same element arithmetic).
TEST_F(CudaOpsTest, AdamSpansMatchTheCpu) {
  const int64_t n = 4099;
  const auto p0 = random_vector<float>(n, 26), g = random_vector<float>(n, 27, 0.1);
  const std::vector<float> zeros(n, 0.0f);
  // 300 spans: more than one launch's table holds.
  std::vector<AdamSpan> spans;
  for (int64_t k = 0; k < 300; ++k) spans.push_back(AdamSpan{k * 13, k * 13 + 11, k % 3 != 0});
  std::vector<float> p = p0, m = zeros, v = zeros;
  DeviceArray<float> gp(gpu(), p0), gm(gpu(), zeros), gv(gpu(), zeros), gg(gpu(), g);
  DeviceArray<float> sp(gpu(), p0), sm(gpu(), zeros), sv(gpu(), zeros);
  for (int64_t t = 1; t <= 3; ++t) {
    AdamStep a;
    a.lr = 1e-2;
    a.weight_decay = 0.1;
    a.t = t;
    a.grad_scale = 0.7;
    cpu_.adam_update_spans(p.data(), m.data(), v.data(), g.data(), spans.data(),
                           int64_t(spans.size()), a);
    gpu().adam_update_spans(gp.get(), gm.get(), gv.get(), gg.get(), spans.data(),
                            int64_t(spans.size()), a);
    for (const AdamSpan& s : spans) {  // the same through one call per span
      AdamStep b = a;
      if (!s.decays) b.weight_decay = 0;
      gpu().adam_update(sp.get() + s.begin, sm.get() + s.begin, sv.get() + s.begin,
                        gg.get() + s.begin, s.end - s.begin, b);
    }
  }
  EXPECT_TRUE(close(gp.host(), p, 1e-6)) << "param";
  EXPECT_TRUE(close(gm.host(), m, 1e-6)) << "m";
  EXPECT_TRUE(close(gv.host(), v, 1e-6)) << "v";
  EXPECT_TRUE(bitwise_equal(gp.host(), sp.host())) << "param, one call per span";
  EXPECT_TRUE(bitwise_equal(gm.host(), sm.host())) << "m, one call per span";
  // Gaps between spans keep their values.
  const auto got = gp.host();
  for (int64_t k = 0; k < 300; ++k)
    for (int64_t i = k * 13 + 11; i < k * 13 + 13 && i < n; ++i)
      ASSERT_EQ(got[size_t(i)], p0[size_t(i)]) << "gap element " << i;
}

// ---- matrix products, once per precision ----

class CudaMatmulTest : public cuda_test::CudaPrecisionTest {};

TEST_P(CudaMatmulTest, GemmMatchesTheCpu) {
  auto ops = make_ops();
  cpu::CpuOps<float> cpu;
  const double tol = cuda_test::matmul_tol(GetParam());
  const int64_t m = 37, n = 53, k = 29;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
      const auto a = random_vector<float>((ta ? k : m) * lda, 26);
      const auto b = random_vector<float>((tb ? n : k) * ldb, 27);
      const auto c0 = random_vector<float>(m * ldc, 28);
      std::vector<float> want = c0;
      cpu.gemm(ta, tb, m, n, k, 0.7f, a.data(), lda, b.data(), ldb, 0.3f, want.data(), ldc);
      DeviceArray<float> ga(*ops, a), gb(*ops, b), gc(*ops, c0);
      ops->gemm(ta, tb, m, n, k, 0.7f, ga.get(), lda, gb.get(), ldb, 0.3f, gc.get(), ldc);
      EXPECT_TRUE(close(gc.host(), want, tol)) << "trans_a " << ta << " trans_b " << tb;
    }
  // k = 0: C = beta * C.
  const auto c0 = random_vector<float>(4 * 6, 29);
  DeviceArray<float> gc(*ops, c0);
  ops->gemm(false, false, 4, 6, 0, 1.0f, gc.get(), 1, gc.get(), 6, 0.5f, gc.get(), 6);
  std::vector<float> half = c0;
  for (auto& x : half) x *= 0.5f;
  EXPECT_TRUE(bitwise_equal(gc.host(), half)) << "k = 0";
}

TEST_P(CudaMatmulTest, LinearLayerMatchesTheCpu) {
  auto ops = make_ops();
  cpu::CpuOps<float> cpu;
  const double tol = cuda_test::matmul_tol(GetParam());
  const int64_t rows = 67, in = 45, out = 83;
  const auto x = random_vector<float>(rows * in, 30), w = random_vector<float>(out * in, 31, 0.2);
  const auto b = random_vector<float>(out, 32), dy = random_vector<float>(rows * out, 33);
  const auto dx0 = random_vector<float>(rows * in, 34), dw0 = random_vector<float>(out * in, 35);
  const auto db0 = random_vector<float>(out, 36);
  DeviceArray<float> gx(*ops, x), gw(*ops, w), gb(*ops, b), gdy(*ops, dy);
  for (bool bias : {true, false}) {
    std::vector<float> y(size_t(rows * out));
    cpu.linear_forward(y.data(), x.data(), w.data(), bias ? b.data() : nullptr, rows, in, out);
    DeviceArray<float> gy(*ops, size_t(rows * out), 9.0f);
    ops->linear_forward(gy.get(), gx.get(), gw.get(), bias ? gb.get() : nullptr, rows, in, out);
    EXPECT_TRUE(close(gy.host(), y, tol)) << "y, bias " << bias;
  }
  for (bool acc : {false, true}) {
    std::vector<float> dx = dx0, dw = dw0, db = db0;
    cpu.linear_backward(dx.data(), acc, dw.data(), db.data(), dy.data(), x.data(), w.data(),
                        rows, in, out);
    DeviceArray<float> gdx(*ops, dx0), gdw(*ops, dw0), gdb(*ops, db0);
    ops->linear_backward(gdx.get(), acc, gdw.get(), gdb.get(), gdy.get(), gx.get(), gw.get(),
                         rows, in, out);
    EXPECT_TRUE(close(gdx.host(), dx, tol)) << "dx, accumulate " << acc;
    EXPECT_TRUE(close(gdw.host(), dw, tol)) << "dw";
    // The bias gradient is a float32 column sum whatever the precision.
    EXPECT_TRUE(close(gdb.host(), db, 1e-5)) << "db";
  }
  // Null dx and db: only dw.
  std::vector<float> dw = dw0;
  cpu.linear_backward(nullptr, false, dw.data(), nullptr, dy.data(), x.data(), w.data(), rows, in,
                      out);
  DeviceArray<float> gdw(*ops, dw0);
  ops->linear_backward(nullptr, false, gdw.get(), nullptr, gdy.get(), gx.get(), gw.get(), rows,
                       in, out);
  EXPECT_TRUE(close(gdw.host(), dw, tol)) << "dw alone";
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaMatmulTest, PAR_ALL_PRECISIONS);

// A bias gradient over more rows than 65535 chunks of 64 (the inputs' key and value
// projections of 4 examples at N = 1,048,576): the column sums' chunks go along the grid's x.
TEST_F(CudaOpsTest, BiasGradientOverFourMillionRows) {
  const int64_t rows = 4 * 1048576 + 5, in = 1, out = 3;
  auto dy = random_vector<float>(rows * out, 41);
  for (auto& v : dy) v += 1.0f;  // sums far from 0: a relative tolerance means something
  const auto x = random_vector<float>(rows * in, 42), w = random_vector<float>(out * in, 43);
  std::vector<float> dw(size_t(out * in), 0.0f), db(size_t(out), 0.0f);
  cpu_.linear_backward(nullptr, false, dw.data(), db.data(), dy.data(), x.data(), w.data(), rows,
                       in, out);
  DeviceArray<float> gdy(gpu(), dy), gx(gpu(), x), gw(gpu(), w), gdw(gpu(), size_t(out * in), 0.0f),
      gdb(gpu(), size_t(out), 0.0f);
  gpu().linear_backward(nullptr, false, gdw.get(), gdb.get(), gdy.get(), gx.get(), gw.get(), rows,
                        in, out);
  EXPECT_TRUE(close(gdb.host(), db, 1e-6)) << "db";
}

}  // namespace
}  // namespace par
