// CudaOps's operations on bfloat16-stored tensors (core/ops.h). Rounding, rotary and the
// bias gradient read and write bfloat16 directly; so do the attention where it runs on
// cuDNN (which gathers the keys and values as they are and scatters their gradients as it
// makes them) and the linear backward where its products run on bfloat16 operands (the
// output gradient is then its own compact copy). Elsewhere the bfloat16 operands are
// widened into float32 scratch for the float32 operation. Either way each gives the bits
// of its float32 operation on the widened values (what the parity cases check), except an
// attention past cuDNN over more keys than one widened block: its blocks merge by their
// log-sum-exps, which rounds otherwise.
#include "kernels/cuda/cuda_ops_impl.h"

namespace par::cuda {

namespace {

int64_t elements(const AttentionShape& s) { return s.batch * s.nk * s.heads * s.head_dim; }

// The keys (and as many values) an attention past cuDNN widens at a time: 64 MiB of each.
constexpr int64_t kWidenedKeyElements = int64_t(1) << 24;

// `floats` floats of the slot that bfloat16 operands are widened into.
float* widened(CudaOps& ops, int64_t floats) {
  return static_cast<float*>(ops.scratch(kWidened, size_t(std::max<int64_t>(floats, 1)) * 4));
}

}  // namespace

void CudaOps::round_to_bf16(uint16_t* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  use_device();
  kern::matrix_to_bf16(stream_, dst, src, 1, n, n);
}

void CudaOps::rotary_to_bf16(uint16_t* dst, const float* src, int64_t batch, int64_t n,
                             int64_t heads, int64_t head_dim, int64_t bands,
                             const float* cos_table, const float* sin_table) {
  use_device();
  kern::rotary_to_bf16(stream_, dst, src, batch, n, heads, head_dim, bands, cos_table,
                       sin_table);
}

void CudaOps::rotary_bf16(uint16_t* x, int64_t batch, int64_t n, int64_t heads,
                          int64_t head_dim, int64_t bands, const float* cos_table,
                          const float* sin_table, bool inverse) {
  use_device();
  kern::rotary_bf16(stream_, x, batch, n, heads, head_dim, bands, cos_table, sin_table,
                    inverse);
}

// The split decoding kernels and cuDNN read the bfloat16 keys and values as they are;
// elsewhere they are widened (in blocks, past one block's worth).
void CudaOps::attention_forward_bf16_kv(const AttentionShape& s, const float* q,
                                        const uint16_t* k, const uint16_t* v, float* o,
                                        float* lse) {
  use_device();
  if (split_attention_takes(s)) {
    // A decoding step over bfloat16 caches: the split kernels read them as they lie, with
    // no widened copy of the cache (bf16 values are exact in tf32 and float32: the same
    // numbers as attention_forward's kernels on the widened ones, at every precision).
    float* part = decode_scratch(s);
    if (s.nq == 1)
      kern::attention_forward_decode_bf16_kv(stream_, s, q, k, v, o, lse, decode_rounding(), part);
    else
      kern::attention_forward_decode_queries_bf16_kv(stream_, s, q, k, v, o, lse,
                                                     decode_rounding(), part);
    return;
  }
  if (CudnnAttention* c = cudnn_for(s, false, true)) {
    c->forward(s, q, CudnnAttention::KeyValues{k, v, true}, o, lse);
    return;
  }
  const int64_t ld = s.heads * s.head_dim;
  const int64_t block = std::max<int64_t>(1, kWidenedKeyElements / std::max<int64_t>(1, s.batch * ld));
  if (s.nk <= block) {
    const int64_t count = elements(s);
    float* kw = widened(*this, 2 * count);
    float* vw = kw + count;
    kern::bf16_to_float(stream_, kw, k, count);
    kern::bf16_to_float(stream_, vw, v, count);
    attention_forward(s, q, kw, vw, o, lse);
    return;
  }
  widened_blocks_forward(s, q, k, v, o, lse, block);
}

// A block of `block` keys of every example at a time: widened into scratch, attended, and
// merged into o and lse by their log-sum-exps (attention_merge_pair), so that a call over
// a long bfloat16 cache that no bfloat16 kernel takes (a decoder's refill over its cross
// cache, whose positions cuDNN is not told) needs no float32 copy of all of it.
void CudaOps::widened_blocks_forward(const AttentionShape& s, const float* q, const uint16_t* k,
                                     const uint16_t* v, float* o, float* lse, int64_t block) {
  const int64_t ld = s.heads * s.head_dim, rows = s.batch * s.nq;
  const int64_t kv = s.batch * block * ld, stats = s.batch * s.heads * s.nq;
  const int64_t keep_floats = s.k_keep ? (s.batch * block + 3) / 4 : 0;
  float* kw = widened(*this, 2 * kv + rows * ld + stats + keep_floats);
  float* vw = kw + kv;
  float* o2 = vw + kv;
  float* lse2 = o2 + rows * ld;
  auto* keep = reinterpret_cast<uint8_t*>(lse2 + stats);
  for (int64_t j0 = 0; j0 < s.nk; j0 += block) {
    const int64_t n = std::min(block, s.nk - j0);
    for (int64_t b = 0; b < s.batch; ++b) {
      kern::bf16_to_float(stream_, kw + b * n * ld, k + (b * s.nk + j0) * ld, n * ld);
      kern::bf16_to_float(stream_, vw + b * n * ld, v + (b * s.nk + j0) * ld, n * ld);
    }
    if (s.k_keep)
      PAR_CUDA_CHECK(cudaMemcpy2DAsync(keep, size_t(n), s.k_keep + j0, size_t(s.nk), size_t(n),
                                       size_t(s.batch), cudaMemcpyDeviceToDevice, stream_));
    AttentionShape part = s;
    part.nk = n;
    part.k_pos = s.k_pos + j0;
    part.k_keep = s.k_keep ? keep : nullptr;
    if (s.k_pos_first != AttentionShape::kUnknownPosition) part.k_pos_first = s.k_pos_first + j0;
    const bool first = j0 == 0;
    attention_forward(part, q, kw, vw, first ? o : o2, first ? lse : lse2);
    if (!first) attention_merge_pair(o, lse, s.batch, s.nq, o2, lse2, s.batch, s.nq, s.heads, s.head_dim);
  }
}

void CudaOps::attention_backward_bf16_kv(const AttentionShape& s, const float* q,
                                         const uint16_t* k, const uint16_t* v, const float* o,
                                         const float* d_o, const float* lse, float* dq,
                                         uint16_t* dk, uint16_t* dv) {
  use_device();
  if (CudnnAttention* c = cudnn_for(s, true, true)) {
    c->backward(s, q, CudnnAttention::KeyValues{k, v, true}, o, d_o, lse, dq,
                CudnnAttention::KeyValueGrads{dk, dv, true});
    return;
  }
  const int64_t count = elements(s);
  float* kw = widened(*this, 4 * count);
  float* vw = kw + count;
  float* dkw = vw + count;
  float* dvw = dkw + count;
  kern::bf16_to_float(stream_, kw, k, count);
  kern::bf16_to_float(stream_, vw, v, count);
  attention_backward(s, q, kw, vw, o, d_o, lse, dq, dkw, dvw);
  round_to_bf16(dk, dkw, count);
  round_to_bf16(dv, dvw, count);
}

void CudaOps::layernorm_forward_bf16(uint16_t* y, float* mean, float* rstd, const float* x,
                                     const float* w, const float* b, int64_t rows, int64_t d,
                                     double eps) {
  use_device();
  kern::layernorm_forward_bf16(stream_, y, mean, rstd, x, w, b, rows, d, float(eps));
}

void CudaOps::embedding_layernorm_forward_bf16(uint16_t* y, float* mean, float* rstd,
                                               const int32_t* ids, int64_t batch, int64_t n,
                                               int64_t id_stride, const float* table,
                                               const float* w, const float* b, int64_t d,
                                               double eps) {
  use_device();
  kern::embedding_layernorm_forward_bf16(stream_, y, mean, rstd, ids, batch, n, id_stride, table,
                                         w, b, d, float(eps));
}

void CudaOps::embedding_layernorm_backward(float* dx, float* dw, float* db, const float* dy,
                                           const int32_t* ids, int64_t batch, int64_t n,
                                           int64_t id_stride, const float* table,
                                           const float* mean, const float* rstd, const float* w,
                                           int64_t d) {
  const int64_t rows = batch * n;
  if (rows <= 0 || d <= 0) return;
  use_device();
  auto* partial = static_cast<float*>(
      scratch(kLayerNormPartial, size_t(kern::layernorm_backward_partial_floats(rows, d)) * 4));
  kern::embedding_layernorm_backward(stream_, dx, dw, db, dy, ids, batch, n, id_stride, table,
                                     mean, rstd, w, d, partial);
}

// As linear_forward (the bias rows first, the product added onto them), with x as its own
// compact bfloat16 operand where the product runs on bfloat16 operands, widened otherwise.
void CudaOps::linear_forward_bf16_x(float* y, const uint16_t* x, const float* w, const float* b,
                                    int64_t rows, int64_t in, int64_t out) {
  linear_forward_bf16_x_with(y, x, w, nullptr, b, rows, in, out);
}

void CudaOps::linear_forward_bf16_x_with(float* y, const uint16_t* x, const float* w,
                                         const uint16_t* w16, const float* b, int64_t rows,
                                         int64_t in, int64_t out) {
  use_device();
  const RowMajorGemm g = row_major_gemm(false, true, rows, out, in, 1.0f, nullptr, in, w, in,
                                        b ? 1.0f : 0.0f, y, out);
  if (rows > 0 && out > 0 && in > 0 && bf16_operands_for(g)) {
    // As linear_forward on the widened x, so that both give the same bits.
    if (!w16) w16 = bf16_copy(kBf16B, w, stored_b(g));
    if (b && lt_linear_forward(y, false, x, w16, b, rows, in, out)) return;
    if (b) kern::broadcast_rows(stream_, y, b, rows, out);
    gemm_bf16(g, x, w16);
    return;
  }
  float* xw = widened(*this, rows * in);
  kern::bf16_to_float(stream_, xw, x, rows * in);
  linear_forward(y, xw, w, b, rows, in, out);
}

void CudaOps::linear_forward_to_bf16(uint16_t* y, float* staging, const uint16_t* x,
                                     const float* w, const float* b, int64_t rows, int64_t in,
                                     int64_t out) {
  use_device();
  const RowMajorGemm g = row_major_gemm(false, true, rows, out, in, 1.0f, nullptr, in, w, in,
                                        0.0f, nullptr, out);
  // Rounded to bfloat16 as the epilogue stores the float32 sums plus the bias: y is written
  // once, in bfloat16, and staging is not touched.
  const uint16_t* w16 = nullptr;
  if (b && rows > 0 && out > 0 && in > 0 && bf16_operands_for(g)) {
    w16 = bf16_copy(kBf16B, w, stored_b(g));
    if (lt_linear_forward(y, true, x, w16, b, rows, in, out)) return;
  }
  linear_forward_bf16_x_with(staging, x, w, w16, b, rows, in, out);
  round_to_bf16(y, staging, rows * out);
}

void CudaOps::linear_backward_bf16(float* dx, bool accumulate_dx, float* dw, float* db,
                                   const uint16_t* dy, const uint16_t* x, const float* w,
                                   int64_t rows, int64_t in, int64_t out) {
  use_device();
  // As linear_backward decides, so that both give the same bits.
  const int64_t products = (int64_t(dx != nullptr) + int64_t(dw != nullptr)) * rows * in * out;
  const int64_t operands = rows * out + (dx ? out * in : 0) + (dw ? rows * in : 0);
  if (products > 0 && bf16_operands_for(products, operands)) {
    // dy [rows, out] and x [rows, in] have nothing between rows: each is its own compact
    // copy, in both products.
    const RowMajorGemm gdx = row_major_gemm(false, false, rows, in, out, 1.0f, nullptr, out, w,
                                            in, accumulate_dx ? 1.0f : 0.0f, dx, in);
    const RowMajorGemm gdw = row_major_gemm(true, false, out, in, rows, 1.0f, nullptr, out,
                                            nullptr, in, 1.0f, dw, in);
    if (dx) gemm_bf16(gdx, dy, bf16_copy(kBf16B, w, stored_b(gdx)));
    if (dw) gemm_bf16(gdw, dy, x);
  } else {
    float* dyw = widened(*this, rows * out + rows * in);
    float* xw = dyw + rows * out;
    kern::bf16_to_float(stream_, dyw, dy, rows * out);
    kern::bf16_to_float(stream_, xw, x, rows * in);
    linear_backward(dx, accumulate_dx, dw, nullptr, dyw, xw, w, rows, in, out);
  }
  // The bias gradient from dy as it is stored, either way.
  if (db && rows > 0 && out > 0) {
    auto* partial = static_cast<float*>(
        scratch(kColumnPartial, size_t(kern::column_sums_partial_floats(rows, out)) * 4));
    kern::column_sums_bf16(stream_, db, dy, rows, out, partial);
  }
}

}  // namespace par::cuda
