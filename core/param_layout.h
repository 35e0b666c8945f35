// Where each parameter lives: the names and shapes of spec/MODEL.md section 10, laid out
// back to back in one buffer (parameters, gradients and both Adam moments each use one
// buffer of this layout), and typed views that bind the layout to a buffer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"

namespace par {

enum class ParamKind { kMatrix, kBias, kNormWeight, kNormBias, kEmbedding };

struct ParamInfo {
  std::string name;             // "layers.3.attn.q.weight"
  std::vector<int64_t> shape;   // [out, in] for matrices
  int64_t offset = 0;           // elements from the buffer start (64-byte aligned)
  int64_t numel = 0;
  ParamKind kind = ParamKind::kMatrix;
  int64_t fan_in() const { return shape.size() == 2 ? shape[1] : 0; }
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& cfg);
  const std::vector<ParamInfo>& params() const { return params_; }
  int64_t total() const { return total_; }  // elements, including alignment gaps
  // Null when absent.
  const ParamInfo* find(const std::string& name) const;
  int64_t num_parameters() const;  // without gaps

 private:
  void add(const std::string& name, std::vector<int64_t> shape, ParamKind kind);
  std::vector<ParamInfo> params_;
  int64_t total_ = 0;
};

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
