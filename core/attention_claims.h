// What a caller may say of an attention call's arrays beyond the arrays themselves
// (AttentionShape: its positions as ranges, q_pos_first and k_pos_first, and
// keeps_every_key), checked against the arrays in host memory.
//
// Why check: the CUDA backend plans cuDNN's mask from the ranges alone and reads the keys
// where they lie when every key is kept, so a wrong claim would be a wrong mask there, with
// nothing to notice it. The CPU backend reads the arrays and checks every call's claims
// (kernels/cpu/attention.cpp), so every CPU test checks its callers'; a test decorator
// checks them on a GPU (tests/cuda/claim_checking_ops.h).
#pragma once

#include <cstdint>

#include "core/error.h"
#include "core/ops.h"

namespace par {

inline bool has_attention_claims(const AttentionShape& s) {
  return s.q_pos_first != AttentionShape::kUnknownPosition ||
         s.k_pos_first != AttentionShape::kUnknownPosition ||
         (s.keeps_every_key && s.k_keep != nullptr);
}

// `s` with its q_pos, k_pos and k_keep in host memory. Throws (PAR_ASSERT) on a claim the
// arrays do not bear out.
inline void check_attention_claims(const AttentionShape& s) {
  if (s.q_pos_first != AttentionShape::kUnknownPosition)
    for (int64_t i = 0; i < s.nq; ++i)
      PAR_ASSERT(s.q_pos[i] == s.q_pos_first + i, "attention: query ", i, " is at position ",
                 s.q_pos[i], ", not q_pos_first + ", i, " = ", s.q_pos_first + i);
  if (s.k_pos_first != AttentionShape::kUnknownPosition)
    for (int64_t j = 0; j < s.nk; ++j)
      PAR_ASSERT(s.k_pos[j] == s.k_pos_first + j, "attention: key ", j, " is at position ",
                 s.k_pos[j], ", not k_pos_first + ", j, " = ", s.k_pos_first + j);
  if (s.keeps_every_key && s.k_keep)
    for (int64_t j = 0; j < s.batch * s.nk; ++j)
      PAR_ASSERT(s.k_keep[j] != 0, "attention: keeps_every_key, but key ", j % s.nk,
                 " of example ", j / s.nk, " is not kept");
}

}  // namespace par
