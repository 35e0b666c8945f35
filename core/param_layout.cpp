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

namespace {

// The model's parameters in layout order (spec/MODEL.md section 10), each with its global
// shape, its kind, the axis tensor parallelism splits (-1: none) and the slot of ModelRef
// that views it: the one list from which both the layout and bind() are made.
// add(name, shape, kind, split, slot).
template <typename T, typename Add>
void for_each_param(const ModelConfig& c, ModelRef<T>& m, Add&& add) {
  const int64_t d = c.d_model, V = c.vocab_size, f = c.mlp_width();
  constexpr int kRows = 0, kCols = 1, kNone = -1;
  // Column-parallel layers split their output rows (weight and bias); row-parallel
  // layers split their input columns and keep the bias whole.
  auto linear = [&](const std::string& prefix, LinearRef<T>& r, int64_t out, int64_t in,
                    int split) {
    add(prefix + ".weight", std::vector<int64_t>{out, in}, ParamKind::kMatrix, split, r.w);
    add(prefix + ".bias", std::vector<int64_t>{out}, ParamKind::kBias,
        split == kRows ? 0 : kNone, r.b);
  };
  auto norm = [&](const std::string& prefix, NormRef<T>& r) {
    add(prefix + ".weight", std::vector<int64_t>{d}, ParamKind::kNormWeight, kNone, r.w);
    add(prefix + ".bias", std::vector<int64_t>{d}, ParamKind::kNormBias, kNone, r.b);
  };
  auto attention = [&](const std::string& prefix, AttentionRef<T>& a) {
    linear(prefix + ".q", a.q, d, d, kRows);
    linear(prefix + ".k", a.k, d, d, kRows);
    linear(prefix + ".v", a.v, d, d, kRows);
    linear(prefix + ".o", a.o, d, d, kCols);
  };
  auto mlp = [&](const std::string& prefix, MlpRef<T>& r) {
    linear(prefix + ".fc1", r.fc1, f, d, kRows);
    linear(prefix + ".fc2", r.fc2, d, f, kCols);
  };
  add("embed.weight", std::vector<int64_t>{V, d}, ParamKind::kEmbedding, kNone, m.embed);
  linear("cross.z_linear", m.cross.z_linear, d, d, kNone);
  norm("cross.ln_q", m.cross.ln_q);
  norm("cross.ln_kv", m.cross.ln_kv);
  norm("cross.ln_mlp", m.cross.ln_mlp);
  attention("cross.attn", m.cross.attn);
  mlp("cross.mlp", m.cross.mlp);
  m.layers.resize(size_t(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = cat("layers.", l);
    LayerRef<T>& layer = m.layers[size_t(l)];
    norm(p + ".ln_attn", layer.ln_attn);
    norm(p + ".ln_mlp", layer.ln_mlp);
    attention(p + ".attn", layer.attn);
    mlp(p + ".mlp", layer.mlp);
  }
  norm("final_ln", m.final_ln);
  linear("head", m.head, V, d, kNone);
}

}  // namespace

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
    : config_(c), tp_rank_(tp_rank), tp_size_(tp_size) {
  PAR_ASSERT(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size);
  PAR_ASSERT(c.cross_heads % tp_size == 0 && c.self_heads % tp_size == 0,
             "heads must divide by the tensor-parallel size (checked by the caller)");
  ModelRef<float> views;  // not bound to anything: only the names and shapes are wanted
  for_each_param(c, views,
                 [&](const std::string& name, std::vector<int64_t> shape, ParamKind kind,
                     int split, float*&) { add(name, std::move(shape), kind, split); });
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
  ModelRef<T> m;
  size_t i = 0;
  for_each_param(layout.config(), m,
                 [&](const std::string& name, const std::vector<int64_t>&, ParamKind, int,
                     T*& slot) {
                   const ParamInfo& p = layout.params()[i++];
                   PAR_ASSERT(p.name == name, "layout and views disagree at ", name);
                   slot = base + p.offset;
                 });
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
