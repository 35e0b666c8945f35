#include "launch/memory_plan.h"

#include <algorithm>
#include <tuple>

#include "core/error.h"
#include "core/model.h"
#include "core/param_layout.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/linear_paired.h"
#include "kernels/cpu/linear_tall.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/attention_segments.h"
#include "kernels/cuda/cudnn_key_splits.h"
#include "kernels/cuda/gemm_mapping.h"
#include "kernels/cuda/reduction_sizes.h"
#include "launch/host_memory.h"

namespace par {

namespace {

double sum(const std::vector<MemoryItem>& items) {
  double s = 0;
  for (const auto& i : items) s += i.bytes;
  return s;
}

// What the CPU kernels keep in the backend's Workspace (kernels/cpu/workspace.h) over a
// training step, sized by the kernels' own functions for the calls the model makes: for
// each slot (grow-only) its largest call, for every thread that may work on it.
double cpu_kernel_scratch(const PlanRequest& r) {
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
  const ModelConfig& c = r.model;
  const int64_t B = r.micro_batch, d = c.d_model, M = c.num_latents, F = c.mlp_width();
  const int64_t inputs = B * c.context_length / r.sp, latents = B * M;
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
      r.bf16_products && cuda::bf16_operands_pay(int64_t(2 * rows * in * out),
                                                 int64_t(rows * out + out * in + rows * in));
  if (!products_bf16) elements = std::max(elements, rows * (in + out));
  return elements * sizeof(float) * 9 / 8;
}

// The reductions' scratch of the backward (kernels/cuda/reduction_sizes.h), for the input
// side's B N/sp rows, the largest calls: the embedding backward's (with a bound for CUB's
// sort, which holds a second copy of its int32 keys and values), the LayerNorm backward's
// partial sums and the bias gradients' column partials (the keys' and values' projections,
// d/tp wide); and cuBLAS's workspace. With the backend's 1/8 of headroom on the scratch.
double cuda_reduction_scratch(const PlanRequest& r) {
  const ModelConfig& c = r.model;
  const int64_t rows = r.micro_batch * (c.context_length / r.sp), d = c.d_model;
  const double cub_sort = 16.0 * double(rows) + double(int64_t(1) << 20);
  const double embedding = double(cuda::kern::embedding_scratch_without_cub(rows, d)) + cub_sort;
  const double norm = 4.0 * double(cuda::kern::layernorm_backward_partial_floats(rows, d));
  const double columns = 4.0 * double(cuda::kern::column_sums_partial_floats(rows, d / r.tp));
  return (embedding + norm + columns) * 9 / 8 + double(cuda::kCublasWorkspaceBytes);
}

}  // namespace

double MemoryPlan::host_bytes() const { return sum(host); }
double MemoryPlan::device_bytes() const { return sum(device); }

std::string MemoryPlan::summary(const std::vector<MemoryItem>& items) {
  std::string parts;
  for (const auto& i : items)
    if (i.bytes > 0) parts += cat(parts.empty() ? "" : ", ", i.what, " ", format_bytes(i.bytes));
  return cat(format_bytes(sum(items)), " (", parts, ")");
}

bool plans_cudnn_attention(bool cuda, const std::string& precision, const std::string& attention) {
  return cuda && precision == "bf16" && (attention == "auto" || attention == "cudnn");
}

PlanRequest plan_request(const ModelConfig& model, const RunConfig& run, bool cuda) {
  PlanRequest r;
  r.model = model;
  r.micro_batch = run.micro_batch() / run.dp;
  r.accum_steps = run.accum_steps;
  r.sp = run.sp;
  r.tp = run.tp;
  r.threads = current_threads();
  r.cuda = cuda;
  r.bf16_products = cuda && run.precision == "bf16";
  r.cudnn_attention = plans_cudnn_attention(cuda, run.precision, run.attention);
  r.kv_bf16 = run.key_value_storage(model) == KeyValueStorage::kBf16;
  r.runtime_bytes = double(resident_bytes());
  return r;
}

MemoryPlan plan_memory(const PlanRequest& r) {
  const ModelMemory m = PerceiverAR<float>::memory(
      r.model, r.micro_batch, r.sp, r.tp,
      r.kv_bf16 ? KeyValueStorage::kBf16 : KeyValueStorage::kNative);
  MemoryPlan plan;
  std::vector<MemoryItem>& state = r.cuda ? plan.device : plan.host;
  plan.host.push_back({"runtime", r.runtime_bytes});
  state.push_back({"parameters and gradients", 2 * m.params});
  if (r.training) state.push_back({"Adam moments", 2 * m.params});
  state.push_back({cat("activations of ", r.micro_batch, " example(s)"), m.activations});
  if (r.cuda)
    plan.device.push_back({"attention scratch", cuda_attention_scratch(r)});
  if (r.bf16_products) plan.device.push_back({"bf16 operand copies", cuda_bf16_copies(r)});
  if (r.cuda && r.kv_bf16)
    plan.device.push_back({"widened keys and values", cuda_widened_keys_values(r)});
  if (r.cuda && r.training)
    plan.device.push_back({"reduction scratch", cuda_reduction_scratch(r)});
  if (r.cuda && !r.training)
    plan.device.push_back({"cuBLAS workspace", double(cuda::kCublasWorkspaceBytes)});
  // The CPU kernels' scratch only where they run (a GPU run's kernels take device scratch).
  if (!r.cuda) plan.host.push_back({"kernel scratch", cpu_kernel_scratch(r)});
  if (r.checkpoints) plan.host.push_back({"checkpoint copies", 3 * m.params});
  if (r.data_bytes > 0) plan.host.push_back({"data batches", r.data_bytes});
  if (r.gemm_n > 0) {
    // Its three matrices, and in bf16 the bfloat16 copies of its two operands where the
    // backend makes them (on a GPU the yardstick has a backend of its own, which keeps them).
    const int64_t n = r.gemm_n;
    const bool copies = r.bf16_products && cuda::bf16_operands_pay(n * n * n, 2 * n * n);
    state.push_back({"sgemm yardstick", 3 * double(n) * double(n) * sizeof(float) +
                                            (copies ? 2 * double(n) * double(n) * 2 * 9 / 8 : 0)});
  }
  return plan;
}

MemoryBudget memory_budget(int local_ranks, int64_t device_free, int gpus) {
  MemoryBudget b;
  b.local_ranks = std::max(1, local_ranks);
  b.gpus = std::max(1, gpus);
  b.device_free = double(device_free);
  const int ranks_per_device = (b.local_ranks + b.gpus - 1) / b.gpus;
  const double ranks = b.local_ranks;
  const CgroupLimit cg = cgroup_memory_limit();
  const double physical = double(physical_memory_bytes());
  const std::string shared = local_ranks > 1 ? cat(" shared by ", local_ranks, " ranks on this node") : "";
  if (cg.bytes > 0 && double(cg.bytes) < physical) {
    b.host = double(cg.bytes) / ranks;
    b.host_source = cat("the cgroup limit ", format_bytes(double(cg.bytes)), " (", cg.file, ")", shared);
  } else {
    b.host = physical / ranks;
    b.host_source = cat("the physical memory ", format_bytes(physical), shared);
  }
  if (device_free >= 0) {
    b.device = double(device_free) / ranks_per_device;
    b.device_source = cat("the GPU's free memory ", format_bytes(double(device_free)),
                          ranks_per_device > 1 ? cat(" shared by ", ranks_per_device, " ranks") : "");
  }
  return b;
}

std::string describe(const MemoryPlan& plan, const MemoryBudget& b) {
  std::string s = cat("host ", MemoryPlan::summary(plan.host), " of ",
                      b.host > 0 ? cat(format_bytes(b.host), ": ", b.host_source) : "unknown");
  if (!plan.device.empty() && b.device_unchecked)
    s += cat("\ndevice ", MemoryPlan::summary(plan.device), ", not checked: ", b.device_source);
  else if (!plan.device.empty())
    s += cat("\ndevice ", MemoryPlan::summary(plan.device), " of ", format_bytes(b.device), ": ",
             b.device_source);
  return s;
}

MemoryBudget memory_budget(Backend& backend, int local_ranks) {
  const int gpus = backend.cuda ? std::max(1, cuda_device_count()) : 1;
  return memory_budget(local_ranks, device_free_bytes(backend), gpus);
}

namespace {

bool fits(const PlanRequest& r, const MemoryBudget& b) {
  const MemoryPlan p = plan_memory(r);
  return (b.host <= 0 || p.host_bytes() <= b.host) &&
         (!r.cuda || b.device_unchecked || p.device_bytes() <= b.device);
}

// What would fit instead: a smaller micro-batch, or the same run spread over more ranks.
std::string advice(const PlanRequest& r, const RunShape& shape, const MemoryBudget& b) {
  std::vector<std::string> ways;
  PlanRequest t = r;
  // The largest micro-batch per replica that fits (the plan grows with it).
  int64_t lo = 0, hi = r.micro_batch;
  while (hi - lo > 1) {
    t.micro_batch = lo + (hi - lo) / 2;
    (fits(t, b) ? lo : hi) = t.micro_batch;
  }
  if (lo >= 1) {
    // Keep the batch, in more micro-batches, when one divides it; else a smaller batch.
    int64_t micro = lo;
    while (micro > 1 && shape.batch_size % (micro * shape.dp) != 0) --micro;
    if (shape.batch_size % (micro * shape.dp) == 0 && micro * shape.dp < shape.batch_size)
      ways.push_back(cat("--accum-steps ", shape.batch_size / (micro * shape.dp),
                         " (the same batch in micro-batches of ", micro * shape.dp, ")"));
    else
      ways.push_back(cat("--batch-size ", lo * shape.dp * shape.accum_steps));
  }
  // More ranks: the same node's memory shared by more of them, or as much each on more
  // nodes (ranks on one node share its memory; budgets are per rank).
  auto spread = [&](const char* option, int value, int factor, const PlanRequest& t) {
    MemoryBudget shared = b;
    shared.host = b.host / factor;
    // The node's GPUs, shared round-robin by all its ranks.
    if (t.cuda && b.device_free >= 0) {
      const int local = b.local_ranks * factor;
      shared.device = b.device_free / double((local + b.gpus - 1) / b.gpus);
    }
    const int ranks = shape.dp * t.sp * t.tp;
    if (fits(t, shared)) {
      ways.push_back(cat(option, " ", value, " (", ranks, " ranks, on the nodes this job has)"));
      return true;
    }
    if (!fits(t, b)) return false;
    ways.push_back(cat(option, " ", value, " (", ranks, " ranks, on ", factor,
                       " times the nodes this job has: ranks on one node share its memory)"));
    return true;
  };
  t = r;
  for (int sp = r.sp * 2; sp <= r.sp * 64 && r.model.context_length % sp == 0; sp *= 2) {
    t.sp = sp;
    if (spread("--sp", sp, sp / r.sp, t)) break;
  }
  t = r;
  for (int tp = r.tp * 2; r.model.cross_heads % tp == 0 && r.model.self_heads % tp == 0; tp *= 2) {
    t.tp = tp;
    if (spread("--tp", tp, tp / r.tp, t)) break;
  }
  if (ways.empty())
    return "neither a micro-batch of one example nor more --sp or --tp would fit: a smaller "
           "model (--d-model, --num-layers, --context-length) or a machine with more memory";
  std::string s = "would fit: ";
  for (size_t i = 0; i < ways.size(); ++i) s += cat(i ? ", or " : "", ways[i]);
  return s;
}

}  // namespace

void require_fits(const PlanRequest& r, const RunShape& shape, const MemoryBudget& b) {
  const MemoryPlan p = plan_memory(r);
  if (b.host > 0 && p.host_bytes() > b.host)
    fail_user("not enough memory: each rank needs an estimated ", MemoryPlan::summary(p.host),
              " of host memory, but may have ", format_bytes(b.host), ", ", b.host_source, "; ",
              advice(r, shape, b));
  if (r.cuda && !b.device_unchecked && p.device_bytes() > b.device)
    fail_user("not enough GPU memory: each rank needs an estimated ", MemoryPlan::summary(p.device),
              " on its GPU, but may have ", format_bytes(b.device), ", ", b.device_source, "; ",
              advice(r, shape, b));
}

void require_model_fits(const PlanRequest& r, Backend& backend, const std::string& batch_option) {
  const MemoryBudget b = memory_budget(backend, 1);
  const bool device = backend.cuda && b.device_free >= 0;
  enum Short { kFits, kHost, kDevice };
  auto short_of = [&](const PlanRequest& t) {
    const MemoryPlan p = plan_memory(t);
    if (b.host > 0 && p.host_bytes() > b.host) return kHost;
    if (device && p.device_bytes() > b.device) return kDevice;
    return kFits;
  };
  const Short shortage = short_of(r);
  if (shortage == kFits) return;
  // The largest batch that fits (the plan grows with it), if one example does: on a GPU
  // the host side does not grow with the batch, and no smaller one helps it.
  std::string advice = "the model itself does not fit this process";
  PlanRequest t = r;
  t.micro_batch = 1;
  if (r.micro_batch > 1 && short_of(t) == kFits) {
    int64_t lo = 1, hi = r.micro_batch;
    while (hi - lo > 1) {
      t.micro_batch = lo + (hi - lo) / 2;
      (short_of(t) == kFits ? lo : hi) = t.micro_batch;
    }
    advice = cat("at most ", batch_option, " ", lo, " would fit");
  }
  const MemoryPlan p = plan_memory(r);
  const bool host = shortage == kHost;
  fail_user("not enough ", host ? "" : "GPU ", "memory: the model and the activations of ",
            batch_option, " ", r.micro_batch, " need an estimated ",
            MemoryPlan::summary(host ? p.host : p.device), ", but this process may have ",
            format_bytes(host ? b.host : b.device), ", ", host ? b.host_source : b.device_source,
            "; ", advice);
}

MemoryPlan plan_decoder_memory(const DecodePlanRequest& r, int64_t samples, bool cuda) {
  const DecoderMemory decoder = r.decoder(samples);
  MemoryPlan items;
  items.host.push_back({"runtime", r.runtime_bytes});
  items.host.push_back({"weights to upload", r.host_weights_bytes});
  std::vector<MemoryItem>& state = cuda ? items.device : items.host;
  state.push_back({"parameters", r.params_bytes});
  state.push_back({"decoder buffers", decoder.buffers});
  state.push_back({"the samples' own caches", decoder.own});
  state.push_back({"position table", decoder.positions});
  items.host.push_back({"sequences and logits", decoder.host});
  // The kernels' scratch for forward passes of `samples` windows: the full passes, whose
  // attention over the window is the largest call, and the refills.
  PlanRequest forward;
  forward.model = r.model;
  forward.micro_batch = samples;
  forward.threads = r.threads;
  forward.cuda = cuda;
  forward.training = false;
  forward.cudnn_attention = r.cudnn_attention;
  forward.bf16_products = r.bf16_products;
  if (cuda) {
    state.push_back({"attention scratch", cuda_attention_scratch(forward)});
    if (r.bf16_products) state.push_back({"bf16 operand copies", cuda_bf16_copies(forward)});
    state.push_back({"cuBLAS workspace", double(cuda::kCublasWorkspaceBytes)});
  } else {
    state.push_back({"kernel scratch", cpu_kernel_scratch(forward)});
  }
  return items;
}

void require_decoder_fits(const DecodePlanRequest& r, Backend& backend) {
  const MemoryBudget b = memory_budget(backend, 1);
  const bool device = backend.cuda && b.device_free >= 0;
  auto fits = [&](int64_t samples) {
    const MemoryPlan items = plan_decoder_memory(r, samples, backend.cuda);
    return (b.host <= 0 || sum(items.host) <= b.host) &&
           (!device || sum(items.device) <= b.device);
  };
  if (fits(r.samples)) return;
  // The most samples that fit (the plan grows with them), if one does.
  std::string advice = "decoding this model needs a machine (or GPU) with more memory";
  if (r.samples > 1 && fits(1)) {
    int64_t lo = 1, hi = r.samples;
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      (fits(mid) ? lo : hi) = mid;
    }
    advice = cat("at most --num-samples ", lo, " would fit (run again with --seed advanced for "
                 "more)");
  }
  const MemoryPlan items = plan_decoder_memory(r, r.samples, backend.cuda);
  const bool host_short = b.host > 0 && sum(items.host) > b.host;
  fail_user("not enough ", host_short ? "" : "GPU ", "memory: decoding ", r.samples,
            " sample(s) of ", r.tokens, " tokens needs an estimated ",
            MemoryPlan::summary(host_short ? items.host : items.device),
            ", but this process may have ", format_bytes(host_short ? b.host : b.device), ", ",
            host_short ? b.host_source : b.device_source, "; ", advice);
}

}  // namespace par
