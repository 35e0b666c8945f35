// The attention of core/ops.h through cuDNN's flash attention (bf16 operands, float32
// statistics), for calls whose positions the caller gives as contiguous (AttentionShape's
// q_pos_first, k_pos_first: the model's calls).
//
// How a call runs (attention_segments.h):
// - Queries and keys from the same position with no key mask (the latent self-attention):
//   one causal flash attention.
// - Otherwise the keys every query sees form a prefix: the visible ones (not PAD, not
//   dropped) are gathered into a dense bf16 buffer, so dropped keys cost nothing, and one
//   flash attention with per-example key counts (a padding mask) covers them. The few keys
//   on the causal diagonal (at most M - 1 of the cross-attention) go through the blocked
//   path, which takes any mask, and the two pieces are merged in log-sum-exp form. Where
//   cuDNN reads the keys in place, the prefix's forward may run as several chunks of keys
//   in one call, merged the same way (cudnn_key_splits.h: few queries over many keys
//   would leave most of the GPU idle).
// The backward takes the (merged) o and lse as given, so sequence-parallel ranks can pass
// the merged statistics, and runs the same pieces.
//
// Queries, outputs and statistics are float32, so they are converted to bf16 on the way
// in and results back to float32. Keys and values may be stored in float32 (converted in
// the gather) or in bfloat16 (KeyValues::bf16: gathered as they are, and their gradients
// scattered back as cuDNN makes them).
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/ops.h"
#include "kernels/cuda/attention_segments.h"
#include "kernels/cuda/cudnn_api.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/cudnn_key_counts.h"
#include "kernels/cuda/cudnn_key_splits.h"
#include "kernels/cuda/cudnn_plans.h"

namespace par::cuda {

class CudnnAttention {
 public:
  // A grow-only device buffer of at least `bytes` for this object's buffer `slot` (the
  // backend's scratch, so its memory figures see them).
  using Scratch = std::function<void*(int slot, size_t bytes)>;
  // The blocked path, for the diagonal piece under a key mask.
  struct Blocked {
    std::function<void(const AttentionShape&, const float* q, const float* k, const float* v,
                       float* o, float* lse)>
        forward;
    std::function<void(const AttentionShape&, const float* q, const float* k, const float* v,
                       const float* o, const float* d_o, const float* lse, float* dq,
                       float* dk, float* dv)>
        backward;
  };
  static constexpr int kScratchSlots = 32;

  // Runs on `stream` of GPU `device` (compute capability sm_major.x), with the plans of
  // the calling thread there (cudnn_plans.h), which outlive this object.
  CudnnAttention(cudaStream_t stream, int device, int sm_major, Scratch scratch,
                 Blocked blocked);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // "" when the call can take this path, else why not: no cuDNN, positions not given as
  // contiguous, a head size cuDNN does not take, nothing for cuDNN to do, or cuDNN's
  // refusal of the graph. Builds (once per shape) the graphs the call needs, so the
  // first call of a shape takes longer. kv_bf16: its keys and values will be bfloat16
  // (KeyValues::bf16), which cuDNN reads in place where no key is masked.
  std::string prepare(const AttentionShape& s, bool backward, bool kv_bf16 = false);
  // A call's keys and values and their gradients: float32, or bfloat16 bits (uint16_t).
  struct KeyValues {
    const void* k;
    const void* v;
    bool bf16 = false;
  };
  struct KeyValueGrads {
    void* dk;
    void* dv;
    bool bf16 = false;
  };
  // After prepare(s, false) returned "".
  void forward(const AttentionShape& s, const float* q, KeyValues kv, float* o, float* lse);
  void forward(const AttentionShape& s, const float* q, const float* k, const float* v,
               float* o, float* lse) {
    forward(s, q, KeyValues{k, v, false}, o, lse);
  }
  // After prepare(s, true) returned "".
  void backward(const AttentionShape& s, const float* q, KeyValues kv, const float* o,
                const float* d_o, const float* lse, float* dq, KeyValueGrads grads);
  void backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                const float* o, const float* d_o, const float* lse, float* dq, float* dk,
                float* dv) {
    backward(s, q, KeyValues{k, v, false}, o, d_o, lse, dq, KeyValueGrads{dk, dv, false});
  }

  // Under --attention auto: each kind of call takes at most a few key counts to cuDNN
  // (cudnn_key_counts.h); prepare() refuses the others, so that the blocked path runs them.
  void set_key_count_limit(bool on) { limit_key_counts_ = on; }

  // Chunks of keys per example of a forward over a long prefix read in place
  // (forward_key_split's request: 0 chooses, 1 never splits). The default is 0, or what
  // the environment's PAR_CUDNN_KEY_SPLITS says ("auto" or a count), for timing runs.
  void set_key_splits(int64_t splits) { key_splits_ = splits; }

  // Testing hook: the largest workspace of cuDNN's deterministic backward that a call
  // takes (sdpa::backward_is_deterministic; 0: every backward adds dQ with atomics).
  void set_deterministic_workspace_max(int64_t bytes) { deterministic_max_ = bytes; }

 private:
  bool deterministic(bool backward, int64_t batch, int64_t heads, int64_t nq, int64_t nk,
                     int64_t head_dim) const {
    return backward && sdpa::backward_is_deterministic(sdpa::Dims{batch, heads, nq, nk, head_dim},
                                                       deterministic_max_);
  }
  int64_t deterministic_max_ = sdpa::kDeterministicWorkspaceMax;
  int64_t key_splits_ = 0;
  int64_t sm_count_ = 0;
  bool limit_key_counts_ = false;
  KeyCountBudget key_counts_;
  // The graph's dimensions for one piece (kv_rows: rows between examples' keys, values and
  // their gradients; 0: packed, nk).
  sdpa::Dims dims(bool backward, int64_t batch, int64_t heads, int64_t nq, int64_t nk,
                  int64_t head_dim, bool causal, double scale, int64_t kv_rows) const;
  CudnnPlans& plans() const { return CudnnPlans::of_this_thread(*api_, device_); }
  // The graph of one piece (built on first use), or null with the reason in *why. splits:
  // the piece's keys run as that many chunks, each an element of the batch (for the log).
  const CudnnGraph* graph(bool backward, int64_t batch, int64_t heads, int64_t nq, int64_t nk,
                          int64_t head_dim, bool causal, double scale, int64_t kv_rows,
                          std::string* why, int64_t splits = 1);
  // The forward's prefix as chunks of keys (cudnn_key_splits.h) where they apply and cuDNN
  // took their graph in prepare(): o and lse of its rows written; false (nothing done)
  // otherwise.
  bool forward_in_chunks(const AttentionShape& s, const float* q, KeyValues kv, float* o,
                         float* lse);
  void run(const CudnnGraph& g, const std::vector<std::pair<int64_t, void*>>& bound);
  // cuDNN's operands of a call's piece (attention_cudnn.cpp, Piece): its query rows in
  // bf16, its visible keys and values gathered into bf16, the key scan that gathered them
  // (flags, pos; the inverse map of the gradients) and the sequence lengths. In place
  // (bfloat16 keys and values, none masked): k and v are the caller's, kv_rows its rows per
  // example, and nothing was gathered (flags and pos null).
  struct Operands {
    uint16_t *q, *k, *v;
    int32_t *seq_q, *seq_kv, *flags, *pos;
    int64_t row0, rows, keys;
    bool graph_causal;
    bool in_place = false;
    int64_t kv_rows = 0;
  };
  Operands operands(const AttentionShape& s, const float* q, KeyValues kv, bool backward);
  // Rows between examples of the keys the call's graph reads: nk where it reads bfloat16
  // keys in place (none masked, and cuDNN took that graph in prepare()), 0 where it reads
  // the gathered copy.
  int64_t kv_rows(const AttentionShape& s, bool backward, bool kv_bf16) const;
  // Float32 copies of the diagonal piece's rows and keys (and key mask) as a call of its
  // own for the blocked path, whose rows start at row0 of the whole call.
  struct Diagonal {
    AttentionShape shape;
    const float *q, *k, *v;
    int64_t row0;
  };
  Diagonal diagonal(const AttentionShape& s, const AttentionSegments& seg, const float* q,
                    KeyValues kv);
  template <typename T>
  T* buffer(int slot, int64_t count) {
    return static_cast<T*>(scratch_(slot, size_t(std::max<int64_t>(count, 1)) * sizeof(T)));
  }

  const CudnnApi* api_;
  cudaStream_t stream_;
  int device_;
  int sm_major_;
  Scratch scratch_;
  Blocked blocked_;
};

}  // namespace par::cuda
