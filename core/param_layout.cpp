#include "core/param_layout.h"

#include "core/error.h"

namespace par {

namespace {
constexpr int64_t kAlign = 16;  // elements: 64 bytes of float
}

int64_t ParamInfo::global_index(int64_t i) const {
  if (shard_axis < 0) return i;
  if (shape.size() == 1) return shard_begin + i;
  const int64_t cols = shape[1];
  const int64_t r = i / cols, c = i % cols;
  return shard_axis == 0 ? (shard_begin + r) * cols + c : r * global_shape[1] + shard_begin + c;
}

void ParamLayout::add(const std::string& name, std::vector<int64_t> shape, ParamKind kind,
                      int shard_axis) {
  ParamInfo p;
  p.name = name;
  p.global_shape = shape;
  p.split_axis = shard_axis;
  if (shard_axis >= 0 && tp_size_ > 1) {
    const int64_t n = shape[size_t(shard_axis)] / tp_size_;
    p.shard_axis = shard_axis;
    p.shard_begin = n * tp_rank_;
    shape[size_t(shard_axis)] = n;
  }
  p.numel = 1;
  for (int64_t s : shape) p.numel *= s;
  p.shape = std::move(shape);
  p.kind = kind;
  p.offset = total_;
  total_ += (p.numel + kAlign - 1) / kAlign * kAlign;
  params_.push_back(std::move(p));
}

ParamLayout::ParamLayout(const ModelConfig& c, int tp_rank, int tp_size)
    : tp_rank_(tp_rank), tp_size_(tp_size) {
  PAR_ASSERT(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size);
  PAR_ASSERT(c.cross_heads % tp_size == 0 && c.self_heads % tp_size == 0,
             "heads must divide by the tensor-parallel size (checked by the caller)");
  const int64_t d = c.d_model, V = c.vocab_size, f = c.mlp_width();
  constexpr int kRows = 0, kCols = 1, kNone = -1;
  // Column-parallel layers split their output rows (weight and bias); row-parallel
  // layers split their input columns and keep the bias whole.
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in, int split) {
    add(prefix + ".weight", {out, in}, ParamKind::kMatrix, split);
    add(prefix + ".bias", {out}, ParamKind::kBias, split == kRows ? 0 : kNone);
  };
  auto norm = [&](const std::string& prefix) {
    add(prefix + ".weight", {d}, ParamKind::kNormWeight, kNone);
    add(prefix + ".bias", {d}, ParamKind::kNormBias, kNone);
  };
  auto attention = [&](const std::string& prefix) {
    for (const char* p : {"q", "k", "v"}) linear(prefix + "." + p, d, d, kRows);
    linear(prefix + ".o", d, d, kCols);
  };
  auto mlp = [&](const std::string& prefix) {
    linear(prefix + ".fc1", f, d, kRows);
    linear(prefix + ".fc2", d, f, kCols);
  };
  auto linear_replicated = [&](const std::string& prefix, int64_t out, int64_t in) {
    linear(prefix, out, in, kNone);
  };
  add("embed.weight", {V, d}, ParamKind::kEmbedding, kNone);
  linear_replicated("cross.z_linear", d, d);
  norm("cross.ln_q");
  norm("cross.ln_kv");
  norm("cross.ln_mlp");
  attention("cross.attn");
  mlp("cross.mlp");
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = cat("layers.", l);
    norm(p + ".ln_attn");
    norm(p + ".ln_mlp");
    attention(p + ".attn");
    mlp(p + ".mlp");
  }
  norm("final_ln");
  linear_replicated("head", V, d);
  for (auto& p : params_)
    p.grad_summed_over_tp = p.name == "embed.weight" || p.name.rfind("cross.ln_kv.", 0) == 0;
}

const ParamInfo* ParamLayout::find(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

int64_t ParamLayout::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.numel;
  return n;
}

template <typename T>
ModelRef<T> bind(const ParamLayout& layout, T* base) {
  auto at = [&](const std::string& name) {
    const ParamInfo* p = layout.find(name);
    PAR_ASSERT(p, "no parameter ", name);
    return base + p->offset;
  };
  auto linear = [&](const std::string& prefix) {
    return LinearRef<T>{at(prefix + ".weight"), at(prefix + ".bias")};
  };
  auto norm = [&](const std::string& prefix) {
    return NormRef<T>{at(prefix + ".weight"), at(prefix + ".bias")};
  };
  auto attention = [&](const std::string& prefix) {
    return AttentionRef<T>{linear(prefix + ".q"), linear(prefix + ".k"), linear(prefix + ".v"),
                           linear(prefix + ".o")};
  };
  auto mlp = [&](const std::string& prefix) {
    return MlpRef<T>{linear(prefix + ".fc1"), linear(prefix + ".fc2")};
  };
  ModelRef<T> m;
  m.embed = at("embed.weight");
  m.cross.z_linear = linear("cross.z_linear");
  m.cross.ln_q = norm("cross.ln_q");
  m.cross.ln_kv = norm("cross.ln_kv");
  m.cross.ln_mlp = norm("cross.ln_mlp");
  m.cross.attn = attention("cross.attn");
  m.cross.mlp = mlp("cross.mlp");
  for (int64_t l = 0;; ++l) {
    const std::string p = cat("layers.", l);
    if (!layout.find(p + ".ln_attn.weight")) break;
    m.layers.push_back(LayerRef<T>{norm(p + ".ln_attn"), norm(p + ".ln_mlp"),
                                   attention(p + ".attn"), mlp(p + ".mlp")});
  }
  m.final_ln = norm("final_ln");
  m.head = linear("head");
  return m;
}

template ModelRef<float> bind(const ParamLayout&, float*);
template ModelRef<double> bind(const ParamLayout&, double*);

template <typename T>
void extract_slices(const ParamLayout& layout, const ParamLayout& full_layout, const T* full,
                    T* local) {
  for (const ParamInfo& p : layout.params()) {
    const ParamInfo* f = full_layout.find(p.name);
    PAR_ASSERT(f && f->global_shape == p.global_shape, p.name);
    for (int64_t i = 0; i < p.numel; ++i) local[p.offset + i] = full[f->offset + p.global_index(i)];
  }
}

template <typename T>
void place_slice(const ParamInfo& p, const T* slice, T* whole) {
  for (int64_t i = 0; i < p.numel; ++i) whole[p.global_index(i)] = slice[i];
}

template void extract_slices<float>(const ParamLayout&, const ParamLayout&, const float*, float*);
template void extract_slices<double>(const ParamLayout&, const ParamLayout&, const double*,
                                     double*);
template void place_slice<float>(const ParamInfo&, const float*, float*);
template void place_slice<double>(const ParamInfo&, const double*, double*);

}  // namespace par
