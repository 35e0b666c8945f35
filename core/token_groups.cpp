// Grouping decoding's cross-attention keys by token (core/token_groups.h): a counting sort,
// stable in position, and the rotary rows moved into group order.
#include "core/token_groups.h"

#include <algorithm>

#include "core/constants.h"
#include "core/error.h"

namespace par {

template <typename T>
TokenGroups<T> group_tokens(const int32_t* tokens, int64_t count, int64_t first_position,
                            int64_t vocab, const RotarySpec& spec) {
  std::vector<T> c, s;
  make_rotary_tables(spec, first_position, count, c, s);
  TokenGroups<T> g;
  group_tokens(tokens, count, first_position, vocab, spec.bands, c.data(), s.data(), 0, g);
  return g;
}

template <typename T>
void group_tokens(const int32_t* tokens, int64_t count, int64_t first_position, int64_t vocab,
                  int64_t bands, const T* c, const T* s, int64_t stride, TokenGroups<T>& g) {
  g.group.assign(size_t(vocab + 1), 0);
  for (int64_t i = 0; i < count; ++i) {
    PAR_ASSERT(tokens[i] >= 0 && tokens[i] < vocab, "token outside the vocabulary");
    if (tokens[i] != kPadToken) ++g.group[size_t(tokens[i]) + 1];
  }
  for (int64_t t = 0; t < vocab; ++t) g.group[size_t(t + 1)] += g.group[size_t(t)];
  const int64_t n = g.group.back(), B = bands;
  PAR_ASSERT(stride == 0 || stride >= token_groups_stride(n), "rotary rows too short");
  g.stride = stride > 0 ? stride : token_groups_stride(n);
  g.pos.resize(size_t(n));
  g.cos.assign(size_t(B * g.stride), T(0));
  g.sin.assign(size_t(B * g.stride), T(0));
  std::vector<int64_t> next(g.group.begin(), g.group.end() - 1);
  for (int64_t i = 0; i < count; ++i) {
    if (tokens[i] == kPadToken) continue;
    const int64_t j = next[size_t(tokens[i])]++;
    g.pos[size_t(j)] = first_position + i;
    for (int64_t b = 0; b < B; ++b) {
      g.cos[size_t(b * g.stride + j)] = c[size_t(i * B + b)];
      g.sin[size_t(b * g.stride + j)] = s[size_t(i * B + b)];
    }
  }
}

template <typename T>
TokenGroupBlocks<T> group_tokens_in_blocks(const std::vector<std::vector<int32_t>>& tokens,
                                           int64_t first_position, int64_t vocab,
                                           const RotarySpec& spec) {
  TokenGroupBlocks<T> out;
  for (const std::vector<int32_t>& t : tokens)
    out.stride = std::max(out.stride, token_groups_stride(int64_t(t.size())));
  const int64_t K = int64_t(tokens.size()), B = spec.bands, stride = out.stride;
  out.pos.assign(size_t(K * stride), 0);
  out.cos.assign(size_t(K * B * stride), T(0));
  out.sin.assign(out.cos.size(), T(0));
  for (int64_t k = 0; k < K; ++k) {
    const std::vector<int32_t>& t = tokens[size_t(k)];
    const TokenGroups<T> g =
        group_tokens<T>(t.data(), int64_t(t.size()), first_position, vocab, spec);
    out.group.insert(out.group.end(), g.group.begin(), g.group.end());
    std::copy(g.pos.begin(), g.pos.end(), out.pos.begin() + k * stride);
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(g.cos.begin() + b * g.stride, g.keys(), out.cos.begin() + (k * B + b) * stride);
      std::copy_n(g.sin.begin() + b * g.stride, g.keys(), out.sin.begin() + (k * B + b) * stride);
    }
  }
  return out;
}

template TokenGroups<float> group_tokens(const int32_t*, int64_t, int64_t, int64_t,
                                         const RotarySpec&);
template TokenGroups<double> group_tokens(const int32_t*, int64_t, int64_t, int64_t,
                                          const RotarySpec&);
template void group_tokens(const int32_t*, int64_t, int64_t, int64_t, int64_t, const float*,
                           const float*, int64_t, TokenGroups<float>&);
template void group_tokens(const int32_t*, int64_t, int64_t, int64_t, int64_t, const double*,
                           const double*, int64_t, TokenGroups<double>&);
template TokenGroupBlocks<float> group_tokens_in_blocks(const std::vector<std::vector<int32_t>>&,
                                                        int64_t, int64_t, const RotarySpec&);
template TokenGroupBlocks<double> group_tokens_in_blocks(const std::vector<std::vector<int32_t>>&,
                                                         int64_t, int64_t, const RotarySpec&);

}  // namespace par
