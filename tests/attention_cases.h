// Attention test cases shared by the op parity table (tests/op_cases.cpp), the CUDA plan
// test (host engine, no GPU) and the CUDA attention test:
// PAD and dropped keys, rows that see no key, whole examples with no visible key,
// non-contiguous kept keys, odd head sizes, batch > 1, and forced small key blocks so that
// small shapes cross several blocks (with a partial last one), as long contexts do.
#pragma once

#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/ops.h"
#include "tests/test_util.h"

namespace par::testing_util {

struct AttentionCase {
  std::string name;
  int64_t batch, nq, nk, heads, head_dim;
  int64_t q_offset;        // q_pos[i] = q_offset + i; k_pos[j] = j
  double pad_fraction;     // keys made invisible at random (PAD or dropped), per example
  int64_t key_block;       // forced keys per block; 0: the backend's choice
  bool use_keep = true;    // false: k_keep is null (self-attention)
  bool dead_example = false;   // example 0 has no visible key at all
  bool alternating = false;    // kept keys in runs of 1..3 with gaps
};

// GoogleTest prints a parameter with this (instead of its bytes).
inline void PrintTo(const AttentionCase& c, std::ostream* os) { *os << c.name; }

inline std::vector<AttentionCase> attention_cases() {
  return {
      {"cross", 2, 37, 301, 3, 20, 301 - 37, 0.3, 64},
      {"cross_odd_blocks", 2, 37, 301, 3, 20, 301 - 37, 0.3, 37},
      {"self_causal", 3, 45, 45, 2, 16, 0, 0.0, 16, false},
      {"rows_without_keys", 2, 20, 50, 2, 8, -5, 0.3, 13, true, true},
      {"noncontiguous_kept", 2, 16, 96, 4, 7, 80, 0.0, 10, true, false, true},
      {"one_block", 1, 33, 700, 2, 32, 667, 0.1, 0},
      {"single_key_blocks", 1, 5, 9, 1, 3, 4, 0.2, 1},
      // Head sizes of the fused kernel's instances, with partial query and key tiles.
      {"heads_of_64", 2, 70, 200, 2, 64, 130, 0.2, 0},
      {"heads_of_128", 1, 20, 90, 1, 128, 70, 0.1, 0, true, false, true},
      // A few queries over many keys (several samples' decoding step over their shared
      // cache): the split kernel for a few queries on a GPU, the causal edge inside a split.
      {"few_queries_long", 2, 5, 1500, 3, 32, 1400, 0.2, 0},
  };
}

// One case's data on the host.
struct AttentionData {
  AttentionCase c;
  std::vector<float> q, k, v, d_o;
  std::vector<int64_t> q_pos, k_pos;
  std::vector<uint8_t> keep;  // [batch, nk]; empty when !use_keep
  int64_t ld() const { return c.heads * c.head_dim; }
  // The shape with host pointers to the positions and mask.
  AttentionShape shape() const {
    AttentionShape s;
    s.batch = c.batch;
    s.nq = c.nq;
    s.nk = c.nk;
    s.heads = c.heads;
    s.head_dim = c.head_dim;
    s.q_pos = q_pos.data();
    s.k_pos = k_pos.data();
    s.k_keep = c.use_keep ? keep.data() : nullptr;
    s.scale = 1.0 / std::sqrt(double(c.head_dim));
    s.q_pos_first = c.q_offset;  // the positions are contiguous, as in the model
    s.k_pos_first = 0;
    return s;
  }
  // Whether key j of example b is visible to at least one query.
  bool key_seen(int64_t b, int64_t j) const {
    if (c.use_keep && !keep[size_t(b * c.nk + j)]) return false;
    for (int64_t i = 0; i < c.nq; ++i)
      if (k_pos[size_t(j)] <= q_pos[size_t(i)]) return true;
    return false;
  }
};

inline AttentionData make_attention_data(const AttentionCase& c, uint64_t seed) {
  AttentionData d;
  d.c = c;
  const int64_t ld = c.heads * c.head_dim;
  d.q = random_vector<float>(c.batch * c.nq * ld, seed + 1);
  d.k = random_vector<float>(c.batch * c.nk * ld, seed + 2);
  d.v = random_vector<float>(c.batch * c.nk * ld, seed + 3);
  d.d_o = random_vector<float>(c.batch * c.nq * ld, seed + 4);
  for (int64_t i = 0; i < c.nq; ++i) d.q_pos.push_back(c.q_offset + i);
  for (int64_t j = 0; j < c.nk; ++j) d.k_pos.push_back(j);
  if (c.use_keep) {
    std::mt19937_64 rng(seed + 5);
    std::uniform_real_distribution<double> u(0, 1);
    d.keep.assign(size_t(c.batch * c.nk), 1);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t j = 0; j < c.nk; ++j) {
        uint8_t& kj = d.keep[size_t(b * c.nk + j)];
        if (c.alternating) kj = (j % 7 == 0 || j % 7 == 3 || j % 7 == 4) ? 1 : 0;
        if (u(rng) < c.pad_fraction) kj = 0;
        if (c.dead_example && b == 0) kj = 0;
      }
  }
  return d;
}

}  // namespace par::testing_util
