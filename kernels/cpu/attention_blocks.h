// Pieces shared by the CPU attention kernels (attention.cpp: sgemm per key block;
// attention_avx512.cpp: fused register-blocked kernels): the kept-key lists, key blocks,
// and the reductions of the softmax. Their buffers come from the backend's Workspace
// (kernels/cpu/workspace.h): the kept-key lists from the calling thread's kKeptKeys slot,
// each thread's key block and work buffers from its kAttention slot.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/ops.h"
#include "kernels/cpu/workspace.h"

namespace par::cpu::attention_detail {

// One example's kept keys (indices in [0, nk)), in position order.
struct KeptList {
  const int64_t* index;
  int64_t count;
  int64_t size() const { return count; }
  const int64_t* data() const { return index; }
  int64_t operator[](int64_t i) const { return index[i]; }
};

// The kept keys of every example: [batch] counts and [batch, nk] indices.
struct KeptKeys {
  int64_t* count = nullptr;
  int64_t* index = nullptr;
  int64_t nk = 0;
  KeptList operator[](int64_t b) const { return KeptList{index + b * nk, count[b]}; }

  void carve(Carver& c, const AttentionShape& s) {
    nk = s.nk;
    count = c.take<int64_t>(s.batch);
    index = c.take<int64_t>(double(s.batch) * double(s.nk));  // (planning: any size)
  }
  // Bytes of the lists of a call of this shape.
  static double bytes(const AttentionShape& s) {
    return layout_bytes([&](Carver& c) { KeptKeys().carve(c, s); });
  }
};

// The kept keys of each example of the call, in the calling thread's kKeptKeys buffer (so
// that a training step does not allocate and page-fault in megabytes per call).
inline KeptKeys kept_keys(const AttentionShape& s, Workspace& ws) {
  KeptKeys kept;
  ws.prepare(1);
  ws.carve(ScratchSlot::kKeptKeys, 0, [&](Carver& c) { kept.carve(c, s); });
  for (int64_t b = 0; b < s.batch; ++b) {
    const uint8_t* keep = s.k_keep ? s.k_keep + b * s.nk : nullptr;
    int64_t* list = kept.index + b * s.nk;
    int64_t n = 0;
    for (int64_t j = 0; j < s.nk; ++j)
      if (!keep || keep[j]) list[n++] = j;
    kept.count[b] = n;
  }
  return kept;
}

// Max of x[0..n), n >= 1. GCC 12 does not vectorize a float max reduction (even under
// `omp simd`), and in the softmax it costs as much as the exp, so the float version
// uses vector intrinsics where the build targets them.
template <typename T>
T row_max(const T* x, int64_t n) {
  T m = x[0];
  for (int64_t j = 1; j < n; ++j) m = m > x[j] ? m : x[j];
  return m;
}

#if defined(__AVX512F__)
// GCC 12's own _mm512_reduce_max_ps trips -Wmaybe-uninitialized inside its header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Four independent max chains: with one, every vector waits for the previous max (4
// cycles), and the softmax, which needs the max before its exps can start, waits on that.
template <>
inline float row_max<float>(const float* x, int64_t n) {
  __m512 m0 = _mm512_set1_ps(x[0]), m1 = m0, m2 = m0, m3 = m0;
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
    m2 = _mm512_max_ps(m2, _mm512_loadu_ps(x + j + 32));
    m3 = _mm512_max_ps(m3, _mm512_loadu_ps(x + j + 48));
  }
  for (; j + 16 <= n; j += 16) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
  // The tail's missing lanes load m1's own values, which leave the max as it is.
  if (j < n) m1 = _mm512_max_ps(m1, _mm512_mask_loadu_ps(m1, __mmask16((1u << (n - j)) - 1), x + j));
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}
#pragma GCC diagnostic pop
#elif defined(__AVX2__)
template <>
inline float row_max<float>(const float* x, int64_t n) {
  __m256 v = _mm256_set1_ps(x[0]);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float m = lanes[0];
  for (int i = 1; i < 8; ++i) m = m > lanes[i] ? m : lanes[i];
  for (; j < n; ++j) m = m > x[j] ? m : x[j];
  return m;
}
#endif

// One block of kept keys for one (example, head): pointers to its K and V panels (into
// the activations when the keys are contiguous, else into gathered copies) and the keys'
// positions.
template <typename T>
struct KeyBlock {
  const T* k = nullptr;
  const T* v = nullptr;
  int64_t ld = 0;
  int64_t first_row = 0;  // row of the first key in [batch*nk] when contiguous
  bool contiguous = true;
  int64_t size = 0;
  int64_t* pos = nullptr;  // [block]
  T *k_buf = nullptr, *v_buf = nullptr;  // [block, head_dim] each

  // Buffers for blocks of up to `block` keys of head_dim D.
  void carve(Carver& c, int64_t block, int64_t D) {
    pos = c.take<int64_t>(block);
    k_buf = c.take<T>(block * D);
    v_buf = c.take<T>(block * D);
  }

  void load(const AttentionShape& s, const KeptList& kept, int64_t b, int64_t h, int64_t begin,
            int64_t count, const T* k_all, const T* v_all) {
    const int64_t ld_all = s.heads * s.head_dim, D = s.head_dim;
    size = count;
    for (int64_t j = 0; j < count; ++j) pos[j] = s.k_pos[kept[begin + j]];
    contiguous = kept[begin + count - 1] - kept[begin] == count - 1;
    first_row = b * s.nk + kept[begin];
    if (contiguous) {
      k = k_all + first_row * ld_all + h * D;
      v = v_all + first_row * ld_all + h * D;
      ld = ld_all;
      return;
    }
    for (int64_t j = 0; j < count; ++j) {
      const int64_t row = b * s.nk + kept[begin + j];
      std::memcpy(&k_buf[j * D], k_all + row * ld_all + h * D, size_t(D) * sizeof(T));
      std::memcpy(&v_buf[j * D], v_all + row * ld_all + h * D, size_t(D) * sizeof(T));
    }
    k = k_buf;
    v = v_buf;
    ld = D;
  }

  // Number of keys of this block that a query at position p sees (a prefix).
  int64_t visible(int64_t p) const {
    if (pos[size - 1] <= p) return size;
    return std::upper_bound(pos, pos + size, p) - pos;
  }
};

// Whether a call has enough work to pay for waking the other threads: a decoding step's
// one latent over a few hundred cached ones does not (a parallel region costs more than it
// saves, and much more when another process holds a core).
inline bool worth_threads(const AttentionShape& s) {
  return s.batch * s.nq * s.nk * s.heads * s.head_dim >= (int64_t(1) << 20);
}

inline int64_t max_pos_of(const int64_t* p, int64_t n) {
  return *std::max_element(p, p + n);
}

// The forward's unit of work: queries i0 .. i0+bq of example b, head h (tasks numbered
// tile-fastest, then head, then example).
struct QueryTile {
  int64_t b, h, i0, bq;
  const int64_t* q_pos;  // positions of the tile's queries
  int64_t q_pos_max;

  QueryTile(const AttentionShape& s, int64_t task, int64_t q_block) {
    const int64_t tiles = (s.nq + q_block - 1) / q_block;
    h = (task / tiles) % s.heads;
    b = task / (tiles * s.heads);
    i0 = (task % tiles) * q_block;
    bq = std::min(q_block, s.nq - i0);
    q_pos = s.q_pos + i0;
    q_pos_max = max_pos_of(q_pos, bq);
  }
};


}  // namespace par::cpu::attention_detail
