// Token shards and data sets: the writer's storage choices, reading shards written by other
// tools, validation messages, and window arithmetic across shards.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/dataset.h"
#include "data/shard.h"

#include "tests/random_flips.h"
#include "tests/temp_dir.h"
#include "tests/user_error.h"

namespace par {
namespace {

using testing_util::TempDir;
using testing_util::user_error_of;

namespace fs = std::filesystem;

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(g() % static_cast<uint64_t>(vocab));
  return t;
}

// A shard as another tool might write it: whatever h5 wrappers make of the pieces.
void make_file(const std::string& path, const std::function<void(hid_t)>& fill) {
  h5::Object f = h5::create_file(path);
  fill(f.id());
}

struct StoredLayout {
  size_t elem_bytes;
  hsize_t chunk;
  int filters;
};

StoredLayout layout_of(const std::string& path) {
  h5::Lock lock;
  h5::Object f = h5::open_file(path);
  h5::Object ds(H5Dopen2(f.id(), "tokens", H5P_DEFAULT));
  h5::Object type(H5Dget_type(ds.id()));
  h5::Object dcpl(H5Dget_create_plist(ds.id()));
  StoredLayout l{H5Tget_size(type.id()), 0, H5Pget_nfilters(dcpl.id())};
  H5Pget_chunk(dcpl.id(), 1, &l.chunk);
  return l;
}

std::vector<int32_t> read_all(const std::string& path, int64_t vocab) {
  ShardReader r(path);
  std::vector<int32_t> out(static_cast<size_t>(r.info().num_tokens));
  r.read(0, r.info().num_tokens, out.data(), vocab);
  return out;
}

TEST(ShardTest, WriterPicksTypeChunksAndCompresses) {
  TempDir dir;
  struct Case {
    int64_t vocab;
    int64_t n;
    size_t bytes;
  };
  for (const Case& c : {Case{256, 1000, 1}, Case{257, 1000, 2}, Case{65536, 10, 2},
                        Case{65537, 100, 4}, Case{int64_t{1} << 31, 100, 4}}) {
    const std::string path = dir.file(cat("s", c.vocab, ".h5"));
    const std::vector<int32_t> t = random_tokens(c.n, c.vocab, 7);
    write_shard(path, t.data(), c.n, c.vocab);
    const ShardInfo info = inspect_shard(path);
    EXPECT_EQ(info.num_tokens, c.n);
    EXPECT_EQ(info.vocab_size, c.vocab);
    const StoredLayout l = layout_of(path);
    EXPECT_EQ(l.elem_bytes, c.bytes) << c.vocab;
    EXPECT_EQ(l.chunk, static_cast<hsize_t>(c.n));  // smaller than 1 Mi: one chunk
    EXPECT_EQ(l.filters, 2);                         // shuffle + gzip
    EXPECT_EQ(read_all(path, c.vocab), t);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  }
}

TEST(ShardTest, LargeShardUsesMebiTokenChunksAndReadsAcrossThem) {
  TempDir dir;
  const int64_t n = kShardChunkTokens + kShardChunkTokens / 2 + 17;
  const std::vector<int32_t> t = random_tokens(n, 259, 3);
  const std::string path = dir.file("big.h5");
  {
    ShardWriter w(path, n, 259);
    // Odd-sized pieces, so appends straddle chunk boundaries.
    for (int64_t off = 0; off < n; off += 300001) w.append(t.data() + off, std::min<int64_t>(300001, n - off));
    EXPECT_TRUE(fs::exists(path + ".tmp"));
    EXPECT_FALSE(fs::exists(path));
    w.commit();
  }
  EXPECT_EQ(layout_of(path).chunk, static_cast<hsize_t>(kShardChunkTokens));
  ShardReader r(path);
  const int64_t off = kShardChunkTokens - 5, count = 20;
  std::vector<int32_t> got(count);
  r.read(off, count, got.data(), 259);
  EXPECT_EQ(got, std::vector<int32_t>(t.begin() + off, t.begin() + off + count));
  EXPECT_EQ(read_all(path, 259), t);
}

TEST(ShardTest, WriterRejectsBadTokensAndLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("bad.h5");
  const std::vector<int32_t> t = {3, 4, 259, 5};
  std::string msg = user_error_of([&] { write_shard(path, t.data(), 4, 259); });
  EXPECT_HAS(msg, path);
  EXPECT_HAS(msg, "position 2");
  EXPECT_HAS(msg, "259");
  const std::vector<int32_t> neg = {3, -1};
  msg = user_error_of([&] { write_shard(path, neg.data(), 2, 259); });
  EXPECT_HAS(msg, "-1");
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(ShardTest, ReadsShardsWrittenByOtherTools) {
  TempDir dir;
  // int32, contiguous, uncompressed, fixed-length format string, int32 vocab_size.
  const std::string a = dir.file("a.h5");
  const std::vector<int32_t> t = {0, 1, 2, 99, 42};
  make_file(a, [&](hid_t f) {
    h5::write_dataset<int32_t>(f, "tokens", t.data(), {5});
    h5::Lock lock;
    h5::Object type(H5Tcopy(H5T_C_S1));
    H5Tset_size(type.id(), 12);
    h5::Object space(H5Screate(H5S_SCALAR));
    h5::Object fa(H5Acreate2(f, "format", type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT));
    H5Awrite(fa.id(), type.id(), "par-tokens-1");
    const int32_t v = 100;
    h5::Object va(H5Acreate2(f, "vocab_size", H5T_STD_I32BE, space.id(), H5P_DEFAULT, H5P_DEFAULT));
    H5Awrite(va.id(), H5T_NATIVE_INT32, &v);
  });
  EXPECT_EQ(inspect_shard(a).vocab_size, 100);
  EXPECT_EQ(read_all(a, 100), t);

  // uint32 holding a value above INT32_MAX: reported exactly, not wrapped.
  const std::string b = dir.file("b.h5");
  make_file(b, [&](hid_t f) {
    h5::write_attribute<std::string>(f, "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f, "vocab_size", 1000);
    h5::Lock lock;
    const hsize_t n = 3;
    h5::Object space(H5Screate_simple(1, &n, nullptr));
    h5::Object ds(H5Dcreate2(f, "tokens", H5T_STD_U32LE, space.id(), H5P_DEFAULT, H5P_DEFAULT,
                             H5P_DEFAULT));
    const uint32_t v[3] = {5, 4000000000u, 6};
    H5Dwrite(ds.id(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  });
  ShardReader r(b);
  std::vector<int32_t> out(3);
  const std::string msg = user_error_of([&] { r.read(0, 3, out.data(), 1000); });
  EXPECT_HAS(msg, b);
  EXPECT_HAS(msg, "position 1");
  EXPECT_HAS(msg, "4000000000");
  EXPECT_HAS(msg, "1000");
}

// A filter that wrote the data but that this HDF5 lacks (h5py's lzf, id 32000): refused when
// the shard is opened, naming the filter, not when its first chunk is read mid-run. The
// filter is registered here (passing data through) to write the shard, then unregistered.
size_t pass_through(unsigned, size_t, const unsigned[], size_t nbytes, size_t*, void**) {
  return nbytes;
}

TEST(ShardTest, FilterThisHdf5LacksIsNamedAtOpen) {
  TempDir dir;
  const std::string path = dir.file("lzf.h5");
  constexpr H5Z_filter_t kLzf = 32000;
  const H5Z_class2_t lzf = {H5Z_CLASS_T_VERS, kLzf, 1, 1, "lzf", nullptr, nullptr, pass_through};
  {
    h5::Lock lock;
    ASSERT_GE(H5Zregister(&lzf), 0);
  }
  const std::vector<int32_t> t(100, 7);
  make_file(path, [&](hid_t f) {
    h5::write_attribute<std::string>(f, "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f, "vocab_size", 259);
    h5::Lock lock;
    const hsize_t n = 100, chunk = 50;
    h5::Object space(H5Screate_simple(1, &n, nullptr));
    h5::Object dcpl(H5Pcreate(H5P_DATASET_CREATE));
    H5Pset_chunk(dcpl.id(), 1, &chunk);
    ASSERT_GE(H5Pset_filter(dcpl.id(), kLzf, H5Z_FLAG_MANDATORY, 0, nullptr), 0);
    h5::Object ds(H5Dcreate2(f, "tokens", H5T_STD_I32LE, space.id(), H5P_DEFAULT, dcpl.id(),
                             H5P_DEFAULT));
    ASSERT_GE(H5Dwrite(ds.id(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data()), 0);
  });
  EXPECT_EQ(read_all(path, 259), t);  // readable while the filter is there
  {
    h5::Lock lock;
    ASSERT_GE(H5Zunregister(kLzf), 0);
  }
  const std::string msg = user_error_of([&] { inspect_shard(path); });
  EXPECT_HAS(msg, path);
  EXPECT_HAS(msg, "compressed with HDF5 filter 32000 (lzf), which this par's HDF5 cannot read");
}

// A shard whose writer stopped before it finished: the chunks it never wrote read as PAD.
// Refused when opened, as is one with nothing written.
// 300 single-bit flips at random places of a shard as `par prep` writes it (deflate, whose
// stream carries its own checksum): each is read as the same tokens or refused, never as
// other tokens (tools/fuzz_files.py does the same through the binary, at any file).
TEST(ShardTest, RandomFlipsAreNeverReadAsOtherTokens) {
  TempDir dir;
  const std::string path = dir.file("s.h5"), damaged = dir.file("damaged.h5");
  std::mt19937_64 rng(23);
  std::vector<int32_t> tokens(20'000);
  for (int32_t& t : tokens) t = int32_t(rng() % 259);
  write_shard(path, tokens.data(), int64_t(tokens.size()), 259);
  const auto n = testing_util::read_flipped_copies(path, damaged, 300, 29, [&] {
    ShardReader r(damaged);
    std::vector<int32_t> got(tokens.size());
    if (r.info().num_tokens != int64_t(tokens.size())) return testing_util::kReadOther;
    r.read(0, int64_t(got.size()), got.data(), 259);
    return got == tokens ? testing_util::kReadSame : testing_util::kReadOther;
  });
  EXPECT_GT(n.refused, 100);
  RecordProperty("refused", n.refused);
  RecordProperty("crashed_inside_hdf5", n.crashed);
}

TEST(ShardTest, UnwrittenStorageIsRefused) {
  TempDir dir;
  for (const bool half : {true, false}) {
    const std::string path = dir.file(half ? "half.h5" : "none.h5");
    const std::vector<int32_t> t(50, 7);
    make_file(path, [&](hid_t f) {
      h5::write_attribute<std::string>(f, "format", "par-tokens-1");
      h5::write_attribute<int64_t>(f, "vocab_size", 259);
      h5::Lock lock;
      const hsize_t n = 100, chunk = 50, start = 0;
      h5::Object space(H5Screate_simple(1, &n, nullptr));
      h5::Object dcpl(H5Pcreate(H5P_DATASET_CREATE));
      H5Pset_chunk(dcpl.id(), 1, &chunk);
      h5::Object ds(H5Dcreate2(f, "tokens", H5T_STD_I32LE, space.id(), H5P_DEFAULT, dcpl.id(),
                               H5P_DEFAULT));
      if (!half) return;
      h5::Object mem(H5Screate_simple(1, &chunk, nullptr));
      H5Sselect_hyperslab(space.id(), H5S_SELECT_SET, &start, nullptr, &chunk, nullptr);
      ASSERT_GE(H5Dwrite(ds.id(), H5T_NATIVE_INT32, mem.id(), space.id(), H5P_DEFAULT, t.data()), 0);
    });
    const std::string msg = user_error_of([&] { inspect_shard(path); });
    EXPECT_HAS(msg, path);
    EXPECT_HAS(msg, half ? "1 of the 2 chunks of /tokens were never written"
                         : "2 of the 2 chunks of /tokens were never written");
  }
}

TEST(ShardTest, InspectNamesWhatIsWrong) {
  TempDir dir;
  const std::vector<int32_t> t = {3, 4, 5};
  auto good_attrs = [](hid_t f) {
    h5::write_attribute<std::string>(f, "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f, "vocab_size", 259);
  };
  struct Case {
    std::string name;
    std::function<void(const std::string&)> make;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"missing.h5", [](const std::string&) {}, "No such file"},
      {"random.h5",
       [](const std::string& p) {
         std::mt19937_64 g(1);
         std::ofstream out(p, std::ios::binary);
         for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(g()));
       },
       "not an HDF5 file"},
      {"notokens.h5", [&](const std::string& p) { make_file(p, good_attrs); }, "no /tokens dataset"},
      {"noformat.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           h5::write_attribute<int64_t>(f, "vocab_size", 259);
           h5::write_dataset<int32_t>(f, "tokens", t.data(), {3});
         });
       },
       "no `format` attribute"},
      {"wrongformat.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           h5::write_attribute<std::string>(f, "format", "par-model-1");
           h5::write_attribute<int64_t>(f, "vocab_size", 259);
           h5::write_dataset<int32_t>(f, "tokens", t.data(), {3});
         });
       },
       "par-model-1"},
      {"novocab.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           h5::write_attribute<std::string>(f, "format", "par-tokens-1");
           h5::write_dataset<int32_t>(f, "tokens", t.data(), {3});
         });
       },
       "no `vocab_size` attribute"},
      {"stringvocab.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           h5::write_attribute<std::string>(f, "format", "par-tokens-1");
           h5::write_attribute<std::string>(f, "vocab_size", "259");
           h5::write_dataset<int32_t>(f, "tokens", t.data(), {3});
         });
       },
       "must be an integer"},
      {"zerovocab.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           h5::write_attribute<std::string>(f, "format", "par-tokens-1");
           h5::write_attribute<int64_t>(f, "vocab_size", 0);
           h5::write_dataset<int32_t>(f, "tokens", t.data(), {3});
         });
       },
       "must be positive"},
      {"2d.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           good_attrs(f);
           const std::vector<int32_t> m = {1, 2, 3, 4};
           h5::write_dataset<int32_t>(f, "tokens", m.data(), {2, 2});
         });
       },
       "2 dimensions"},
      {"float.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           good_attrs(f);
           const std::vector<float> m = {1, 2};
           h5::write_dataset<float>(f, "tokens", m.data(), {2});
         });
       },
       "float32"},
      {"int64.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           good_attrs(f);
           const std::vector<int64_t> m = {1, 2};
           h5::write_dataset<int64_t>(f, "tokens", m.data(), {2});
         });
       },
       "int64"},
      {"group.h5",
       [&](const std::string& p) {
         make_file(p, [&](hid_t f) {
           good_attrs(f);
           h5::create_group(f, "tokens");
         });
       },
       "not a dataset"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file(c.name);
    c.make(path);
    const std::string msg = user_error_of([&] { inspect_shard(path); });
    EXPECT_HAS(msg, path);
    EXPECT_HAS(msg, c.expect);
    // A Dataset reports the same problem.
    const std::string msg2 = user_error_of([&] { Dataset({path}, 2, 259); });
    EXPECT_HAS(msg2, c.expect);
  }
}

// Two shards of 25 and 18 tokens with N = 4: floor(24/4) = 6 and floor(17/4) = 4 windows.
struct TwoShards {
  TempDir dir;
  std::vector<std::string> paths = {dir.file("train-00000.h5"), dir.file("train-00001.h5")};
  std::vector<std::vector<int32_t>> tokens = {random_tokens(25, 300, 1), random_tokens(18, 300, 2)};
  TwoShards() {
    for (size_t i = 0; i < 2; ++i)
      write_shard(paths[i], tokens[i].data(), static_cast<int64_t>(tokens[i].size()), 300);
  }
};

TEST(DatasetTest, WindowArithmeticAcrossShards) {
  TwoShards s;
  Dataset d(s.paths, 4, 300);
  EXPECT_EQ(d.num_shards(), 2);
  EXPECT_EQ(d.num_windows(), 10);
  EXPECT_EQ(d.shard(1).num_tokens, 18);
  EXPECT_EQ(d.paths(), s.paths);
  const std::vector<std::pair<int64_t, int64_t>> expect = {{0, 0}, {0, 4},  {0, 8}, {0, 12},
                                                            {0, 16}, {0, 20}, {1, 0}, {1, 4},
                                                            {1, 8}, {1, 12}};
  for (int64_t w = 0; w < 10; ++w) {
    const Dataset::WindowRef ref = d.window(w);
    EXPECT_EQ(ref.shard, expect[static_cast<size_t>(w)].first) << w;
    EXPECT_EQ(ref.offset, expect[static_cast<size_t>(w)].second) << w;
    std::vector<int32_t> full(5);
    d.read_window(w, 0, 5, full.data());
    const auto& src = s.tokens[static_cast<size_t>(ref.shard)];
    EXPECT_EQ(full, std::vector<int32_t>(src.begin() + ref.offset, src.begin() + ref.offset + 5));
    for (int64_t b = 0; b < 5; ++b)
      for (int64_t e = b + 1; e <= 5; ++e) {
        std::vector<int32_t> part(static_cast<size_t>(e - b));
        d.read_window(w, b, e, part.data());
        EXPECT_EQ(part, std::vector<int32_t>(full.begin() + b, full.begin() + e)) << w << " " << b;
      }
  }
  // Consecutive windows share exactly one token: every token is a target once.
  std::vector<int32_t> w0(5), w1(5);
  d.read_window(0, 0, 5, w0.data());
  d.read_window(1, 0, 5, w1.data());
  EXPECT_EQ(w0[4], w1[0]);

  // A shard of exactly N+1 tokens holds one window.
  Dataset exact({s.paths[1]}, 17, 300);
  EXPECT_EQ(exact.num_windows(), 1);
}

int64_t open_descriptors() {
  int64_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// A data set of many small shards keeps a bounded number open (each holds a descriptor and
// HDF5's chunk cache), reopening the others as they are read again: a quarter of the
// descriptors allowed, at least 64 (here, with 256 allowed, 64).
TEST(DatasetTest, KeepsABoundedNumberOfShardsOpen) {
  TempDir dir;
  constexpr int kShards = 150;
  std::vector<std::string> paths;
  std::vector<std::vector<int32_t>> tokens;
  for (int i = 0; i < kShards; ++i) {
    paths.push_back(dir.file(cat("s", i, ".h5")));
    tokens.push_back(random_tokens(9, 300, uint64_t(i)));
    write_shard(paths.back(), tokens.back().data(), 9, 300);
  }
  const int64_t before = open_descriptors();
  rlimit was{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &was), 0);
  rlimit low = was;
  low.rlim_cur = std::min<rlim_t>(was.rlim_cur, 256);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  std::optional<Dataset> made;
  try {
    made.emplace(paths, 4, 300);
  } catch (...) {
    setrlimit(RLIMIT_NOFILE, &was);
    throw;
  }
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &was), 0);
  Dataset& d = *made;
  ASSERT_EQ(d.num_windows(), 2 * kShards);
  int64_t most = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t k = 0; k < d.num_windows(); ++k) {
      const int64_t w = pass == 0 ? k : d.num_windows() - 1 - k;
      std::vector<int32_t> got(5);
      d.read_window(w, 0, 5, got.data());
      const auto& src = tokens[size_t(w / 2)];
      ASSERT_EQ(got, std::vector<int32_t>(src.begin() + (w % 2) * 4, src.begin() + (w % 2) * 4 + 5))
          << w;
      most = std::max(most, open_descriptors() - before);
    }
  EXPECT_LE(most, 64 + 4);
  EXPECT_GE(most, 32);  // they are kept open, not reopened for every read
}

// Running out of descriptors is not a corrupt file: the error says what failed.
TEST(DatasetTest, NoDescriptorLeftIsNotACorruptShard) {
  TwoShards s;
  rlimit was{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &was), 0);
  rlimit low = was;
  const int lowest_free = dup(0);  // every descriptor below it is taken
  ASSERT_GE(lowest_free, 0);
  close(lowest_free);
  low.rlim_cur = rlim_t(lowest_free);  // none left to open
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  const std::string msg = user_error_of([&] { h5::open_file(s.paths[0]); });
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &was), 0);
  EXPECT_HAS(msg, cat("cannot open ", s.paths[0]));
  EXPECT_EQ(msg.find("no HDF5 signature"), std::string::npos) << msg;
  EXPECT_HAS(msg, "Too many open files");
}

TEST(DatasetTest, RejectsBadDataSets) {
  TwoShards s;
  std::string msg = user_error_of([] { Dataset({}, 4, 300); });
  EXPECT_HAS(msg, "no shard files");

  msg = user_error_of([&] { Dataset(s.paths, 18, 300); });  // shard 1 has 18 < 19 tokens
  EXPECT_HAS(msg, s.paths[1]);
  EXPECT_HAS(msg, "18 tokens, fewer than one window of N+1 = 19");
  EXPECT_HAS(msg, "--context-length");

  msg = user_error_of([&] { Dataset(s.paths, 4, 259); });
  EXPECT_HAS(msg, s.paths[0]);
  EXPECT_HAS(msg, "vocab_size 300");

  msg = user_error_of([&] { Dataset({s.paths[0], s.dir.file("gone.h5")}, 4, 300); });
  EXPECT_HAS(msg, "gone.h5");
}

TEST(DatasetTest, BadTokenIsReportedWithShardPositionAndValue) {
  TempDir dir;
  const std::string path = dir.file("bad.h5");
  std::vector<int32_t> t(20, 7);
  t[13] = 300;  // stored by a careless tool under vocab_size 259
  make_file(path, [&](hid_t f) {
    h5::write_attribute<std::string>(f, "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f, "vocab_size", 259);
    h5::write_dataset<int32_t>(f, "tokens", t.data(), {20});
  });
  Dataset d({path}, 4, 259);
  std::vector<int32_t> out(5);
  d.read_window(0, 0, 5, out.data());  // tokens 0..4 are fine
  const std::string msg = user_error_of([&] { d.read_window(3, 0, 5, out.data()); });
  EXPECT_HAS(msg, path);
  EXPECT_HAS(msg, "position 13");
  EXPECT_HAS(msg, "is 300");
  EXPECT_HAS(msg, "259");
}

}  // namespace
}  // namespace par
