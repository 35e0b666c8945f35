#include "launch/decode_memory_plan.h"

#include "core/error.h"
#include "kernels/cuda/gemm_mapping.h"
#include "launch/host_memory.h"
#include "launch/kernel_scratch_plan.h"

namespace par {

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
  items.host.push_back({"rotary rows and token groups", decoder.host_tables});
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

MemoryPlan require_decoder_fits(const DecodePlanRequest& r, Backend& backend) {
  const MemoryBudget b = memory_budget(backend, 1);
  const bool device = backend.cuda && b.device_free >= 0;
  auto fits_plan = [&](const MemoryPlan& items) {
    return (b.host <= 0 || items.host_bytes() <= b.host) &&
           (!device || items.device_bytes() <= b.device);
  };
  auto fits = [&](int64_t samples) {
    return fits_plan(plan_decoder_memory(r, samples, backend.cuda));
  };
  const MemoryPlan items = plan_decoder_memory(r, r.samples, backend.cuda);
  if (fits_plan(items)) return items;
  // The most samples that fit (the plan grows with them), if one does.
  std::string advice = "decoding this model needs a machine (or GPU) with more memory";
  if (r.samples > 1 && fits(1))
    advice = cat("at most --num-samples ", largest_that_fits(1, r.samples, fits),
                 " would fit (run again with --seed advanced for more)");
  const bool host_short = b.host > 0 && items.host_bytes() > b.host;
  fail_user("not enough ", host_short ? "" : "GPU ", "memory: decoding ", r.samples,
            " sample(s) of ", r.tokens, " tokens needs an estimated ",
            MemoryPlan::summary(host_short ? items.host : items.device),
            ", but this process may have ", format_bytes(host_short ? b.host : b.device), ", ",
            host_short ? b.host_source : b.device_source, "; ", advice);
}

}  // namespace par
