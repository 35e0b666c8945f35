// The memory each rank of `par train` or `par bench` (and the process of `par eval`) will
// need, computed before anything is allocated, and the check that it fits what it may have.
//
// Every figure comes from the code that allocates it, not from a formula kept beside it:
//   parameters, gradients, activations  PerceiverAR::memory, the sizing pass the model's
//                                       constructor allocates by (and checks against)
//   Adam moments                        two buffers laid out like the parameters
//   data batches                        Loader::memory_bytes
//   CPU kernel scratch                  the kernels' Workspace (kernels/cpu/workspace.h),
//                                       sized by the kernels' own layouts
//   GPU attention scratch               the key block of kernels/cuda/attention_plan.h
//   widened keys and values (GPU)       kernels/cuda/cuda_ops_bf16.cpp, where bfloat16
//                                       keys and values meet a float32 path
//   checkpoint copies (train)           host copies of parameters and both moments,
//                                       made when saving (a resume uploads tensor by
//                                       tensor)
//   runtime                             what the process holds when it plans: libraries,
//                                       MPI, the CUDA context
// Not counted: the kernels' short-lived temporaries, HDF5's chunk caches (at most 8 MiB per
// open shard), the allocator's slack. `par bench` checks the sum against its measured
// peak (tests/reliability_memory_plan_test.cpp). The kernels' scratch is sized in
// launch/kernel_scratch_plan.h; a decoding process's plan is launch/decode_memory_plan.h.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "launch/backend.h"
#include "launch/options.h"

namespace par {

struct MemoryItem {
  std::string what;
  double bytes = 0;
};

struct MemoryPlan {
  std::vector<MemoryItem> host, device;  // device: empty for the CPU backend
  double host_bytes() const;
  double device_bytes() const;
  // "1.21 GiB (runtime 20.1 MiB, parameters and gradients 48.1 MiB, ...)"
  static std::string summary(const std::vector<MemoryItem>& items);
};

// What a rank runs, as far as its memory goes.
struct PlanRequest {
  ModelConfig model;
  int64_t micro_batch = 1;  // examples of each micro-batch on this rank (its replica's share)
  int64_t accum_steps = 1;
  int sp = 1, tp = 1;
  int threads = 1;
  bool cuda = false;
  bool cudnn_attention = false;  // cuda, bf16 and --attention auto or cudnn
  bool bf16_products = false;    // cuda and bf16: large products on bfloat16 copies
  bool kv_bf16 = false;          // the input side's keys and values in bfloat16 (--kv-storage)
  bool checkpoints = false;      // train: host copies of the state to save
  // A training step (backward and Adam: train, bench); false: forward passes only (eval),
  // without the moments and the backward's scratch.
  bool training = true;
  // Bytes of the token batches held for a request (train: Loader::memory_bytes; bench: its
  // own); a function of it, since they grow with the micro-batch, the accumulation steps
  // and the columns of a rank (N/sp + 1), which the advice varies. Empty: none.
  std::function<double(const PlanRequest&)> data_bytes;
  int64_t gemm_n = 0;            // bench: its n x n x n yardstick product
  double runtime_bytes = 0;      // resident_bytes() when planning
};

// Whether a run with these options may take cuDNN's attention (bf16 on a GPU, --attention
// auto or cudnn), and so holds its scratch.
bool plans_cudnn_attention(bool cuda, const std::string& precision, const std::string& attention);
// Whether its large products may run on bfloat16 copies of their operands (bf16 on a GPU).
bool plans_bf16_products(bool cuda, const std::string& precision);

// The largest n in [lo, hi) with fits(n), where fits(lo) holds (or lo is a floor that
// stands for none) and fits(hi) does not: plans grow with their batch, so a binary search.
int64_t largest_that_fits(int64_t lo, int64_t hi, const std::function<bool(int64_t)>& fits);

// The part every command shares: this rank's share of `run`'s micro-batch and layout, the
// threads in effect and what the process holds now. Commands add their own buffers.
PlanRequest plan_request(const ModelConfig& model, const RunConfig& run, bool cuda);

MemoryPlan plan_memory(const PlanRequest& r);

// What one rank may have.
struct MemoryBudget {
  double host = 0;    // bytes, 0: unknown
  std::string host_source;
  double device = 0;  // bytes of free device memory, 0: no device
  std::string device_source;
  // The device's side is planned but not checked (a dry run without a GPU here);
  // device_source says why.
  bool device_unchecked = false;
  // What the shares come from, for advice on more ranks: the node's ranks, its GPUs, and
  // one GPU's free bytes (-1: none).
  int local_ranks = 1, gpus = 1;
  double device_free = -1;
};

// The host's share of one of `local_ranks` ranks on this node: the cgroup's limit or the
// physical memory, whichever is less. The device's: a GPU's free memory (`device_free`,
// < 0 for none), the node's ranks shared round-robin over its `gpus` GPUs.
MemoryBudget memory_budget(int local_ranks, int64_t device_free, int gpus);
// The same for a rank of `local_ranks` on this node using `backend` (its GPUs are shared
// round-robin by the node's ranks).
MemoryBudget memory_budget(Backend& backend, int local_ranks);

// The plan against the budget, one line for the host and one for the device (if any):
// "host 1.21 GiB (runtime 20.1 MiB, ...) of 22.9 GiB: the physical memory 22.9 GiB".
std::string describe(const MemoryPlan& plan, const MemoryBudget& budget);

// Layout and batch options the advice may change: --batch-size, --accum-steps, --dp.
struct RunShape {
  int64_t batch_size = 1, accum_steps = 1;
  int dp = 1;
};

// UserError unless `r`'s plan fits `budget`: the estimate, the limit and what would fit
// (a smaller micro-batch, more --sp or --tp).
void require_fits(const PlanRequest& r, const RunShape& shape, const MemoryBudget& budget);

// UserError unless the plan of one process that is not training (`r.training` false: eval,
// which allocates the model with its gradients, the activation arena of `r.micro_batch`
// examples and the kernels' scratch) fits its budget on `backend`, host and device; the
// message gives the largest `batch_option` that would fit, if one example does.
void require_model_fits(const PlanRequest& r, Backend& backend, const std::string& batch_option);

}  // namespace par
