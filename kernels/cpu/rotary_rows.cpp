// Rotary embedding touches only the first 2*bands floats of each head, in interleaved
// (even, odd) pairs, which GCC 12 leaves to scalar code: the input keys' rotation at
// N = 131072 took ~13 ms a call, forward and backward. With AVX-512, 8 pairs are one
// vector: the row's cosines and sines are laid out once per row as (c, c) and (-s, s) pairs
// and each head takes a load, a pair swap, a multiply, a multiply-add and a store: ~7.5 ms,
// which is about what reading and writing those cache lines costs.
#include "kernels/cpu/rotary_rows.h"

#include <algorithm>
#include <type_traits>

#include "kernels/cpu/avx512_intrinsics.h"

namespace par::cpu {

namespace {

template <typename T>
void rotary_scalar(T* x, int64_t begin, int64_t end, int64_t n, int64_t heads,
                   int64_t head_dim, int64_t bands, const T* cos_table, const T* sin_table,
                   bool inverse) {
  const T sign = inverse ? T(-1) : T(1);
  for (int64_t r = begin; r < end; ++r) {
    const T* cs = cos_table + (r % n) * bands;
    const T* sn = sin_table + (r % n) * bands;
    T* row = x + r * heads * head_dim;
    for (int64_t h = 0; h < heads; ++h) {
      T* u = row + h * head_dim;
      for (int64_t k = 0; k < bands; ++k) {
        const T c = cs[k], s = sign * sn[k];
        const T a = u[2 * k], b = u[2 * k + 1];
        u[2 * k] = a * c - b * s;
        u[2 * k + 1] = b * c + a * s;
      }
    }
  }
}

#if defined(__AVX512F__)
// 8 bands (16 floats) per vector; a last partial group goes through masks.
void rotary_vector(float* x, int64_t begin, int64_t end, int64_t n, int64_t heads,
                   int64_t head_dim, int64_t bands, const float* cos_table,
                   const float* sin_table, bool inverse) {
  const __m512i pairs = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  // Lane 2k gets -s, lane 2k+1 gets +s (the other way round for the inverse).
  const float even = inverse ? 1.0f : -1.0f;
  const __m512 signs = _mm512_set_ps(-even, even, -even, even, -even, even, -even, even,
                                     -even, even, -even, even, -even, even, -even, even);
  for (int64_t r = begin; r < end; ++r) {
    const float* cs = cos_table + (r % n) * bands;
    const float* sn = sin_table + (r % n) * bands;
    float* row = x + r * heads * head_dim;
    for (int64_t k0 = 0; k0 < bands; k0 += 8) {
      const int64_t count = std::min<int64_t>(8, bands - k0);
      const __mmask8 band_mask = __mmask8((1u << count) - 1);
      const __mmask16 lane_mask = __mmask16((1u << (2 * count)) - 1);
      const __m512 c = _mm512_permutexvar_ps(
          pairs, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(band_mask, cs + k0)));
      const __m512 s = _mm512_mul_ps(
          signs, _mm512_permutexvar_ps(
                     pairs, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(band_mask, sn + k0))));
      for (int64_t h = 0; h < heads; ++h) {
        float* u = row + h * head_dim + 2 * k0;
        const __m512 v = _mm512_maskz_loadu_ps(lane_mask, u);
        const __m512 swapped = _mm512_permute_ps(v, 0xB1);  // (b, a) in each pair
        _mm512_mask_storeu_ps(u, lane_mask, _mm512_fmadd_ps(v, c, _mm512_mul_ps(swapped, s)));
      }
    }
  }
}
#endif

}  // namespace

template <typename T>
void rotary_rows(T* x, int64_t begin, int64_t end, int64_t n, int64_t heads, int64_t head_dim,
                 int64_t bands, const T* cos_table, const T* sin_table, bool inverse) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    rotary_vector(x, begin, end, n, heads, head_dim, bands, cos_table, sin_table, inverse);
    return;
  }
#endif
  rotary_scalar(x, begin, end, n, heads, head_dim, bands, cos_table, sin_table, inverse);
}

template void rotary_rows<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                 const float*, const float*, bool);
template void rotary_rows<double>(double*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, const double*, const double*, bool);

}  // namespace par::cpu
