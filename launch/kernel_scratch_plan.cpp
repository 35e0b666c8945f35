#include "launch/kernel_scratch_plan.h"

#include <algorithm>
#include <tuple>

#include "core/param_layout.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/linear_paired.h"
#include "kernels/cpu/linear_tall.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/attention_segments.h"
#include "kernels/cuda/cudnn_key_splits.h"
#include "kernels/cuda/gemm_mapping.h"
#include "kernels/cuda/reduction_sizes.h"

namespace par {

namespace {

// The kernels size their calls in int64 elements. A micro-batch whose activations on this
// rank pass 2^44 elements (64 TiB in float32: the inputs' N/sp rows and the latents' widest,
// the MLP's and the fused projections') is past any machine, and they alone refuse it
// (planned in double: PerceiverAR::memory); its scratch is not sized (0), so that no count
// of a refused --batch-size or --num-samples wraps around.
bool sizable(const PlanRequest& r) {
  const ModelConfig& c = r.model;
  const double d = double(c.d_model), F = double(c.mlp_width());
  const double per_example =
      double(c.context_length / r.sp) * d + double(c.num_latents) * (3 * d + F);
  return double(r.micro_batch) * per_example <= 0x1p44;
}

}  // namespace

// What the CPU kernels keep in the backend's Workspace (kernels/cpu/workspace.h) over a
// training step, sized by the kernels' own functions for the calls the model makes: for
// each slot (grow-only) its largest call, for every thread that may work on it.
double cpu_kernel_scratch(const PlanRequest& r) {
  if (!sizable(r)) return 0;
  const ModelConfig& c = r.model;
  const int64_t B = r.micro_batch, M = c.num_latents, n_local = c.context_length / r.sp;
  // Linear layers: the k/v projections of the cross-attention run over this rank's N/sp
  // inputs, every other layer over the M latents. Tall ones keep every thread's partial
  // weight gradients, the others per-thread bias sums. One layer's matrices stand for all
  // layers: they have the same shapes.
  ModelConfig one = c;
  one.num_layers = std::min<int64_t>(one.num_layers, 1);
  double tall = 0, paired = 0;
  const ParamLayout layout(one, 0, r.tp);
  for (const ParamInfo& p : layout.params()) {
    if (p.shape.size() != 2 || p.kind == ParamKind::kEmbedding) continue;
    const bool over_inputs = p.name == "cross.attn.k.weight" || p.name == "cross.attn.v.weight";
    const double rows = double(B) * double(over_inputs ? n_local : M);
    const double in = double(p.shape[1]), out = double(p.shape[0]);
    if (cpu::is_tall_linear(rows, in, out))
      tall = std::max(tall, cpu::tall_linear_scratch_bytes<float>(rows, in, out, r.threads));
    else
      paired = std::max(paired, cpu::paired_linear_scratch_bytes(out));
  }
  // Attention: the cross-attention's latent queries over this rank's inputs, and the latents'
  // self-attention.
  auto shape = [&](int64_t nk, int64_t heads, int64_t head_dim) {
    AttentionShape s;
    s.batch = B;
    s.nq = M;
    s.nk = nk;
    s.heads = heads / r.tp;
    s.head_dim = head_dim;
    return s;
  };
  const cpu::AttentionScratch cross =
      cpu::attention_scratch_bytes<float>(shape(n_local, c.cross_heads, c.cross_head_dim()));
  const cpu::AttentionScratch self =
      cpu::attention_scratch_bytes<float>(shape(M, c.self_heads, c.self_head_dim()));
  // Forward passes alone take the attention's buffers (the larger of its forward and
  // backward ones: a bound); the linear layers' and LayerNorm's scratch is the backward's.
  if (!r.training)
    return std::max(cross.kept, self.kept) +
           double(r.threads) * std::max(cross.per_thread, self.per_thread);
  const double per_thread = paired + std::max(cross.per_thread, self.per_thread) +
                            cpu::layernorm_backward_scratch_bytes<float>(c.d_model);
  return tall + std::max(cross.kept, self.kept) + double(r.threads) * per_thread;
}

// The blocked attention of the CUDA backend (kernels/cuda/attention_plan.h) asks its
// scratch slots for [heads, nq, key block] scores (forward), the same again for their
// gradient (backward, where training), and per-(example, head, query) statistics; the backend adds 1/8
// for headroom. Slots are shared by the cross- and the self-attention: the larger counts.
double cuda_attention_scratch(const PlanRequest& r) {
  if (!sizable(r)) return 0;
  const ModelConfig& c = r.model;
  const int64_t M = c.num_latents, B = r.micro_batch;
  double scores = 0, stats = 0;
  for (const auto& [heads, keys] : {std::pair<int64_t, int64_t>{c.cross_heads / r.tp,
                                                                 c.context_length / r.sp},
                                    std::pair<int64_t, int64_t>{c.self_heads / r.tp, M}}) {
    const int64_t block = cuda::attention_key_block(heads, M, keys, 0);
    scores = std::max(scores, double(heads) * double(M) * double(block));
    stats = std::max(stats, double(B) * double(heads) * double(M));
  }
  // The scores' gradient only where there is a backward.
  double bytes = (r.training ? 2 : 1) * scores + stats +
                 2 * double(std::max(c.cross_heads, c.self_heads)) * double(M);
  bytes *= sizeof(float);
  // The cuDNN path's own copies (bf16 operands, the gathered keys) for the cross-attention,
  // the larger of its two calls, where it may run.
  if (r.cudnn_attention) {
    const int64_t nk = c.context_length / r.sp, heads = c.cross_heads / r.tp;
    const int64_t splits =
        cuda::forward_key_split(0, B, heads, M, nk, nk, cuda::kPlanSmCount).splits;
    bytes += cuda::cudnn_attention_scratch_bytes(B, M, nk, heads, c.cross_head_dim(), splits);
    // The backwards' own workspaces, the cross- and the self-attention's (one may take the
    // deterministic kernels' workspace, the other dQ's accumulator: both held).
    if (r.training) {
      bytes += cuda::cudnn_backward_workspace_bytes(B, M, c.context_length / r.sp,
                                                    c.cross_heads / r.tp, c.cross_head_dim());
      bytes += cuda::cudnn_backward_workspace_bytes(B, M, M, c.self_heads / r.tp,
                                                    c.self_head_dim());
    }
  }
  return bytes * 9 / 8;
}

// The bfloat16 copies of the operands of the products that convert them in bf16
// (kernels/cuda/gemm_mapping.h, bf16_linear_copies): two scratch slots, each as large as
// the largest copy of the model's linear layers, plus the backend's 1/8 of headroom.
double cuda_bf16_copies(const PlanRequest& r) {
  if (!sizable(r)) return 0;
  const ModelConfig& c = r.model;
  const int64_t B = r.micro_batch, d = c.d_model, M = c.num_latents, F = c.mlp_width();
  const int64_t inputs = B * (c.context_length / r.sp), latents = B * M;
  int64_t a = 0, b = 0;
  for (const auto& [rows, in, out] :
       {std::tuple<int64_t, int64_t, int64_t>{inputs, d, d / r.tp},  // keys, values
        {latents, d, d}, {latents, d / r.tp, d}, {latents, d, 3 * d / r.tp},
        {latents, d, F / r.tp}, {latents, F / r.tp, d}}) {
    cuda::Bf16LinearCopies copies = cuda::bf16_linear_copies(rows, in, out);
    // Stored in bfloat16, the projections' input and output gradient are their own
    // compact copies: only the weights are converted.
    if (r.kv_bf16 && rows == inputs && copies.b > 0) copies = {0, out * in};
    a = std::max(a, copies.a);
    b = std::max(b, copies.b);
  }
  return double(a + b) * 2 * 9 / 8;
}

// Where the input side's bfloat16 tensors (--kv-storage) meet a float32 path, the CUDA
// backend widens them into one scratch slot (kernels/cuda/cuda_ops_bf16.cpp): the
// attention's backward off cuDNN widens the keys and values and takes float32 gradients
// (4 [B, N/sp, d/tp] tensors); the key and value projections, where their products do not
// run on bfloat16 operands, widen LN_kv's output ([B, N/sp, d]) and, backward, the output
// gradient too. 0 where cuDNN and cuBLAS read bfloat16 as it is. With the backend's 1/8
// of headroom.
double cuda_widened_keys_values(const PlanRequest& r) {
  if (!r.kv_bf16) return 0;
  const ModelConfig& c = r.model;
  const double rows = double(r.micro_batch) * double(c.context_length / r.sp);
  const double in = double(c.d_model), out = double(c.d_model / r.tp);
  double elements = r.cudnn_attention ? 0 : 4 * rows * out;
  const bool products_bf16 =
      r.bf16_products &&
      cuda::bf16_operands_pay(2 * rows * in * out, rows * out + out * in + rows * in);
  if (!products_bf16) elements = std::max(elements, rows * (in + out));
  return elements * sizeof(float) * 9 / 8;
}

// The reductions' scratch of the backward (kernels/cuda/reduction_sizes.h), for the input
// side's B N/sp rows, the largest calls: the embedding backward's (with a bound for CUB's
// sort, which holds a second copy of its int32 keys and values), the LayerNorm backward's
// partial sums and the bias gradients' column partials (the keys' and values' projections,
// d/tp wide); and cuBLAS's workspace. With the backend's 1/8 of headroom on the scratch.
double cuda_reduction_scratch(const PlanRequest& r) {
  if (!sizable(r)) return 0;
  const ModelConfig& c = r.model;
  const int64_t rows = r.micro_batch * (c.context_length / r.sp), d = c.d_model;
  const double cub_sort = 16.0 * double(rows) + double(int64_t(1) << 20);
  const double embedding = double(cuda::kern::embedding_scratch_without_cub(rows, d)) + cub_sort;
  const double norm = 4.0 * double(cuda::kern::layernorm_backward_partial_floats(rows, d));
  const double columns = 4.0 * double(cuda::kern::column_sums_partial_floats(rows, d / r.tp));
  return (embedding + norm + columns) * 9 / 8 + double(cuda::kCublasWorkspaceBytes);
}

}  // namespace par
