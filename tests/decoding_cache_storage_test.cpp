// Which element type cached decoding keeps its cross caches in (launch/options.h,
// decoding_cache_storage): bfloat16 only where a step's attention reads them as they lie.
#include <gtest/gtest.h>

#include "launch/options.h"

namespace par {
namespace {

ModelConfig model(int64_t context, int64_t d, int64_t heads) {
  ModelConfig c;
  c.context_length = context;
  c.d_model = d;
  c.cross_heads = heads;
  return c;
}

bool bf16(const std::string& storage, const std::string& device, const std::string& precision,
          const std::string& attention, int64_t samples, const ModelConfig& m) {
  return decoding_cache_storage(storage, device, precision, attention, samples, m) ==
         KeyValueStorage::kBf16;
}

TEST(DecodingCacheStorage, AutoIsBf16WhereTheSplitKernelsReadIt) {
  const ModelConfig big = model(131072, 1024, 16);  // heads of 64
  EXPECT_TRUE(bf16("auto", "cuda", "bf16", "auto", 1, big));
  EXPECT_TRUE(bf16("auto", "cuda", "bf16", "fused", 16, big));
  EXPECT_TRUE(bf16("auto", "cuda", "bf16", "cudnn", 1, big));
  // Not the split kernels: the blocked path, float32 or tf32 products.
  EXPECT_FALSE(bf16("auto", "cuda", "bf16", "blocked", 1, big));
  EXPECT_FALSE(bf16("auto", "cuda", "tf32", "auto", 1, big));
  EXPECT_FALSE(bf16("auto", "cpu", "fp32", "auto", 1, big));
  // Several samples: the kernel for a few queries takes at most 16, over 1,024 keys or more,
  // within its shared memory (16 x (64 + 258 + 128) floats fit in 48 KiB; 16 heads of 512
  // do not).
  EXPECT_FALSE(bf16("auto", "cuda", "bf16", "auto", 17, big));
  EXPECT_FALSE(bf16("auto", "cuda", "bf16", "auto", 4, model(512, 1024, 16)));
  EXPECT_TRUE(bf16("auto", "cuda", "bf16", "auto", 1, model(512, 1024, 16)));
  EXPECT_FALSE(bf16("auto", "cuda", "bf16", "auto", 16, model(131072, 1024, 2)));
  // bfloat16 rows fill whole words: an odd d_model stays float32.
  EXPECT_FALSE(bf16("auto", "cuda", "bf16", "auto", 1, model(131072, 1023, 1)));
}

TEST(DecodingCacheStorage, AnExplicitChoiceIsTaken) {
  const ModelConfig big = model(131072, 1024, 16);
  EXPECT_TRUE(bf16("bf16", "cuda", "tf32", "blocked", 32, big));
  EXPECT_FALSE(bf16("fp32", "cuda", "bf16", "auto", 1, big));
}

}  // namespace
}  // namespace par
