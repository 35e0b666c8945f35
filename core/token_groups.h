// Decoding's cross-attention keys grouped by token, the layout of
// Ops::token_attention_forward (core/ops.h, TokenAttentionShape).
//
// A key of the cross cache is its token's table row rotated at its position, so a step's
// score of key j is a short dot product of per-token coefficients with the rotary row of
// position j. Grouping the keys by token lets a kernel hold one token's coefficients while
// it runs over all of that token's positions, 16 keys to a vector: the rotary rows are
// stored band-major in group order for that. PAD keys are left out (never visible).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/rotary.h"

namespace par {

template <typename T>
struct TokenGroups {
  int64_t stride = 0;           // of the cos and sin rows: >= n + 16, a multiple of 16
  std::vector<int64_t> group;   // [vocab + 1]: token t's keys are [group[t], group[t+1])
  std::vector<int64_t> pos;     // [n]: each key's position, increasing within a group
  std::vector<T> cos, sin;      // [bands, stride]: band b of key j at b*stride + j; pads 0
  int64_t keys() const { return group.empty() ? 0 : group.back(); }
};

// The keys of tokens[i] at position first_position + i, i < count.
template <typename T>
TokenGroups<T> group_tokens(const int32_t* tokens, int64_t count, int64_t first_position,
                            int64_t vocab, const RotarySpec& spec);

// The same into g, its buffers reused (decoding regroups its window often, and fresh
// memory can cost more than the grouping: ~10 us a page at first touch on a VM), with the
// rotary rows of the positions given ([count, bands], as make_rotary_tables or
// SlidingRotaryTables makes them), and cos and sin rows `stride` apart (0:
// token_groups_stride of the keys; else at least that).
template <typename T>
void group_tokens(const int32_t* tokens, int64_t count, int64_t first_position, int64_t vocab,
                  int64_t bands, const T* cos_rows, const T* sin_rows, int64_t stride,
                  TokenGroups<T>& g);

// The rows group_tokens makes room for with `count` keys (sizes of the backend buffers).
inline int64_t token_groups_stride(int64_t count) { return (count + 31) / 16 * 16; }

// Room in g for up to `keys` keys, so that grouping them takes no more memory; and the
// bytes that room takes.
template <typename T>
void reserve_token_groups(TokenGroups<T>& g, int64_t vocab, int64_t bands, int64_t keys) {
  g.group.reserve(std::size_t(vocab + 1));
  g.pos.reserve(std::size_t(keys));
  g.cos.reserve(std::size_t(bands * token_groups_stride(keys)));
  g.sin.reserve(std::size_t(bands * token_groups_stride(keys)));
}
template <typename T>
double token_groups_host_bytes(int64_t vocab, int64_t bands, int64_t keys) {
  return double(vocab + 1 + keys) * sizeof(int64_t) +
         2.0 * double(bands) * double(token_groups_stride(keys)) * sizeof(T);
}

// Several sequences' keys grouped by token, a block each: TokenAttentionShape::own_group's
// layout (group: [k, vocab + 1]; pos: [k, stride]; cos and sin: [k, bands, stride]).
template <typename T>
struct TokenGroupBlocks {
  int64_t stride = 0;
  std::vector<int64_t> group, pos;
  std::vector<T> cos, sin;
};

// Sequence k's tokens[k][i] at position first_position + i, in blocks of the stride the
// longest sequence needs.
template <typename T>
TokenGroupBlocks<T> group_tokens_in_blocks(const std::vector<std::vector<int32_t>>& tokens,
                                           int64_t first_position, int64_t vocab,
                                           const RotarySpec& spec);

}  // namespace par
