// CpuOps's bfloat16-storage operations (core/ops.h): the reference of what a backend that
// keeps tensors in bfloat16 computes. Each widens its bfloat16 operands into T (exactly),
// runs the T operation and rounds what it stores, so its arithmetic is the T operation's
// on the rounded operands. The CPU trains in float32 storage; these serve the tests of the
// model's bfloat16 storage (the CUDA backend's) and are not sized by the memory plan.
#include <omp.h>

#include <algorithm>

#include "core/bf16.h"
#include "kernels/cpu/cpu_ops.h"

namespace par::cpu {

namespace {

constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
void widen(T* dst, const uint16_t* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) dst[i] = T(bf16_float(src[i]));
}

template <typename T>
void round_all(uint16_t* dst, const T* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits(src[i]);
}

// `parts` buffers of n elements of T each, one after the other, in the calling thread's
// widening slot.
template <typename T>
T* widened(Workspace& ws, int64_t n, int parts) {
  ws.prepare(1);
  return reinterpret_cast<T*>(
      ws.get(ScratchSlot::kWidened, 0, double(std::max<int64_t>(n, 1)) * parts * sizeof(T)));
}

}  // namespace

template <typename T>
void CpuOps<T>::round_to_bf16(uint16_t* dst, const T* src, int64_t n) {
  round_all(dst, src, n);
}

template <typename T>
void CpuOps<T>::layernorm_forward_bf16(uint16_t* y, T* mean, T* rstd, const T* x, const T* w,
                                       const T* b, int64_t rows, int64_t d, double eps) {
  T* yw = widened<T>(ws_, rows * d, 1);
  layernorm_forward(yw, mean, rstd, x, w, b, rows, d, eps);
  round_all(y, yw, rows * d);
}

// The embedding rows of ids, [batch * n, d], into the calling thread's widening slot.
template <typename T>
T* CpuOps<T>::embedding_rows(const int32_t* ids, int64_t batch, int64_t n, int64_t id_stride,
                             const T* table, int64_t d, int parts) {
  T* rows = widened<T>(ws_, batch * n * d, parts);
  for (int64_t b = 0; b < batch; ++b)
    embedding_forward(rows + b * n * d, ids + b * id_stride, table, n, d);
  return rows;
}

template <typename T>
void CpuOps<T>::embedding_layernorm_forward_bf16(uint16_t* y, T* mean, T* rstd,
                                                 const int32_t* ids, int64_t batch, int64_t n,
                                                 int64_t id_stride, const T* table, const T* w,
                                                 const T* b, int64_t d, double eps) {
  const int64_t count = batch * n * d;
  T* x = embedding_rows(ids, batch, n, id_stride, table, d, 2);
  T* yw = x + count;
  layernorm_forward(yw, mean, rstd, x, w, b, batch * n, d, eps);
  round_all(y, yw, count);
}

template <typename T>
void CpuOps<T>::embedding_layernorm_backward(T* dx, T* dw, T* db, const T* dy,
                                             const int32_t* ids, int64_t batch, int64_t n,
                                             int64_t id_stride, const T* table, const T* mean,
                                             const T* rstd, const T* w, int64_t d) {
  const T* x = embedding_rows(ids, batch, n, id_stride, table, d, 1);
  layernorm_backward(dx, false, dw, db, dy, x, mean, rstd, w, batch * n, d);
}

template <typename T>
void CpuOps<T>::linear_forward_bf16_x(T* y, const uint16_t* x, const T* w, const T* b,
                                      int64_t rows, int64_t in, int64_t out) {
  T* xw = widened<T>(ws_, rows * in, 1);
  widen(xw, x, rows * in);
  linear_forward(y, xw, w, b, rows, in, out);
}

template <typename T>
void CpuOps<T>::linear_forward_to_bf16(uint16_t* y, T* staging, const uint16_t* x, const T* w,
                                       const T* b, int64_t rows, int64_t in, int64_t out) {
  linear_forward_bf16_x(staging, x, w, b, rows, in, out);
  round_all(y, staging, rows * out);
}

// rotary on `w` (T, in scratch), rounded into dst.
template <typename T>
void CpuOps<T>::rotary_rounded(uint16_t* dst, T* w, int64_t batch, int64_t n, int64_t heads,
                               int64_t head_dim, int64_t bands, const T* cos_table,
                               const T* sin_table, bool inverse) {
  rotary(w, batch, n, heads, head_dim, bands, cos_table, sin_table, inverse);
  round_all(dst, w, batch * n * heads * head_dim);
}

template <typename T>
void CpuOps<T>::rotary_to_bf16(uint16_t* dst, const T* src, int64_t batch, int64_t n,
                               int64_t heads, int64_t head_dim, int64_t bands,
                               const T* cos_table, const T* sin_table) {
  const int64_t count = batch * n * heads * head_dim;
  T* w = widened<T>(ws_, count, 1);
  copy(w, src, count);
  rotary_rounded(dst, w, batch, n, heads, head_dim, bands, cos_table, sin_table, false);
}

template <typename T>
void CpuOps<T>::rotary_bf16(uint16_t* x, int64_t batch, int64_t n, int64_t heads,
                            int64_t head_dim, int64_t bands, const T* cos_table,
                            const T* sin_table, bool inverse) {
  if (bands == 0) return;
  const int64_t count = batch * n * heads * head_dim;
  T* w = widened<T>(ws_, count, 1);
  widen(w, x, count);
  // Dimensions past the rotated bands come back to their own bits.
  rotary_rounded(x, w, batch, n, heads, head_dim, bands, cos_table, sin_table, inverse);
}

template <typename T>
void CpuOps<T>::attention_forward_bf16_kv(const AttentionShape& s, const T* q, const uint16_t* k,
                                          const uint16_t* v, T* o, T* lse) {
  const int64_t count = s.batch * s.nk * s.heads * s.head_dim;
  T* kw = widened<T>(ws_, count, 2);
  T* vw = kw + count;
  widen(kw, k, count);
  widen(vw, v, count);
  attention_forward(s, q, kw, vw, o, lse);
}

template <typename T>
void CpuOps<T>::attention_backward_bf16_kv(const AttentionShape& s, const T* q,
                                           const uint16_t* k, const uint16_t* v, const T* o,
                                           const T* d_o, const T* lse, T* dq, uint16_t* dk,
                                           uint16_t* dv) {
  const int64_t count = s.batch * s.nk * s.heads * s.head_dim;
  T* kw = widened<T>(ws_, count, 4);
  T* vw = kw + count;
  T* dkw = vw + count;
  T* dvw = dkw + count;
  widen(kw, k, count);
  widen(vw, v, count);
  attention_backward(s, q, kw, vw, o, d_o, lse, dq, dkw, dvw);
  round_all(dk, dkw, count);
  round_all(dv, dvw, count);
}

template <typename T>
void CpuOps<T>::linear_backward_bf16(T* dx, bool accumulate_dx, T* dw, T* db,
                                     const uint16_t* dy, const uint16_t* x, const T* w,
                                     int64_t rows, int64_t in, int64_t out) {
  T* dyw = widened<T>(ws_, rows * out + rows * in, 1);
  T* xw = dyw + rows * out;
  widen(dyw, dy, rows * out);
  widen(xw, x, rows * in);
  linear_backward(dx, accumulate_dx, dw, db, dyw, xw, w, rows, in, out);
}

#define PAR_CPU_BF16_OPS(T)                                                                       \
  template void CpuOps<T>::round_to_bf16(uint16_t*, const T*, int64_t);                           \
  template void CpuOps<T>::layernorm_forward_bf16(uint16_t*, T*, T*, const T*, const T*,          \
                                                  const T*, int64_t, int64_t, double);            \
  template void CpuOps<T>::embedding_layernorm_forward_bf16(                                      \
      uint16_t*, T*, T*, const int32_t*, int64_t, int64_t, int64_t, const T*, const T*,           \
      const T*, int64_t, double);                                                                 \
  template void CpuOps<T>::embedding_layernorm_backward(T*, T*, T*, const T*, const int32_t*,     \
                                                        int64_t, int64_t, int64_t, const T*,      \
                                                        const T*, const T*, const T*, int64_t);   \
  template void CpuOps<T>::linear_forward_bf16_x(T*, const uint16_t*, const T*, const T*,         \
                                                 int64_t, int64_t, int64_t);                      \
  template void CpuOps<T>::linear_forward_to_bf16(uint16_t*, T*, const uint16_t*, const T*,       \
                                                  const T*, int64_t, int64_t, int64_t);           \
  template void CpuOps<T>::rotary_to_bf16(uint16_t*, const T*, int64_t, int64_t, int64_t,         \
                                          int64_t, int64_t, const T*, const T*);                  \
  template void CpuOps<T>::rotary_bf16(uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t,    \
                                       const T*, const T*, bool);                                 \
  template void CpuOps<T>::attention_forward_bf16_kv(const AttentionShape&, const T*,             \
                                                     const uint16_t*, const uint16_t*, T*, T*);   \
  template void CpuOps<T>::attention_backward_bf16_kv(const AttentionShape&, const T*,            \
                                                      const uint16_t*, const uint16_t*,           \
                                                      const T*, const T*, const T*, T*,           \
                                                      uint16_t*, uint16_t*);                      \
  template void CpuOps<T>::linear_backward_bf16(T*, bool, T*, T*, const uint16_t*,                \
                                                const uint16_t*, const T*, int64_t, int64_t,      \
                                                int64_t);
PAR_CPU_BF16_OPS(float)
PAR_CPU_BF16_OPS(double)
#undef PAR_CPU_BF16_OPS

}  // namespace par::cpu
