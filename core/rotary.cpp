#include "core/rotary.h"

#include <algorithm>
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

template <typename T>
SlidingRotaryTables<T>::SlidingRotaryTables(RotarySpec spec, int64_t max_rows)
    : spec_(std::move(spec)) {
  cos_.reserve(size_t(max_rows * spec_.bands));
  sin_.reserve(size_t(max_rows * spec_.bands));
  chunk_cos_.reserve(size_t(kChunk * spec_.bands));
  chunk_sin_.reserve(size_t(kChunk * spec_.bands));
}

template <typename T>
void SlidingRotaryTables<T>::rows(int64_t first, int64_t count, const T** cos_rows,
                                  const T** sin_rows) {
  const int64_t B = spec_.bands;
  if (first < first_ || first > first_ + count_) {  // nothing to keep
    first_ = first;
    count_ = 0;
    cos_.clear();
    sin_.clear();
  }
  if (first > first_) {  // forget the positions before `first`
    const int64_t drop = first - first_;
    cos_.erase(cos_.begin(), cos_.begin() + drop * B);
    sin_.erase(sin_.begin(), sin_.begin() + drop * B);
    first_ = first;
    count_ -= drop;
  }
  while (count_ < count) {  // a chunk at a time: a window's rows would double the memory
    const int64_t n = std::min(kChunk, count - count_);
    make_rotary_tables(spec_, first_ + count_, n, chunk_cos_, chunk_sin_);
    cos_.insert(cos_.end(), chunk_cos_.begin(), chunk_cos_.end());
    sin_.insert(sin_.end(), chunk_sin_.begin(), chunk_sin_.end());
    count_ += n;
  }
  *cos_rows = cos_.data();
  *sin_rows = sin_.data();
}

template class SlidingRotaryTables<float>;
template class SlidingRotaryTables<double>;

template void make_rotary_tables<float>(const RotarySpec&, int64_t, int64_t, std::vector<float>&,
                                        std::vector<float>&);
template void make_rotary_tables<double>(const RotarySpec&, int64_t, int64_t,
                                         std::vector<double>&, std::vector<double>&);

}  // namespace par
