// The token-table scans of the CPU (kernels/cpu/token_scan.h). A build with AVX-512 has
// both the AVX-512 scan and the AVX2 one (which CPUs without AVX-512 run), so there the two
// are held to the same partials: bit for bit, except that the bounded scan's exponential
// may differ in its last bit for scores within 1/2 below the reference (exp2_avx2.h).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/token_scan.h"

namespace par {
namespace {

#if defined(__AVX512DQ__) && defined(__AVX2__) && defined(__FMA__)

// Rotary rows of `keys` keys at random positions and n query-heads' coefficients (base 2),
// scores spread over about +-spread. bounded: every c[0] lowered so that each score is at
// most -gap (the bounded scans' precondition, with gap = 0), as bounded_references does.
struct ScanCase {
  int64_t bands, keys, n, stride;
  std::vector<float> cos, sin, coef;
  std::vector<double> refs;

  ScanCase(int64_t b, int64_t k, int64_t q, double spread, bool bounded, double gap, int seed)
      : bands(b), keys(k), n(q), stride((k + 31) / 16 * 16) {
    std::mt19937 rng{uint32_t(seed)};
    std::uniform_real_distribution<double> angle(0.0, 1e5), unit(-1.0, 1.0);
    cos.assign(size_t(bands * stride), 0.0f);
    sin.assign(cos.size(), 0.0f);
    for (int64_t j = 0; j < keys; ++j) {
      const double p = angle(rng);
      for (int64_t x = 0; x < bands; ++x) {
        cos[size_t(x * stride + j)] = float(std::cos(p / (x + 1)));
        sin[size_t(x * stride + j)] = float(std::sin(p / (x + 1)));
      }
    }
    const int64_t R = 1 + 2 * bands;
    coef.resize(size_t(n * R));
    refs.resize(size_t(n));
    for (int64_t u = 0; u < n; ++u) {
      float* c = &coef[size_t(u * R)];
      double amplitude = 0;
      for (int64_t r = 1; r < R; ++r) c[r] = float(spread / double(R) * unit(rng));
      for (int64_t x = 0; x < bands; ++x)
        amplitude += std::hypot(double(c[1 + x]), double(c[1 + bands + x]));
      c[0] = bounded ? float(-amplitude - gap) : float(spread * unit(rng));
      refs[size_t(u)] = 3.0 * unit(rng);
    }
  }

  std::vector<cpu::Partial> scan(bool avx2, bool bounded) const {
    std::vector<float> state(size_t(32 * n));
    std::vector<cpu::Partial> out(size_t(n), cpu::Partial{-7, -7});
    const cpu::ScanKeys k{cos.data(), sin.data(), stride, 0, keys};
    const double* r = bounded ? refs.data() : nullptr;
    if (avx2) {
      cpu::scan_token_keys_avx2(bands, k, n, coef.data(), r, state.data(), out.data());
    } else {
      EXPECT_TRUE(cpu::scan_token_keys(bands, k, n, coef.data(), r, state.data(), out.data()));
    }
    return out;
  }
};

constexpr int64_t kKeyCounts[] = {1, 15, 16, 17, 100, 2048};

TEST(TokenScan, Avx2RunningMaximumGivesTheAvx512Bits) {
  int seed = 0;
  for (const int64_t bands : {0, 1, 3, 4, 8})
    for (const int64_t keys : kKeyCounts)
      for (const int64_t n : {1, 3, 32})
        for (const double spread : {2.0, 60.0}) {
          SCOPED_TRACE(testing::Message() << bands << " bands, " << keys << " keys, " << n
                                          << " query-heads, spread " << spread);
          const ScanCase c(bands, keys, n, spread, false, 0, ++seed);
          const auto a = c.scan(false, false), b = c.scan(true, false);
          for (int64_t u = 0; u < n; ++u) {
            EXPECT_EQ(a[size_t(u)].ref, b[size_t(u)].ref) << u;
            EXPECT_EQ(a[size_t(u)].sum, b[size_t(u)].sum) << u;
            EXPECT_GT(a[size_t(u)].sum, 0.0) << u;
          }
        }
}

TEST(TokenScan, Avx2BoundedGivesTheAvx512Bits) {
  int seed = 100;
  for (const int64_t bands : {1, 3, 4, 8})
    for (const int64_t keys : kKeyCounts)
      for (const int64_t n : {1, 32}) {
        SCOPED_TRACE(testing::Message() << bands << " bands, " << keys << " keys, " << n
                                        << " query-heads");
        // Scores at most -1/2: the same bits.
        const ScanCase c(bands, keys, n, 20.0, true, 0.5, ++seed);
        const auto a = c.scan(false, true), b = c.scan(true, true);
        // Scores up to the reference: within a few float roundings.
        const ScanCase near(bands, keys, n, 20.0, true, 0.0, ++seed);
        const auto x = near.scan(false, true), y = near.scan(true, true);
        for (int64_t u = 0; u < n; ++u) {
          EXPECT_EQ(a[size_t(u)].ref, c.refs[size_t(u)]) << u;
          EXPECT_EQ(a[size_t(u)].ref, b[size_t(u)].ref) << u;
          EXPECT_EQ(a[size_t(u)].sum, b[size_t(u)].sum) << u;
          EXPECT_EQ(x[size_t(u)].ref, y[size_t(u)].ref) << u;
          EXPECT_NEAR(x[size_t(u)].sum, y[size_t(u)].sum, 1e-6 * x[size_t(u)].sum) << u;
          EXPECT_GT(x[size_t(u)].sum, 0.0) << u;
        }
      }
}

#else

TEST(TokenScan, Avx2GivesTheAvx512Bits) {
  GTEST_SKIP() << "the build has no AVX-512 scan to hold the AVX2 one to";
}

#endif

}  // namespace
}  // namespace par
