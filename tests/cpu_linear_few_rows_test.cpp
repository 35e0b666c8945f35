// The CPU linear layer on a few rows (kernels/cpu/linear_few_rows.h: decoding's latent
// layers, one row per sample): against naive sums in double, with and without bias, on
// widths that are not whole vectors; and each row's result the same bits whatever the
// number of rows in the call and the thread count, which the K-sample decoder's equality
// with single-sample runs rests on.
#include <gtest/gtest.h>
#include <omp.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/linear_few_rows.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::cast;
using testing_util::max_rel_err;
using testing_util::random_vector;

// in x out: the latents' shapes (256 x 256, the 259-token head, 256 <-> 1024) and widths
// with partial last vectors of float (16 lanes) and double (8).
struct Width {
  int64_t in, out;
};
constexpr Width kWidths[] = {{256, 259}, {45, 83}, {1024, 256}, {3, 17}, {16, 1}, {200, 1024}};
constexpr int64_t kRowCounts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16};

// y = x w^T + b through CpuOps on `threads` threads.
template <typename T>
std::vector<T> forward(const std::vector<T>& x, const std::vector<T>& w, const T* b,
                       int64_t rows, Width s, int threads) {
  std::vector<T> y(size_t(rows * s.out), T(-7));
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  cpu::CpuOps<T>().linear_forward(y.data(), x.data(), w.data(), b, rows, s.in, s.out);
  omp_set_num_threads(saved);
  return y;
}

template <typename T>
void check_against_naive(double tol) {
  for (const Width s : kWidths)
    for (const int64_t rows : kRowCounts)
      for (const bool bias : {true, false})
        for (const int threads : {1, 2, 3}) {
          SCOPED_TRACE(testing::Message() << rows << " x " << s.in << " -> " << s.out
                                          << (bias ? "" : " no bias") << ", " << threads
                                          << " threads");
          const auto x = random_vector<double>(rows * s.in, 1 + rows);
          const auto w = random_vector<double>(s.out * s.in, 2, 0.2);
          const auto b = random_vector<double>(s.out, 3);
          std::vector<double> want(size_t(rows * s.out));
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < s.out; ++o) {
              double sum = bias ? b[size_t(o)] : 0.0;
              for (int64_t i = 0; i < s.in; ++i) sum += x[size_t(r * s.in + i)] * w[size_t(o * s.in + i)];
              want[size_t(r * s.out + o)] = sum;
            }
          const auto bt = cast<T>(b);
          const auto y = forward<T>(cast<T>(x), cast<T>(w), bias ? bt.data() : nullptr, rows, s, threads);
          EXPECT_LE(max_rel_err(y, want), tol);
        }
}

TEST(CpuLinearFewRows, TakesOneToSixteenRows) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  for (int64_t rows : kRowCounts) EXPECT_TRUE(cpu::is_few_rows_linear(rows)) << rows;
  EXPECT_FALSE(cpu::is_few_rows_linear(0));
  EXPECT_FALSE(cpu::is_few_rows_linear(17));
#else
  GTEST_SKIP() << "the build has neither AVX-512 nor AVX2: every linear layer goes to BLAS";
#endif
}

// Double: exact up to rounding. Float: sums of up to 1024 products of O(1) terms carry
// ~1e-6 relative error; 1e-5 flags a missing or doubled term.
TEST(CpuLinearFewRows, MatchesNaiveSumsDouble) { check_against_naive<double>(1e-12); }
TEST(CpuLinearFewRows, MatchesNaiveSumsFloat) { check_against_naive<float>(1e-5); }

// Row r of a call on `rows` rows equals a call on row r alone, bit for bit, on 1 to 3
// threads.
template <typename T>
void check_rows_independent() {
  if (!cpu::is_few_rows_linear(1))
    GTEST_SKIP() << "the build has neither AVX-512 nor AVX2 (BLAS rows)";
  for (const Width s : kWidths)
    for (const int64_t rows : kRowCounts) {
      SCOPED_TRACE(testing::Message() << rows << " x " << s.in << " -> " << s.out);
      const auto x = cast<T>(random_vector<double>(rows * s.in, 4));
      const auto w = cast<T>(random_vector<double>(s.out * s.in, 5, 0.2));
      const auto b = cast<T>(random_vector<double>(s.out, 6));
      for (const int threads : {1, 2, 3}) {
        const std::vector<T> all = forward<T>(x, w, b.data(), rows, s, threads);
        for (int64_t r = 0; r < rows; ++r) {
          const std::vector<T> xr(x.begin() + r * s.in, x.begin() + (r + 1) * s.in);
          const std::vector<T> alone = forward<T>(xr, w, b.data(), 1, s, 1);
          const std::vector<T> row(all.begin() + r * s.out, all.begin() + (r + 1) * s.out);
          ASSERT_EQ(row, alone) << "row " << r << ", " << threads << " threads";
        }
      }
    }
}

TEST(CpuLinearFewRows, EachRowAsAloneFloat) { check_rows_independent<float>(); }
TEST(CpuLinearFewRows, EachRowAsAloneDouble) { check_rows_independent<double>(); }

}  // namespace
}  // namespace par
