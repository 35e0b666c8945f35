#include "core/rotary.h"

#include <cmath>

namespace par {

RotarySpec make_rotary_spec(int64_t head_dim, double rotary_fraction, double max_wavelength) {
  RotarySpec s;
  s.head_dim = head_dim;
  // The epsilon keeps an exact product like 12 * 0.25 / 2 = 1.5 from flooring wrongly
  // if it comes out a hair low.
  const int64_t rotated = 2 * int64_t(std::floor(double(head_dim) * rotary_fraction / 2 + 1e-9));
  s.bands = rotated / 2;
  const int64_t B = s.bands;
  s.theta.resize(size_t(B));
  for (int64_t k = 0; k < B; ++k) {
    // e_k = (2/R) * linspace(0, B, B)[k]; e_0 = 0 when B = 1.
    const double e = B == 1 ? 0.0 : (2.0 / double(rotated)) * (double(k) * double(B) / double(B - 1));
    s.theta[size_t(k)] = 1.0 / std::pow(max_wavelength, e);
  }
  return s;
}

template <typename T>
void make_rotary_tables(const RotarySpec& spec, int64_t first, int64_t count,
                        std::vector<T>& cos_table, std::vector<T>& sin_table) {
  const int64_t B = spec.bands;
  cos_table.resize(size_t(count * B));
  sin_table.resize(size_t(count * B));
  for (int64_t i = 0; i < count; ++i)
    for (int64_t k = 0; k < B; ++k) {
      const double a = double(first + i) * spec.theta[size_t(k)];
      cos_table[size_t(i * B + k)] = T(std::cos(a));
      sin_table[size_t(i * B + k)] = T(std::sin(a));
    }
}

template void make_rotary_tables<float>(const RotarySpec&, int64_t, int64_t, std::vector<float>&,
                                        std::vector<float>&);
template void make_rotary_tables<double>(const RotarySpec&, int64_t, int64_t,
                                         std::vector<double>&, std::vector<double>&);

}  // namespace par
