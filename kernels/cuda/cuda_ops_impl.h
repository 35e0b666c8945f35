// The CudaOps class (core/ops.h on one GPU), shared by its source files: cuda_ops.cpp
// (its making, the elementwise and other operations), cuda_ops_memory.cpp (memory and
// transfers), cuda_ops_graphs.cpp (step graphs), cuda_ops_matmul.cpp (gemm and the linear
// layers), cuda_ops_attention.cpp (which attention path a call takes, and the blocked one),
// cuda_ops_bf16.cpp (the operations on bfloat16-stored tensors) and cuda_ops_api.cpp (the
// public functions of cuda_ops.h).
// Private to kernels/cuda: everything else reaches the backend through cuda_ops.h.
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include "core/error.h"
#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemm_mapping.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/lt_linear.h"
#include "kernels/cuda/step_graphs.h"

namespace par::cuda {

// Scratch buffers: grow-only, one per use, so that no two live uses share one.
enum ScratchSlot : int {
  // kScores .. kDelta of attention_plan.h come first.
  kColumnPartial = 8,
  kLayerNormPartial,
  kEmbedding,
  kSquares,
  kSampling,
  kDecodeSplit,
  kTokenAttention,
  kBf16A,  // bfloat16 copies of a product's operands (gemm_mapping.h); a linear
  kBf16B,  // backward keeps dy's in kBf16A for both of its products
  kWidened,  // bfloat16-stored operands widened to float32 (cuda_ops_bf16.cpp)
  kCudnnFirst,  // CudnnAttention's own buffers
  kSlotCount = kCudnnFirst + CudnnAttention::kScratchSlots
};

class CudaOps final : public Ops<float> {
 public:
  CudaOps(int device, MatmulPrecision precision);
  ~CudaOps() override;
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  const char* name() const override { return "cuda"; }

  // Every operation of core/ops.h, for T = float.
  using T = float;
  PAR_OPS_METHODS(PAR_OPS_OVERRIDE)

  // For the attention plan's engine and the public helpers.
  void gemm_row_major(const RowMajorGemm& g);
  void* scratch(int slot, size_t bytes);
  cudaStream_t stream() const { return stream_; }
  MatmulPrecision precision() const { return precision_; }
  void set_key_block(int64_t keys) { key_block_ = keys; }
  void set_cudnn_deterministic_max(int64_t bytes) {
    cudnn_deterministic_max_ = bytes;
    if (cudnn_) cudnn_->set_deterministic_workspace_max(bytes);
  }
  void set_cudnn_key_splits(int64_t splits) {
    cudnn_key_splits_ = splits;
    if (cudnn_) cudnn_->set_key_splits(splits);
  }
  void set_attention_kernel(AttentionKernel k) { attention_kernel_ = k; }
  void set_bf16_operands(Bf16Operands mode) { bf16_operands_ = mode; }
  std::string attention_description();
  void begin_graph();
  void end_graph(uint64_t key);
  bool replay_graph(uint64_t key);
  void set_graphs(bool on) { graphs_on_ = on; }
  GraphStats graph_stats() const { return graphs_->stats(); }
  std::string attention_paths();  // the description, less the one-query path
  MemoryStats memory();

 private:
  // Makes this object's device current for the calling thread (a program may drive several
  // devices, and kernels launch on the current one).
  void use_device() const { PAR_CUDA_CHECK(cudaSetDevice(device_)); }
  void track(int64_t delta);
  // Inside a step's recording: discards it and throws, naming `what` (which would wait for
  // the GPU, which a recording cannot).
  void refuse_in_graph(const char* what);
  // Turns recording off (saying so in the log) when most recordings were instantiated
  // afresh or refused.
  void give_up_graphs_if_they_do_not_pay();
  // Whether a product of `products` multiply-adds over `elements` operand elements runs on
  // bfloat16 copies of its operands (Bf16Operands).
  bool bf16_operands_for(int64_t products, int64_t elements) const;
  // The same for the single product g, over its operands as stored.
  bool bf16_operands_for(const RowMajorGemm& g) const {
    return bf16_operands_for(g.m * g.n * g.k, stored_a(g).elements() + stored_b(g).elements());
  }
  // The compact bfloat16 copy of operand `o` at `src`, in scratch slot `slot`.
  const uint16_t* bf16_copy(int slot, const float* src, const StoredOperand& o);
  // g (batch 1) over compact bfloat16 copies a16 and b16 of its operands.
  void gemm_bf16(const RowMajorGemm& g, const uint16_t* a16, const uint16_t* b16);
  // y = x w^T + b (b not null) over the compact bfloat16 copies x16 and w16, the bias added
  // in cuBLASLt's epilogue (lt_linear.h); y in float32, or bfloat16 where y_bf16. False,
  // having launched nothing, where cuBLASLt declines the call.
  // linear_forward_bf16_x with w's bfloat16 copy already made (w16; null: make it here
  // where the product takes one).
  void linear_forward_bf16_x_with(float* y, const uint16_t* x, const float* w,
                                  const uint16_t* w16, const float* b, int64_t rows, int64_t in,
                                  int64_t out);
  bool lt_linear_forward(void* y, bool y_bf16, const uint16_t* x16, const uint16_t* w16,
                         const float* b, int64_t rows, int64_t in, int64_t out);
  // Whether a forward attention goes to the split decoding kernels (kernels.h): one query,
  // or a few over enough keys, under every --attention but blocked (cuda_ops.h: why not
  // cuDNN).
  bool split_attention_takes(const AttentionShape& s) const {
    return attention_kernel_ != AttentionKernel::kBlocked && s.head_dim > 0 &&
           (s.nq == 1 || kern::decode_queries_cover(s));
  }
  // Their scratch, for the call s.
  float* decode_scratch(const AttentionShape& s) {
    return static_cast<float*>(
        scratch(kDecodeSplit, std::max<size_t>(kern::decode_attention_scratch_floats(s), 1) * 4));
  }
  // The split decoding attention's rounding of its products' inputs (kernels.h): 0, 1 or 2
  // for float32, tf32 or bf16, as cuBLAS's modes round them.
  int decode_rounding() const {
    return precision_ == MatmulPrecision::kFloat32 ? 0 : precision_ == MatmulPrecision::kTF32 ? 1 : 2;
  }
  // attention_forward_bf16_kv past cuDNN over more keys than one widened block holds.
  void widened_blocks_forward(const AttentionShape& s, const float* q, const uint16_t* k,
                              const uint16_t* v, float* o, float* lse, int64_t block);
  // The cuDNN path, when this call may and can take it (else null, having thrown where
  // kCudnn demands it).
  // kv_bf16: the call's keys and values are bfloat16 (CudnnAttention::prepare).
  CudnnAttention* cudnn_for(const AttentionShape& s, bool backward, bool kv_bf16 = false);
  void blocked_forward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       float* o, float* lse);
  void blocked_backward(const AttentionShape& s, const float* q, const float* k,
                        const float* v, const float* o, const float* d_o, const float* lse,
                        float* dq, float* dk, float* dv);

  int device_;
  MatmulPrecision precision_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  static constexpr size_t kCublasWorkspace = size_t(kCublasWorkspaceBytes);
  void* cublas_workspace_ = nullptr;
  // Uploads up to kStagedUploadMax go through a pinned staging ring of kStagingBytes
  // without waiting for the GPU (decoding uploads a token and its position every step);
  // larger ones wait.
  static constexpr size_t kStagingBytes = size_t(1) << 20;
  static constexpr size_t kStagedUploadMax = size_t(64) << 10;
  double* pinned_ = nullptr;  // small device-to-host results
  char* staging_ = nullptr;   // kStagingBytes of pinned memory for small uploads
  size_t staging_used_ = 0;   // bytes handed to copies since the stream last drained
  struct Scratch {
    void* p = nullptr;
    size_t bytes = 0;
  };
  std::array<Scratch, kSlotCount> scratch_{};
  std::unordered_map<void*, size_t> sizes_;
  int64_t allocated_ = 0, peak_ = 0;
  int64_t key_block_ = 0;
  AttentionKernel attention_kernel_ = AttentionKernel::kAuto;
  Bf16Operands bf16_operands_ = Bf16Operands::kAuto;
  int sm_major_ = 0;
  std::unique_ptr<CudnnAttention> cudnn_;  // made on first use
  int64_t cudnn_deterministic_max_ = sdpa::kDeterministicWorkspaceMax;
  int64_t cudnn_key_splits_ = -1;  // -1: CudnnAttention's default
  std::unique_ptr<LtLinear> lt_;
  std::unique_ptr<StepGraphs> graphs_;
  bool graphs_on_ = true;
  bool graph_uploaded_ = false;  // the step being recorded copies from the host
};

}  // namespace par::cuda
