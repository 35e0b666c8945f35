#include "core/init.h"

#include <cmath>

#include "core/philox.h"

namespace par {

namespace {

uint32_t name_hash(const std::string& name) {  // FNV-1a
  uint32_t h = 2166136261u;
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return h;
}

// Haiku's VarianceScaling(1.0, "fan_in", "truncated_normal"): the std of a normal
// truncated at +-2 is 0.8796... of the untruncated one, so it is divided out.
constexpr double kTruncatedStdCorrection = 0.87962566103423978;

}  // namespace

double truncated_normal(uint64_t seed, const std::string& name, uint64_t e) {
  const uint32_t stream = name_hash(name);
  for (uint32_t attempt = 0;; ++attempt) {
    const Philox4 r = philox4x32(uint32_t(e), uint32_t(e >> 32), attempt, stream,
                                 uint32_t(seed), uint32_t(seed >> 32));
    const double u1 = (double(r.v[0]) + 0.5) * 0x1p-32;  // (0, 1): log is finite
    const double u2 = double(r.v[1]) * 0x1p-32;
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    if (std::abs(z) <= 2.0) return z;
  }
}

template <typename T>
void init_parameters(const ParamLayout& layout, uint64_t seed, std::vector<T>& host) {
  host.assign(size_t(layout.total()), T(0));
  for (const ParamInfo& p : layout.params()) {
    T* x = host.data() + p.offset;
    const bool is_head = p.name.rfind("head.", 0) == 0;
    switch (p.kind) {
      case ParamKind::kNormWeight:
        for (int64_t i = 0; i < p.numel; ++i) x[i] = T(1);
        break;
      case ParamKind::kEmbedding:
        for (int64_t i = 0; i < p.numel; ++i)
          x[i] = T(truncated_normal(seed, p.name, uint64_t(p.global_index(i))));
        break;
      case ParamKind::kMatrix:
        if (is_head) break;  // zero, so the first loss is exactly ln V
        {
          const double std = 1.0 / std::sqrt(double(p.fan_in())) / kTruncatedStdCorrection;
          for (int64_t i = 0; i < p.numel; ++i)
            x[i] = T(std * truncated_normal(seed, p.name, uint64_t(p.global_index(i))));
        }
        break;
      case ParamKind::kBias:
      case ParamKind::kNormBias:
        break;
    }
  }
}

template void init_parameters<float>(const ParamLayout&, uint64_t, std::vector<float>&);
template void init_parameters<double>(const ParamLayout&, uint64_t, std::vector<double>&);

}  // namespace par
