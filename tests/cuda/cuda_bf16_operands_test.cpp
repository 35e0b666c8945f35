// Matrix products on bfloat16 copies of their operands (cuda::Bf16Operands,
// gemm_mapping.h). A product that converts must compute exactly bf16(A) bf16(B) with float32
// sums, so it is checked against that product in double (operands rounded to nearest even
// on the host), far tighter than the bf16 tolerance: a wrong copy (a stride, a transpose,
// truncation instead of rounding) fails it. kAuto must take the copies where
// bf16_operands_pay says so and only there, which the bits of kAlways and kNever show.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda::Bf16Operands;
using cuda::MatmulPrecision;
using cuda_test::bitwise_equal;
using cuda_test::close;
using cuda_test::DeviceArray;
using cuda_test::random_vector;
using cuda_test::round_to;

// Float32 sums of up to a few thousand terms, against double: ~1e-6 of the largest entry.
constexpr double kSumTol = 2e-5;

std::vector<float> rounded(std::vector<float> x) {
  for (float& v : x) v = round_to(v, MatmulPrecision::kBF16);
  return x;
}

// C = alpha op(A) op(B) + beta C (row-major, leading dimensions), in double.
std::vector<float> reference_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                                  double alpha, const std::vector<float>& a, int64_t lda,
                                  const std::vector<float>& b, int64_t ldb, double beta,
                                  std::vector<float> c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t l = 0; l < k; ++l)
        s += double(ta ? a[size_t(l * lda + i)] : a[size_t(i * lda + l)]) *
             double(tb ? b[size_t(j * ldb + l)] : b[size_t(l * ldb + j)]);
      float& out = c[size_t(i * ldc + j)];
      out = float(alpha * s + beta * double(out));
    }
  return c;
}

class CudaBf16Operands : public cuda_test::CudaTest {
 protected:
  std::unique_ptr<Ops<float>> make(Bf16Operands mode) {
    auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
    cuda::set_bf16_operands(*ops, mode);
    return ops;
  }
};

TEST_F(CudaBf16Operands, GemmIsTheProductOfTheRoundedOperands) {
  auto ops = make(Bf16Operands::kAlways);
  const int64_t m = 37, n = 53, k = 29;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      // Leading dimensions wider than the rows: the copies must be compact.
      const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
      const auto a = random_vector<float>((ta ? k : m) * lda, 40);
      const auto b = random_vector<float>((tb ? n : k) * ldb, 41);
      const auto c0 = random_vector<float>(m * ldc, 42);
      const auto want =
          reference_gemm(ta, tb, m, n, k, 0.7, rounded(a), lda, rounded(b), ldb, 0.3, c0, ldc);
      DeviceArray<float> ga(*ops, a), gb(*ops, b), gc(*ops, c0);
      ops->gemm(ta, tb, m, n, k, 0.7f, ga.get(), lda, gb.get(), ldb, 0.3f, gc.get(), ldc);
      EXPECT_TRUE(close(gc.host(), want, kSumTol)) << "trans_a " << ta << " trans_b " << tb;
    }
}

TEST_F(CudaBf16Operands, LinearLayerIsTheProductOfTheRoundedOperands) {
  auto ops = make(Bf16Operands::kAlways);
  // Contiguous operands of a size divisible by 4 (the vector copy) and odd ones (the
  // element copy).
  for (const auto& [rows, in, out] : {std::tuple<int64_t, int64_t, int64_t>{64, 48, 80},
                                      std::tuple<int64_t, int64_t, int64_t>{67, 45, 83}}) {
    const auto x = random_vector<float>(rows * in, 43), w = random_vector<float>(out * in, 44);
    const auto b = random_vector<float>(out, 45), dy = random_vector<float>(rows * out, 46);
    const auto dx0 = random_vector<float>(rows * in, 47), dw0 = random_vector<float>(out * in, 48);
    const auto rx = rounded(x), rw = rounded(w), rdy = rounded(dy);
    DeviceArray<float> gx(*ops, x), gw(*ops, w), gb(*ops, b), gdy(*ops, dy);
    const std::string shape = cat(rows, "x", in, "->", out);

    // y = x w^T + b: the bias rows, then the product onto them.
    std::vector<float> bias_rows(size_t(rows * out));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < out; ++c) bias_rows[size_t(r * out + c)] = b[size_t(c)];
    DeviceArray<float> gy(*ops, size_t(rows * out), 9.0f);
    ops->linear_forward(gy.get(), gx.get(), gw.get(), gb.get(), rows, in, out);
    EXPECT_TRUE(close(gy.host(), reference_gemm(false, true, rows, out, in, 1, rx, in, rw, in, 1,
                                                bias_rows, out),
                      kSumTol))
        << "y " << shape;

    for (bool acc : {false, true}) {
      DeviceArray<float> gdx(*ops, dx0), gdw(*ops, dw0);
      ops->linear_backward(gdx.get(), acc, gdw.get(), nullptr, gdy.get(), gx.get(), gw.get(),
                           rows, in, out);
      EXPECT_TRUE(close(gdx.host(), reference_gemm(false, false, rows, in, out, 1, rdy, out, rw,
                                                   in, acc ? 1 : 0, dx0, in),
                        kSumTol))
          << "dx " << shape << ", accumulate " << acc;
      EXPECT_TRUE(close(gdw.host(), reference_gemm(true, false, out, in, rows, 1, rdy, out, rx,
                                                   in, 1, dw0, in),
                        kSumTol))
          << "dw " << shape;
    }
    DeviceArray<float> gdw(*ops, dw0);  // dw alone
    ops->linear_backward(nullptr, false, gdw.get(), nullptr, gdy.get(), gx.get(), gw.get(), rows,
                         in, out);
    EXPECT_TRUE(close(gdw.host(),
                      reference_gemm(true, false, out, in, rows, 1, rdy, out, rx, in, 1, dw0, in),
                      kSumTol))
        << "dw alone " << shape;
  }
}

// The linear layers of bfloat16-stored inputs (linear_forward_bf16_x, linear_backward_bf16:
// the input and output gradient are their own compact copies) give the bits of the float
// ones on the widened values, where the products run on bfloat16 operands (kAlways: the
// parity cases' shapes are too small for kAuto to take them) and where they do not.
TEST_F(CudaBf16Operands, Bf16InputsAreTheirOwnCopies) {
  for (Bf16Operands mode : {Bf16Operands::kAlways, Bf16Operands::kNever}) {
    auto ops = make(mode);
    const int64_t rows = 67, in = 45, out = 83;
    std::vector<uint16_t> x16, dy16;
    for (float v : random_vector<float>(rows * in, 60)) x16.push_back(bf16_bits(v));
    for (float v : random_vector<float>(rows * out, 61)) dy16.push_back(bf16_bits(v));
    std::vector<float> x, dy;
    for (uint16_t b : x16) x.push_back(bf16_float(b));
    for (uint16_t b : dy16) dy.push_back(bf16_float(b));
    const auto w = random_vector<float>(out * in, 62), b = random_vector<float>(out, 63);
    DeviceArray<uint16_t> gx16(*ops, x16), gdy16(*ops, dy16);
    DeviceArray<float> gx(*ops, x), gdy(*ops, dy), gw(*ops, w), gb(*ops, b);
    const std::string what = mode == Bf16Operands::kAlways ? "bf16 products" : "float products";

    DeviceArray<float> y16(*ops, size_t(rows * out), 9.0f), y(*ops, size_t(rows * out), 9.0f);
    ops->linear_forward_bf16_x(y16.get(), gx16.get(), gw.get(), gb.get(), rows, in, out);
    ops->linear_forward(y.get(), gx.get(), gw.get(), gb.get(), rows, in, out);
    EXPECT_TRUE(bitwise_equal(y16.host(), y.host())) << "y, " << what;

    const auto dx0 = random_vector<float>(rows * in, 64), dw0 = random_vector<float>(out * in, 65);
    DeviceArray<float> dx16(*ops, dx0), dw16(*ops, dw0), db16(*ops, size_t(out), 1.0f);
    DeviceArray<float> dx(*ops, dx0), dw(*ops, dw0), db(*ops, size_t(out), 1.0f);
    ops->linear_backward_bf16(dx16.get(), true, dw16.get(), db16.get(), gdy16.get(), gx16.get(),
                              gw.get(), rows, in, out);
    ops->linear_backward(dx.get(), true, dw.get(), db.get(), gdy.get(), gx.get(), gw.get(), rows,
                         in, out);
    EXPECT_TRUE(bitwise_equal(dx16.host(), dx.host())) << "dx, " << what;
    EXPECT_TRUE(bitwise_equal(dw16.host(), dw.host())) << "dw, " << what;
    EXPECT_TRUE(bitwise_equal(db16.host(), db.host())) << "db, " << what;
  }
}

// The values' projection stored in bfloat16 (linear_forward_to_bf16) on bfloat16
// products: where cuBLASLt's epilogue takes it, y is the float32 answer rounded (within one
// bfloat16 step: its own product may sum in another order) and staging is not touched;
// where it declines, staging holds linear_forward_bf16_x's y and y is its rounding.
TEST_F(CudaBf16Operands, ValuesStoredInBf16AreTheFloatProductRounded) {
  auto ops = make(Bf16Operands::kAlways);
  const int64_t rows = 4160, in = 64, out = 96, n = rows * out;
  std::vector<uint16_t> x16;
  for (float v : random_vector<float>(rows * in, 70)) x16.push_back(bf16_bits(v));
  const auto w = random_vector<float>(out * in, 71, 0.2), b = random_vector<float>(out, 72);
  DeviceArray<uint16_t> gx16(*ops, x16), gy16(*ops, size_t(n), uint16_t(0x1234));
  DeviceArray<float> gw(*ops, w), gb(*ops, b), staging(*ops, size_t(n), 9.0f),
      want(*ops, size_t(n), 9.0f);
  ops->linear_forward_to_bf16(gy16.get(), staging.get(), gx16.get(), gw.get(), gb.get(), rows,
                              in, out);
  ops->linear_forward_bf16_x(want.get(), gx16.get(), gw.get(), gb.get(), rows, in, out);
  const std::vector<float> f = want.host(), st = staging.host();
  const std::vector<uint16_t> y = gy16.host();
  const bool taken = std::all_of(st.begin(), st.end(), [](float v) { return v == 9.0f; });
  std::printf("note: the values' projection %s cuBLASLt's bfloat16 epilogue\n",
              taken ? "took" : "did not take");
  double err = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!taken) {
      EXPECT_EQ(y[size_t(i)], bf16_bits(f[size_t(i)])) << "element " << i;
    }
    err = std::max(err, std::abs(double(bf16_float(y[size_t(i)])) - double(f[size_t(i)])));
    scale = std::max(scale, std::abs(double(f[size_t(i)])));
  }
  EXPECT_LE(err, 0x1p-7 * scale);
  if (!taken) {
    EXPECT_TRUE(bitwise_equal(st, f)) << "staging is not linear_forward_bf16_x's y";
  }
}

// A linear layer forward and backward on `ops`: y, dx, dw.
std::vector<std::vector<float>> linear_layer(Ops<float>& ops, int64_t rows, int64_t in,
                                             int64_t out) {
  const auto x = random_vector<float>(rows * in, 50), w = random_vector<float>(out * in, 51, 0.1);
  const auto dy = random_vector<float>(rows * out, 52);
  DeviceArray<float> gx(ops, x), gw(ops, w), gdy(ops, dy);
  DeviceArray<float> gy(ops, size_t(rows * out), 0.0f), gdx(ops, size_t(rows * in), 0.0f),
      gdw(ops, size_t(out * in), 0.0f);
  ops.linear_forward(gy.get(), gx.get(), gw.get(), nullptr, rows, in, out);
  ops.linear_backward(gdx.get(), false, gdw.get(), nullptr, gdy.get(), gx.get(), gw.get(), rows,
                      in, out);
  return {gy.host(), gdx.host(), gdw.host()};
}

TEST_F(CudaBf16Operands, AutoConvertsWhereItPaysAndOnlyThere) {
  auto always = make(Bf16Operands::kAlways), never = make(Bf16Operands::kNever);
  auto automatic = make(Bf16Operands::kAuto);
  const char* names[] = {"y", "dx", "dw"};
  // An input-side projection (d multiply-adds per converted element and more): converts.
  {
    const auto a = linear_layer(*automatic, 4096, 1024, 2048);
    const auto b = linear_layer(*always, 4096, 1024, 2048);
    const auto c = linear_layer(*never, 4096, 1024, 2048);
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(bitwise_equal(a[size_t(i)], b[size_t(i)])) << names[i] << ": auto as always";
      // Both ways give bf16-rounded products (FAST_16BF's rounding is cuBLAS's own).
      EXPECT_TRUE(close(c[size_t(i)], b[size_t(i)], cuda_test::matmul_tol(MatmulPrecision::kBF16)))
          << names[i] << ": never near always";
    }
  }
  // A small product: keeps float32 operands.
  {
    const auto a = linear_layer(*automatic, 67, 45, 83);
    const auto c = linear_layer(*never, 67, 45, 83);
    for (int i = 0; i < 3; ++i)
      EXPECT_TRUE(bitwise_equal(a[size_t(i)], c[size_t(i)])) << names[i] << ": auto as never";
  }
}

// Other precisions ignore the setting.
TEST_F(CudaBf16Operands, Tf32IgnoresTheSetting) {
  auto plain = cuda::make_cuda_ops(0, MatmulPrecision::kTF32);
  auto forced = cuda::make_cuda_ops(0, MatmulPrecision::kTF32);
  cuda::set_bf16_operands(*forced, Bf16Operands::kAlways);
  const auto a = linear_layer(*plain, 67, 45, 83), b = linear_layer(*forced, 67, 45, 83);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(bitwise_equal(a[i], b[i]));
}

}  // namespace
}  // namespace par
