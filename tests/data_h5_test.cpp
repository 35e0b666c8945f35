// The HDF5 wrapper (data/h5.h): round trips of every supported dataset and attribute type,
// nested paths, and errors that name the file and the object.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "data/h5.h"
#include "tests/hdf5_bytes.h"
#include "tests/temp_dir.h"
#include "tests/user_error.h"

namespace par {
namespace {

using testing_util::slurp;
using testing_util::TempDir;
using testing_util::user_error_of;

namespace fs = std::filesystem;

template <typename T>
void round_trip(hid_t f, const std::string& name, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<T> data(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) data[static_cast<size_t>(i)] = static_cast<T>((i * 7 + 3) % 101);
  h5::write_dataset<T>(f, name, data.data(), shape);
  EXPECT_EQ(h5::dataset_shape(f, name), shape) << name;
  EXPECT_EQ(h5::read_dataset<T>(f, name), data) << name;
}

TEST(H5Test, DatasetRoundTripEveryType) {
  TempDir dir;
  const std::string path = dir.file("d.h5");
  {
    h5::Object f = h5::create_file(path);
    round_trip<float>(f.id(), "f32", {2, 3});
    round_trip<double>(f.id(), "grp/f64", {5});
    round_trip<int32_t>(f.id(), "a/b/i32", {2, 2, 2});
    round_trip<int64_t>(f.id(), "i64", {});  // scalar
    round_trip<uint8_t>(f.id(), "u8", {0});  // empty
    const std::vector<float> frac = {0.5f, -1.25f};
    h5::write_dataset<float>(f.id(), "frac", frac.data(), {2});
  }
  h5::Object f = h5::open_file(path);
  EXPECT_EQ(h5::read_dataset<float>(f.id(), "f32").size(), 6u);
  // HDF5's conversion between stored and requested numeric types.
  EXPECT_EQ(h5::read_dataset<double>(f.id(), "frac"), (std::vector<double>{0.5, -1.25}));
  const std::vector<int32_t> as_i32 = h5::read_dataset<int32_t>(f.id(), "grp/f64");
  EXPECT_EQ(as_i32, (std::vector<int32_t>{3, 10, 17, 24, 31}));
  EXPECT_EQ(h5::read_dataset<int64_t>(f.id(), "a/b/i32")[7], (7 * 7 + 3) % 101);

  EXPECT_TRUE(h5::exists(f.id(), "a/b/i32"));
  EXPECT_TRUE(h5::exists(f.id(), "/a/b"));
  EXPECT_FALSE(h5::exists(f.id(), "a/x/i32"));
  EXPECT_FALSE(h5::exists(f.id(), "a/b/i32/deeper"));
  EXPECT_FALSE(h5::exists(f.id(), "nothing"));
  EXPECT_EQ(h5::list_names(f.id()),
            (std::vector<std::string>{"a", "f32", "frac", "grp", "i64", "u8"}));
  h5::Object g = h5::open_group(f.id(), "a/b");
  EXPECT_EQ(h5::list_names(g.id()), (std::vector<std::string>{"i32"}));
  EXPECT_EQ(h5::file_name(g.id()), path);
}

TEST(H5Test, AttributeRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("a.h5");
  {
    h5::Object f = h5::create_file(path);
    h5::Object g = h5::create_group(f.id(), "x/y");
    h5::Object again = h5::create_group(f.id(), "x/y");  // existing: opened
    h5::write_attribute<int64_t>(f.id(), "step", int64_t{1} << 40);
    h5::write_attribute<double>(g.id(), "lr", 2.5e-4);
    h5::write_attribute<std::string>(f.id(), "format", "par-model-1");
    h5::write_attribute<std::string>(f.id(), "format", "replaced");
    h5::write_attribute<std::string>(f.id(), "empty", "");
    // A fixed-length, space-padded string, as some tools write.
    h5::Object type(H5Tcopy(H5T_C_S1));
    H5Tset_size(type.id(), 8);
    H5Tset_strpad(type.id(), H5T_STR_SPACEPAD);
    h5::Object space(H5Screate(H5S_SCALAR));
    h5::Object attr(H5Acreate2(f.id(), "fixed", type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT));
    ASSERT_GE(attr.id(), 0);
    ASSERT_GE(H5Awrite(attr.id(), type.id(), "abc     "), 0);
    // Fixed-length strings that fill their size (numpy's bytes_, h5py's dtype "S12"): no
    // terminator to drop a character for.
    for (const auto& [name, pad, text] :
         {std::tuple{"nullpad", H5T_STR_NULLPAD, "par-tokens-1"},
          std::tuple{"spacepad", H5T_STR_SPACEPAD, "par-tokens-1"},
          std::tuple{"nullterm", H5T_STR_NULLTERM, "par-tokens-1"}}) {
      h5::Object t(H5Tcopy(H5T_C_S1));
      H5Tset_size(t.id(), std::strlen(text) + (pad == H5T_STR_NULLTERM ? 1 : 0));
      H5Tset_strpad(t.id(), pad);
      h5::Object a(H5Acreate2(f.id(), name, t.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT));
      ASSERT_GE(a.id(), 0);
      ASSERT_GE(H5Awrite(a.id(), t.id(), text), 0);
    }
  }
  h5::Object f = h5::open_file(path, /*writable=*/true);
  EXPECT_EQ(h5::read_attribute<int64_t>(f.id(), "step"), int64_t{1} << 40);
  EXPECT_EQ(h5::read_attribute<double>(f.id(), "step"), static_cast<double>(int64_t{1} << 40));
  h5::Object g = h5::open_group(f.id(), "x/y");
  EXPECT_EQ(h5::read_attribute<double>(g.id(), "lr"), 2.5e-4);
  EXPECT_EQ(h5::read_attribute<std::string>(f.id(), "format"), "replaced");
  EXPECT_EQ(h5::read_attribute<std::string>(f.id(), "empty"), "");
  EXPECT_EQ(h5::read_attribute<std::string>(f.id(), "fixed"), "abc");
  for (const char* name : {"nullpad", "spacepad", "nullterm"})
    EXPECT_EQ(h5::read_attribute<std::string>(f.id(), name), "par-tokens-1") << name;
  EXPECT_FALSE(h5::has_attribute(f.id(), "lr"));
  EXPECT_TRUE(h5::has_attribute(g.id(), "lr"));

  std::string msg = user_error_of([&] { h5::read_attribute<int64_t>(f.id(), "format"); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("format"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an integer"), std::string::npos) << msg;
  msg = user_error_of([&] { h5::read_attribute<int64_t>(g.id(), "lr"); });
  EXPECT_NE(msg.find("not an integer"), std::string::npos) << msg;
  msg = user_error_of([&] { h5::read_attribute<double>(f.id(), "missing_attr"); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing_attr"), std::string::npos) << msg;
}

TEST(H5Test, ErrorsNameTheFileAndObject) {
  TempDir dir;
  const std::string missing = dir.file("missing.h5");
  std::string msg = user_error_of([&] { h5::open_file(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;

  const std::string junk = dir.file("junk.h5");
  std::ofstream(junk) << "this is not HDF5 at all, just some bytes";
  msg = user_error_of([&] { h5::open_file(junk); });
  EXPECT_NE(msg.find(junk), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an HDF5 file"), std::string::npos) << msg;

  msg = user_error_of([&] { h5::create_file(dir.file("no/such/dir/x.h5")); });
  EXPECT_NE(msg.find("no/such/dir/x.h5"), std::string::npos) << msg;

  const std::string path = dir.file("e.h5");
  h5::Object f = h5::create_file(path);
  const std::vector<int32_t> v = {1, 2};
  h5::write_dataset<int32_t>(f.id(), "v", v.data(), {2});
  msg = user_error_of([&] { h5::read_dataset<float>(f.id(), "params/w"); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("params/w"), std::string::npos) << msg;
  msg = user_error_of([&] { h5::write_dataset<int32_t>(f.id(), "v", v.data(), {2}); });
  EXPECT_NE(msg.find("already exists"), std::string::npos) << msg;
  msg = user_error_of([&] { h5::open_group(f.id(), "v"); });
  EXPECT_NE(msg.find("not a group"), std::string::npos) << msg;
  msg = user_error_of([&] { h5::dataset_shape(f.id(), "nope"); });
  EXPECT_NE(msg.find("nope"), std::string::npos) << msg;
}

// A damaged datatype message of a float32 dataset: its width made 1,048,580 bytes (HDF5's
// conversion then read past its buffers: a crash), or its exponent bias changed (every
// value read differently, without an error). Both are refused, naming the dataset; IEEE
// half floats (as h5py writes numpy's float16) and big-endian integers still read.
TEST(H5Test, DamagedNumberTypesAreRefused) {
  TempDir dir;
  const std::vector<float> v = {1.5f, -2.25f, 0.5f, 8.0f};
  for (const auto& [what, at, value] :
       {std::tuple{"width", 6, '\x10'}, std::tuple{"exponent bias", 16, '\x7e'}}) {
    SCOPED_TRACE(what);
    const std::string path = dir.file(cat("damaged-", at, ".h5"));
    {
      h5::Object f = h5::create_file(path);
      h5::write_dataset<float>(f.id(), "x", v.data(), {4});
    }
    std::string bytes = slurp(path);
    const size_t i = bytes.find(testing_util::kFloat32LeTypeMessage);
    ASSERT_NE(i, std::string::npos);
    bytes[i + size_t(at)] = value;
    std::ofstream(path, std::ios::binary) << bytes;
    h5::Object f = h5::open_file(path);
    const std::string msg = user_error_of([&] { h5::read_dataset<float>(f.id(), "x"); });
    EXPECT_NE(msg.find("'x' holds floats of"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not IEEE floats"), std::string::npos) << msg;
    std::vector<float> block(2);
    EXPECT_NE(user_error_of([&] { h5::read_block<float>(f.id(), "x", {1}, {2}, block.data()); }),
              "");
  }

  const std::string path = dir.file("widths.h5");
  {
    h5::Object f = h5::create_file(path);
    const hsize_t n = 4;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t half = H5Tcopy(H5T_IEEE_F32LE);  // as h5py makes numpy's float16
    H5Tset_fields(half, 15, 10, 5, 0, 10);
    H5Tset_size(half, 2);
    H5Tset_ebias(half, 15);
    for (const auto& [name, type] : {std::pair{"half", half}, std::pair{"be", H5T_STD_U16BE}}) {
      const hid_t ds = H5Dcreate2(f.id(), name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                         std::string(name) == "be" ? std::vector<float>{1, 2, 3, 400}.data()
                                                   : v.data()),
                0);
      H5Dclose(ds);
    }
    H5Tclose(half);
    H5Sclose(space);
  }
  h5::Object f = h5::open_file(path);
  EXPECT_EQ(h5::read_dataset<float>(f.id(), "half"), v);
  EXPECT_EQ(h5::read_dataset<int32_t>(f.id(), "be"), (std::vector<int32_t>{1, 2, 3, 400}));
}

// The wrappers serialize on one lock, so several threads may use HDF5 at once.
TEST(H5Test, ConcurrentUseFromThreads) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  std::vector<double> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<double>(i) * 0.5;
  {
    h5::Object f = h5::create_file(path);
    h5::write_dataset<double>(f.id(), "x", data.data(), {1000});
  }
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < 50; ++r) {
        h5::Object f = h5::open_file(path);
        if (h5::read_dataset<double>(f.id(), "x") == data) ++ok[static_cast<size_t>(t)];
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok, std::vector<int>(4, 50));
}

}  // namespace
}  // namespace par

namespace par {
namespace {

// The same content written twice gives the same bytes: no object carries its creation
// time (a token shard, or an export's weights, can then be compared by checksum).
TEST(H5Test, WrittenObjectsCarryNoTimes) {
  TempDir dir;
  const std::vector<float> w = {1.5f, -2.0f, 3.25f};
  const std::string path = dir.file("w.h5");
  {
    h5::Object f = h5::create_file(path);
    h5::Object g = h5::create_group(f.id(), "params");
    h5::write_dataset<float>(g.id(), "w", w.data(), {3});
    h5::write_dataset<float>(f.id(), "deep/inside/v", w.data(), {3});  // groups made on the way
    h5::write_dataset<float>(f.id(), "checked", w.data(), {3}, h5::Storage::kChecksummed);
  }
  h5::Object f = h5::open_file(path);
  for (const char* name : {"params", "params/w", "deep/inside", "deep/inside/v", "checked"}) {
    SCOPED_TRACE(name);
    H5O_info_t info{};
    ASSERT_GE(H5Oget_info_by_name2(f.id(), name, &info, H5O_INFO_TIME, H5P_DEFAULT), 0);
    EXPECT_EQ(info.ctime, 0);
    EXPECT_EQ(info.mtime, 0);
  }
}

}  // namespace
}  // namespace par
