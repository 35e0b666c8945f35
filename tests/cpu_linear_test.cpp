// The CPU linear layer against naive sums in double, forward and backward, with gradients
// accumulating onto what is already there, for thread counts that do and do not divide
// the work:
// - on tall inputs (the k/v projections of every input position), which run in row
//   chunks, each thread on its own slice of rows with its own partial weight and bias
//   gradients;
// - on short ones (the latents' layers), whose backward computes the input gradient on
//   half of the threads and the weight and bias gradients on the other half.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/linear_tall.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::cast;
using testing_util::max_rel_err;
using testing_util::random_vector;

struct Shape {
  int64_t rows, in, out;
};
// 8193 rows: tall, more than one chunk per thread, and not divisible by 2 or 3 threads.
constexpr Shape kTall{8193, 64, 48};
// Short: 77 rows and 53 output columns split unevenly between the two halves of 2-4 threads.
constexpr Shape kShort{77, 40, 53};

template <typename T>
void check_linear(Shape shape, int threads, double tol) {
  const int64_t kRows = shape.rows, kIn = shape.in, kOut = shape.out;
  const auto x = random_vector<double>(kRows * kIn, 1), dy = random_vector<double>(kRows * kOut, 2);
  const auto w = random_vector<double>(kOut * kIn, 3), b = random_vector<double>(kOut, 4);
  const auto dw0 = random_vector<double>(kOut * kIn, 5), db0 = random_vector<double>(kOut, 6);
  const auto dx0 = random_vector<double>(kRows * kIn, 7);
  std::vector<double> y_ref(size_t(kRows * kOut)), dx_ref = dx0, dw_ref = dw0, db_ref = db0;
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t o = 0; o < kOut; ++o) {
      double sum = b[o];
      for (int64_t i = 0; i < kIn; ++i) {
        sum += x[r * kIn + i] * w[o * kIn + i];
        dx_ref[r * kIn + i] += dy[r * kOut + o] * w[o * kIn + i];
        dw_ref[o * kIn + i] += dy[r * kOut + o] * x[r * kIn + i];
      }
      y_ref[r * kOut + o] = sum;
      db_ref[o] += dy[r * kOut + o];
    }

  const auto xt = cast<T>(x), dyt = cast<T>(dy), wt = cast<T>(w), bt = cast<T>(b);
  std::vector<T> y(size_t(kRows * kOut)), dx = cast<T>(dx0), dw = cast<T>(dw0), db = cast<T>(db0);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  cpu::CpuOps<T> ops;
  ops.linear_forward(y.data(), xt.data(), wt.data(), bt.data(), kRows, kIn, kOut);
  ops.linear_backward(dx.data(), true, dw.data(), db.data(), dyt.data(), xt.data(), wt.data(),
                      kRows, kIn, kOut);
  // Overwriting dx, and only the weight gradient (a frozen input and no bias).
  std::vector<T> dx_only(dx.size()), dw_only = cast<T>(dw0);
  ops.linear_backward(dx_only.data(), false, nullptr, nullptr, dyt.data(), xt.data(), wt.data(),
                      kRows, kIn, kOut);
  ops.linear_backward(nullptr, false, dw_only.data(), nullptr, dyt.data(), xt.data(), wt.data(),
                      kRows, kIn, kOut);
  omp_set_num_threads(saved);

  std::vector<double> dx_fresh = dx_ref;
  for (size_t k = 0; k < dx_fresh.size(); ++k) dx_fresh[k] -= dx0[k];
  EXPECT_LE(max_rel_err(y, y_ref), tol) << threads << " threads: y";
  EXPECT_LE(max_rel_err(dx, dx_ref), tol) << threads << " threads: dx accumulated";
  EXPECT_LE(max_rel_err(dx_only, dx_fresh), tol) << threads << " threads: dx";
  EXPECT_LE(max_rel_err(dw, dw_ref), tol) << threads << " threads: dw";
  EXPECT_LE(max_rel_err(dw_only, dw_ref), tol) << threads << " threads: dw alone";
  EXPECT_LE(max_rel_err(db, db_ref), tol) << threads << " threads: db";
}

// Double: exact up to rounding whatever the slicing. Float: sums of 8193 products of O(1)
// terms carry ~1e-6 relative error; 1e-5 flags any missing or doubled chunk or slice.
TEST(CpuLinear, TallLayerMatchesNaiveSums) {
  ASSERT_TRUE(cpu::is_tall_linear(kTall.rows, kTall.in, kTall.out));
  for (int threads : {1, 2, 3}) {
    check_linear<double>(kTall, threads, 1e-12);
    check_linear<float>(kTall, threads, 1e-5);
  }
}

TEST(CpuLinear, ShortLayerMatchesNaiveSums) {
  ASSERT_FALSE(cpu::is_tall_linear(kShort.rows, kShort.in, kShort.out));
  for (int threads : {1, 2, 3, 4}) {
    check_linear<double>(kShort, threads, 1e-12);
    check_linear<float>(kShort, threads, 1e-5);
  }
}

// The short layer's backward splits its work by the thread count, and a BLAS kernel may
// round an element differently by the size of the product it sits in (OpenBLAS's Haswell
// sgemm matches a larger product's rows only for sizes that are multiples of 12), so dx
// and dw may differ in the last bits between thread counts: they agree to float rounding,
// and each thread count repeats its own bits (what exact resume relies on). db is summed
// by par itself, per column in double in row order, so it is the same for every count.
TEST(CpuLinear, ShortLayerBackwardIsReproducibleAndDbIndependentOfThreads) {
  const auto [rows, in, out] = kShort;
  const auto x = testing_util::random_vector<float>(rows * in, 1);
  const auto dy = testing_util::random_vector<float>(rows * out, 2);
  const auto w = testing_util::random_vector<float>(out * in, 3);
  struct Grads {
    std::vector<float> dx, dw, db;
  };
  auto backward = [&](int threads) {
    Grads g{std::vector<float>(size_t(rows * in), 0.5f), std::vector<float>(size_t(out * in), 0.25f),
            std::vector<float>(size_t(out), 0.125f)};
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    cpu::CpuOps<float>().linear_backward(g.dx.data(), true, g.dw.data(), g.db.data(), dy.data(),
                                         x.data(), w.data(), rows, in, out);
    omp_set_num_threads(saved);
    return g;
  };
  const Grads one = backward(1);
  const std::vector<double> one_dx(one.dx.begin(), one.dx.end()), one_dw(one.dw.begin(), one.dw.end());
  for (int threads : {1, 2, 3, 4}) {
    const Grads a = backward(threads), b = backward(threads);
    EXPECT_EQ(a.dx, b.dx) << threads << " threads";
    EXPECT_EQ(a.dw, b.dw) << threads << " threads";
    EXPECT_EQ(a.db, one.db) << threads << " threads";
    EXPECT_LT(max_rel_err(a.dx, one_dx), 1e-6) << threads << " threads";
    EXPECT_LT(max_rel_err(a.dw, one_dw), 1e-6) << threads << " threads";
  }
}

}  // namespace
}  // namespace par
