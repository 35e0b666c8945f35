// The CUDA backend: every op of core/ops.h for float on one GPU, and the few things a
// program needs around it (device choice, the stream, memory figures).
//
// This header includes no CUDA header (the implementation lives behind make_cuda_ops), so
// launch/ and tests compile with the host compiler alone. All work of one CudaOps runs in
// order on its own CUDA stream; download and sum_squares wait for it, and so does an
// upload of more than 64 KiB (smaller ones go through a pinned staging buffer, so decoding's
// per-token uploads do not stall the GPU); everything else is asynchronous. Results are bit-identical from run to run on the same GPU model
// and library versions (no floating-point atomics; fixed-order reductions).
//
// Matrix products (gemm, linear layers, attention) follow MatmulPrecision; everything
// else -- and the storage of parameters, gradients and Adam moments -- is float32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/ops.h"

namespace par::cuda {

enum class MatmulPrecision {
  kFloat32,  // true float32 products (CUDA cores): the reference, slowest
  kTF32,     // inputs rounded to TF32 (10-bit mantissa), float32 accumulation
  kBF16,     // inputs rounded to bfloat16 (7-bit mantissa), float32 accumulation
};

// "fp32" (or "float32"), "tf32", "bf16" (or "bfloat16"); UserError for anything else.
MatmulPrecision parse_precision(const std::string& name);
const char* precision_name(MatmulPrecision p);  // "fp32", "tf32", "bf16"

// Visible CUDA devices; 0 when there is no device or no usable driver (never throws).
int device_count();
// Why device_count() is 0, in CUDA's words ("" when a device is visible).
std::string no_device_reason();
// The device for the process with this node-local rank: local_rank mod device_count(),
// made current for the calling thread. Call once at startup, before creating the Ops or
// any NCCL communicator. UserError when no device is visible.
int select_device(int local_rank);
// One line: "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB, driver 13.0, runtime 13.0)".
std::string describe_device(int device);

// The backend on `device` (made current). Throws std::runtime_error when CUDA fails.
std::unique_ptr<Ops<float>> make_cuda_ops(int device, MatmulPrecision precision);

// Whether `ops` was made by make_cuda_ops (a decorator such as ProfiledOps is not).
bool is_cuda_ops(const Ops<float>& ops);
// The cudaStream_t that all work of `ops` runs on, as void* (for the NCCL communicator).
// std::invalid_argument unless is_cuda_ops(ops).
void* cuda_stream(Ops<float>& ops);
// Waits until all work queued on the stream of `ops` has finished.
void cuda_synchronize(Ops<float>& ops);
MatmulPrecision matmul_precision(const Ops<float>& ops);

struct MemoryStats {
  int64_t allocated_bytes = 0;  // through allocate() and the backend's scratch, now
  int64_t peak_bytes = 0;       // the most allocated at once since creation
  int64_t device_free_bytes = 0;   // cudaMemGetInfo, all processes counted
  int64_t device_total_bytes = 0;
};
MemoryStats memory_stats(Ops<float>& ops);

// How --precision bf16 gives a matrix product's operands to cuBLAS (gemm_mapping.h).
// - kAuto (the default): a product large enough to pay for it (bf16_operands_pay: the
//   input side's projections) multiplies compact bfloat16 copies of its operands on bf16
//   tensor cores at their full rate; smaller ones give cuBLAS the float32 operands with
//   CUBLAS_COMPUTE_32F_FAST_16BF, which rounds them likewise but multiplies at the tf32
//   rate. A linear layer's backward converts its output gradient once for both products.
// - kAlways, kNever: every non-batched product the one way (tests and timings compare).
// Either way the operands are rounded to bfloat16 and the sums kept in float32, so the
// results agree within the bf16 tolerances. Other precisions ignore the setting.
enum class Bf16Operands { kAuto, kAlways, kNever };
void set_bf16_operands(Ops<float>& ops, Bf16Operands mode);

// Which attention runs.
// - kAuto (the default): cuDNN's flash attention (attention_cudnn.h) with --precision
//   bf16 where cuDNN is available and takes the call, par's blocked path elsewhere; each
//   shape's choice is logged once (backend_log.h).
// - kBlocked: cuBLAS products per key block and small kernels (attention_plan.h), in
//   every precision: the reference the others are tested against.
// - kFused: flash-style WMMA kernels (attention_fused.cu, attention_fused_bwd.cu) for tf32
//   and bf16, head sizes 16, 32, 64 (and 128 in the forward); other cases take the blocked
//   path.
// - kCudnn: cuDNN's flash attention for every call but a decoding step's (below) and one
//   whose caller does not give its positions as ranges (AttentionShape::q_pos_first: a
//   decoder's samples' own entries), which take the blocked path; else an error
//   (std::runtime_error) saying why a call cannot have it: for the tests, and for users
//   who want to know.
// Except under kBlocked, a forward with one query (nq == 1: a decoding step), or a few
// over many keys (decode_queries_cover: several samples' steps), takes the split kernels
// of attention_decode.cu ("flash-decoding": the keys split into pieces of 256 across the
// whole GPU, merged by log-sum-exp). Not cuDNN even under kCudnn: its plans are built per
// shape (kernels compiled at run time, a large part of a second), and a decoding step's
// keys grow by one every token, so it would build one per token; nor is its flash
// attention made for one query. kBlocked keeps such calls (the reference).
enum class AttentionKernel { kAuto, kBlocked, kFused, kCudnn };
// "auto", "blocked", "fused", "cudnn"; UserError for anything else.
AttentionKernel parse_attention_kernel(const std::string& name);
void set_attention_kernel(Ops<float>& ops, AttentionKernel kernel);
// One line for the log: which attention runs with these settings, and with which cuDNN
// (its version and file) or why none.
std::string attention_description(Ops<float>& ops);

// ---- CUDA graphs of a repeated step (a decoding step) ----
// begin_graph records the work given to `ops` instead of running it; end_graph(key) keeps
// the recording under `key` (the caller's name for the step's shapes) and launches it: the
// first time instantiated, later recordings under the same key update the kept instance in
// place when only kernel parameters changed (else it is replaced). replay_graph(key)
// launches the kept step again without recording (false when none is kept); its inputs
// must then sit in the same device buffers, so a step that uploaded from the host while
// it was recorded cannot be replayed (std::runtime_error). Inside a recording, anything
// that waits for the GPU (download, synchronize, sum_squares, an upload over 64 KiB, a
// scratch buffer that must grow: run the step once unrecorded first) is a
// std::runtime_error that discards the recording. With graphs off (set_graphs(ops,
// false)) begin_graph and end_graph do nothing, so the work runs as it is given.
void begin_graph(Ops<float>& ops);
void end_graph(Ops<float>& ops, uint64_t key);
bool replay_graph(Ops<float>& ops, uint64_t key);
// On by default; turned off by the backend itself (with a warning in the log) once 32
// recordings have had to be instantiated afresh, or been refused, and they outnumber half
// the uses that paid (updates in place and replays): instantiating costs more than
// launching the kernels one by one, and a refused step is given again.
void set_graphs(Ops<float>& ops, bool enabled);
struct GraphStats {
  int64_t instantiated = 0, updated = 0, launched = 0;
  int64_t refused = 0;  // recordings discarded because something in them would wait
};
GraphStats graph_stats(Ops<float>& ops);

// Testing hook: the number of keys per block of the attention (0: automatic). Small
// blocks make small test shapes cross several blocks, as long contexts do.
void set_attention_key_block(Ops<float>& ops, int64_t keys);

// Testing hook: the largest workspace of cuDNN's deterministic attention backward a call
// takes (default sdpa::kDeterministicWorkspaceMax, 256 MiB; past it dQ is added up with
// atomics; 0: every backward so).
void set_cudnn_deterministic_workspace_max(Ops<float>& ops, int64_t bytes);

// Testing and timing hook: the chunks of keys per example that cuDNN's forward over a long
// prefix read in place runs as (cudnn_key_splits.h: 0 chooses, 1 never splits).
void set_cudnn_key_splits(Ops<float>& ops, int64_t splits);

// cuDNN attention plans built in this process so far (cudnn_plans.h: each thread builds a
// shape once, for all its backends).
int64_t cudnn_plans_built();

}  // namespace par::cuda
