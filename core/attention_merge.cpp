#include "core/attention_merge.h"

#include <algorithm>
#include <vector>

namespace par {

template <typename T>
void merge_attention(Ops<T>& ops, int64_t rows, int64_t heads, int64_t head_dim, T* o, T* lse,
                     LseLayout a, T* o2, T* lse2, LseLayout b, T* max_a, T* max_b) {
  const size_t n = size_t(rows * heads), bytes = n * sizeof(T);
  std::vector<T> la(n), lb(n), ma(n), mb(n);
  ops.download(la.data(), lse, bytes);
  ops.download(lb.data(), lse2, bytes);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t i = a.at(r, h, heads), j = b.at(r, h, heads);
      ma[size_t(i)] = mb[size_t(j)] = std::max(la[size_t(i)], lb[size_t(j)]);
    }
  ops.upload(max_a, ma.data(), bytes);
  ops.upload(max_b, mb.data(), bytes);
  ops.attention_merge_scale(o, lse, max_a, a.batch, a.nq, heads, head_dim);
  ops.attention_merge_scale(o2, lse2, max_b, b.batch, b.nq, heads, head_dim);
  // The weights: summed in a's layout.
  ops.download(la.data(), lse, bytes);
  ops.download(lb.data(), lse2, bytes);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h) la[size_t(a.at(r, h, heads))] += lb[size_t(b.at(r, h, heads))];
  ops.upload(lse, la.data(), bytes);
  ops.add(o, o2, rows * heads * head_dim);
  ops.attention_merge_finish(o, lse, max_a, a.batch, a.nq, heads, head_dim);
}

template void merge_attention(Ops<float>&, int64_t, int64_t, int64_t, float*, float*, LseLayout,
                              float*, float*, LseLayout, float*, float*);
template void merge_attention(Ops<double>&, int64_t, int64_t, int64_t, double*, double*,
                              LseLayout, double*, double*, LseLayout, double*, double*);

}  // namespace par
