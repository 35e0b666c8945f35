// Rotary position encoding, official Perceiver AR variant (spec/MODEL.md section 3):
// only the first R = 2*floor(D*f/2) dims of each head rotate, in adjacent pairs, with
// wavelengths from 1 to max_wavelength (not the usual base 10000).
#pragma once

#include <cstdint>
#include <utility>
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

// The same tables for a range of positions that slides forward, each position computed
// once: decoding groups the window's keys by token again and again (core/token_groups.h),
// over positions it mostly grouped before, and a table row costs 2 * bands sines and
// cosines of large angles. Regrouping cpu-131k's window of 127,197 keys took 69 ms with
// its rows made afresh, 42 ms with them kept here.
//
// Up to max_rows positions at a time take memory once, held from construction:
// host_bytes(bands, max_rows) in all (decoding plans it, Decoder::memory). More still work,
// growing the tables.
template <typename T>
class SlidingRotaryTables {
 public:
  SlidingRotaryTables(RotarySpec spec, int64_t max_rows);
  // The rows of max_rows positions, and the rows made at a time (kChunk) before they join.
  static constexpr int64_t kChunk = 4096;
  static double host_bytes(int64_t bands, int64_t max_rows) {
    return 2.0 * double(max_rows + kChunk) * double(bands) * sizeof(T);
  }
  // Rows of positions [first, first + count) as make_rotary_tables makes them, valid until
  // the next call: cos at *cos_rows, sin at *sin_rows, [count, bands]. The positions before
  // `first` are forgotten.
  void rows(int64_t first, int64_t count, const T** cos_rows, const T** sin_rows);

 private:
  RotarySpec spec_;
  int64_t first_ = 0, count_ = 0;  // the positions held
  std::vector<T> cos_, sin_;
  std::vector<T> chunk_cos_, chunk_sin_;  // rows being made
};

}  // namespace par
