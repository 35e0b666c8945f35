// Helpers shared by the tests: seeded random tensors and a central finite-difference
// gradient check.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace par::testing_util {

template <typename T>
std::vector<T> random_vector(int64_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = T(dist(rng));
  return v;
}

// Compares `analytic[i]` with (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) for every i
// (or `max_checks` of them, spread evenly). f reads x through the captured reference.
// In double precision with eps = 1e-6 the central difference is accurate to ~1e-9
// relative for smooth functions, so 1e-6 relative (plus an absolute floor for
// near-zero gradients) leaves room without hiding a wrong term.
inline void expect_gradient(const std::string& what, std::vector<double>& x,
                            const std::vector<double>& analytic,
                            const std::function<double()>& f, double rel_tol = 1e-6,
                            double abs_tol = 1e-8, double eps = 1e-6, int64_t max_checks = 400) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const int64_t n = int64_t(x.size());
  const int64_t stride = n > max_checks ? (n + max_checks - 1) / max_checks : 1;
  int failures = 0;
  for (int64_t i = 0; i < n; i += stride) {
    const double keep = x[i];
    x[i] = keep + eps;
    const double fp = f();
    x[i] = keep - eps;
    const double fm = f();
    x[i] = keep;
    const double fd = (fp - fm) / (2 * eps);
    const double tol = abs_tol + rel_tol * std::max(std::abs(fd), std::abs(analytic[i]));
    if (std::abs(fd - analytic[i]) > tol && failures++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " vs finite difference "
                    << fd;
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " mismatches";
}

// The float (or double) copy of a double reference's inputs.
template <typename T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// max |a - b| / max |b|: relative to the tensor's scale, so tiny entries do not dominate.
// Infinite references (a log-sum-exp of no visible key) must be matched exactly.
template <typename T>
double max_rel_err(const std::vector<T>& a, const std::vector<double>& b) {
  double err = 0, ref = 1e-300;
  for (size_t i = 0; i < b.size(); ++i) {
    if (std::isinf(b[i])) {
      if (!(std::isinf(double(a[i])) && (a[i] < 0) == (b[i] < 0))) return INFINITY;
      continue;
    }
    err = std::max(err, std::abs(double(a[i]) - b[i]));
    ref = std::max(ref, std::abs(b[i]));
  }
  return err / ref;
}

// got against want: infinities and NaN must match exactly; elsewhere the largest |got -
// want| divided by the largest finite |want| must be at most tol (when want is all zeros,
// got must be too). The message names the worst entry.
template <typename G, typename W>
::testing::AssertionResult close(const std::vector<G>& got, const std::vector<W>& want,
                                 double tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  double ref = 0, worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double w = double(want[i]), g = double(got[i]);
    if (!std::isfinite(w) || !std::isfinite(g)) {
      const bool same = (std::isnan(w) && std::isnan(g)) || w == g;
      if (!same)
        return ::testing::AssertionFailure() << "entry " << i << ": got " << g << ", want " << w;
      continue;
    }
    ref = std::max(ref, std::abs(w));
    if (std::abs(g - w) > worst) {
      worst = std::abs(g - w);
      at = i;
    }
  }
  const double rel = ref > 0 ? worst / ref : (worst > 0 ? INFINITY : 0.0);
  if (rel <= tol) return ::testing::AssertionSuccess() << "max relative error " << rel;
  return ::testing::AssertionFailure()
         << "max |got - want| = " << worst << " at entry " << at << " (got " << got[at]
         << ", want " << want[at] << "), " << rel << " of the largest |want| " << ref
         << ", tolerance " << tol;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace par::testing_util
