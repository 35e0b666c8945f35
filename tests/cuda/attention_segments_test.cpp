// The split of kernels/cuda/attention_segments.h against its definition (query i sees key
// j iff j <= i + q_first - k_first, 0 <= j < nk), for every small shape and offset, and the
// shapes the model calls it with. Runs without a GPU.
#include <gtest/gtest.h>

#include "kernels/cuda/attention_segments.h"

namespace par {
namespace {

using cuda::AttentionSegments;
using cuda::split_attention;

TEST(AttentionSegments, EqualTheVisibilityRuleForAllSmallShapes) {
  for (int64_t nq = 0; nq <= 9; ++nq)
    for (int64_t nk = 0; nk <= 11; ++nk)
      for (int64_t off = -12; off <= 14; ++off) {
        const int64_t k_first = 5, q_first = k_first + off;
        const AttentionSegments s = split_attention(nq, nk, q_first, k_first);
        for (int64_t i = 0; i < nq; ++i)
          for (int64_t j = 0; j < nk; ++j)
            ASSERT_EQ(s.visible(i, j), j <= i + off)
                << "nq " << nq << " nk " << nk << " offset " << off << " row " << i << " key "
                << j;
        // The pieces lie inside the call and in order.
        ASSERT_LE(s.empty_rows, nq);
        ASSERT_LE(s.prefix_keys, s.diag_keys_end);
        ASSERT_LE(s.diag_keys_end, nk);
        ASSERT_GE(s.diag_first_row, s.empty_rows);
        // The diagonal's first row sees exactly its first key: cuDNN's top-left causal
        // mask (row r sees columns c <= r) with nothing shifted.
        if (s.has_diag()) {
          ASSERT_TRUE(s.visible(s.diag_first_row, s.prefix_keys));
          if (s.diag_keys() > 1) {
            ASSERT_FALSE(s.visible(s.diag_first_row, s.prefix_keys + 1));
          }
        }
      }
}

TEST(AttentionSegments, TheModelsCalls) {
  // One rank: M = 1024 latents at the end of N = 131072 inputs. Every latent sees inputs
  // [0, N - M]; the last M - 1 inputs are the causal diagonal.
  AttentionSegments s = split_attention(1024, 131072, 131072 - 1024, 0);
  EXPECT_EQ(s.empty_rows, 0);
  EXPECT_EQ(s.prefix_keys, 131072 - 1024 + 1);
  EXPECT_EQ(s.diag_first_row, 1);
  EXPECT_EQ(s.diag_keys_end, 131072);
  // A sequence-parallel rank before the latents' (sp = 4, rank 1): all keys, no diagonal.
  s = split_attention(1024, 32768, 131072 - 1024, 32768);
  EXPECT_EQ(s.prefix_keys, 32768);
  EXPECT_FALSE(s.has_diag());
  // The last rank: its slice ends with the latents' positions.
  s = split_attention(1024, 32768, 131072 - 1024, 3 * 32768);
  EXPECT_EQ(s.prefix_keys, 32768 - 1024 + 1);
  EXPECT_EQ(s.diag_keys_end, 32768);
  // Latents spread over two ranks (M = 2 N/S): the first of them sees its own keys from
  // row 0; the rank after it holds inputs no latent before them sees.
  s = split_attention(8, 4, 0, 0);
  EXPECT_EQ(s.prefix_keys, 1);
  EXPECT_EQ(s.diag_keys_end, 4);
  s = split_attention(8, 4, 0, 4);
  EXPECT_EQ(s.empty_rows, 4);
  EXPECT_EQ(s.prefix_keys, 1);
  // The latent self-attention is one top-left causal call.
  EXPECT_TRUE(cuda::is_top_left_causal(131072 - 1024, 131072 - 1024));
  EXPECT_FALSE(cuda::is_top_left_causal(131072 - 1024, 0));
}

}  // namespace
}  // namespace par
