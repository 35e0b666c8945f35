// Two threads of OpenBLAS on one small product split it finely and wait for each other:
// on the latents' 256 x 256 x 256 products they reach ~0.7 of the square sgemm's rate,
// where one thread alone reaches ~0.9 of its share. The input and weight gradients of a
// layer are independent products of the same size, so here each half of the threads
// takes one, every thread running single-threaded products on its own rows (the OpenMP
// build of OpenBLAS runs calls made inside a parallel region on the calling thread).
//
// Each element of dx, dw and db is computed by one thread, so a thread count repeats its
// results bit for bit. db sums its rows in order in double, the same for every thread
// count; dx and dw come from BLAS products whose sizes follow the thread count, and a
// BLAS kernel may round an element by the size of its product (OpenBLAS's Haswell sgemm
// does), so across thread counts they agree to float rounding.
#include "kernels/cpu/linear_paired.h"

#include <omp.h>

#include <algorithm>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/thread_share.h"

namespace par::cpu {

namespace {

template <typename T>
void input_gradient(T* dx, bool accumulate, const T* dy, const T* w, int64_t in, int64_t out,
                    ThreadShare rows) {
  gemm<T>(false, false, rows.size(), in, out, T(1), dy + rows.first * out, out, w, in,
          accumulate ? T(1) : T(0), dx + rows.first * in, in);
}

// `ws`: the calling thread's Workspace, for the bias sums.
template <typename T>
void weight_gradient(T* dw, T* db, const T* dy, const T* x, int64_t rows, int64_t in,
                     int64_t out, ThreadShare cols, Workspace& ws) {
  const int64_t n = cols.size();
  if (n == 0) return;
  gemm<T>(true, false, n, in, rows, T(1), dy + cols.first, out, x, in, T(1),
          dw + cols.first * in, in);
  if (!db) return;
  auto* sums = reinterpret_cast<double*>(
      ws.get(ScratchSlot::kPairedLinear, omp_get_thread_num(), paired_linear_scratch_bytes(out)));
  std::fill(sums, sums + n, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = dy + r * out + cols.first;
    for (int64_t c = 0; c < n; ++c) sums[c] += double(row[c]);
  }
  for (int64_t c = 0; c < n; ++c) db[cols.first + c] += T(sums[c]);
}

}  // namespace

template <typename T>
void paired_linear_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x,
                            const T* w, int64_t rows, int64_t in, int64_t out, Workspace& ws) {
  ws.prepare(omp_get_max_threads());
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    if (n == 1) {
      input_gradient(dx, accumulate_dx, dy, w, in, out, ThreadShare(rows, 0, 1));
      weight_gradient(dw, db, dy, x, rows, in, out, ThreadShare(out, 0, 1), ws);
    } else {  // threads [0, n_dx) share dx, the others dw
      const int n_dx = (n + 1) / 2, n_dw = n - n_dx;
      if (t < n_dx)
        input_gradient(dx, accumulate_dx, dy, w, in, out, ThreadShare(rows, t, n_dx));
      else
        weight_gradient(dw, db, dy, x, rows, in, out, ThreadShare(out, t - n_dx, n_dw), ws);
    }
  }
}

template void paired_linear_backward<float>(float*, bool, float*, float*, const float*,
                                            const float*, const float*, int64_t, int64_t,
                                            int64_t, Workspace&);
template void paired_linear_backward<double>(double*, bool, double*, double*, const double*,
                                             const double*, const double*, int64_t, int64_t,
                                             int64_t, Workspace&);

}  // namespace par::cpu
