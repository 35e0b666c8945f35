// y = x w^T + b on a few rows, reading w once.
//
// Decoding with K samples runs each latent layer on K rows. OpenBLAS's sgemm packs w for
// every call and with m = K <= 8 fills few of its vector lanes, so 4 rows cost 4 times
// one; but the product is bound by reading w (256 x 256 to 1024 x 256 floats per layer,
// from L3), and one pass over it can serve every row. Here each block of OB rows of w is
// loaded a vector at a time and multiplied into all R rows of x (held in L1), with one
// accumulator vector per (output, row) pair, reduced at the end. With AVX-512, 16 floats
// to a vector; with AVX2 alone, 8 (there OpenBLAS took 0.70 ms a decoding step of cpu-131k
// for one row's products, against 0.25 here with AVX-512).
//
// Every output's sum -- lane-wise fused multiply-adds along `in` in order, a masked last
// vector, the same horizontal reduction, then the bias -- is the same whatever R, OB and
// the thread's share are: the K-sample decoder's rows equal single-sample runs bit for bit.
#include "kernels/cpu/linear_few_rows.h"

#include "core/error.h"
#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/parallel_for.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))

#include <immintrin.h>
#include <omp.h>

#include <algorithm>

namespace par::cpu {

namespace {

// Rows per call this path takes, and rows per pass over w. Timed on one latent layer of
// cpu-131k (its six products, 3 MiB of weights), one thread, against OpenBLAS 0.3.21's
// sgemm, in ms with the weights in L3 / flushed from the caches before each pass:
//   rows   1: 0.114 / 0.278 vs 0.112 / 0.280     rows 16: 0.303 / 0.516 vs 0.506 / 0.803
//   rows   4: 0.121 / 0.307 vs 0.266 / 0.554     rows 32: 0.609 / 0.821 vs 0.727 / 1.005
//   rows   8: 0.151 / 0.350 vs 0.396 / 0.709     rows 48: 0.906 / 1.131 vs 0.860 / 1.123
// (32 and 48 rows in groups of 8 as well: the gain shrinks past 16 and is gone by 48.)
// With AVX2 alone, groups of 4 (below: outputs_per_block).
constexpr int64_t kMaxRows = 16;
#if defined(__AVX512F__)
constexpr int64_t kGroup = 8;
#else
constexpr int64_t kGroup = 4;
#endif

// The vector operations the kernel needs, per element type.
template <typename T>
struct Lanes;

#if defined(__AVX512F__)
template <>
struct Lanes<float> {
  using V = __m512;
  static constexpr int64_t kN = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_first(const float* p, int64_t n) {
    return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p);
  }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(V a) { return _mm512_reduce_add_ps(a); }
};

template <>
struct Lanes<double> {
  using V = __m512d;
  static constexpr int64_t kN = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V load_first(const double* p, int64_t n) {
    return _mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p);
  }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static double sum(V a) { return _mm512_reduce_add_pd(a); }
};

// Outputs per block for R rows: OB * R accumulators, OB vectors of w and one of x in the 32
// vector registers. Timed on decoding's 31 products of cpu-131k (15.8 MiB of weights in
// L3), 2 threads of a Zen 4, in ms: with OB = min(8, 16 / R), rows 5 to 8 took 0.31,
// 0.41, 0.48 and 0.52-0.61; with these OB, 0.29, 0.34, 0.41 and 0.47.
constexpr int outputs_per_block(int R) { return R == 1 ? 4 : R <= 4 ? 16 / R : R <= 6 ? 4 : 3; }
#else
// AVX2: 8 lanes of float (4 of double), masked loads by a vector of lane masks.
template <>
struct Lanes<float> {
  using V = __m256;
  static constexpr int64_t kN = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_first(const float* p, int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), lane));
  }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(V a) {  // the 128-bit halves, then pairs, then the last two
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 p = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
  }
};

template <>
struct Lanes<double> {
  using V = __m256d;
  static constexpr int64_t kN = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static V load_first(const double* p, int64_t n) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_maskload_pd(p, _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lane));
  }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static double sum(V a) {
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
};

// The same in AVX2's 16 vector registers, for up to kGroup = 4 rows: from 7 rows on only
// one output would fit a block, and 8 rows took 0.78 ms on the products above (AVX2 code
// on the Zen 4, 2 threads) against 0.26 for 4.
constexpr int outputs_per_block(int R) { return R <= 2 ? 4 : R == 3 ? 3 : 2; }
#endif

// How far ahead of its loads the kernel asks for w (once a cache line). Decoding
// reads the weights from L3 or memory, where the hardware prefetchers alone leave the loop
// waiting, the more so the more rows it multiplies: on the layer timed above, flushed, 4
// rows took 0.360 ms without this and 8 rows 0.527; in L3, 0.139 and 0.205.
constexpr int64_t kPrefetchBytes = 8192;

// Outputs [o0, o0 + OB) of all R rows.
template <typename T, int R, int OB>
inline void output_block(T* y, const T* x, const T* w, const T* b, int64_t in, int64_t out,
                         int64_t o0) {
  using L = Lanes<T>;
  using V = typename L::V;
  V acc[OB][R];
  for (int ob = 0; ob < OB; ++ob)
    for (int r = 0; r < R; ++r) acc[ob][r] = L::zero();
  const T* wo = w + o0 * in;
  int64_t i = 0;
  for (; i + L::kN <= in; i += L::kN) {
    V wv[OB];
    // The empty asm statements make each vector of w and x a register that the compiler
    // cannot read again from memory. Without them GCC 12 folded the loads into the
    // multiply-adds, reading each vector of x once per output (or of w once per row): 20
    // loads per 16 multiply-adds of 4 rows, more than a Zen 4's one 512-bit load per
    // cycle. On decoding's products of cpu-131k (15.8 MiB of weights in L3, 2 threads) 4
    // rows took 0.40 ms instead of 0.25, 8 rows 0.67 instead of 0.47, 16 rows 1.38 instead
    // of 0.93; one row, whose w is read once anyway, 0.16 either way. (Decoding cpu-131k
    // with 4 samples gains nothing: its step's other data push w out of this VM's L3, and
    // the products wait on memory either way.)
    for (int ob = 0; ob < OB; ++ob) {
      wv[ob] = L::load(wo + ob * in + i);
      if constexpr (R > 1) __asm__("" : "+v"(wv[ob]));
      if ((i * int64_t(sizeof(T))) % 64 == 0)  // once a cache line
        _mm_prefetch(reinterpret_cast<const char*>(wo + ob * in + i) + kPrefetchBytes, _MM_HINT_T0);
    }
    for (int r = 0; r < R; ++r) {
      V xv = L::load(x + r * in + i);
      if constexpr (OB > 1) __asm__("" : "+v"(xv));
      for (int ob = 0; ob < OB; ++ob) acc[ob][r] = L::fma(wv[ob], xv, acc[ob][r]);
    }
  }
  if (i < in) {  // the missing lanes load zeros, which leave the sums as they are
    const int64_t n = in - i;
    V wv[OB];
    for (int ob = 0; ob < OB; ++ob) wv[ob] = L::load_first(wo + ob * in + i, n);
    for (int r = 0; r < R; ++r) {
      const V xv = L::load_first(x + r * in + i, n);
      for (int ob = 0; ob < OB; ++ob) acc[ob][r] = L::fma(wv[ob], xv, acc[ob][r]);
    }
  }
  for (int ob = 0; ob < OB; ++ob)
    for (int r = 0; r < R; ++r) {
      const T s = L::sum(acc[ob][r]);
      y[r * out + o0 + ob] = b ? s + b[o0 + ob] : s;
    }
}

// Below this many multiply-adds a call runs on one thread: waking the others costs more.
constexpr int64_t kParallelWork = int64_t(1) << 16;

// All outputs of R rows: blocks of OB outputs (outputs_per_block) split over the threads,
// the last out % OB outputs one at a time. One row takes 4 rows of w at a time (the fewest
// streams from memory that keep up with it).
template <typename T, int R>
void rows_forward(T* y, const T* x, const T* w, const T* b, int64_t in, int64_t out) {
  constexpr int OB = outputs_per_block(R);
  const int64_t blocks = out / OB;
  parallel_for(blocks, R * in * out >= kParallelWork,
               [&](int64_t k) { output_block<T, R, OB>(y, x, w, b, in, out, k * OB); });
  for (int64_t o = blocks * OB; o < out; ++o) output_block<T, R, 1>(y, x, w, b, in, out, o);
}

// Rows [0, rows) of a group, R <= rows <= kGroup: rows_forward<T, rows>, instantiated
// for 1 to kGroup rows only.
template <typename T, int R = 1>
void group_forward(T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in,
                   int64_t out) {
  if constexpr (R <= kGroup) {
    if (rows == R) return rows_forward<T, R>(y, x, w, b, in, out);
    return group_forward<T, R + 1>(y, x, w, b, rows, in, out);
  }
  PAR_ASSERT(false, "group_forward: ", rows, " rows");
}

}  // namespace

bool is_few_rows_linear(int64_t rows) { return rows >= 1 && rows <= kMaxRows; }

// More than kGroup rows pass over w once per group of kGroup rows.
template <typename T>
void few_rows_linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows,
                             int64_t in, int64_t out) {
  PAR_ASSERT(is_few_rows_linear(rows), "few_rows_linear_forward: ", rows, " rows");
  for (int64_t r0 = 0; r0 < rows; r0 += kGroup)
    group_forward(y + r0 * out, x + r0 * in, w, b, std::min(kGroup, rows - r0), in, out);
}

}  // namespace par::cpu

#else  // neither AVX-512 nor AVX2: every linear layer goes to BLAS

namespace par::cpu {

bool is_few_rows_linear(int64_t) { return false; }

template <typename T>
void few_rows_linear_forward(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t) {
  PAR_ASSERT(false, "few_rows_linear_forward needs AVX-512 or AVX2");
}

}  // namespace par::cpu

#endif

namespace par::cpu {

template void few_rows_linear_forward<float>(float*, const float*, const float*, const float*,
                                             int64_t, int64_t, int64_t);
template void few_rows_linear_forward<double>(double*, const double*, const double*,
                                              const double*, int64_t, int64_t, int64_t);

}  // namespace par::cpu
