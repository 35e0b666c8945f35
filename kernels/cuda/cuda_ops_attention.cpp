// CudaOps's attention: which path a call takes (cuDNN's flash attention, the one-query
// split kernel, or par's blocked kernels), the blocked path through the attention plan, and
// the merge of partial attention across sequence-parallel ranks.
#include <algorithm>
#include <string>

#include "core/error.h"
#include "kernels/cuda/cuda_ops_impl.h"

namespace par::cuda {

namespace {

// The attention plan's steps on the GPU.
struct CudaEngine {
  CudaOps& ops;

  static kern::ScoreBlockArgs args(const ScoreBlock& b) {
    return kern::ScoreBlockArgs{b.s, b.ld, b.heads, b.nq, b.keys, b.q_pos, b.k_pos, b.k_keep};
  }
  float* scratch(int slot, int64_t floats) {
    return static_cast<float*>(ops.scratch(slot, size_t(std::max<int64_t>(floats, 1)) * 4));
  }
  void gemm(const RowMajorGemm& g) { ops.gemm_row_major(g); }
  void zero(float* x, int64_t n) {
    if (n > 0) PAR_CUDA_CHECK(cudaMemsetAsync(x, 0, size_t(n) * sizeof(float), ops.stream()));
  }
  void fwd_init(float* run_max, float* run_sum, int64_t n) {
    kern::attn_fwd_init(ops.stream(), run_max, run_sum, n);
  }
  void fwd_block(const ScoreBlock& b, float* run_max, float* run_sum, float* acc,
                 int64_t ld_acc, int64_t head_dim) {
    kern::attn_fwd_block(ops.stream(), args(b), run_max, run_sum, acc, ld_acc, head_dim);
  }
  void fwd_finish(float* o, int64_t ld_o, float* lse, const float* run_max,
                  const float* run_sum, int64_t heads, int64_t nq, int64_t head_dim) {
    kern::attn_fwd_finish(ops.stream(), o, ld_o, lse, run_max, run_sum, heads, nq, head_dim);
  }
  void bwd_delta(float* delta, const float* o, const float* d_o, int64_t batch, int64_t nq,
                 int64_t heads, int64_t head_dim) {
    kern::attn_bwd_delta(ops.stream(), delta, o, d_o, batch, nq, heads, head_dim);
  }
  void bwd_probs(const ScoreBlock& b, const float* lse) {
    kern::attn_bwd_probs(ops.stream(), args(b), lse);
  }
  void bwd_dscores(float* dp, int64_t ld, const float* p, int64_t heads, int64_t nq,
                   int64_t keys, const float* delta) {
    kern::attn_bwd_dscores(ops.stream(), dp, ld, p, heads, nq, keys, delta);
  }
};

}  // namespace

CudnnAttention* CudaOps::cudnn_for(const AttentionShape& s, bool backward, bool kv_bf16) {
  const AttentionKernel k = attention_kernel_;
  if (k != AttentionKernel::kAuto && k != AttentionKernel::kCudnn) return nullptr;
  std::string why;
  if (precision_ != MatmulPrecision::kBF16) {
    if (k == AttentionKernel::kAuto) return nullptr;
    why = cat("cuDNN's flash attention computes in bf16, and the products are ",
              precision_name(precision_));
  } else {
    if (!cudnn_) {
      CudnnAttention::Blocked blocked;
      blocked.forward = [this](const AttentionShape& b, const float* q, const float* kk,
                               const float* v, float* o, float* lse) {
        blocked_forward(b, q, kk, v, o, lse);
      };
      blocked.backward = [this](const AttentionShape& b, const float* q, const float* kk,
                                const float* v, const float* o, const float* d_o,
                                const float* lse, float* dq, float* dk, float* dv) {
        blocked_backward(b, q, kk, v, o, d_o, lse, dq, dk, dv);
      };
      cudnn_ = std::make_unique<CudnnAttention>(
          stream_, device_, sm_major_,
          [this](int slot, size_t bytes) { return scratch(kCudnnFirst + slot, bytes); },
          std::move(blocked));
      cudnn_->set_deterministic_workspace_max(cudnn_deterministic_max_);
      if (cudnn_key_splits_ >= 0) cudnn_->set_key_splits(cudnn_key_splits_);
    }
    cudnn_->set_key_count_limit(k == AttentionKernel::kAuto);
    why = cudnn_->prepare(s, backward, kv_bf16);
    if (why.empty()) return cudnn_.get();
    if (k == AttentionKernel::kAuto) return nullptr;
    // A caller that cannot say its positions as ranges (a decoder's samples' own entries,
    // blocks with unfilled rows) is not the user's to mend: the blocked path runs it.
    if (s.q_pos_first == AttentionShape::kUnknownPosition ||
        s.k_pos_first == AttentionShape::kUnknownPosition)
      return nullptr;
  }
  throw std::runtime_error(cat("--attention cudnn: this attention ",
                               backward ? "backward" : "forward", " cannot run on cuDNN: ", why));
}

void CudaOps::blocked_forward(const AttentionShape& s, const float* q, const float* k,
                              const float* v, float* o, float* lse) {
  CudaEngine e{*this};
  attention_forward_plan(e, s, q, k, v, o, lse, key_block_);
}

void CudaOps::blocked_backward(const AttentionShape& s, const float* q, const float* k,
                               const float* v, const float* o, const float* d_o,
                               const float* lse, float* dq, float* dk, float* dv) {
  CudaEngine e{*this};
  attention_backward_plan(e, s, q, k, v, o, d_o, lse, dq, dk, dv, key_block_);
}

void CudaOps::attention_forward(const AttentionShape& s, const float* q, const float* k,
                                const float* v, float* o, float* lse) {
  use_device();
  // One query (a decoding step) over many keys, or a few over the same keys (several
  // samples' steps): split across the GPU. kBlocked keeps every call on its path (the
  // reference); kCudnn too but these (cuda_ops.h: a plan per token otherwise).
  if (split_attention_takes(s)) {
    float* part = decode_scratch(s);
    if (s.nq == 1)
      kern::attention_forward_decode(stream_, s, q, k, v, o, lse, decode_rounding(), part);
    else
      kern::attention_forward_decode_queries(stream_, s, q, k, v, o, lse, decode_rounding(), part);
    return;
  }
  if (CudnnAttention* c = cudnn_for(s, false)) {
    c->forward(s, q, k, v, o, lse);
    return;
  }
  if (attention_kernel_ == AttentionKernel::kFused && precision_ != MatmulPrecision::kFloat32 &&
      kern::fused_attention_covers(s.head_dim)) {
    kern::attention_forward_fused(stream_, s, q, k, v, o, lse,
                                  precision_ == MatmulPrecision::kBF16);
    return;
  }
  blocked_forward(s, q, k, v, o, lse);
}

void CudaOps::attention_backward(const AttentionShape& s, const float* q, const float* k,
                                 const float* v, const float* o, const float* d_o,
                                 const float* lse, float* dq, float* dk, float* dv) {
  use_device();
  if (CudnnAttention* c = cudnn_for(s, true)) {
    c->backward(s, q, k, v, o, d_o, lse, dq, dk, dv);
    return;
  }
  if (attention_kernel_ == AttentionKernel::kFused && precision_ != MatmulPrecision::kFloat32 &&
      kern::fused_attention_backward_covers(s.head_dim) && s.batch > 0 && s.nq > 0 &&
      s.heads > 0) {
    auto* delta = static_cast<float*>(
        scratch(kDelta, size_t(s.batch * s.heads * s.nq) * sizeof(float)));
    kern::attn_bwd_delta(stream_, delta, o, d_o, s.batch, s.nq, s.heads, s.head_dim);
    kern::attention_backward_fused(stream_, s, q, k, v, d_o, lse, delta, dq, dk, dv,
                                   precision_ == MatmulPrecision::kBF16);
    return;
  }
  blocked_backward(s, q, k, v, o, d_o, lse, dq, dk, dv);
}

std::string CudaOps::attention_description() {
  const char* one_query = attention_kernel_ != AttentionKernel::kBlocked
                              ? "; one query, or 2 to 16 over at least 1,024 keys (decoding "
                                "steps), split across the GPU"
                              : "";
  return attention_paths() + one_query;
}

std::string CudaOps::attention_paths() {
  switch (attention_kernel_) {
    case AttentionKernel::kBlocked: return "attention: par's blocked kernels (cuBLAS per key block)";
    case AttentionKernel::kFused:
      return "attention: par's fused WMMA kernels where they apply, blocked elsewhere";
    case AttentionKernel::kAuto:
    case AttentionKernel::kCudnn: break;
  }
  if (precision_ != MatmulPrecision::kBF16)
    return cat("attention: par's blocked kernels (cuDNN's flash attention is for --precision "
               "bf16, not ", precision_name(precision_), ")");
  const CudnnApi* api = cudnn_api();
  if (!api) return "attention: par's blocked kernels (" + cudnn_unavailable_reason() + ")";
  return cat("attention: cuDNN ", api->version_string(), " flash attention (", api->path, ")",
             attention_kernel_ == AttentionKernel::kAuto
                 ? ", par's blocked kernels where cuDNN does not apply or a kind of call "
                   "comes with ever new key counts (a plan each)"
                 : ", for every call");
}

void CudaOps::attention_merge_scale(float* o, float* lse, const float* lse_max, int64_t batch,
                                    int64_t nq, int64_t heads, int64_t head_dim) {
  use_device();
  kern::attention_merge_scale(stream_, o, lse, lse_max, batch, nq, heads, head_dim);
}

void CudaOps::attention_merge_finish(float* o, float* lse, const float* lse_max, int64_t batch,
                                     int64_t nq, int64_t heads, int64_t head_dim) {
  use_device();
  kern::attention_merge_finish(stream_, o, lse, lse_max, batch, nq, heads, head_dim);
}

void CudaOps::attention_merge_pair(float* o, float* lse, int64_t batch, int64_t nq,
                                   const float* o2, const float* lse2, int64_t batch2,
                                   int64_t nq2, int64_t heads, int64_t head_dim) {
  PAR_ASSERT(batch * nq == batch2 * nq2, "attention_merge_pair: ", batch, "x", nq, " rows vs ",
             batch2, "x", nq2);
  use_device();
  kern::attention_merge_pair(stream_, o, lse, batch, nq, o2, lse2, nq2, heads, head_dim);
}

}  // namespace par::cuda
