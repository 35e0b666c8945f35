#include "core/attention_merge.h"

namespace par {

template <typename T>
void merge_attention(Ops<T>& ops, int64_t rows, int64_t heads, int64_t head_dim, T* o, T* lse,
                     LseLayout a, const T* o2, const T* lse2, LseLayout b) {
  PAR_ASSERT(a.batch * a.nq == rows && b.batch * b.nq == rows, "merge_attention: layouts of ",
             a.batch, "x", a.nq, " and ", b.batch, "x", b.nq, " for ", rows, " rows");
  ops.attention_merge_pair(o, lse, a.batch, a.nq, o2, lse2, b.batch, b.nq, heads, head_dim);
}

template void merge_attention(Ops<float>&, int64_t, int64_t, int64_t, float*, float*, LseLayout,
                              const float*, const float*, LseLayout);
template void merge_attention(Ops<double>&, int64_t, int64_t, int64_t, double*, double*,
                              LseLayout, const double*, const double*, LseLayout);

}  // namespace par
