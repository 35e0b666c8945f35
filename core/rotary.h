// Rotary position encoding, official Perceiver AR variant (spec/MODEL.md section 3):
// only the first R = 2*floor(D*f/2) dims of each head rotate, in adjacent pairs, with
// wavelengths from 1 to max_wavelength (not the usual base 10000).
#pragma once

#include <cstdint>
#include <vector>

namespace par {

struct RotarySpec {
  int64_t head_dim = 0;
  int64_t bands = 0;           // B = R/2 rotated pairs per head
  std::vector<double> theta;   // [bands] angular frequency of each pair (1/wavelength)
};

RotarySpec make_rotary_spec(int64_t head_dim, double rotary_fraction, double max_wavelength);

// cos and sin of p*theta_k for p in [first, first + count), as [count, bands] tables.
// The angle is formed in double and rounded once: at p near 131072 a float32 angle would
// be off by up to ~0.008 rad.
template <typename T>
void make_rotary_tables(const RotarySpec& spec, int64_t first, int64_t count,
                        std::vector<T>& cos_table, std::vector<T>& sin_table);

}  // namespace par
