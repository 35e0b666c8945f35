// CudaOps's operations on bfloat16-stored tensors (core/ops.h). Rounding, rotary and the
// bias gradient read and write bfloat16 directly. The attention and the linear layer's
// backward widen their bfloat16 operands into float32 scratch and run the float32
// operation, which rounds them back to bfloat16 where it multiplies in bf16: the same
// arithmetic, at the memory of float32 storage. Reading them in place (cuDNN takes
// bfloat16 keys and values as they are; cuBLAS a bfloat16 output gradient) is what makes
// the storage pay on the GPU.
#include "kernels/cuda/cuda_ops_impl.h"

namespace par::cuda {

namespace {

int64_t elements(const AttentionShape& s) { return s.batch * s.nk * s.heads * s.head_dim; }

}  // namespace

void CudaOps::round_to_bf16(uint16_t* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  use_device();
  kern::matrix_to_bf16(stream_, dst, src, 1, n, n);
}

void CudaOps::rotary_bf16(uint16_t* x, int64_t batch, int64_t n, int64_t heads,
                          int64_t head_dim, int64_t bands, const float* cos_table,
                          const float* sin_table, bool inverse) {
  use_device();
  kern::rotary_bf16(stream_, x, batch, n, heads, head_dim, bands, cos_table, sin_table,
                    inverse);
}

void CudaOps::attention_forward_bf16_kv(const AttentionShape& s, const float* q,
                                        const uint16_t* k, const uint16_t* v, float* o,
                                        float* lse) {
  use_device();
  const int64_t count = elements(s);
  auto* kw = static_cast<float*>(scratch(kWidened, size_t(std::max<int64_t>(2 * count, 1)) * 4));
  float* vw = kw + count;
  kern::bf16_to_float(stream_, kw, k, count);
  kern::bf16_to_float(stream_, vw, v, count);
  attention_forward(s, q, kw, vw, o, lse);
}

void CudaOps::attention_backward_bf16_kv(const AttentionShape& s, const float* q,
                                         const uint16_t* k, const uint16_t* v, const float* o,
                                         const float* d_o, const float* lse, float* dq,
                                         uint16_t* dk, uint16_t* dv) {
  use_device();
  const int64_t count = elements(s);
  auto* kw = static_cast<float*>(scratch(kWidened, size_t(std::max<int64_t>(4 * count, 1)) * 4));
  float* vw = kw + count;
  float* dkw = vw + count;
  float* dvw = dkw + count;
  kern::bf16_to_float(stream_, kw, k, count);
  kern::bf16_to_float(stream_, vw, v, count);
  attention_backward(s, q, kw, vw, o, d_o, lse, dq, dkw, dvw);
  round_to_bf16(dk, dkw, count);
  round_to_bf16(dv, dvw, count);
}

void CudaOps::linear_backward_bf16_dy(float* dx, bool accumulate_dx, float* dw, float* db,
                                      const uint16_t* dy, const float* x, const float* w,
                                      int64_t rows, int64_t in, int64_t out) {
  use_device();
  const int64_t count = rows * out;
  auto* dyw = static_cast<float*>(scratch(kWidened, size_t(std::max<int64_t>(count, 1)) * 4));
  kern::bf16_to_float(stream_, dyw, dy, count);
  linear_backward(dx, accumulate_dx, dw, nullptr, dyw, x, w, rows, in, out);
  if (db && rows > 0 && out > 0) {
    auto* partial = static_cast<float*>(
        scratch(kColumnPartial, size_t(kern::column_sums_partial_floats(rows, out)) * 4));
    kern::column_sums_bf16(stream_, db, dy, rows, out, partial);
  }
}

}  // namespace par::cuda
