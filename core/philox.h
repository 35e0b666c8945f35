// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// Every random draw in training is a pure function of its coordinates (seed, step,
// example, site, element), never of how many draws came before. That is what lets any
// parallel layout, any backend and a resumed run produce the same dropout masks.
// Header-only and free of library calls so that a CUDA kernel can use the same code.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PAR_HD __host__ __device__ __forceinline__
#else
#define PAR_HD inline
#endif

namespace par {

struct Philox4 {
  uint32_t v[4];
};

PAR_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                          uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 random bits: exactly representable in float32.
PAR_HD float uniform_from_bits(uint32_t bits) { return float(bits >> 8) * (1.0f / 16777216.0f); }

// Where a dropout mask lives. `site` numbers the places that draw (see DropSite);
// `example` is the example's index within the step's global batch (all micro-batches),
// so the same example gets the same mask whichever rank or micro-batch holds it.
struct DropoutKey {
  uint64_t seed = 0;
  uint32_t step = 0;
  uint32_t site = 0;
};

// The random bits of elements 4*group .. 4*group+3 of example `example` (one per lane).
PAR_HD Philox4 dropout_bits(const DropoutKey& key, uint64_t example, uint64_t group) {
  return philox4x32(uint32_t(group), (uint32_t(group >> 32) & 0xFFFFu) | (key.site << 16),
                    uint32_t(example), key.step, uint32_t(key.seed),
                    uint32_t(key.seed >> 32) ^ uint32_t(example >> 32));
}

// The keep decision for element `e` of example `example`: kept with probability 1 - p.
PAR_HD bool dropout_keep(const DropoutKey& key, uint64_t example, uint64_t e, float p) {
  return uniform_from_bits(dropout_bits(key, example, e >> 2).v[e & 3]) >= p;
}

// Sites that draw random numbers. Latent layer l uses layer_attn(l) and layer_mlp(l).
struct DropSite {
  static constexpr uint32_t kCrossAttend = 0;  // input positions dropped from the keys
  static constexpr uint32_t kCrossAttn = 1;    // residual dropout of the cross-attention
  static constexpr uint32_t kCrossMlp = 2;
  static constexpr uint32_t layer_attn(int64_t l) { return uint32_t(3 + 2 * l); }
  static constexpr uint32_t layer_mlp(int64_t l) { return uint32_t(4 + 2 * l); }
};

}  // namespace par
