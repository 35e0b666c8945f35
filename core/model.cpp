#include "core/model.h"

#include <cmath>

#include "core/arena.h"
#include "core/error.h"
#include "core/model_acts.h"

namespace par {

namespace {


// What Acts::carve needs besides the config and the batch: this rank's share of the
// inputs and widths in an sp x tp layout.
struct LocalShape {
  int64_t n_local, cross_width, self_width, mlp_width, cross_heads, self_heads;
  int64_t cross_bands, self_bands;
};

LocalShape local_shape(const ModelConfig& cfg, int sp, int tp) {
  return LocalShape{cfg.context_length / sp,
                    cfg.d_model / tp,
                    cfg.d_model / tp,
                    cfg.mlp_width() / tp,
                    cfg.cross_heads / tp,
                    cfg.self_heads / tp,
                    make_rotary_spec(cfg.cross_head_dim(), cfg.rotary_fraction, cfg.wavelength()).bands,
                    make_rotary_spec(cfg.self_head_dim(), cfg.rotary_fraction, cfg.wavelength()).bands};
}

}  // namespace

void validate_layout(const ModelConfig& c, int sp, int tp) {
  if (sp < 1 || tp < 1) fail_user("--sp and --tp must be at least 1");
  if (c.cross_heads % tp != 0)
    fail_user("--tp ", tp, " does not divide --cross-heads ", c.cross_heads,
              ": tensor parallelism splits the heads across ranks");
  if (c.self_heads % tp != 0)
    fail_user("--tp ", tp, " does not divide --self-heads ", c.self_heads,
              ": tensor parallelism splits the heads across ranks");
  if (c.context_length % sp != 0)
    fail_user("--sp ", sp, " does not divide --context-length ", c.context_length,
              ": each sequence-parallel rank holds an equal slice of the context");
}


template <typename T>
PerceiverAR<T>::PerceiverAR(const ModelConfig& cfg, Ops<T>& ops, int64_t max_batch,
                            ModelGroups groups, KeyValueStorage kv)
    : cfg_(cfg),
      ops_(ops),
      groups_(groups),
      sp_rank_(groups.sp.rank()),
      sp_size_(groups.sp.size()),
      tp_rank_(groups.tp.rank()),
      tp_size_(groups.tp.size()),
      layout_((cfg.validate(), validate_layout(cfg, groups.sp.size(), groups.tp.size()), cfg),
              tp_rank_, tp_size_),
      max_batch_(max_batch),
      kv_storage_(kv),
      a_(new Acts) {
  PAR_ASSERT(max_batch > 0);
  PAR_ASSERT(groups.sp_host.size() == sp_size_, "sp_host must be the sp group's host side");
  const int64_t N = cfg.context_length;
  n_local_ = N / sp_size_;
  pos0_ = n_local_ * sp_rank_;
  // Latent i sits at position N-M+i; this rank holds latents [latent_first_, + count).
  const int64_t M = cfg.num_latents;
  latent_first_ = std::max<int64_t>(0, pos0_ - (N - M));
  latent_count_ = std::max<int64_t>(0, std::min<int64_t>(M, pos0_ + n_local_ - (N - M)) - latent_first_);
  latents_split_ = M > n_local_;
  cross_width_ = cfg.d_model / tp_size_;
  self_width_ = cfg.d_model / tp_size_;
  mlp_width_ = cfg.mlp_width() / tp_size_;
  rot_cross_ = make_rotary_spec(cfg.cross_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength());
  rot_self_ = make_rotary_spec(cfg.self_head_dim(), cfg.applied_rotary_fraction(), cfg.wavelength());
  if (cfg.absolute_positions()) positions_ = std::make_unique<PositionTable<T>>(ops_, cfg.d_model);

  const size_t param_bytes = size_t(layout_.total()) * sizeof(T);
  params_ = static_cast<T*>(ops_.allocate(param_bytes));
  grads_ = static_cast<T*>(ops_.allocate(param_bytes));
  ops_.fill(params_, layout_.total(), T(0));
  ops_.fill(grads_, layout_.total(), T(0));
  p_ = bind(layout_, params_);
  g_ = bind(layout_, grads_);

  const ModelMemory planned = memory(cfg_, max_batch_, sp_size_, tp_size_, kv_storage_);
  const LocalShape ls = local_shape(cfg_, sp_size_, tp_size_);
  PAR_ASSERT(double(param_bytes) == planned.params && ls.n_local == n_local_ &&
                 ls.cross_width == cross_width_ && ls.mlp_width == mlp_width_,
             "the memory plan of the model differs from its allocation");
  act_memory_ = ops_.allocate(size_t(planned.activations));
  Carver real{static_cast<char*>(act_memory_), 0};
  a_->carve(real, cfg_, max_batch_, ls.n_local, ls.cross_width, ls.self_width, ls.mlp_width,
            ls.cross_heads, ls.self_heads, ls.cross_bands, ls.self_bands,
            cfg_.absolute_positions(), kv_storage_ == KeyValueStorage::kBf16);
  PAR_ASSERT(real.used == planned.activations,
             "the memory plan of the activations differs from their carving");
  bytes_ = 2 * param_bytes + size_t(real.used);

  std::vector<int64_t> pos(static_cast<size_t>(n_local_)), latent_pos(static_cast<size_t>(M));
  for (int64_t j = 0; j < n_local_; ++j) pos[size_t(j)] = pos0_ + j;
  for (int64_t i = 0; i < M; ++i) latent_pos[size_t(i)] = N - M + i;
  ops_.upload(a_->pos, pos.data(), pos.size() * sizeof(int64_t));
  ops_.upload(a_->latent_pos, latent_pos.data(), latent_pos.size() * sizeof(int64_t));
  auto tables = [&](const RotarySpec& spec, int64_t first, int64_t count, T* cos, T* sin) {
    std::vector<T> c, s;
    make_rotary_tables(spec, first, count, c, s);
    if (c.empty()) return;  // no rotary
    ops_.upload(cos, c.data(), c.size() * sizeof(T));
    ops_.upload(sin, s.data(), s.size() * sizeof(T));
  };
  tables(rot_cross_, pos0_, n_local_, a_->key_cos, a_->key_sin);
  tables(rot_cross_, N - M, M, a_->query_cos, a_->query_sin);
  tables(rot_self_, N - M, M, a_->self_cos, a_->self_sin);
}

template <typename T>
ModelMemory PerceiverAR<T>::memory(const ModelConfig& cfg, int64_t max_batch, int sp, int tp,
                                   KeyValueStorage kv) {
  cfg.validate();
  validate_layout(cfg, sp, tp);
  // Exact for L = 0, 1, 2. Every layer adds the same pieces (each starting 64-byte aligned),
  // so both sizes are affine in L from there: plan a billion layers without listing them.
  auto at = [&](int64_t layers) {
    ModelConfig c = cfg;
    c.num_layers = layers;
    const LocalShape ls = local_shape(c, sp, tp);
    Carver sizer;
    Acts acts;
    acts.carve(sizer, c, double(max_batch), double(ls.n_local), double(ls.cross_width),
               double(ls.self_width), double(ls.mlp_width), double(ls.cross_heads),
               double(ls.self_heads), double(ls.cross_bands), double(ls.self_bands),
               c.absolute_positions(), kv == KeyValueStorage::kBf16);
    ModelMemory m;
    m.param_elements = double(ParamLayout(c, 0, tp).total());
    m.params = m.param_elements * double(sizeof(T));
    m.activations = sizer.used;
    return m;
  };
  const int64_t L = cfg.num_layers;
  if (L <= 2) return at(L);
  const ModelMemory one = at(1), two = at(2);
  const double more = double(L - 1);
  ModelMemory m;
  m.param_elements = one.param_elements + more * (two.param_elements - one.param_elements);
  m.params = one.params + more * (two.params - one.params);
  m.activations = one.activations + more * (two.activations - one.activations);
  return m;
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
LatentPass<T> PerceiverAR<T>::latent_pass() const {
  return LatentPass<T>{ops_,         batch_,    cfg_.num_latents, cfg_.d_model,
                       groups_.tp,   tp_rank_,  ctx_.training ? ctx_.dropout : 0.0,
                       ctx_.seed,    ctx_.step, ctx_.example_base};
}

template <typename T>
RotaryTables<T> PerceiverAR<T>::self_rotary() const {
  return RotaryTables<T>{a_->self_cos, a_->self_sin, rot_self_.bands,
                         cfg_.self_heads / tp_size_, cfg_.self_head_dim()};
}

template <typename T>
BlockGradScratch<T> PerceiverAR<T>::grad_scratch() const {
  const Acts& a = *a_;
  return BlockGradScratch<T>{a.tmp, a.d_ln, a.dact, a.dfc1, a.datt, a.dq, a.dk, a.dv};
}

template <typename T>
LossSums PerceiverAR<T>::forward(const int32_t* windows, int64_t B, const ForwardContext& ctx) {
  PAR_ASSERT(B > 0 && B <= max_batch_, "batch ", B, " exceeds the model's max_batch ",
             max_batch_);
  const int64_t N = cfg_.context_length, M = cfg_.num_latents, d = cfg_.d_model;
  const int64_t V = cfg_.vocab_size, BM = B * M, Nl = n_local_, cols = window_columns();
  const int64_t Hc = cfg_.cross_heads / tp_size_, Dc = cfg_.cross_head_dim(), dc = cross_width_;
  Acts& a = *a_;
  batch_ = B;
  ctx_ = ctx;

  for (int64_t i = 0; i < B * cols; ++i)
    if (windows[i] < 0 || windows[i] >= V)
      fail_user("token id ", windows[i], " at position ", pos0_ + i % cols, " of example ",
                i / cols, " is outside the vocabulary [0, ", V, ")");
  ops_.upload(a.tokens, windows, size_t(B * cols) * sizeof(int32_t));
  // Targets: latent i sits on input N-M+i and predicts w[N-M+i+1]. When the latents span
  // several sequence ranks, each contributes the targets in its columns (the rest are 0,
  // PAD) and the sum reaches every rank: M ids per example, whatever N is.
  std::vector<int32_t>& targets = targets_;
  targets.assign(size_t(BM), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < M; ++i) {
      const int64_t c = N - M + i + 1 - pos0_;
      if (c >= 0 && c < cols) targets[size_t(b * M + i)] = windows[b * cols + c];
    }
  if (latents_split_) {
    std::vector<int64_t> wide(targets.begin(), targets.end());
    groups_.sp_host->all_reduce(wide.data(), int64_t(wide.size()), ReduceOp::kSum);
    std::copy(wide.begin(), wide.end(), targets.begin());
  }
  if (holds_latents()) ops_.upload(a.targets, targets.data(), targets.size() * sizeof(int32_t));

  // This rank's inputs: embeddings, visibility, keys and values.
  if (!a.fused_embedding)
    for (int64_t b = 0; b < B; ++b)
      ops_.embedding_forward(a.h + b * Nl * d, a.tokens + b * cols, p_.embed, Nl, d);
  if (positions_) add_absolute_positions(windows, ctx.position_carry);
  const double cad = ctx.training ? ctx.cross_attend_dropout : 0.0;
  // Known here, on the host: a backend may then read the keys where they lie.
  every_key_kept_ = cad == 0;
  for (int64_t b = 0; b < B && every_key_kept_; ++b)
    for (int64_t j = 0; j < Nl; ++j)
      if (windows[b * cols + j] == kPadToken) {
        every_key_kept_ = false;
        break;
      }
  ops_.key_keep_mask(a.keep, a.tokens, B, Nl, cols, cad,
                     DropoutKey{ctx.seed, ctx.step, DropSite::kCrossAttend}, ctx.example_base,
                     pos0_);
  // The latents' embeddings (before the keys and values, which may overwrite h): on the
  // last rank; or, when they span several ranks, each contributes its rows of [M, d]
  // (zeros elsewhere) to a sum.
  // Without stored embeddings, the latents' rows are looked up again (the same numbers).
  auto latent_rows = [&](int64_t first, int64_t count) {
    const int64_t column = first + N - M - pos0_;  // this rank's column of latent `first`
    if (!a.fused_embedding) {
      ops_.copy_blocks(a.zin + first * d, M * d, a.h + column * d, Nl * d, B, count * d, false);
      return;
    }
    for (int64_t b = 0; b < B; ++b)
      ops_.embedding_forward(a.zin + (b * M + first) * d, a.tokens + b * cols + column,
                             p_.embed, count, d);
  };
  if (latents_split_) {
    ops_.fill(a.zin, BM * d, T(0));
    if (latent_count_ > 0) latent_rows(latent_first_, latent_count_);
    groups_.sp->all_reduce(a.zin, BM * d, ReduceOp::kSum);
  } else if (holds_latents()) {
    latent_rows(0, M);
  }
  keys_values_forward();
  const CrossRef<T>& cp = p_.cross;

  // The latent queries: z_linear of the latents' embeddings (on the last rank).
  if (holds_latents()) {
    cross_queries(ops_, cp, a.zin, BM, d, dc, a.z0, NormActs<T>{a.qn, a.qn_mu, a.qn_rs}, a.cq);
    ops_.rotary(a.cq, B, M, Hc, Dc, rot_cross_.bands, a.query_cos, a.query_sin, false);
  }
  if (sp_size_ > 1) groups_.sp->broadcast(a.cq, BM * dc, data_type_of<T>(), sp_size_ - 1);
  const AttentionShape cs = cross_attention_shape();
  if (a.bf16_kv)
    ops_.attention_forward_bf16_kv(cs, a.cq, a.ck16, a.cv16, a.catt, a.clse);
  else
    ops_.attention_forward(cs, a.cq, a.ck, a.cv, a.catt, a.clse);
  if (sp_size_ > 1) merge_attention();
  if (!holds_latents()) return LossSums{};

  // Output projection, residual (the un-normalized z0), MLP; then the latent layers.
  const LatentPass<T> pass = latent_pass();
  output_residual(pass, cp.attn.o, a.catt, dc, a.z0, a.x1, a.tmp, DropSite::kCrossAttn);
  mlp_block_forward(pass, cp.ln_mlp, cp.mlp, mlp_width_, a.mlp[0], a.x1, a.xs[0], a.tmp,
                    DropSite::kCrossMlp);
  const RotaryTables<T> rot = self_rotary();
  const AttentionShape shape = self_attention_shape();
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const AttentionActs<T>& at = a.attn[size_t(l)];
    latent_layer_forward(pass, p_.layers[size_t(l)], l, self_width_, mlp_width_, rot, shape,
                         at.k, at.v, at, a.mlp[size_t(1 + l)], a.xs[size_t(l)],
                         a.x_mid[size_t(l)], a.xs[size_t(l + 1)], a.tmp);
  }

  logits_forward(ops_, p_, a.xs[size_t(cfg_.num_layers)], BM, d, V,
                 NormActs<T>{a.lnf, a.lnf_mu, a.lnf_rs}, a.logits);
  ops_.cross_entropy_forward(a.ce, a.lse, a.logits, a.targets, BM, V);

  std::vector<T> ce(static_cast<size_t>(BM)), lse(static_cast<size_t>(BM));
  ops_.download(ce.data(), a.ce, ce.size() * sizeof(T));
  ops_.download(lse.data(), a.lse, lse.size() * sizeof(T));
  LossSums sums;
  for (int64_t r = 0; r < BM; ++r) {
    if (targets[size_t(r)] == kPadToken) continue;
    const double l = double(lse[size_t(r)]);
    sums.ce += double(ce[size_t(r)]);
    sums.objective += double(ce[size_t(r)]) + kZLoss * l * l;
    ++sums.valid;
  }
  return sums;
}

// Combines the sequence-parallel ranks' partial attention (each over its own keys) into
// the attention over all keys, on every rank of the group: the merge of the blocks of a
// flash-attention loop, with messages of [M, dc] whatever N is.
template <typename T>
void PerceiverAR<T>::merge_attention() {
  Acts& a = *a_;
  const int64_t B = batch_, M = cfg_.num_latents, Hc = cfg_.cross_heads / tp_size_;
  const int64_t Dc = cfg_.cross_head_dim(), stats = B * Hc * M;
  Communicator& sp = *groups_.sp;
  ops_.copy(a.lse_max, a.clse, stats);
  sp.all_reduce(a.lse_max, stats, ReduceOp::kMax);
  ops_.attention_merge_scale(a.catt, a.clse, a.lse_max, B, M, Hc, Dc);
  sp.all_reduce(a.clse, stats, ReduceOp::kSum);
  sp.all_reduce(a.catt, B * M * cross_width_, ReduceOp::kSum);
  ops_.attention_merge_finish(a.catt, a.clse, a.lse_max, B, M, Hc, Dc);
}

// The cross-attention: all M latent queries over this rank's inputs. Both position ranges
// are contiguous, which backends may use to plan the mask (core/ops.h).
template <typename T>
AttentionShape PerceiverAR<T>::cross_attention_shape() const {
  const int64_t M = cfg_.num_latents, Dc = cfg_.cross_head_dim();
  AttentionShape s{batch_,         M,          n_local_,  cfg_.cross_heads / tp_size_,
                   Dc,             a_->latent_pos, a_->pos, a_->keep,
                   1.0 / std::sqrt(double(Dc))};
  s.q_pos_first = cfg_.context_length - M;
  s.k_pos_first = pos0_;
  s.keeps_every_key = every_key_kept_;
  return s;
}

// The latent self-attention: causal over the latents' own positions.
template <typename T>
AttentionShape PerceiverAR<T>::self_attention_shape() const {
  const int64_t M = cfg_.num_latents, D = cfg_.self_head_dim();
  AttentionShape s{batch_, M, M, cfg_.self_heads / tp_size_, D, a_->latent_pos, a_->latent_pos,
                   nullptr, 1.0 / std::sqrt(double(D))};
  s.q_pos_first = s.k_pos_first = cfg_.context_length - M;
  return s;
}

template <typename T>
void PerceiverAR<T>::backward(double loss_scale) {
  PAR_ASSERT(batch_ > 0, "backward() without forward()");
  const int64_t M = cfg_.num_latents, d = cfg_.d_model, V = cfg_.vocab_size;
  const int64_t BM = batch_ * M, L = cfg_.num_layers;
  Acts& a = *a_;
  if (holds_latents()) {
    ops_.cross_entropy_backward(a.dlogits, a.logits, a.lse, a.targets, BM, V, loss_scale,
                                kZLoss);
    ops_.linear_backward(a.d_ln, false, g_.head.w, g_.head.b, a.dlogits, a.lnf, p_.head.w, BM,
                         d, V);
    ops_.layernorm_backward(a.dx, false, g_.final_ln.w, g_.final_ln.b, a.d_ln,
                            a.xs[size_t(L)], a.lnf_mu, a.lnf_rs, p_.final_ln.w, BM, d);
    const LatentPass<T> pass = latent_pass();
    const RotaryTables<T> rot = self_rotary();
    const AttentionShape shape = self_attention_shape();
    const BlockGradScratch<T> g = grad_scratch();
    for (int64_t l = L - 1; l >= 0; --l)
      latent_layer_backward(pass, p_.layers[size_t(l)], g_.layers[size_t(l)], l, self_width_,
                            mlp_width_, rot, shape, a.attn[size_t(l)], a.mlp[size_t(1 + l)],
                            a.xs[size_t(l)], a.x_mid[size_t(l)], a.dx, g);
    mlp_block_backward(pass, p_.cross.ln_mlp, p_.cross.mlp, g_.cross.ln_mlp, g_.cross.mlp,
                       mlp_width_, a.mlp[0], a.x1, a.dx, g, DropSite::kCrossMlp);
  }
  cross_attention_backward(a.dx);
}

template <typename T>
void PerceiverAR<T>::cross_attention_backward(T* dx) {
  // On entry (on the rank holding the latents) dx is the gradient of x1 = z0 + dropout(o);
  // it becomes the gradient of z0.
  const int64_t M = cfg_.num_latents, d = cfg_.d_model;
  const int64_t B = batch_, BM = B * M, Nl = n_local_, cols = window_columns();
  const int64_t Hc = cfg_.cross_heads / tp_size_, Dc = cfg_.cross_head_dim(), dc = cross_width_;
  const CrossRef<T>& cp = p_.cross;
  const CrossRef<T>& cg = g_.cross;
  Acts& a = *a_;
  if (holds_latents()) {
    const T* dy = latent_pass().undrop(dx, a.tmp, DropSite::kCrossAttn);
    ops_.linear_backward(a.datt, false, cg.attn.o.w, cg.attn.o.b, dy, a.catt, cp.attn.o.w, BM,
                         dc, d);
  }
  // Every sequence rank takes the attention output's gradient and the merged statistics
  // and computes the gradients of its own keys and values, and its part of the queries'.
  if (sp_size_ > 1) groups_.sp->broadcast(a.datt, BM * dc, data_type_of<T>(), sp_size_ - 1);
  const AttentionShape cs = cross_attention_shape();
  if (a.bf16_kv)
    ops_.attention_backward_bf16_kv(cs, a.cq, a.ck16, a.cv16, a.catt, a.datt, a.clse, a.dq,
                                    a.dck16, a.dcv16);
  else
    ops_.attention_backward(cs, a.cq, a.ck, a.cv, a.catt, a.datt, a.clse, a.dq, a.dck, a.dcv);
  if (sp_size_ > 1) groups_.sp->all_reduce(a.dq, BM * dc, ReduceOp::kSum);
  keys_values_backward();

  if (holds_latents()) {
    // Query side: back through W_q and LN_q into z0, then z_linear into the latents'
    // embeddings.
    ops_.rotary(a.dq, B, M, Hc, Dc, rot_cross_.bands, a.query_cos, a.query_sin, true);
    ops_.linear_backward(a.d_ln, false, cg.attn.q.w, cg.attn.q.b, a.dq, a.qn, cp.attn.q.w, BM, d,
                         dc);
    latent_pass().tp_sum(a.d_ln, BM * d);
    ops_.layernorm_backward(dx, true, cg.ln_q.w, cg.ln_q.b, a.d_ln, a.z0, a.qn_mu, a.qn_rs,
                            cp.ln_q.w, BM, d);
    ops_.linear_backward(a.tmp, false, cg.z_linear.w, cg.z_linear.b, dx, a.zin, cp.z_linear.w,
                         BM, d, d);
    // Identical on every tensor-parallel rank, and the embedding's gradient is summed over
    // the group: one rank adds it.
    if (tp_rank_ == 0 && !latents_split_)
      ops_.copy_blocks(a.dh + (Nl - M) * d, Nl * d, a.tmp, M * d, B, M * d, true);
  }
  if (latents_split_) {
    // The latents' embedding gradients go back to the ranks holding those inputs.
    groups_.sp->broadcast(a.tmp, BM * d, data_type_of<T>(), sp_size_ - 1);
    if (tp_rank_ == 0 && latent_count_ > 0)
      ops_.copy_blocks(a.dh + (latent_first_ + cfg_.context_length - M - pos0_) * d, Nl * d,
                       a.tmp + latent_first_ * d, M * d, B, latent_count_ * d, true);
  }
  for (int64_t b = 0; b < B; ++b)
    ops_.embedding_backward(g_.embed, a.tokens + b * cols, a.dh + b * Nl * d, Nl, d);
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
