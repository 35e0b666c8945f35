// The CPU linear layer on tall inputs (the k/v projections of every input position), where
// the weight gradient is summed over row slices, one per thread: against a naive sum in
// double, with the gradient accumulating onto what is already there.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::random_vector;

template <typename T>
void check_tall_weight_gradient(int threads, double tol) {
  // 8193 rows: above the threshold of the row-sliced sum, not divisible by the threads.
  const int64_t rows = 8193, in = 64, out = 48;
  const auto x = random_vector<double>(rows * in, 1), dy = random_vector<double>(rows * out, 2);
  const auto w = random_vector<double>(out * in, 3), dw0 = random_vector<double>(out * in, 4);
  std::vector<double> ref = dw0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) ref[o * in + i] += dy[r * out + o] * x[r * in + i];

  const std::vector<T> xt(x.begin(), x.end()), dyt(dy.begin(), dy.end()), wt(w.begin(), w.end());
  std::vector<T> dw(dw0.begin(), dw0.end());
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  cpu::CpuOps<T> ops;
  ops.linear_backward(nullptr, false, dw.data(), nullptr, dyt.data(), xt.data(), wt.data(), rows,
                      in, out);
  omp_set_num_threads(saved);
  double err = 0, scale = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    err = std::max(err, std::abs(double(dw[k]) - ref[k]));
    scale = std::max(scale, std::abs(ref[k]));
  }
  EXPECT_LE(err / scale, tol) << threads << " threads";
}

// Double: exact up to rounding whatever the slicing. Float: sums of 8193 products of O(1)
// terms carry ~1e-6 relative error; 1e-5 flags any missing or doubled slice.
TEST(CpuLinear, TallWeightGradientSumsEverySlice) {
  for (int threads : {1, 2, 3}) {
    check_tall_weight_gradient<double>(threads, 1e-12);
    check_tall_weight_gradient<float>(threads, 1e-5);
  }
}

}  // namespace
}  // namespace par
