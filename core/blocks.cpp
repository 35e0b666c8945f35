#include "core/blocks.h"

#include "core/constants.h"

namespace par {

template <typename T>
void LatentPass<T>::tp_sum(T* x, int64_t n) const {
  if (tp.size() > 1) tp->all_reduce(x, n, ReduceOp::kSum);
}

template <typename T>
void LatentPass<T>::drop(T* y, const T* x, uint32_t site) const {
  if (dropout > 0)
    ops.dropout(y, x, batch, rows * d, dropout, DropoutKey{seed, step, site}, example_base);
}

template <typename T>
const T* LatentPass<T>::undrop(const T* dx, T* tmp, uint32_t site) const {
  if (dropout <= 0) return dx;
  drop(tmp, dx, site);
  return tmp;
}

template <typename T>
void cross_keys_values(Ops<T>& ops, const CrossRef<T>& p, const T* h, int64_t rows, int64_t d,
                       int64_t width, const NormActs<T>& kvn, T* k, T* v) {
  ops.layernorm_forward(kvn.y, kvn.mean, kvn.rstd, h, p.ln_kv.w, p.ln_kv.b, rows, d,
                        kLayerNormEps);
  ops.linear_forward(k, kvn.y, p.attn.k.w, p.attn.k.b, rows, d, width);
  ops.linear_forward(v, kvn.y, p.attn.v.w, p.attn.v.b, rows, d, width);
}

template <typename T>
void cross_queries(Ops<T>& ops, const CrossRef<T>& p, const T* zin, int64_t rows, int64_t d,
                   int64_t width, T* z0, const NormActs<T>& qn, T* q) {
  ops.linear_forward(z0, zin, p.z_linear.w, p.z_linear.b, rows, d, d);
  ops.layernorm_forward(qn.y, qn.mean, qn.rstd, z0, p.ln_q.w, p.ln_q.b, rows, d, kLayerNormEps);
  ops.linear_forward(q, qn.y, p.attn.q.w, p.attn.q.b, rows, d, width);
}

template <typename T>
void output_residual(const LatentPass<T>& pass, const LinearRef<T>& o, const T* att,
                     int64_t width, const T* x_res, T* x_out, T* tmp, uint32_t site) {
  const int64_t n = pass.total_rows() * pass.d;
  pass.ops.linear_forward(tmp, att, o.w, pass.tp_rank == 0 ? o.b : nullptr, pass.total_rows(),
                          width, pass.d);
  pass.tp_sum(tmp, n);
  pass.drop(tmp, tmp, site);
  if (x_out != x_res) pass.ops.copy(x_out, x_res, n);
  pass.ops.add(x_out, tmp, n);
}

template <typename T>
void mlp_block_forward(const LatentPass<T>& pass, const NormRef<T>& ln, const MlpRef<T>& mlp,
                       int64_t width, const MlpActs<T>& a, const T* x_in, T* x_out, T* tmp,
                       uint32_t site) {
  Ops<T>& ops = pass.ops;
  const int64_t R = pass.total_rows(), d = pass.d;
  ops.layernorm_forward(a.ln.y, a.ln.mean, a.ln.rstd, x_in, ln.w, ln.b, R, d, kLayerNormEps);
  ops.linear_forward(a.fc1, a.ln.y, mlp.fc1.w, mlp.fc1.b, R, d, width);
  ops.sqrelu_forward(a.act, a.fc1, R * width);
  output_residual(pass, mlp.fc2, a.act, width, x_in, x_out, tmp, site);
}

namespace {

template <typename T>
void attention_block_forward(const LatentPass<T>& pass, const NormRef<T>& ln,
                             const AttentionRef<T>& attn, int64_t width,
                             const RotaryTables<T>& rot, const AttentionShape& shape,
                             const T* keys, const T* values, const AttentionActs<T>& a,
                             const T* x_in, T* x_out, T* tmp, uint32_t site,
                             const CacheRows<T>& cache) {
  Ops<T>& ops = pass.ops;
  const int64_t R = pass.total_rows(), d = pass.d;
  ops.layernorm_forward(a.ln.y, a.ln.mean, a.ln.rstd, x_in, ln.w, ln.b, R, d, kLayerNormEps);
  ops.linear_forward(a.q, a.ln.y, attn.q.w, attn.q.b, R, d, width);
  ops.linear_forward(a.k, a.ln.y, attn.k.w, attn.k.b, R, d, width);
  ops.linear_forward(a.v, a.ln.y, attn.v.w, attn.v.b, R, d, width);
  for (T* x : {a.q, a.k})
    ops.rotary(x, pass.batch, pass.rows, rot.heads, rot.head_dim, rot.bands, rot.cos, rot.sin,
               false);
  if (cache.k) {
    const int64_t n = pass.rows * width;
    ops.copy_blocks_to_row(cache.k, cache.stride * width, cache.at, width, a.k, n, pass.batch, n);
    ops.copy_blocks_to_row(cache.v, cache.stride * width, cache.at, width, a.v, n, pass.batch, n);
  }
  ops.attention_forward(shape, a.q, keys, values, a.att, a.lse);
  output_residual(pass, attn.o, a.att, width, x_in, x_out, tmp, site);
}

template <typename T>
void attention_block_backward(const LatentPass<T>& pass, const NormRef<T>& ln,
                              const AttentionRef<T>& attn, const NormRef<T>& dln,
                              const AttentionRef<T>& dattn, int64_t width,
                              const RotaryTables<T>& rot, const AttentionShape& shape,
                              const AttentionActs<T>& a, const T* x_in, T* dx,
                              const BlockGradScratch<T>& g, uint32_t site) {
  Ops<T>& ops = pass.ops;
  const int64_t R = pass.total_rows(), d = pass.d;
  const T* dy = pass.undrop(dx, g.tmp, site);
  ops.linear_backward(g.datt, false, dattn.o.w, dattn.o.b, dy, a.att, attn.o.w, R, width, d);
  ops.attention_backward(shape, a.q, a.k, a.v, a.att, g.datt, a.lse, g.dq, g.dk, g.dv);
  for (T* x : {g.dq, g.dk})
    ops.rotary(x, pass.batch, pass.rows, rot.heads, rot.head_dim, rot.bands, rot.cos, rot.sin,
               true);
  ops.linear_backward(g.d_ln, false, dattn.q.w, dattn.q.b, g.dq, a.ln.y, attn.q.w, R, d, width);
  ops.linear_backward(g.d_ln, true, dattn.k.w, dattn.k.b, g.dk, a.ln.y, attn.k.w, R, d, width);
  ops.linear_backward(g.d_ln, true, dattn.v.w, dattn.v.b, g.dv, a.ln.y, attn.v.w, R, d, width);
  pass.tp_sum(g.d_ln, R * d);  // q, k, v are column-parallel
  ops.layernorm_backward(dx, true, dln.w, dln.b, g.d_ln, x_in, a.ln.mean, a.ln.rstd, ln.w, R, d);
}

}  // namespace

template <typename T>
void latent_layer_forward(const LatentPass<T>& pass, const LayerRef<T>& p, int64_t l,
                          int64_t attn_width, int64_t mlp_width, const RotaryTables<T>& rot,
                          const AttentionShape& shape, const T* keys, const T* values,
                          const AttentionActs<T>& attn, const MlpActs<T>& mlp, const T* x_in,
                          T* x_mid, T* x_out, T* tmp, const CacheRows<T>& cache) {
  attention_block_forward(pass, p.ln_attn, p.attn, attn_width, rot, shape, keys, values, attn,
                          x_in, x_mid, tmp, DropSite::layer_attn(l), cache);
  mlp_block_forward(pass, p.ln_mlp, p.mlp, mlp_width, mlp, x_mid, x_out, tmp,
                    DropSite::layer_mlp(l));
}

template <typename T>
void mlp_block_backward(const LatentPass<T>& pass, const NormRef<T>& ln, const MlpRef<T>& mlp,
                        const NormRef<T>& dln, const MlpRef<T>& dmlp, int64_t width,
                        const MlpActs<T>& a, const T* x_in, T* dx,
                        const BlockGradScratch<T>& g, uint32_t site) {
  Ops<T>& ops = pass.ops;
  const int64_t R = pass.total_rows(), d = pass.d;
  const T* dy = pass.undrop(dx, g.tmp, site);
  ops.linear_backward(g.dact, false, dmlp.fc2.w, dmlp.fc2.b, dy, a.act, mlp.fc2.w, R, width, d);
  ops.sqrelu_backward(g.dfc1, g.dact, a.fc1, R * width);
  ops.linear_backward(g.d_ln, false, dmlp.fc1.w, dmlp.fc1.b, g.dfc1, a.ln.y, mlp.fc1.w, R, d,
                      width);
  pass.tp_sum(g.d_ln, R * d);  // fc1 is column-parallel: its input gradient is a partial sum
  ops.layernorm_backward(dx, true, dln.w, dln.b, g.d_ln, x_in, a.ln.mean, a.ln.rstd, ln.w, R, d);
}

template <typename T>
void latent_layer_backward(const LatentPass<T>& pass, const LayerRef<T>& p,
                           const LayerRef<T>& grad, int64_t l, int64_t attn_width,
                           int64_t mlp_width, const RotaryTables<T>& rot,
                           const AttentionShape& shape, const AttentionActs<T>& attn,
                           const MlpActs<T>& mlp, const T* x_in, const T* x_mid, T* dx,
                           const BlockGradScratch<T>& g) {
  mlp_block_backward(pass, p.ln_mlp, p.mlp, grad.ln_mlp, grad.mlp, mlp_width, mlp, x_mid, dx, g,
                     DropSite::layer_mlp(l));
  attention_block_backward(pass, p.ln_attn, p.attn, grad.ln_attn, grad.attn, attn_width, rot,
                           shape, attn, x_in, dx, g, DropSite::layer_attn(l));
}

template <typename T>
void logits_forward(Ops<T>& ops, const ModelRef<T>& p, const T* x, int64_t rows, int64_t d,
                    int64_t vocab, const NormActs<T>& lnf, T* logits) {
  ops.layernorm_forward(lnf.y, lnf.mean, lnf.rstd, x, p.final_ln.w, p.final_ln.b, rows, d,
                        kLayerNormEps);
  ops.linear_forward(logits, lnf.y, p.head.w, p.head.b, rows, d, vocab);
}

#define PAR_INSTANTIATE_BLOCKS(T)                                                               \
  template struct LatentPass<T>;                                                                \
  template void cross_keys_values(Ops<T>&, const CrossRef<T>&, const T*, int64_t, int64_t,       \
                                  int64_t, const NormActs<T>&, T*, T*);                        \
  template void cross_queries(Ops<T>&, const CrossRef<T>&, const T*, int64_t, int64_t, int64_t, \
                              T*, const NormActs<T>&, T*);                                      \
  template void output_residual(const LatentPass<T>&, const LinearRef<T>&, const T*, int64_t,   \
                                const T*, T*, T*, uint32_t);                                    \
  template void mlp_block_forward(const LatentPass<T>&, const NormRef<T>&, const MlpRef<T>&,    \
                                  int64_t, const MlpActs<T>&, const T*, T*, T*, uint32_t);      \
  template void latent_layer_forward(const LatentPass<T>&, const LayerRef<T>&, int64_t,         \
                                     int64_t, int64_t, const RotaryTables<T>&,                  \
                                     const AttentionShape&, const T*, const T*,                 \
                                     const AttentionActs<T>&, const MlpActs<T>&, const T*, T*,  \
                                     T*, T*, const CacheRows<T>&);                              \
  template void latent_layer_backward(const LatentPass<T>&, const LayerRef<T>&,                \
                                      const LayerRef<T>&, int64_t, int64_t, int64_t,            \
                                      const RotaryTables<T>&, const AttentionShape&,            \
                                      const AttentionActs<T>&, const MlpActs<T>&, const T*,     \
                                      const T*, T*, const BlockGradScratch<T>&);                \
  template void mlp_block_backward(const LatentPass<T>&, const NormRef<T>&, const MlpRef<T>&,   \
                                   const NormRef<T>&, const MlpRef<T>&, int64_t,                \
                                   const MlpActs<T>&, const T*, T*, const BlockGradScratch<T>&, \
                                   uint32_t);                                                   \
  template void logits_forward(Ops<T>&, const ModelRef<T>&, const T*, int64_t, int64_t,         \
                               int64_t, const NormActs<T>&, T*);

PAR_INSTANTIATE_BLOCKS(float)
PAR_INSTANTIATE_BLOCKS(double)

}  // namespace par
