// Into how many chunks of keys cuDNN's forward over a long prefix is split
// (kernels/cuda/cudnn_key_splits.h): enough thread blocks for the GPU, chunks that tile an
// example's rows exactly, none empty. No GPU needed; SdpaGraph.KeyChunksAsABatch checks
// what such a call computes; CudnnKeySplits.* runs it on a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "core/bf16.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cudnn_api.h"
#include "kernels/cuda/cudnn_key_splits.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace par {
namespace {

using cuda::forward_key_split;
using cuda::KeySplit;
using cuda::MatmulPrecision;

void expect_split(const KeySplit& got, int64_t splits, int64_t chunk) {
  EXPECT_EQ(got.splits, splits);
  if (splits > 1) {
    EXPECT_EQ(got.chunk, chunk);
  }
}

// gpu-100m-131k's cross-attention: 1 example x 16 heads x 8 tiles of 128 queries is 128
// blocks, short of 3 per SM on an H100 (132 SMs) or an A100 (108): 4 chunks of 32,768 keys.
TEST(KeySplits, TheCrossAttentionOfOneLongExampleIsSplit) {
  expect_split(forward_key_split(0, 1, 16, 1024, 131072, 130049, 132), 4, 32768);
  expect_split(forward_key_split(0, 1, 16, 1024, 131072, 130049, 108), 4, 32768);
  // A sequence-parallel rank's share (every latent sees all its keys): chunks of 4,096 keys
  // at least.
  expect_split(forward_key_split(0, 1, 16, 1024, 16384, 16384, 132), 4, 4096);
  expect_split(forward_key_split(0, 1, 16, 1024, 8192, 8192, 132), 2, 4096);
  expect_split(forward_key_split(0, 1, 16, 1024, 4096, 4096, 132), 1, 0);
  // Blocks enough already: 8 examples, or the queries of a long latent array.
  expect_split(forward_key_split(0, 8, 16, 1024, 131072, 130049, 132), 1, 0);
  expect_split(forward_key_split(0, 1, 16, 4096, 131072, 126977, 132), 1, 0);
  // A card with more SMs than the memory plan counts is taken to have kPlanSmCount.
  expect_split(forward_key_split(0, 1, 16, 1024, 131072, 130049, 188), 4, 32768);
  expect_split(forward_key_split(0, 1, 16, 1024, 131072, 130049, 1000), 4, 32768);
  // Without the SM count (the device did not say), no split.
  expect_split(forward_key_split(0, 1, 16, 1024, 131072, 130049, 0), 1, 0);
}

TEST(KeySplits, ARequestIsHonouredWhereTheChunksTileTheRows) {
  expect_split(forward_key_split(1, 1, 16, 1024, 131072, 130049, 132), 1, 0);
  expect_split(forward_key_split(8, 1, 16, 1024, 131072, 130049, 132), 8, 16384);
  expect_split(forward_key_split(8, 8, 16, 1024, 131072, 130049, 132), 8, 16384);
  expect_split(forward_key_split(64, 1, 16, 1024, 131072, 130049, 132), cuda::kMaxKeySplits,
               131072 / cuda::kMaxKeySplits);
  // 3 does not divide 131,072, and 1 is what halving it leaves.
  expect_split(forward_key_split(3, 1, 16, 1024, 131072, 130049, 132), 1, 0);
  expect_split(forward_key_split(3, 2, 2, 5, 12, 10, 132), 3, 4);
  expect_split(forward_key_split(4, 2, 2, 5, 12, 10, 132), 4, 3);
}

// The last chunk must hold a key: fewer chunks where the prefix ends early.
TEST(KeySplits, NoChunkIsEmpty) {
  expect_split(forward_key_split(4, 1, 2, 5, 12, 9, 132), 2, 6);   // 3 x 3 rows hold 9 keys
  expect_split(forward_key_split(4, 1, 2, 5, 12, 10, 132), 4, 3);  // the 4th holds the 10th
  expect_split(forward_key_split(4, 1, 2, 5, 12, 4, 132), 1, 0);
  expect_split(forward_key_split(2, 1, 2, 5, 12, 7, 132), 2, 6);
  expect_split(forward_key_split(2, 1, 2, 5, 12, 6, 132), 1, 0);
  // Calls with nothing to split.
  expect_split(forward_key_split(4, 1, 2, 5, 12, 0, 132), 1, 0);
  expect_split(forward_key_split(4, 1, 2, 5, 12, 13, 132), 1, 0);
  expect_split(forward_key_split(4, 0, 2, 5, 12, 12, 132), 1, 0);
}

// On a GPU: a cross-attention over bfloat16 keys read in place (none masked), its prefix
// in 2, 3 and 4 chunks of keys and chosen automatically, against the prefix in one piece
// (the chunks' merge rounds differently: within a few bf16 ulps) and the blocked path on
// the widened keys. Each count of chunks is a graph of its own (one plan built), and the
// diagonal's merge follows the chunks' (40 queries over 264 keys: 225 in the prefix).
TEST(CudnnKeySplits, ChunksMatchOnePiece) {
  PAR_SKIP_WITHOUT_GPU();
  ASSERT_NE(cuda::cudnn_api(), nullptr) << "no cuDNN: " << cuda::cudnn_unavailable_reason();
  auto ops = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
  AttentionShape s{2, 40, 264, 2, 64};
  s.scale = 1.0 / 8;
  const int64_t ld = s.heads * s.head_dim, nk = s.batch * s.nk * ld;
  std::vector<int64_t> q_pos, k_pos;
  for (int64_t i = 0; i < s.nq; ++i) q_pos.push_back(s.nk - s.nq + i);
  for (int64_t j = 0; j < s.nk; ++j) k_pos.push_back(j);
  std::vector<uint16_t> k16, v16;
  for (float x : cuda_test::random_vector<float>(nk, 60, 1.5)) k16.push_back(bf16_bits(x));
  for (float x : cuda_test::random_vector<float>(nk, 61)) v16.push_back(bf16_bits(x));
  const auto q = cuda_test::random_vector<float>(s.batch * s.nq * ld, 62, 1.5);
  cuda_test::DeviceArray<float> gq(*ops, q);
  cuda_test::DeviceArray<uint16_t> gk(*ops, k16), gv(*ops, v16);
  cuda_test::DeviceArray<int64_t> gqp(*ops, q_pos), gkp(*ops, k_pos);
  s.q_pos = gqp.get();
  s.k_pos = gkp.get();
  s.q_pos_first = s.nk - s.nq;
  s.k_pos_first = 0;
  s.keeps_every_key = true;
  const size_t rows = size_t(s.batch * s.nq * ld), stats = size_t(s.batch * s.heads * s.nq);
  auto run = [&](int64_t splits, cuda::AttentionKernel kernel) {
    cuda::set_attention_kernel(*ops, kernel);
    cuda::set_cudnn_key_splits(*ops, splits);
    cuda_test::DeviceArray<float> o(*ops, rows), lse(*ops, stats);
    ops->attention_forward_bf16_kv(s, gq.get(), gk.get(), gv.get(), o.get(), lse.get());
    return std::make_pair(o.host(), lse.host());
  };
  const auto blocked = run(1, cuda::AttentionKernel::kBlocked);
  const auto one = run(1, cuda::AttentionKernel::kCudnn);
  const double tol = cuda_test::attention_tol(MatmulPrecision::kBF16);
  EXPECT_TRUE(testing_util::close(one.first, blocked.first, tol));
  EXPECT_TRUE(testing_util::close(one.second, blocked.second, tol));
  for (int64_t splits : {2, 3, 4, 0}) {
    SCOPED_TRACE(::testing::Message() << "chunks requested: " << splits);
    const int64_t built = cuda::cudnn_plans_built();
    const auto got = run(splits, cuda::AttentionKernel::kCudnn);
    // Automatic: this small call fills no GPU, but its chunks would be under 4,096 keys.
    EXPECT_EQ(cuda::cudnn_plans_built(), built + (splits > 0 ? 1 : 0));
    EXPECT_TRUE(testing_util::close(got.first, one.first, 2e-2));
    EXPECT_TRUE(testing_util::close(got.second, one.second, 1e-5));
    EXPECT_TRUE(testing_util::close(got.first, blocked.first, tol));
    EXPECT_TRUE(testing_util::close(got.second, blocked.second, tol));
    if (splits == 0) {
      EXPECT_EQ(got.first, one.first) << "automatic: not split, the one piece's bits";
    } else {
      // Merged in float32, o is not the one piece's bf16 values (so the chunks did run).
      EXPECT_NE(got.first, one.first) << "the chunks' bits are the one piece's";
    }
  }
}

}  // namespace
}  // namespace par
