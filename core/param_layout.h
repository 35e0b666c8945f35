// Where each parameter lives: the names and shapes of spec/MODEL.md section 10, laid out
// back to back in one buffer (parameters, gradients and both Adam moments each use one
// buffer of this layout), and typed views that bind the layout to a buffer.
//
// Under tensor parallelism (Megatron style) a rank holds a slice of some tensors: the
// query/key/value projections and fc1 are split by output rows (their heads or hidden
// units), the attention output projections and fc2 by input columns; everything else is
// replicated. The layout of rank t of a tensor-parallel group of size T lists the local
// shapes and where each slice sits in the full tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"

namespace par {

enum class ParamKind { kMatrix, kBias, kNormWeight, kNormBias, kEmbedding };

struct ParamInfo {
  std::string name;                   // "layers.3.attn.q.weight"
  std::vector<int64_t> shape;         // this rank's slice; [out, in] for matrices
  std::vector<int64_t> global_shape;  // the whole tensor (spec/MODEL.md section 10)
  int shard_axis = -1;                // -1: replicated; 0: rows split; 1: columns split
  int split_axis = -1;                // the axis tensor parallelism splits (any group size)
  int64_t shard_begin = 0;            // first row/column of the slice along shard_axis
  int64_t offset = 0;                 // elements from the buffer start (64-byte aligned)
  int64_t numel = 0;                  // of the slice
  ParamKind kind = ParamKind::kMatrix;
  // Replicated across the tensor-parallel group, but each rank's gradient is only its part
  // of the sum (the embedding and LN_kv: the key/value path's input gradient is not summed
  // over the group, to keep messages independent of the context length); so the gradient
  // is summed over the group too.
  bool grad_summed_over_tp = false;

  int64_t fan_in() const { return global_shape.size() == 2 ? global_shape[1] : 0; }
  bool sharded() const { return shard_axis >= 0; }
  // Index in the whole tensor (row-major) of element `i` of the slice.
  int64_t global_index(int64_t i) const;
};

class ParamLayout {
 public:
  // The layout of tensor-parallel rank tp_rank of tp_size (1: the whole model).
  explicit ParamLayout(const ModelConfig& cfg, int tp_rank = 0, int tp_size = 1);
  const std::vector<ParamInfo>& params() const { return params_; }
  int64_t total() const { return total_; }  // elements, including alignment gaps
  // Null when absent.
  const ParamInfo* find(const std::string& name) const;
  int64_t num_parameters() const;  // of the slices, without gaps
  int tp_rank() const { return tp_rank_; }
  int tp_size() const { return tp_size_; }
  const ModelConfig& config() const { return config_; }

 private:
  void add(const std::string& name, std::vector<int64_t> shape, ParamKind kind, int shard_axis);
  ModelConfig config_;
  std::vector<ParamInfo> params_;
  int64_t total_ = 0;
  int tp_rank_, tp_size_;
};

// Copies this rank's slices out of `full`, a buffer in the single-rank layout of the same
// model, into `local` (in `layout`'s order).
template <typename T>
void extract_slices(const ParamLayout& layout, const ParamLayout& full_layout, const T* full,
                    T* local);
// Writes slice data of `p` (in the slice's own row-major order) into the whole tensor
// `whole` (row-major, global_shape).
template <typename T>
void place_slice(const ParamInfo& p, const T* slice, T* whole);

template <typename T>
struct LinearRef {
  T* w = nullptr;  // [out, in]
  T* b = nullptr;  // [out]
};

template <typename T>
struct NormRef {
  T* w = nullptr;
  T* b = nullptr;
};

template <typename T>
struct AttentionRef {
  LinearRef<T> q, k, v, o;
};

template <typename T>
struct MlpRef {
  LinearRef<T> fc1, fc2;
};

template <typename T>
struct CrossRef {
  LinearRef<T> z_linear;
  NormRef<T> ln_q, ln_kv, ln_mlp;
  AttentionRef<T> attn;
  MlpRef<T> mlp;
};

template <typename T>
struct LayerRef {
  NormRef<T> ln_attn, ln_mlp;
  AttentionRef<T> attn;
  MlpRef<T> mlp;
};

template <typename T>
struct ModelRef {
  T* embed = nullptr;  // [V, d]
  CrossRef<T> cross;
  std::vector<LayerRef<T>> layers;
  NormRef<T> final_ln;
  LinearRef<T> head;
};

// Views of `base` (a buffer of layout.total() elements) as the model's tensors.
template <typename T>
ModelRef<T> bind(const ParamLayout& layout, T* base);

}  // namespace par
