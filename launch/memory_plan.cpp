#include "launch/memory_plan.h"

#include <algorithm>

#include "core/error.h"
#include "core/model.h"
#include "kernels/cuda/gemm_mapping.h"
#include "launch/host_memory.h"
#include "launch/kernel_scratch_plan.h"

namespace par {

namespace {

double sum(const std::vector<MemoryItem>& items) {
  double s = 0;
  for (const auto& i : items) s += i.bytes;
  return s;
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
  return plans_bf16_products(cuda, precision) && (attention == "auto" || attention == "cudnn");
}

bool plans_bf16_products(bool cuda, const std::string& precision) {
  return cuda && precision == "bf16";
}

int64_t largest_that_fits(int64_t lo, int64_t hi, const std::function<bool(int64_t)>& fits) {
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
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
  r.bf16_products = plans_bf16_products(cuda, run.precision);
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
  if (r.data_bytes) plan.host.push_back({"data batches", r.data_bytes(r)});
  if (r.gemm_n > 0) {
    // Its three matrices, and in bf16 the bfloat16 copies of its two operands where the
    // backend makes them (on a GPU the yardstick has a backend of its own, which keeps them).
    const int64_t n = r.gemm_n;
    const double e = double(n);
    const bool copies = r.bf16_products && cuda::bf16_operands_pay(e * e * e, 2 * e * e);
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
  // The largest micro-batch per replica that fits, if one does.
  const int64_t lo = largest_that_fits(0, r.micro_batch, [&](int64_t micro) {
    t.micro_batch = micro;
    return fits(t, b);
  });
  if (lo >= 1) {
    // Keep the batch, in more micro-batches of a size that divides it, where that fits (the
    // loader's batches grow with the accumulation steps); else a smaller batch.
    std::string keep;
    for (int64_t micro = lo; micro >= 1 && keep.empty(); --micro) {
      if (shape.batch_size % (micro * shape.dp) != 0 || micro * shape.dp >= shape.batch_size)
        continue;
      PlanRequest a = r;
      a.micro_batch = micro;
      a.accum_steps = shape.batch_size / (micro * shape.dp);
      if (fits(a, b))
        keep = cat("--accum-steps ", a.accum_steps, " (the same batch in micro-batches of ",
                   micro * shape.dp, ")");
    }
    ways.push_back(keep.empty() ? cat("--batch-size ", lo * shape.dp * shape.accum_steps) : keep);
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
    const int64_t lo = largest_that_fits(1, r.micro_batch, [&](int64_t batch) {
      t.micro_batch = batch;
      return short_of(t) == kFits;
    });
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

}  // namespace par
