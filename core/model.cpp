#include "core/model.h"

#include <cmath>

#include "core/error.h"

namespace par {

namespace {

// Carves typed pieces out of one allocation. Run once without a base to size it, then
// again over the real memory.
struct Carver {
  char* base = nullptr;
  size_t used = 0;
  template <typename U>
  U* take(int64_t n) {
    const size_t off = (used + 63) / 64 * 64;
    used = off + size_t(n) * sizeof(U);
    return base ? reinterpret_cast<U*>(base + off) : nullptr;
  }
};

}  // namespace

template <typename T>
struct PerceiverAR<T>::Acts {
  int32_t* tokens;   // [B, N+1]
  int32_t* targets;  // [B, M]
  uint8_t* keep;     // [B, N] keys visible to the cross-attention (not PAD, not dropped)
  int64_t* pos;      // [N] = 0..N-1; the latents' positions are pos + N - M
  T *cross_cos, *cross_sin, *self_cos, *self_sin;  // rotary tables [N, bands]

  // Cross-attention ([B,N,d] for all inputs, [B,M,d] for latents).
  T *h, *zin, *z0, *qn, *qn_mu, *qn_rs, *kvn, *kv_mu, *kv_rs;
  T *cq, *ck, *cv, *catt, *clse, *x1;

  struct Mlp {  // slot 0: the cross-attention's MLP; slot 1+l: layer l's
    T *ln, *mu, *rs, *fc1, *act;
  };
  struct Attn {  // latent self-attention of layer l
    T *ln, *mu, *rs, *q, *k, *v, *att, *lse, *x_mid;
  };
  std::vector<Mlp> mlp;
  std::vector<Attn> attn;
  std::vector<T*> xs;  // residual stream: xs[0] after the cross MLP, xs[l+1] after layer l

  T *lnf, *lnf_mu, *lnf_rs, *logits, *ce, *lse;

  // Backward and scratch.
  T *tmp, *dx, *d_ln, *dq, *dk, *dv, *datt, *dfc1, *dact, *dlogits;
  T *dh, *dkvn, *dck, *dcv;

  void carve(Carver& c, const ModelConfig& cfg, int64_t B, int64_t cross_bands,
             int64_t self_bands) {
    const int64_t N = cfg.context_length, M = cfg.num_latents, d = cfg.d_model;
    const int64_t F = cfg.mlp_width(), V = cfg.vocab_size, L = cfg.num_layers;
    const int64_t BM = B * M, BN = B * N;
    tokens = c.take<int32_t>(B * (N + 1));
    targets = c.take<int32_t>(BM);
    keep = c.take<uint8_t>(BN);
    pos = c.take<int64_t>(N);
    cross_cos = c.take<T>(N * cross_bands);
    cross_sin = c.take<T>(N * cross_bands);
    self_cos = c.take<T>(N * self_bands);
    self_sin = c.take<T>(N * self_bands);
    h = c.take<T>(BN * d);
    zin = c.take<T>(BM * d);
    z0 = c.take<T>(BM * d);
    qn = c.take<T>(BM * d);
    qn_mu = c.take<T>(BM);
    qn_rs = c.take<T>(BM);
    kvn = c.take<T>(BN * d);
    kv_mu = c.take<T>(BN);
    kv_rs = c.take<T>(BN);
    cq = c.take<T>(BM * d);
    ck = c.take<T>(BN * d);
    cv = c.take<T>(BN * d);
    catt = c.take<T>(BM * d);
    clse = c.take<T>(B * cfg.cross_heads * M);
    x1 = c.take<T>(BM * d);
    mlp.resize(size_t(L + 1));
    for (auto& m : mlp) {
      m.ln = c.take<T>(BM * d);
      m.mu = c.take<T>(BM);
      m.rs = c.take<T>(BM);
      m.fc1 = c.take<T>(BM * F);
      m.act = c.take<T>(BM * F);
    }
    attn.resize(size_t(L));
    for (auto& a : attn) {
      a.ln = c.take<T>(BM * d);
      a.mu = c.take<T>(BM);
      a.rs = c.take<T>(BM);
      a.q = c.take<T>(BM * d);
      a.k = c.take<T>(BM * d);
      a.v = c.take<T>(BM * d);
      a.att = c.take<T>(BM * d);
      a.lse = c.take<T>(B * cfg.self_heads * M);
      a.x_mid = c.take<T>(BM * d);
    }
    xs.resize(size_t(L + 1));
    for (auto& x : xs) x = c.take<T>(BM * d);
    lnf = c.take<T>(BM * d);
    lnf_mu = c.take<T>(BM);
    lnf_rs = c.take<T>(BM);
    logits = c.take<T>(BM * V);
    ce = c.take<T>(BM);
    lse = c.take<T>(BM);
    tmp = c.take<T>(BM * d);
    dx = c.take<T>(BM * d);
    d_ln = c.take<T>(BM * d);
    dq = c.take<T>(BM * d);
    dk = c.take<T>(BM * d);
    dv = c.take<T>(BM * d);
    datt = c.take<T>(BM * d);
    dfc1 = c.take<T>(BM * F);
    dact = c.take<T>(BM * F);
    dlogits = c.take<T>(BM * V);
    dh = c.take<T>(BN * d);
    dkvn = c.take<T>(BN * d);
    dck = c.take<T>(BN * d);
    dcv = c.take<T>(BN * d);
  }
};

template <typename T>
PerceiverAR<T>::PerceiverAR(const ModelConfig& cfg, Ops<T>& ops, int64_t max_batch)
    : cfg_(cfg), ops_(ops), layout_(cfg), max_batch_(max_batch), a_(new Acts) {
  cfg_.validate();
  PAR_ASSERT(max_batch > 0);
  rot_cross_ = make_rotary_spec(cfg.cross_head_dim(), cfg.rotary_fraction, cfg.wavelength());
  rot_self_ = make_rotary_spec(cfg.self_head_dim(), cfg.rotary_fraction, cfg.wavelength());

  const size_t param_bytes = size_t(layout_.total()) * sizeof(T);
  params_ = static_cast<T*>(ops_.allocate(param_bytes));
  grads_ = static_cast<T*>(ops_.allocate(param_bytes));
  ops_.fill(params_, layout_.total(), T(0));
  ops_.fill(grads_, layout_.total(), T(0));
  p_ = bind(layout_, params_);
  g_ = bind(layout_, grads_);

  Carver sizing;
  a_->carve(sizing, cfg_, max_batch_, rot_cross_.bands, rot_self_.bands);
  act_memory_ = ops_.allocate(sizing.used);
  Carver real{static_cast<char*>(act_memory_), 0};
  a_->carve(real, cfg_, max_batch_, rot_cross_.bands, rot_self_.bands);
  bytes_ = 2 * param_bytes + sizing.used;

  const int64_t N = cfg_.context_length;
  std::vector<int64_t> pos(static_cast<size_t>(N));
  for (int64_t j = 0; j < N; ++j) pos[size_t(j)] = j;
  ops_.upload(a_->pos, pos.data(), pos.size() * sizeof(int64_t));
  std::vector<T> c, s;
  make_rotary_tables(rot_cross_, N, c, s);
  ops_.upload(a_->cross_cos, c.data(), c.size() * sizeof(T));
  ops_.upload(a_->cross_sin, s.data(), s.size() * sizeof(T));
  make_rotary_tables(rot_self_, N, c, s);
  ops_.upload(a_->self_cos, c.data(), c.size() * sizeof(T));
  ops_.upload(a_->self_sin, s.data(), s.size() * sizeof(T));
}

template <typename T>
PerceiverAR<T>::~PerceiverAR() {
  ops_.deallocate(act_memory_);
  ops_.deallocate(grads_);
  ops_.deallocate(params_);
}

template <typename T>
void PerceiverAR<T>::zero_grads() {
  ops_.fill(grads_, layout_.total(), T(0));
}

template <typename T>
LossSums PerceiverAR<T>::forward(const int32_t* windows, int64_t B, const ForwardContext& ctx) {
  PAR_ASSERT(B > 0 && B <= max_batch_, "batch ", B, " exceeds the model's max_batch ",
             max_batch_);
  const int64_t N = cfg_.context_length, M = cfg_.num_latents, d = cfg_.d_model;
  const int64_t V = cfg_.vocab_size, BM = B * M, BN = B * N;
  const int64_t W = N + 1;
  Acts& a = *a_;
  batch_ = B;
  ctx_ = ctx;

  // Targets: latent i sits on input N-M+i and predicts w[N-M+i+1].
  std::vector<int32_t> targets(static_cast<size_t>(BM));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < W; ++j) {
      const int32_t t = windows[b * W + j];
      if (t < 0 || t >= V)
        fail_user("token id ", t, " at position ", j, " of example ", b,
                  " is outside the vocabulary [0, ", V, ")");
    }
    for (int64_t i = 0; i < M; ++i) targets[size_t(b * M + i)] = windows[b * W + N - M + i + 1];
  }
  ops_.upload(a.tokens, windows, size_t(B * W) * sizeof(int32_t));
  ops_.upload(a.targets, targets.data(), targets.size() * sizeof(int32_t));

  // Inputs.
  for (int64_t b = 0; b < B; ++b)
    ops_.embedding_forward(a.h + b * N * d, a.tokens + b * W, p_.embed, N, d);
  const double cad = ctx.training ? ctx.cross_attend_dropout : 0.0;
  ops_.key_keep_mask(a.keep, a.tokens, B, N, W, cad,
                     DropoutKey{ctx.seed, ctx.step, DropSite::kCrossAttend}, ctx.example_base,
                     0);

  // Cross-attention: latent queries from z_linear of the latents' embeddings, keys and
  // values from every input.
  const CrossRef<T>& cp = p_.cross;
  const int64_t* q_pos = a.pos + (N - M);
  ops_.copy_blocks(a.zin, M * d, a.h + (N - M) * d, N * d, B, M * d, false);
  ops_.linear_forward(a.z0, a.zin, cp.z_linear.w, cp.z_linear.b, BM, d, d);
  ops_.layernorm_forward(a.qn, a.qn_mu, a.qn_rs, a.z0, cp.ln_q.w, cp.ln_q.b, BM, d,
                         kLayerNormEps);
  ops_.layernorm_forward(a.kvn, a.kv_mu, a.kv_rs, a.h, cp.ln_kv.w, cp.ln_kv.b, BN, d,
                         kLayerNormEps);
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  ops_.linear_forward(a.cq, a.qn, cp.attn.q.w, cp.attn.q.b, BM, d, d);
  ops_.linear_forward(a.ck, a.kvn, cp.attn.k.w, cp.attn.k.b, BN, d, d);
  ops_.linear_forward(a.cv, a.kvn, cp.attn.v.w, cp.attn.v.b, BN, d, d);
  ops_.rotary(a.cq, B, M, Hc, Dc, rot_cross_.bands, q_pos, a.cross_cos, a.cross_sin, false);
  ops_.rotary(a.ck, B, N, Hc, Dc, rot_cross_.bands, a.pos, a.cross_cos, a.cross_sin, false);
  AttentionShape cs{B, M, N, Hc, Dc, q_pos, a.pos, a.keep, 1.0 / std::sqrt(double(Dc))};
  ops_.attention_forward(cs, a.cq, a.ck, a.cv, a.catt, a.clse);
  ops_.linear_forward(a.tmp, a.catt, cp.attn.o.w, cp.attn.o.b, BM, d, d);
  const double p_drop = ctx.training ? ctx.dropout : 0.0;
  if (p_drop > 0)
    ops_.dropout(a.tmp, a.tmp, B, M * d, p_drop,
                 DropoutKey{ctx.seed, ctx.step, DropSite::kCrossAttn}, ctx.example_base);
  ops_.copy(a.x1, a.z0, BM * d);  // the residual is the un-normalized z0
  ops_.add(a.x1, a.tmp, BM * d);
  mlp_block_forward(cp.ln_mlp, cp.mlp, 0, DropSite::kCrossMlp, a.x1, a.xs[0]);

  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    attention_block_forward(l, a.xs[size_t(l)], a.attn[size_t(l)].x_mid);
    mlp_block_forward(p_.layers[size_t(l)].ln_mlp, p_.layers[size_t(l)].mlp, 1 + l,
                      DropSite::layer_mlp(l), a.attn[size_t(l)].x_mid, a.xs[size_t(l + 1)]);
  }

  ops_.layernorm_forward(a.lnf, a.lnf_mu, a.lnf_rs, a.xs[size_t(cfg_.num_layers)],
                         p_.final_ln.w, p_.final_ln.b, BM, d, kLayerNormEps);
  ops_.linear_forward(a.logits, a.lnf, p_.head.w, p_.head.b, BM, d, V);
  ops_.cross_entropy_forward(a.ce, a.lse, a.logits, a.targets, BM, V);

  std::vector<T> ce(static_cast<size_t>(BM)), lse(static_cast<size_t>(BM));
  ops_.download(ce.data(), a.ce, ce.size() * sizeof(T));
  ops_.download(lse.data(), a.lse, lse.size() * sizeof(T));
  LossSums sums;
  for (int64_t r = 0; r < BM; ++r) {
    if (targets[size_t(r)] == 0) continue;
    const double l = double(lse[size_t(r)]);
    sums.ce += double(ce[size_t(r)]);
    sums.objective += double(ce[size_t(r)]) + kZLoss * l * l;
    ++sums.valid;
  }
  return sums;
}

template <typename T>
void PerceiverAR<T>::mlp_block_forward(const NormRef<T>& ln, const MlpRef<T>& mlp,
                                       int64_t slot, uint32_t site, const T* x_in, T* x_out) {
  const int64_t BM = batch_ * cfg_.num_latents, d = cfg_.d_model, F = cfg_.mlp_width();
  typename Acts::Mlp& m = a_->mlp[size_t(slot)];
  ops_.layernorm_forward(m.ln, m.mu, m.rs, x_in, ln.w, ln.b, BM, d, kLayerNormEps);
  ops_.linear_forward(m.fc1, m.ln, mlp.fc1.w, mlp.fc1.b, BM, d, F);
  ops_.sqrelu_forward(m.act, m.fc1, BM * F);
  ops_.linear_forward(a_->tmp, m.act, mlp.fc2.w, mlp.fc2.b, BM, F, d);
  const double p = ctx_.training ? ctx_.dropout : 0.0;
  if (p > 0)
    ops_.dropout(a_->tmp, a_->tmp, batch_, cfg_.num_latents * d, p,
                 DropoutKey{ctx_.seed, ctx_.step, site}, ctx_.example_base);
  ops_.copy(x_out, x_in, BM * d);
  ops_.add(x_out, a_->tmp, BM * d);
}

template <typename T>
void PerceiverAR<T>::attention_block_forward(int64_t l, const T* x_in, T* x_out) {
  const int64_t N = cfg_.context_length, M = cfg_.num_latents, d = cfg_.d_model;
  const int64_t BM = batch_ * M, H = cfg_.self_heads, D = cfg_.self_head_dim();
  const LayerRef<T>& lp = p_.layers[size_t(l)];
  typename Acts::Attn& s = a_->attn[size_t(l)];
  const int64_t* pos = a_->pos + (N - M);
  ops_.layernorm_forward(s.ln, s.mu, s.rs, x_in, lp.ln_attn.w, lp.ln_attn.b, BM, d,
                         kLayerNormEps);
  ops_.linear_forward(s.q, s.ln, lp.attn.q.w, lp.attn.q.b, BM, d, d);
  ops_.linear_forward(s.k, s.ln, lp.attn.k.w, lp.attn.k.b, BM, d, d);
  ops_.linear_forward(s.v, s.ln, lp.attn.v.w, lp.attn.v.b, BM, d, d);
  ops_.rotary(s.q, batch_, M, H, D, rot_self_.bands, pos, a_->self_cos, a_->self_sin, false);
  ops_.rotary(s.k, batch_, M, H, D, rot_self_.bands, pos, a_->self_cos, a_->self_sin, false);
  AttentionShape shape{batch_, M, M, H, D, pos, pos, nullptr, 1.0 / std::sqrt(double(D))};
  ops_.attention_forward(shape, s.q, s.k, s.v, s.att, s.lse);
  ops_.linear_forward(a_->tmp, s.att, lp.attn.o.w, lp.attn.o.b, BM, d, d);
  const double p = ctx_.training ? ctx_.dropout : 0.0;
  if (p > 0)
    ops_.dropout(a_->tmp, a_->tmp, batch_, M * d, p,
                 DropoutKey{ctx_.seed, ctx_.step, DropSite::layer_attn(l)}, ctx_.example_base);
  ops_.copy(x_out, x_in, BM * d);
  ops_.add(x_out, a_->tmp, BM * d);
}

template <typename T>
void PerceiverAR<T>::backward(double loss_scale) {
  PAR_ASSERT(batch_ > 0, "backward() without forward()");
  const int64_t M = cfg_.num_latents, d = cfg_.d_model, V = cfg_.vocab_size;
  const int64_t BM = batch_ * M, L = cfg_.num_layers;
  Acts& a = *a_;
  ops_.cross_entropy_backward(a.dlogits, a.logits, a.lse, a.targets, BM, V, loss_scale,
                              kZLoss);
  ops_.linear_backward(a.d_ln, false, g_.head.w, g_.head.b, a.dlogits, a.lnf, p_.head.w, BM,
                       d, V);
  ops_.layernorm_backward(a.dx, false, g_.final_ln.w, g_.final_ln.b, a.d_ln, a.xs[size_t(L)],
                          a.lnf_mu, a.lnf_rs, p_.final_ln.w, BM, d);
  for (int64_t l = L - 1; l >= 0; --l) {
    const LayerRef<T>& lp = p_.layers[size_t(l)];
    const LayerRef<T>& lg = g_.layers[size_t(l)];
    mlp_block_backward(lp.ln_mlp, lp.mlp, lg.ln_mlp, lg.mlp, 1 + l, DropSite::layer_mlp(l),
                       a.attn[size_t(l)].x_mid, a.dx);
    attention_block_backward(l, a.dx);
  }
  mlp_block_backward(p_.cross.ln_mlp, p_.cross.mlp, g_.cross.ln_mlp, g_.cross.mlp, 0,
                     DropSite::kCrossMlp, a.x1, a.dx);
  cross_attention_backward(a.dx);
}

template <typename T>
void PerceiverAR<T>::mlp_block_backward(const NormRef<T>& ln, const MlpRef<T>& mlp,
                                        const NormRef<T>& dln, const MlpRef<T>& dmlp,
                                        int64_t slot, uint32_t site, const T* x_in, T* dx) {
  const int64_t BM = batch_ * cfg_.num_latents, d = cfg_.d_model, F = cfg_.mlp_width();
  const typename Acts::Mlp& m = a_->mlp[size_t(slot)];
  Acts& a = *a_;
  const double p = ctx_.training ? ctx_.dropout : 0.0;
  const T* dy = dx;
  if (p > 0) {
    ops_.dropout(a.tmp, dx, batch_, cfg_.num_latents * d, p,
                 DropoutKey{ctx_.seed, ctx_.step, site}, ctx_.example_base);
    dy = a.tmp;
  }
  ops_.linear_backward(a.dact, false, dmlp.fc2.w, dmlp.fc2.b, dy, m.act, mlp.fc2.w, BM, F, d);
  ops_.sqrelu_backward(a.dfc1, a.dact, m.fc1, BM * F);
  ops_.linear_backward(a.d_ln, false, dmlp.fc1.w, dmlp.fc1.b, a.dfc1, m.ln, mlp.fc1.w, BM, d,
                       F);
  ops_.layernorm_backward(dx, true, dln.w, dln.b, a.d_ln, x_in, m.mu, m.rs, ln.w, BM, d);
}

template <typename T>
void PerceiverAR<T>::attention_block_backward(int64_t l, T* dx) {
  const int64_t N = cfg_.context_length, M = cfg_.num_latents, d = cfg_.d_model;
  const int64_t BM = batch_ * M, H = cfg_.self_heads, D = cfg_.self_head_dim();
  const LayerRef<T>& lp = p_.layers[size_t(l)];
  const LayerRef<T>& lg = g_.layers[size_t(l)];
  const typename Acts::Attn& s = a_->attn[size_t(l)];
  Acts& a = *a_;
  const int64_t* pos = a.pos + (N - M);
  const double p = ctx_.training ? ctx_.dropout : 0.0;
  const T* dy = dx;
  if (p > 0) {
    ops_.dropout(a.tmp, dx, batch_, M * d, p,
                 DropoutKey{ctx_.seed, ctx_.step, DropSite::layer_attn(l)}, ctx_.example_base);
    dy = a.tmp;
  }
  ops_.linear_backward(a.datt, false, lg.attn.o.w, lg.attn.o.b, dy, s.att, lp.attn.o.w, BM, d,
                       d);
  AttentionShape shape{batch_, M, M, H, D, pos, pos, nullptr, 1.0 / std::sqrt(double(D))};
  ops_.attention_backward(shape, s.q, s.k, s.v, s.att, a.datt, s.lse, a.dq, a.dk, a.dv);
  ops_.rotary(a.dq, batch_, M, H, D, rot_self_.bands, pos, a.self_cos, a.self_sin, true);
  ops_.rotary(a.dk, batch_, M, H, D, rot_self_.bands, pos, a.self_cos, a.self_sin, true);
  ops_.linear_backward(a.d_ln, false, lg.attn.q.w, lg.attn.q.b, a.dq, s.ln, lp.attn.q.w, BM, d,
                       d);
  ops_.linear_backward(a.d_ln, true, lg.attn.k.w, lg.attn.k.b, a.dk, s.ln, lp.attn.k.w, BM, d,
                       d);
  ops_.linear_backward(a.d_ln, true, lg.attn.v.w, lg.attn.v.b, a.dv, s.ln, lp.attn.v.w, BM, d,
                       d);
  ops_.layernorm_backward(dx, true, lg.ln_attn.w, lg.ln_attn.b, a.d_ln,
                          a.xs[size_t(l)], s.mu, s.rs, lp.ln_attn.w, BM, d);
}

template <typename T>
void PerceiverAR<T>::cross_attention_backward(T* dx) {
  // On entry dx is the gradient of x1 = z0 + dropout(o); it becomes the gradient of z0.
  const int64_t N = cfg_.context_length, M = cfg_.num_latents, d = cfg_.d_model;
  const int64_t B = batch_, BM = B * M, BN = B * N, W = N + 1;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  const CrossRef<T>& cp = p_.cross;
  const CrossRef<T>& cg = g_.cross;
  Acts& a = *a_;
  const int64_t* q_pos = a.pos + (N - M);
  const double p = ctx_.training ? ctx_.dropout : 0.0;
  const T* dy = dx;
  if (p > 0) {
    ops_.dropout(a.tmp, dx, B, M * d, p, DropoutKey{ctx_.seed, ctx_.step, DropSite::kCrossAttn},
                 ctx_.example_base);
    dy = a.tmp;
  }
  ops_.linear_backward(a.datt, false, cg.attn.o.w, cg.attn.o.b, dy, a.catt, cp.attn.o.w, BM, d,
                       d);
  AttentionShape cs{B, M, N, Hc, Dc, q_pos, a.pos, a.keep, 1.0 / std::sqrt(double(Dc))};
  ops_.attention_backward(cs, a.cq, a.ck, a.cv, a.catt, a.datt, a.clse, a.dq, a.dck, a.dcv);
  ops_.rotary(a.dq, B, M, Hc, Dc, rot_cross_.bands, q_pos, a.cross_cos, a.cross_sin, true);
  ops_.rotary(a.dck, B, N, Hc, Dc, rot_cross_.bands, a.pos, a.cross_cos, a.cross_sin, true);

  // Query side: back through W_q and LN_q into z0.
  ops_.linear_backward(a.d_ln, false, cg.attn.q.w, cg.attn.q.b, a.dq, a.qn, cp.attn.q.w, BM, d,
                       d);
  ops_.layernorm_backward(dx, true, cg.ln_q.w, cg.ln_q.b, a.d_ln, a.z0, a.qn_mu, a.qn_rs,
                          cp.ln_q.w, BM, d);
  // Key/value side: back through W_k, W_v and LN_kv into the embeddings.
  ops_.linear_backward(a.dkvn, false, cg.attn.k.w, cg.attn.k.b, a.dck, a.kvn, cp.attn.k.w, BN,
                       d, d);
  ops_.linear_backward(a.dkvn, true, cg.attn.v.w, cg.attn.v.b, a.dcv, a.kvn, cp.attn.v.w, BN,
                       d, d);
  ops_.layernorm_backward(a.dh, false, cg.ln_kv.w, cg.ln_kv.b, a.dkvn, a.h, a.kv_mu, a.kv_rs,
                          cp.ln_kv.w, BN, d);
  // z0 = z_linear(h[latent positions]).
  ops_.linear_backward(a.tmp, false, cg.z_linear.w, cg.z_linear.b, dx, a.zin, cp.z_linear.w, BM,
                       d, d);
  ops_.copy_blocks(a.dh + (N - M) * d, N * d, a.tmp, M * d, B, M * d, true);
  for (int64_t b = 0; b < B; ++b)
    ops_.embedding_backward(g_.embed, a.tokens + b * W, a.dh + b * N * d, N, d);
}

template <typename T>
std::vector<T> PerceiverAR<T>::logits() const {
  std::vector<T> out(static_cast<size_t>(batch_ * cfg_.num_latents * cfg_.vocab_size));
  ops_.download(out.data(), a_->logits, out.size() * sizeof(T));
  return out;
}

template <typename T>
std::vector<T> PerceiverAR<T>::ce() const {
  std::vector<T> out(static_cast<size_t>(batch_ * cfg_.num_latents));
  ops_.download(out.data(), a_->ce, out.size() * sizeof(T));
  return out;
}

template <typename T>
std::vector<T> PerceiverAR<T>::lse() const {
  std::vector<T> out(static_cast<size_t>(batch_ * cfg_.num_latents));
  ops_.download(out.data(), a_->lse, out.size() * sizeof(T));
  return out;
}

template class PerceiverAR<float>;
template class PerceiverAR<double>;

}  // namespace par
