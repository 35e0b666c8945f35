// Dropout draws one Philox4x32-10 call per four elements: scalar, that is ~6 ns an element,
// more than the rest of a latent layer's elementwise work together. With AVX-512, 16 calls
// run side by side (one per lane; 32x32->64-bit products from two vpmuludq per round), and
// a 4x16 transpose puts their outputs back in element order: ~1 ns an element. With AVX2
// alone, 8 calls at a time, twice per block. Integer arithmetic throughout: every path
// draws the scalar definition's bits.
#include "kernels/cpu/dropout_span.h"

#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cpu/avx512_intrinsics.h"

namespace par::cpu {

namespace {

template <typename T>
void dropout_scalar(T* y, const T* x, int64_t begin, int64_t end, const DropoutKey& key,
                    uint64_t example, float p, T keep_scale) {
  for (int64_t i = begin; i < end; ++i)
    y[i] = dropout_keep(key, example, uint64_t(i), p) ? x[i] * keep_scale : T(0);
}

#if defined(__AVX512F__) || defined(__AVX2__)
constexpr int64_t kBlock = kDropoutBlock;  // elements per 16 Philox calls

// Vectors of 32-bit integers and the operations Philox needs on them.
#if defined(__AVX512F__)
struct Ints {
  using V = __m512i;
  static V set1(uint32_t x) { return _mm512_set1_epi32(int(x)); }
  static V lane_index() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  static V add(V a, V b) { return _mm512_add_epi32(a, b); }
  static V exclusive_or(V a, V b) { return _mm512_xor_si512(a, b); }
  // hi:lo = a * m per 32-bit lane.
  static void mul_hi_lo(V a, V m, V& hi, V& lo) {
    const V even = _mm512_mul_epu32(a, m);
    const V odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  }
};
#else
struct Ints {
  using V = __m256i;
  static V set1(uint32_t x) { return _mm256_set1_epi32(int(x)); }
  static V lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static V add(V a, V b) { return _mm256_add_epi32(a, b); }
  static V exclusive_or(V a, V b) { return _mm256_xor_si256(a, b); }
  static void mul_hi_lo(V a, V m, V& hi, V& lo) {
    const V even = _mm256_mul_epu32(a, m);
    const V odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }
};
#endif

// Philox4x32-10 of groups g0, g0 + 1, ..., one per lane: lane g of c[w] is word w of group
// g0 + g, the bits of element 4 (g0 + g) + w. Mirrors dropout_bits and philox4x32 lane by
// lane. g0 is a multiple of the lane count, so the groups share their high word.
inline void philox_lanes(const DropoutKey& key, uint64_t example, uint64_t g0, Ints::V c[4]) {
  using I = Ints;
  c[0] = I::add(I::set1(uint32_t(g0)), I::lane_index());
  c[1] = I::set1((uint32_t(g0 >> 32) & 0xFFFFu) | (key.site << 16));
  c[2] = I::set1(uint32_t(example));
  c[3] = I::set1(uint32_t(key.step));
  uint32_t k0 = uint32_t(key.seed), k1 = uint32_t(key.seed >> 32) ^ uint32_t(example >> 32);
  const I::V m0 = I::set1(0xD2511F53u), m2 = I::set1(0xCD9E8D57u);
  for (int round = 0; round < 10; ++round) {
    I::V hi0, lo0, hi2, lo2;
    I::mul_hi_lo(c[0], m0, hi0, lo0);
    I::mul_hi_lo(c[2], m2, hi2, lo2);
    const I::V n0 = I::exclusive_or(I::exclusive_or(hi2, c[1]), I::set1(k0));
    const I::V n2 = I::exclusive_or(I::exclusive_or(hi0, c[3]), I::set1(k1));
    c[1] = lo2;
    c[3] = lo0;
    c[0] = n0;
    c[2] = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}
#endif

#if defined(__AVX512F__)
// The random bits of elements 64*block .. 64*block+63, in element order (out[k] holds
// elements 16k .. 16k+15 of the block).
inline void philox_block(const DropoutKey& key, uint64_t example, uint64_t block,
                         __m512i out[4]) {
  __m512i c[4];
  philox_lanes(key, example, block * 16, c);
  // Lane g of c[0..3] holds elements 4g..4g+3: transpose 16x4 into element order.
  const __m512i t0 = _mm512_unpacklo_epi32(c[0], c[1]), t1 = _mm512_unpackhi_epi32(c[0], c[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(c[2], c[3]), t3 = _mm512_unpackhi_epi32(c[2], c[3]);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
  const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  out[0] = _mm512_shuffle_i32x4(v0, v1, 0x88);
  out[1] = _mm512_shuffle_i32x4(v0, v1, 0xDD);
  out[2] = _mm512_shuffle_i32x4(v2, v3, 0x88);
  out[3] = _mm512_shuffle_i32x4(v2, v3, 0xDD);
}

// uniform_from_bits(bits) >= p for 16 lanes.
inline __mmask16 keep16(__m512i bits, __m512 p) {
  const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bits, 8)),
                                 _mm512_set1_ps(1.0f / 16777216.0f));
  return _mm512_cmp_ps_mask(u, p, _CMP_GE_OQ);
}

void dropout_blocks(float* y, const float* x, int64_t first, int64_t last,
                    const DropoutKey& key, uint64_t example, float p, float keep_scale) {
  const __m512 vp = _mm512_set1_ps(p), vs = _mm512_set1_ps(keep_scale);
  for (int64_t blk = first; blk < last; ++blk) {
    __m512i bits[4];
    philox_block(key, example, uint64_t(blk), bits);
    for (int k = 0; k < 4; ++k) {
      const int64_t i = blk * kBlock + 16 * k;
      _mm512_storeu_ps(y + i, _mm512_maskz_mul_ps(keep16(bits[k], vp), _mm512_loadu_ps(x + i), vs));
    }
  }
}
#elif defined(__AVX2__)
// The random bits of the 32 elements of groups g0 .. g0+7 (4 each), in element order
// (out[k] holds elements 8k .. 8k+7): philox_block's half, on 8 lanes.
inline void philox_groups(const DropoutKey& key, uint64_t example, uint64_t g0, __m256i out[4]) {
  __m256i c[4];
  philox_lanes(key, example, g0, c);
  // Lane g of c[0..3] holds elements 4g..4g+3. Per 128-bit half (groups 0-3, then 4-7):
  // u0..u3 are groups 0..3 (4..7) whole, then the halves are paired.
  const __m256i t0 = _mm256_unpacklo_epi32(c[0], c[1]), t1 = _mm256_unpackhi_epi32(c[0], c[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(c[2], c[3]), t3 = _mm256_unpackhi_epi32(c[2], c[3]);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  out[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
  out[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
  out[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
  out[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
}

// x * keep_scale where uniform_from_bits(bits) >= p, else +0, for 8 lanes.
inline __m256 keep8(__m256i bits, __m256 x, __m256 p, __m256 keep_scale) {
  const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 8)),
                                 _mm256_set1_ps(1.0f / 16777216.0f));
  return _mm256_and_ps(_mm256_cmp_ps(u, p, _CMP_GE_OQ), _mm256_mul_ps(x, keep_scale));
}

void dropout_blocks(float* y, const float* x, int64_t first, int64_t last,
                    const DropoutKey& key, uint64_t example, float p, float keep_scale) {
  const __m256 vp = _mm256_set1_ps(p), vs = _mm256_set1_ps(keep_scale);
  for (int64_t blk = first; blk < last; ++blk)
    for (int half = 0; half < 2; ++half) {
      __m256i bits[4];
      philox_groups(key, example, uint64_t(blk) * 16 + 8 * half, bits);
      for (int k = 0; k < 4; ++k) {
        const int64_t i = blk * kBlock + 32 * half + 8 * k;
        _mm256_storeu_ps(y + i, keep8(bits[k], _mm256_loadu_ps(x + i), vp, vs));
      }
    }
}
#endif

}  // namespace

template <typename T>
void dropout_span(T* y, const T* x, int64_t begin, int64_t end, const DropoutKey& key,
                  uint64_t example, float p, T keep_scale) {
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {  // the double build is a test reference
    const int64_t first = (begin + kBlock - 1) / kBlock, last = end / kBlock;
    if (first < last) {
      dropout_scalar(y, x, begin, first * kBlock, key, example, p, keep_scale);
      dropout_blocks(y, x, first, last, key, example, p, keep_scale);
      dropout_scalar(y, x, last * kBlock, end, key, example, p, keep_scale);
      return;
    }
  }
#endif
  dropout_scalar(y, x, begin, end, key, example, p, keep_scale);
}

template void dropout_span<float>(float*, const float*, int64_t, int64_t, const DropoutKey&,
                                  uint64_t, float, float);
template void dropout_span<double>(double*, const double*, int64_t, int64_t,
                                   const DropoutKey&, uint64_t, float, double);

}  // namespace par::cpu
