// The CPU attention's exponentials against double-precision references, in ulps of the
// correctly rounded float: fast_expf (the blocked sgemm path and decoding), exp2_16 (the
// fused AVX-512 path, whose scores are in base-2 units), exp2_16_short and exp2_16_floor
// (the token-table attention's), and their 8-lane twins exp2_8, exp2_8_short and
// exp2_8_floor (for CPUs with AVX2 alone), also against the 16-lane ones. Every 2^k-th
// float of the ranges the softmax feeds them is checked, so a wrong coefficient or a
// broken range reduction anywhere in the range shows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/cpu/exp2_avx2.h"
#include "kernels/cpu/exp2_avx512.h"
#include "kernels/cpu/fast_exp.h"

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps(), which trips
// -W(maybe-)uninitialized inside its own header wherever they are inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace par {
namespace {

float from_bits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// |got - want| in units of the last place of float(want), want a normal float's range.
double ulps(float got, double want) {
  const float rounded = float(want);
  return std::fabs(double(got) - want) / std::ldexp(1.0, std::ilogb(rounded) - 23);
}

// Calls f(x) for every stride-th float from `from` towards `to` (same sign, |from| < |to|).
template <typename F>
void sweep(float from, float to, uint32_t stride, F f) {
  uint32_t bits, last;
  std::memcpy(&bits, &from, sizeof bits);
  std::memcpy(&last, &to, sizeof last);
  for (; bits <= last; bits += stride) f(from_bits(bits));
}

TEST(CpuExp, FastExpfIsWithinTwoUlps) {
  double worst = 0;
  float worst_x = 0;
  auto check = [&](float x) {
    const double u = ulps(cpu::fast_expf(x), std::exp(double(x)));
    if (u > worst) worst = u, worst_x = x;
  };
  sweep(0.0f, 88.0f, 509, check);
  sweep(-0.0f, -87.0f, 509, check);
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
  EXPECT_EQ(cpu::fast_expf(0.0f), 1.0f);
  EXPECT_EQ(cpu::fast_expf(-1000.0f), 0.0f);
}

// The worst ulps of an exponential over every 61st float of the softmax's range, y in
// [-126, 0] (score - max <= 0; below -126 the result leaves the normal floats, and those
// probabilities are too small to move a sum of at least 1), and where it is.
struct Worst {
  double ulps = 0;
  float y = 0;
};
Worst worst_on_softmax_range(float (*exp2)(float)) {
  Worst w;
  sweep(-0.0f, -126.0f, 61, [&](float y) {
    const double u = ulps(exp2(y), std::exp2(double(y)));
    if (u > w.ulps) w = Worst{u, y};
  });
  return w;
}

#if defined(__AVX512F__)
// Lane 0 of a 16-float exponential of y.
template <__m512 (*Exp2)(__m512)>
float lane(float y) {
  alignas(64) float out[16];
  _mm512_store_ps(out, Exp2(_mm512_set1_ps(y)));
  return out[0];
}
constexpr auto exp2_lane = lane<cpu::exp2_16>;
constexpr auto exp2_short_lane = lane<cpu::exp2_16_short>;
#if defined(__AVX512DQ__)
constexpr auto exp2_floor_lane = lane<cpu::exp2_16_floor>;
#endif

TEST(CpuExp, VectorExp2IsWithinOneUlpOnTheSoftmaxRange) {
  const Worst w = worst_on_softmax_range(exp2_lane);
  EXPECT_LE(w.ulps, 1.1) << "at y = " << w.y;

  // All 16 lanes compute, each from its own argument.
  alignas(64) float in[16], out[16];
  for (int i = 0; i < 16; ++i) in[i] = -0.37f * float(i * i);
  _mm512_store_ps(out, cpu::exp2_16(_mm512_load_ps(in)));
  for (int i = 0; i < 16; ++i) EXPECT_LE(ulps(out[i], std::exp2(double(in[i]))), 1.1) << i;
}

// The token attention's shorter one: within 2.5 ulp on the same range.
TEST(CpuExp, ShortVectorExp2IsWithinTwoAndAHalfUlps) {
  const Worst w = worst_on_softmax_range(exp2_short_lane);
  EXPECT_LE(w.ulps, 2.5) << "at y = " << w.y;  // 1.94 on this sweep
}

#if defined(__AVX512DQ__)
// The bounded token-table scan's: within 2.6 ulp on the same range, every lane its own,
// and exact at every integer (its polynomial gives 1 at f = 0 and 2 at f = 1).
TEST(CpuExp, FloorVectorExp2IsWithinTwoAndSixTenthsUlps) {
  const Worst w = worst_on_softmax_range(exp2_floor_lane);
  EXPECT_LE(w.ulps, 2.6) << "at y = " << w.y;  // 2.59 on this sweep
  for (int k = 0; k <= 126; ++k) EXPECT_EQ(exp2_floor_lane(-float(k)), std::ldexp(1.0f, -k)) << k;
  EXPECT_EQ(exp2_floor_lane(-0.0f), 1.0f);
  EXPECT_EQ(exp2_floor_lane(-200.0f), 0.0f);
  EXPECT_EQ(exp2_floor_lane(-1e30f), 0.0f);
  alignas(64) float in[16], out[16];
  for (int i = 0; i < 16; ++i) in[i] = -0.37f * float(i * i);
  _mm512_store_ps(out, cpu::exp2_16_floor(_mm512_load_ps(in)));
  for (int i = 0; i < 16; ++i) EXPECT_LE(ulps(out[i], std::exp2(double(in[i]))), 2.6) << i;
}
#endif

// Both are exact where the polynomial's constant term decides, and 0 far below.
TEST(CpuExp, VectorExp2IsExactAtZeroAndVanishesFarBelow) {
  for (float (*exp2)(float) : {exp2_lane, exp2_short_lane}) {
    EXPECT_EQ(exp2(0.0f), 1.0f);
    EXPECT_EQ(exp2(-1.0f), 0.5f);
    EXPECT_EQ(exp2(-200.0f), 0.0f);
    EXPECT_EQ(exp2(-1e30f), 0.0f);  // past 2^23 the rounding must still give 0
  }
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// Lane 0 of an 8-float exponential of y.
template <__m256 (*Exp2)(__m256)>
float lane8(float y) {
  alignas(32) float out[8];
  _mm256_store_ps(out, Exp2(_mm256_set1_ps(y)));
  return out[0];
}
constexpr auto exp2_8_lane = lane8<cpu::exp2_8>;
constexpr auto exp2_short8_lane = lane8<cpu::exp2_8_short>;
constexpr auto exp2_floor8_lane = lane8<cpu::exp2_8_floor>;

// The AVX2 twins of exp2_16 and exp2_16_short, for the token-table scan's running
// references: within 1.1 and 2.5 ulp, exact at 0 and -1, 0 far below, every lane its own.
TEST(CpuExp, VectorExp2OnEightLanes) {
  EXPECT_LE(worst_on_softmax_range(exp2_8_lane).ulps, 1.1);
  EXPECT_LE(worst_on_softmax_range(exp2_short8_lane).ulps, 2.5);
  // Up to 63 above 0 too (the power of two is built in the exponent field).
  for (float y : {1.0f, 10.25f, 62.5f, 62.99f}) {
    EXPECT_LE(ulps(exp2_8_lane(y), std::exp2(double(y))), 1.1) << y;
    EXPECT_LE(ulps(exp2_short8_lane(y), std::exp2(double(y))), 2.5) << y;
  }
  for (float (*exp2)(float) : {exp2_8_lane, exp2_short8_lane}) {
    EXPECT_EQ(exp2(0.0f), 1.0f);
    EXPECT_EQ(exp2(-1.0f), 0.5f);
    EXPECT_EQ(exp2(-200.0f), 0.0f);
    EXPECT_EQ(exp2(-1e30f), 0.0f);
  }
  alignas(32) float in[8], out[8];
  for (int i = 0; i < 8; ++i) in[i] = -0.37f * float(i * i);
  _mm256_store_ps(out, cpu::exp2_8(_mm256_load_ps(in)));
  for (int i = 0; i < 8; ++i) EXPECT_LE(ulps(out[i], std::exp2(double(in[i]))), 1.1) << i;
}

// The AVX2 one of the bounded scan: as exp2_16_floor, within 2.6 ulp, exact at integers, 0
// far below, and every lane its own.
TEST(CpuExp, FloorVectorExp2OnEightLanes) {
  const Worst w = worst_on_softmax_range(exp2_floor8_lane);
  EXPECT_LE(w.ulps, 2.6) << "at y = " << w.y;
  for (int k = 0; k <= 126; ++k) EXPECT_EQ(exp2_floor8_lane(-float(k)), std::ldexp(1.0f, -k)) << k;
  EXPECT_EQ(exp2_floor8_lane(-0.0f), 1.0f);
  EXPECT_EQ(exp2_floor8_lane(-200.0f), 0.0f);
  EXPECT_EQ(exp2_floor8_lane(-1e30f), 0.0f);
  // Subnormal results, rounded once: 2^-140 exactly, 1.25 and 1.75 times the smallest
  // subnormal (2^-149) to 1 and 2 times it.
  EXPECT_EQ(exp2_floor8_lane(-140.0f), std::ldexp(1.0f, -140));
  EXPECT_EQ(exp2_floor8_lane(-149.0f + std::log2(1.25f)), std::ldexp(1.0f, -149));
  EXPECT_EQ(exp2_floor8_lane(-149.0f + std::log2(1.75f)), std::ldexp(1.0f, -148));
  alignas(32) float in[8], out[8];
  for (int i = 0; i < 8; ++i) in[i] = -0.37f * float(i * i);
  _mm256_store_ps(out, cpu::exp2_8_floor(_mm256_load_ps(in)));
  for (int i = 0; i < 8; ++i) EXPECT_LE(ulps(out[i], std::exp2(double(in[i]))), 2.6) << i;
}

// Scalar models of the 16-lane exponentials, from the instructions' definitions: scalef
// is p * 2^n rounded once (ldexp), and reduce's y - floor(y) rounds toward -inf (Intel's
// pseudocode: "subtraction under the same RC"). exp2_8 and exp2_8_short equal theirs
// everywhere below 63, and exp2_8_floor for y <= -1/2; above -1/2 it rounds f = 1 + y to
// nearest and may differ in the last bit, which this shows does happen. On CPUs with
// AVX-512 the next test compares with the instructions themselves.
float horner(float f, const float* c, int n) {
  float p = c[0];
  for (int i = 1; i < n; ++i) p = std::fmaf(p, f, c[i]);
  return p;
}
float scalef_model(float p, float n) { return std::ldexp(p, int(std::fmax(n, -1000.0f))); }
float exp2_16_model(float y) {
  const float n = (y + 12582912.0f) - 12582912.0f;
  return scalef_model(horner(y - n, cpu::kExp2Polynomial, 7), n);
}
float exp2_16_short_model(float y) {
  const float n = std::nearbyint(y);
  return scalef_model(horner(y - n, cpu::kExp2ShortPolynomial, 6), n);
}
float exp2_16_floor_model(float y) {
  const float n = std::floor(y);
  const double exact = double(y) - double(n);
  float f = float(exact);
  if (double(f) > exact) f = std::nextafter(f, -1.0f);
  return scalef_model(horner(f, cpu::kExp2FloorPolynomial, 6), n);
}

TEST(CpuExp, EightLanesEqualModelsOfSixteen) {
  int64_t differ[3] = {0, 0, 0}, floor_above_half = 0;
  float first[3] = {0, 0, 0};
  auto check = [&](float y) {
    if (exp2_8_lane(y) != exp2_16_model(y) && differ[0]++ == 0) first[0] = y;
    if (exp2_short8_lane(y) != exp2_16_short_model(y) && differ[1]++ == 0) first[1] = y;
    if (y <= 0.0f && exp2_floor8_lane(y) != exp2_16_floor_model(y)) {
      if (y > -0.5f)
        ++floor_above_half;
      else if (differ[2]++ == 0)
        first[2] = y;
    }
  };
  sweep(-0.0f, -200.0f, 997, check);
  sweep(0.0f, 62.99f, 997, check);
  for (int k = 0; k < 3; ++k)
    EXPECT_EQ(differ[k], 0) << "exponential " << k << ", first at y = " << first[k];
  EXPECT_GT(floor_above_half, 0);
}

#if defined(__AVX512DQ__)
// exp2_8 and exp2_8_short give the 16-lane ones' bits for every finite y below 63,
// subnormal results included, so the token-table scan's running references give the same
// partials with or without AVX-512. exp2_8_floor gives exp2_16_floor's for y <= -1/2 (its f
// = y - floor(y) is exact there; above, AVX-512 rounds it down and AVX2 to nearest).
TEST(CpuExp, EightLanesEqualSixteen) {
  const std::pair<float (*)(float), float (*)(float)> twins[] = {
      {exp2_8_lane, exp2_lane}, {exp2_short8_lane, exp2_short_lane},
      {exp2_floor8_lane, exp2_floor_lane}};
  for (int k = 0; k < 3; ++k) {
    int64_t differ = 0;
    float first = 0;
    auto check = [&](float y) {
      if (twins[k].first(y) != twins[k].second(y) && differ++ == 0) first = y;
    };
    if (k < 2) {
      sweep(-0.0f, -200.0f, 251, check);
      sweep(0.0f, 62.99f, 251, check);
    } else {
      sweep(-0.5f, -200.0f, 251, check);
    }
    EXPECT_EQ(differ, 0) << "exponential " << k << ", first at y = " << first;
  }
}
#endif
#endif

}  // namespace
}  // namespace par
