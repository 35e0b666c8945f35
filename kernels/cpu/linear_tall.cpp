// Tall linear layers in row chunks, each thread walking its own contiguous slice of rows.
//
// Left to BLAS, a [131072, 256] x [256, 256] product splits into threads well but makes
// one pass over memory per step of the layer: the bias fill, the product, and in the
// backward the input gradient, the weight gradient and the bias sum each stream all the
// rows again. For the weight gradient BLAS threads also split the small [out, in] result,
// so that every thread streams all the rows. Here a chunk of rows (its input and output
// rows about 1 MiB together) goes through every step while it sits in L2, and each thread
// sums its rows' weight and bias gradients into its own partials, added in thread order,
// so that a result is reproducible for a given thread count.
//
// Inside the parallel region the OpenMP build of OpenBLAS runs each call on one thread.
#include "kernels/cpu/linear_tall.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/thread_share.h"

namespace par::cpu {

namespace {

// Rows per chunk: input and output rows of a chunk fill about 1 MiB (256K floats, whatever
// T is: the double build is a test reference, not tuned).
int64_t chunk_rows(int64_t in, int64_t out) {
  return std::max<int64_t>(64, (int64_t(1) << 18) / (in + out) / 64 * 64);
}

// Every thread's partial weight gradients ([threads][out, in], T) and bias sums ([threads]
// [out], double).
template <typename T>
struct Partials {
  T* dw;
  double* db;
  void carve(Carver& c, double in, double out, int threads) {
    dw = c.take<T>(double(threads) * out * in);
    db = c.take<double>(double(threads) * out);
  }
};

}  // namespace

bool is_tall_linear(double rows, double in, double out) {
  return rows >= 8 * std::max(in, out) && rows * in * out >= 0x1p24;
}

template <typename T>
double tall_linear_scratch_bytes(double rows, double in, double out, int threads) {
  if (!is_tall_linear(rows, in, out)) return 0;
  return layout_bytes([&](Carver& c) { Partials<T>().carve(c, in, out, threads); });
}

template <typename T>
void tall_linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in,
                         int64_t out) {
  const int64_t chunk = chunk_rows(in, out);
#pragma omp parallel
  {
    const ThreadShare mine(rows);
    for (int64_t r0 = mine.first; r0 < mine.last; r0 += chunk) {
      const int64_t n = std::min(chunk, mine.last - r0);
      T* yc = y + r0 * out;
      if (b)  // the product accumulates onto the bias rows
        for (int64_t r = 0; r < n; ++r) std::memcpy(yc + r * out, b, size_t(out) * sizeof(T));
      gemm<T>(false, true, n, out, in, T(1), x + r0 * in, in, w, in, b ? T(1) : T(0), yc, out);
    }
  }
}

template <typename T>
void tall_linear_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x,
                          const T* w, int64_t rows, int64_t in, int64_t out, Workspace& ws) {
  const int64_t chunk = chunk_rows(in, out), dw_size = out * in;
  const int nt = omp_get_max_threads();
  // The partials stay in the Workspace: a training step calls this for every tall layer.
  Partials<T> parts;
  ws.prepare(1);
  ws.carve(ScratchSlot::kTallLinear, 0,
           [&](Carver& c) { parts.carve(c, double(in), double(out), nt); });
  T* dw_part = parts.dw;
  double* db_part = parts.db;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n_threads = omp_get_num_threads();
    const ThreadShare mine(rows, t, n_threads);
    T* my_dw = dw ? dw_part + t * dw_size : nullptr;
    double* my_db = db ? db_part + t * out : nullptr;
    if (my_dw && mine.first == mine.last) std::fill(my_dw, my_dw + dw_size, T(0));
    if (my_db) std::fill(my_db, my_db + out, 0.0);
    for (int64_t r0 = mine.first; r0 < mine.last; r0 += chunk) {
      const int64_t n = std::min(chunk, mine.last - r0);
      const T* dyc = dy + r0 * out;
      if (dx)
        gemm<T>(false, false, n, in, out, T(1), dyc, out, w, in, accumulate_dx ? T(1) : T(0),
                dx + r0 * in, in);
      if (my_dw)
        gemm<T>(true, false, out, in, n, T(1), dyc, out, x + r0 * in, in,
                r0 == mine.first ? T(0) : T(1), my_dw, in);
      if (my_db)
        for (int64_t r = 0; r < n; ++r)
          for (int64_t c = 0; c < out; ++c) my_db[c] += dyc[r * out + c];
    }
#pragma omp barrier
    if (dw) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < dw_size; ++i) {
        T sum = dw[i];
        for (int u = 0; u < n_threads; ++u) sum += dw_part[u * dw_size + i];
        dw[i] = sum;
      }
    }
#pragma omp single
    if (db)
      for (int64_t c = 0; c < out; ++c) {
        double sum = 0;
        for (int u = 0; u < n_threads; ++u) sum += db_part[u * out + c];
        db[c] += T(sum);
      }
  }
}

template void tall_linear_forward<float>(float*, const float*, const float*, const float*,
                                         int64_t, int64_t, int64_t);
template void tall_linear_forward<double>(double*, const double*, const double*,
                                          const double*, int64_t, int64_t, int64_t);
template void tall_linear_backward<float>(float*, bool, float*, float*, const float*,
                                          const float*, const float*, int64_t, int64_t,
                                          int64_t, Workspace&);
template void tall_linear_backward<double>(double*, bool, double*, double*, const double*,
                                           const double*, const double*, int64_t, int64_t,
                                           int64_t, Workspace&);
template double tall_linear_scratch_bytes<float>(double, double, double, int);
template double tall_linear_scratch_bytes<double>(double, double, double, int);

}  // namespace par::cpu
