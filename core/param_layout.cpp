#include "core/param_layout.h"

#include "core/error.h"

namespace par {

namespace {
constexpr int64_t kAlign = 16;  // elements: 64 bytes of float
}

void ParamLayout::add(const std::string& name, std::vector<int64_t> shape, ParamKind kind) {
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t s : shape) p.numel *= s;
  p.shape = std::move(shape);
  p.kind = kind;
  p.offset = total_;
  total_ += (p.numel + kAlign - 1) / kAlign * kAlign;
  params_.push_back(std::move(p));
}

ParamLayout::ParamLayout(const ModelConfig& c) {
  const int64_t d = c.d_model, V = c.vocab_size, f = c.mlp_width();
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in) {
    add(prefix + ".weight", {out, in}, ParamKind::kMatrix);
    add(prefix + ".bias", {out}, ParamKind::kBias);
  };
  auto norm = [&](const std::string& prefix) {
    add(prefix + ".weight", {d}, ParamKind::kNormWeight);
    add(prefix + ".bias", {d}, ParamKind::kNormBias);
  };
  auto attention = [&](const std::string& prefix) {
    for (const char* p : {"q", "k", "v", "o"}) linear(prefix + "." + p, d, d);
  };
  auto mlp = [&](const std::string& prefix) {
    linear(prefix + ".fc1", f, d);
    linear(prefix + ".fc2", d, f);
  };
  add("embed.weight", {V, d}, ParamKind::kEmbedding);
  linear("cross.z_linear", d, d);
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
  linear("head", V, d);
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

}  // namespace par
