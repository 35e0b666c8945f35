// The input side of PerceiverAR (core/model.h): this rank's embeddings, LN_kv, the keys'
// and values' projections, and their backward, in float storage or in bfloat16
// (KeyValueStorage). The rest of the model is in model.cpp.
#include <vector>

#include "core/absolute_positions.h"
#include "core/blocks.h"
#include "core/constants.h"
#include "core/error.h"
#include "core/model.h"
#include "core/model_acts.h"

namespace par {

// h += P[p] for this rank's inputs (spec/MODEL.md section 13), p their document positions;
// the gathered rows of P in Acts::position_scratch, free until LN_kv writes it.
template <typename T>
void PerceiverAR<T>::add_absolute_positions(const int32_t* windows, const int64_t* carry) {
  const int64_t B = batch_, Nl = n_local_, cols = window_columns();
  PAR_ASSERT(carry || pos0_ == 0, "absolute positions on sequence rank ", sp_rank_,
             " need the carry of its first column");
  std::vector<int32_t> pos(size_t(B * Nl));
  for (int64_t b = 0; b < B; ++b)
    document_positions(windows + b * cols, Nl, carry ? carry[b] : 0, pos.data() + b * Nl);
  positions_->add(a_->h, pos.data(), B * Nl, a_->doc_pos, a_->position_scratch);
}

// The embeddings of this rank's inputs again (the forward's, to the same bits), absolute
// positions added from the ids the forward uploaded, with [B, Nl, d] of scratch for them.
template <typename T>
void PerceiverAR<T>::gather_inputs(T* into, T* scratch) {
  const int64_t B = batch_, Nl = n_local_, d = cfg_.d_model, cols = window_columns();
  for (int64_t b = 0; b < B; ++b)
    ops_.embedding_forward(into + b * Nl * d, a_->tokens + b * cols, p_.embed, Nl, d);
  if (positions_) positions_->add_uploaded(into, B * Nl, a_->doc_pos, scratch);
}

// This rank's inputs: LN_kv of their embeddings (h, in a.h), projected to keys (rotated)
// and values.
template <typename T>
void PerceiverAR<T>::keys_values_forward() {
  const int64_t d = cfg_.d_model, B = batch_, Nl = n_local_, BN = B * Nl;
  const int64_t Hc = cfg_.cross_heads / tp_size_, Dc = cfg_.cross_head_dim(), dc = cross_width_;
  const CrossRef<T>& cp = p_.cross;
  Acts& a = *a_;
  if (!a.bf16_kv) {
    cross_keys_values(ops_, cp, a.h, BN, d, dc, NormActs<T>{a.kvn, a.kv_mu, a.kv_rs}, a.ck,
                      a.cv);
    ops_.rotary(a.ck, B, Nl, Hc, Dc, rot_cross_.bands, a.key_cos, a.key_sin, false);
    return;
  }
  // LN_kv's output in bfloat16 (the projections' operand, which bf16 products round to
  // that anyway); the keys' projection in T (in h's place, read by LN_kv), then rotated and
  // rounded into their bfloat16 home (Acts::carve_bf16_inputs); the values' rounded as the
  // product stores them (on CUDA, in cuBLASLt's epilogue; elsewhere through the same T
  // buffer).
  uint16_t* kvn = a.kvn16;
  if (a.fused_embedding)
    ops_.embedding_layernorm_forward_bf16(kvn, a.kv_mu, a.kv_rs, a.tokens, B, Nl,
                                          window_columns(), p_.embed, cp.ln_kv.w, cp.ln_kv.b, d,
                                          kLayerNormEps);
  else
    ops_.layernorm_forward_bf16(kvn, a.kv_mu, a.kv_rs, a.h, cp.ln_kv.w, cp.ln_kv.b, BN, d,
                                kLayerNormEps);
  T* projection = a.projection;
  ops_.linear_forward_bf16_x(projection, kvn, cp.attn.k.w, cp.attn.k.b, BN, d, dc);
  ops_.rotary_to_bf16(a.ck16, projection, B, Nl, Hc, Dc, rot_cross_.bands, a.key_cos,
                      a.key_sin);
  ops_.linear_forward_to_bf16(a.cv16, projection, kvn, cp.attn.v.w, cp.attn.v.b, BN, d, dc);
}

// From the gradients of this rank's keys and values (dck, dcv) back through W_k, W_v and
// LN_kv to those of the embeddings (dh, which the caller completes and scatters). Under
// tensor parallelism each rank's dkvn covers only its heads; the sum over the group is not
// taken here (it would be a message of N/sp x d) but in the gradients of the embedding and
// LN_kv, which are linear in it (ParamInfo::grad_summed_over_tp).
template <typename T>
void PerceiverAR<T>::keys_values_backward() {
  const int64_t d = cfg_.d_model, B = batch_, Nl = n_local_, BN = B * Nl;
  const int64_t Hc = cfg_.cross_heads / tp_size_, Dc = cfg_.cross_head_dim(), dc = cross_width_;
  const CrossRef<T>& cp = p_.cross;
  const CrossRef<T>& cg = g_.cross;
  Acts& a = *a_;
  if (a.fused_embedding) {
    // The regions' turns of Acts::carve_bf16_inputs: A (the gradients, then dh), B (kvn,
    // as the forward left it), C (dkvn).
    const int64_t cols = window_columns();
    ops_.rotary_bf16(a.dck16, B, Nl, Hc, Dc, rot_cross_.bands, a.key_cos, a.key_sin, true);
    ops_.linear_backward_bf16(a.dkvn, false, cg.attn.k.w, cg.attn.k.b, a.dck16, a.kvn16,
                              cp.attn.k.w, BN, d, dc);
    ops_.linear_backward_bf16(a.dkvn, true, cg.attn.v.w, cg.attn.v.b, a.dcv16, a.kvn16,
                              cp.attn.v.w, BN, d, dc);
    ops_.embedding_layernorm_backward(a.dh, cg.ln_kv.w, cg.ln_kv.b, a.dkvn, a.tokens, B, Nl,
                                      cols, p_.embed, a.kv_mu, a.kv_rs, cp.ln_kv.w, d);
    return;
  }
  if (a.bf16_kv) {
    // The regions' turns of Acts::carve_bf16_inputs: A = a.h (the gradients, then dh),
    // B = a.kvn, C = a.region_c.
    ops_.rotary_bf16(a.dck16, B, Nl, Hc, Dc, rot_cross_.bands, a.key_cos, a.key_sin, true);
    gather_inputs(a.kvn, a.region_c);
    uint16_t* kvn = bf16_view(a.region_c);
    ops_.layernorm_forward_bf16(kvn, a.kv_mu, a.kv_rs, a.kvn, cp.ln_kv.w, cp.ln_kv.b, BN, d,
                                kLayerNormEps);
    ops_.linear_backward_bf16(a.dkvn, false, cg.attn.k.w, cg.attn.k.b, a.dck16, kvn,
                              cp.attn.k.w, BN, d, dc);
    ops_.linear_backward_bf16(a.dkvn, true, cg.attn.v.w, cg.attn.v.b, a.dcv16, kvn,
                              cp.attn.v.w, BN, d, dc);
    gather_inputs(a.region_c, a.h);
    ops_.layernorm_backward(a.dh, false, cg.ln_kv.w, cg.ln_kv.b, a.dkvn, a.region_c, a.kv_mu,
                            a.kv_rs, cp.ln_kv.w, BN, d);
    return;
  }
  ops_.rotary(a.dck, B, Nl, Hc, Dc, rot_cross_.bands, a.key_cos, a.key_sin, true);
  // LN_kv's output, the projections' input: computed again from the embeddings (gathered
  // into the values' place, the keys' as scratch) into the keys' place.
  T* kvn = a.recompute_kvn ? a.ck : a.kvn;
  if (a.recompute_kvn) {
    gather_inputs(a.cv, a.ck);
    ops_.layernorm_forward(kvn, a.kv_mu, a.kv_rs, a.cv, cp.ln_kv.w, cp.ln_kv.b, BN, d,
                           kLayerNormEps);
  }
  ops_.linear_backward(a.dkvn, false, cg.attn.k.w, cg.attn.k.b, a.dck, kvn, cp.attn.k.w, BN, d,
                       dc);
  ops_.linear_backward(a.dkvn, true, cg.attn.v.w, cg.attn.v.b, a.dcv, kvn, cp.attn.v.w, BN, d,
                       dc);
  // LN_kv's input h: where the keys and values took its place, gathered again (as the
  // forward did, to the same bits) into LN_kv's output, which the projections' backward
  // read last (the values' gradient, also read last, as scratch).
  const T* h = a.h;
  if (a.h == a.ck) {
    gather_inputs(kvn, a.recompute_kvn ? a.dcv : a.dh);
    h = kvn;
  }
  ops_.layernorm_backward(a.dh, false, cg.ln_kv.w, cg.ln_kv.b, a.dkvn, h, a.kv_mu, a.kv_rs,
                          cp.ln_kv.w, BN, d);
}

#define PAR_MODEL_INPUTS(T)                                                              \
  template void PerceiverAR<T>::add_absolute_positions(const int32_t*, const int64_t*); \
  template void PerceiverAR<T>::gather_inputs(T*, T*);                                   \
  template void PerceiverAR<T>::keys_values_forward();                                   \
  template void PerceiverAR<T>::keys_values_backward();
PAR_MODEL_INPUTS(float)
PAR_MODEL_INPUTS(double)
#undef PAR_MODEL_INPUTS

}  // namespace par
