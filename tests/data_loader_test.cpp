// The background loader: batches are exactly the windows window_of_sample names, starting
// anywhere, split any way across data-parallel ranks, and errors surface on the caller.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/loader.h"
#include "data/sample_order.h"

#include "tests/temp_dir.h"

namespace par {
namespace {

using testing_util::TempDir;

namespace fs = std::filesystem;

constexpr int64_t kN = 8;  // context length
constexpr int64_t kVocab = 300;

// Two shards, 5 + 3 = 8 windows of N+1 = 9 tokens.
struct Data {
  TempDir dir;
  std::vector<std::string> paths = {dir.file("a.h5"), dir.file("b.h5")};
  Data() {
    std::mt19937_64 g(11);
    for (int64_t i = 0; i < 2; ++i) {
      std::vector<int32_t> t(static_cast<size_t>(i == 0 ? 5 * kN + 1 : 3 * kN + 4));
      for (auto& x : t) x = static_cast<int32_t>(g() % kVocab);
      write_shard(paths[static_cast<size_t>(i)], t.data(), static_cast<int64_t>(t.size()), kVocab);
    }
  }
};

std::vector<int32_t> direct(const Dataset& d, uint64_t seed, int64_t sample, int64_t b, int64_t e) {
  std::vector<int32_t> out(static_cast<size_t>(e - b));
  d.read_window(window_of_sample(seed, sample, d.num_windows()), b, e, out.data());
  return out;
}

TEST(LoaderTest, BatchesEqualDirectReads) {
  Data data;
  Dataset d(data.paths, kN, kVocab);
  ASSERT_EQ(d.num_windows(), 8);
  LoaderOptions o;
  o.global_batch = 3;
  o.first = 1;
  o.count = 2;
  o.col_begin = 2;
  o.col_end = 7;
  o.seed = 99;
  o.prefetch = 2;
  Loader loader(d, o, 0);
  EXPECT_EQ(loader.columns(), 5);
  for (int64_t k = 0; k < 7; ++k) {  // past one epoch (21 samples > 8 windows)
    EXPECT_EQ(loader.next_batch_index(), k);
    const Batch b = loader.next();
    EXPECT_EQ(b.index, k);
    ASSERT_EQ(b.samples.size(), 2u);
    ASSERT_EQ(b.tokens.size(), 10u);
    for (int64_t i = 0; i < 2; ++i) {
      const int64_t sample = k * 3 + 1 + i;
      EXPECT_EQ(b.samples[static_cast<size_t>(i)], sample);
      EXPECT_EQ(std::vector<int32_t>(b.tokens.begin() + i * 5, b.tokens.begin() + i * 5 + 5),
                direct(d, 99, sample, 2, 7))
          << "batch " << k << " sample " << i;
    }
  }
}

TEST(LoaderTest, StartingAtBatchKEqualsSkippingK) {
  Data data;
  Dataset d(data.paths, kN, kVocab);
  LoaderOptions o;
  o.global_batch = 2;
  o.count = 2;
  o.seed = 5;
  std::vector<Batch> from_zero;
  {
    Loader l(d, o, 0);
    for (int i = 0; i < 10; ++i) from_zero.push_back(l.next());
  }
  Loader l(d, o, 4);
  for (int i = 4; i < 10; ++i) {
    const Batch b = l.next();
    EXPECT_EQ(b.index, i);
    EXPECT_EQ(b.samples, from_zero[static_cast<size_t>(i)].samples);
    EXPECT_EQ(b.tokens, from_zero[static_cast<size_t>(i)].tokens);
  }
  EXPECT_EQ(from_zero[0].tokens.size(), static_cast<size_t>(2 * (kN + 1)));
  EXPECT_EQ(Loader::read_batch(d, o, 7).tokens, from_zero[7].tokens);
}

TEST(LoaderTest, DataParallelSharesPartitionTheGlobalBatch) {
  Data data;
  Dataset d(data.paths, kN, kVocab);
  LoaderOptions whole;
  whole.global_batch = 6;
  whole.count = 6;
  whole.seed = 1;
  Loader all(d, whole, 2);
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int64_t r = 0; r < 3; ++r) {
    LoaderOptions o = whole;
    o.first = 2 * r;
    o.count = 2;
    ranks.push_back(std::make_unique<Loader>(d, o, 2));
  }
  for (int k = 0; k < 4; ++k) {
    const Batch b = all.next();
    std::vector<int32_t> tokens;
    std::vector<int64_t> samples;
    for (auto& r : ranks) {
      const Batch p = r->next();
      EXPECT_EQ(p.index, b.index);
      tokens.insert(tokens.end(), p.tokens.begin(), p.tokens.end());
      samples.insert(samples.end(), p.samples.begin(), p.samples.end());
    }
    EXPECT_EQ(samples, b.samples);
    EXPECT_EQ(tokens, b.tokens);
  }
}

TEST(LoaderTest, ErrorOnTheThreadSurfacesFromNext) {
  TempDir dir;
  const std::string bad = dir.file("bad.h5");
  std::vector<int32_t> t(4 * kN + 1, 9);
  t[static_cast<size_t>(2 * kN + 3)] = 777;  // inside window 2 only
  {
    h5::Object f = h5::create_file(bad);
    h5::write_attribute<std::string>(f.id(), "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f.id(), "vocab_size", kVocab);
    h5::write_dataset<int32_t>(f.id(), "tokens", t.data(), {static_cast<int64_t>(t.size())});
  }
  Dataset d({bad}, kN, kVocab);
  LoaderOptions o;  // one sample per batch: one epoch is 4 batches
  Loader l(d, o, 0);
  std::string msg;
  int64_t good = 0;
  for (int i = 0; i < 4 && msg.empty(); ++i) {
    try {
      l.next();
      ++good;
    } catch (const UserError& e) {
      msg = e.what();
    }
  }
  int64_t bad_at = 0;  // the sample that reads window 2
  while (window_of_sample(0, bad_at, 4) != 2) ++bad_at;
  EXPECT_EQ(good, bad_at) << "the batches before the bad window are delivered";
  EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  EXPECT_NE(msg.find("position " + std::to_string(2 * kN + 3)), std::string::npos) << msg;
  EXPECT_NE(msg.find("777"), std::string::npos) << msg;
  EXPECT_THROW(l.next(), UserError);  // and it stays failed
}

TEST(LoaderTest, DestructorStopsPromptlyWithAFullQueue) {
  Data data;
  Dataset d(data.paths, kN, kVocab);
  LoaderOptions o;
  o.prefetch = 1;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    Loader l(d, o, 0);
    if (i % 2) l.next();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

}  // namespace
}  // namespace par
