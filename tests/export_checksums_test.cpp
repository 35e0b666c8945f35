// Checksummed datasets (h5::Storage::kChecksummed: chunks with HDF5's Fletcher32) and the
// exported model that is written with them: a flipped bit in a tensor is an error naming
// the tensor, not a silently different weight; exports without checksums (an older par's)
// still read, and say so.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "checkpoint/model_file.h"
#include "core/error.h"
#include "core/param_layout.h"
#include "data/h5.h"
#include "tests/hdf5_bytes.h"
#include "tests/par_cli.h"
#include "tests/random_flips.h"
#include "tests/user_error.h"

namespace par {
namespace {

using testing_util::small_model_config;
using testing_util::TempDir;
using testing_util::user_error_of;

// The file offset of chunk `index` of a dataset.
haddr_t chunk_address(const std::string& path, const std::string& name, hsize_t index) {
  h5::Object file = h5::open_file(path);
  const hid_t ds = H5Dopen2(file.id(), name.c_str(), H5P_DEFAULT);
  const hid_t space = H5Dget_space(ds);
  std::vector<hsize_t> offset(4);
  unsigned mask = 0;
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
  EXPECT_GE(H5Dget_chunk_info(ds, space, index, offset.data(), &mask, &addr, &size), 0);
  H5Sclose(space);
  H5Dclose(ds);
  return addr;
}

// The dataset's chunks: their count and the first one's shape.
std::pair<hsize_t, std::vector<hsize_t>> chunks(const std::string& path, const std::string& name) {
  h5::Object file = h5::open_file(path);
  const hid_t ds = H5Dopen2(file.id(), name.c_str(), H5P_DEFAULT);
  const hid_t space = H5Dget_space(ds);
  const hid_t dcpl = H5Dget_create_plist(ds);
  hsize_t count = 0;
  H5Dget_num_chunks(ds, space, &count);
  std::vector<hsize_t> shape(size_t(H5Sget_simple_extent_ndims(space)));
  if (H5Pget_layout(dcpl) == H5D_CHUNKED) H5Pget_chunk(dcpl, int(shape.size()), shape.data());
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Dclose(ds);
  return {count, shape};
}

void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  const char c = char(f.get());
  f.seekp(at);
  f.put(char(c ^ 0x10));
}

TEST(ChecksummedDatasets, ReadBackAndRefuseAFlippedBit) {
  TempDir dir;
  const std::string path = dir.file("d.h5");
  std::vector<float> small(32 * 64);
  for (size_t i = 0; i < small.size(); ++i) small[i] = float(i) * 0.25f;
  // Over a chunk's 1 MiB: 1.2 MB in one dimension; 3 rows of 0.8 MB; 2 rows of 1.2 MB.
  std::vector<float> big(300'000, 1.5f), rows(600'000, -2.0f), wide(600'000, 3.0f);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i % 1000);
  {
    h5::Object f = h5::create_file(path);
    h5::write_dataset<float>(f.id(), "small", small.data(), {32, 64}, h5::Storage::kChecksummed);
    h5::write_dataset<float>(f.id(), "big", big.data(), {300'000}, h5::Storage::kChecksummed);
    h5::write_dataset<float>(f.id(), "rows", rows.data(), {3, 200'000}, h5::Storage::kChecksummed);
    h5::write_dataset<float>(f.id(), "wide", wide.data(), {2, 300'000}, h5::Storage::kChecksummed);
    h5::write_dataset<float>(f.id(), "plain", small.data(), {32, 64});
    f.close("closing");
  }
  {
    h5::Object f = h5::open_file(path);
    EXPECT_TRUE(h5::has_checksums(f.id(), "small"));
    EXPECT_TRUE(h5::has_checksums(f.id(), "big"));
    EXPECT_FALSE(h5::has_checksums(f.id(), "plain"));
    EXPECT_EQ(h5::read_dataset<float>(f.id(), "small"), small);
    EXPECT_EQ(h5::read_dataset<float>(f.id(), "big"), big);
    EXPECT_EQ(h5::read_dataset<float>(f.id(), "rows"), rows);
    EXPECT_EQ(h5::read_dataset<float>(f.id(), "wide"), wide);
  }
  using Chunks = std::pair<hsize_t, std::vector<hsize_t>>;
  EXPECT_EQ(chunks(path, "small"), Chunks(1, {32, 64}));
  EXPECT_EQ(chunks(path, "big"), Chunks(2, {262'144}));
  EXPECT_EQ(chunks(path, "rows"), Chunks(3, {1, 200'000}));
  EXPECT_EQ(chunks(path, "wide"), Chunks(4, {1, 262'144}));

  flip_byte(path, std::streamoff(chunk_address(path, "small", 0) + 100));
  flip_byte(path, std::streamoff(chunk_address(path, "big", 1) + 5));
  h5::Object f = h5::open_file(path);
  for (const char* name : {"small", "big"}) {
    const std::string e = user_error_of([&] { h5::read_dataset<float>(f.id(), name); });
    EXPECT_NE(e.find("Fletcher32"), std::string::npos) << name << ": " << e;
  }
  EXPECT_EQ(h5::read_dataset<float>(f.id(), "rows"), rows);
}

// Whether a's and b's tensors are equal (the layout's padding between them aside).
bool same_tensors(const ParamLayout& layout, const std::vector<float>& a,
                  const std::vector<float>& b) {
  for (const ParamInfo& p : layout.params())
    if (!std::equal(a.begin() + p.offset, a.begin() + p.offset + p.numel, b.begin() + p.offset))
      return false;
  return true;
}


TEST(ExportChecksums, AFlippedBitInATensorIsAnErrorNamingIt) {
  TempDir dir;
  const std::string path = dir.file("model.h5");
  const ModelConfig c = small_model_config();
  const ParamLayout layout(c);
  std::vector<float> params(size_t(layout.total()));
  for (size_t i = 0; i < params.size(); ++i) params[i] = float(i % 97) / 97.0f - 0.5f;
  write_export(path, c, 7, params.data());
  const ModelFile read = read_model_file(path, false);
  EXPECT_TRUE(read.checksummed);
  EXPECT_TRUE(same_tensors(layout, read.params, params));

  flip_byte(path, std::streamoff(chunk_address(path, "params/layers.0.mlp.fc1.weight", 0) + 40));
  const std::string e = user_error_of([&] { read_model_file(path, false); });
  EXPECT_NE(e.find("params/layers.0.mlp.fc1.weight is damaged"), std::string::npos) << e;
  EXPECT_NE(e.find("export it again"), std::string::npos) << e;
}

// Damage to an export's metadata is an error too: a tensor's datatype message made
// big-endian (a standard type, so read as a byte-swapped tensor where the metadata carries
// no checksum, as in HDF5's earliest format).
TEST(ExportChecksums, AFlippedBitInATensorsMetadataIsAnError) {
  TempDir dir;
  const std::string path = dir.file("model.h5");
  const ModelConfig c = small_model_config();
  const ParamLayout layout(c);
  std::vector<float> params(size_t(layout.total()), 0.25f);
  write_export(path, c, 7, params.data());
  {
    h5::Object f = h5::open_file(path);
    H5F_info2_t info{};
    ASSERT_GE(H5Fget_info2(f.id(), &info), 0);
    EXPECT_GE(info.super.version, 3u) << "not HDF5 1.10's format, whose metadata has checksums";
  }
  std::string bytes = testing_util::slurp(path);
  const size_t i = bytes.find(testing_util::kFloat32LeTypeMessage);
  ASSERT_NE(i, std::string::npos);
  bytes[i + 1] = char(bytes[i + 1] | 1);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  const std::string e = user_error_of([&] { read_model_file(path, false); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
}

// 300 single-bit flips at random places of a small export: each is read either as the
// same weights (a byte nothing reads: free space, padding) or as an error, never as other
// weights (tools/fuzz_files.py does the same through the binary, at any file).
TEST(ExportChecksums, RandomFlipsAreNeverReadAsOtherWeights) {
  TempDir dir;
  const std::string path = dir.file("model.h5"), damaged = dir.file("damaged.h5");
  const ModelConfig c = small_model_config();
  const ParamLayout layout(c);
  std::vector<float> params(size_t(layout.total()));
  for (size_t i = 0; i < params.size(); ++i) params[i] = float(i % 83) / 83.0f - 0.25f;
  write_export(path, c, 5, params.data());
  const auto n = testing_util::read_flipped_copies(path, damaged, 300, 17, [&] {
    const ModelFile read = read_model_file(damaged, false);
    return same_tensors(layout, read.params, params) ? testing_util::kReadSame
                                                     : testing_util::kReadOther;
  });
  EXPECT_GT(n.refused, 200);  // most of the file is tensors and checksummed metadata
  RecordProperty("refused", n.refused);
  RecordProperty("same", n.same);
}

// An export whose tensors are stored contiguous, without checksums, as par wrote them before.
TEST(ExportChecksums, ExportsWithoutChecksumsStillRead) {
  TempDir dir;
  const std::string path = dir.file("model.h5");
  const ModelConfig c = small_model_config();
  const ParamLayout layout(c);
  std::vector<float> params(size_t(layout.total()));
  for (size_t i = 0; i < params.size(); ++i) params[i] = float(i % 89) / 89.0f;
  write_export(path, c, 3, params.data());
  {
    h5::Object f = h5::open_file(path, /*writable=*/true);
    for (const ParamInfo& p : layout.params()) {
      const std::string name = "params/" + p.name;
      const std::vector<float> v = h5::read_dataset<float>(f.id(), name);
      ASSERT_GE(H5Ldelete(f.id(), name.c_str(), H5P_DEFAULT), 0);
      h5::write_dataset<float>(f.id(), name, v.data(), p.shape);
    }
    f.close("closing");
  }
  const ModelFile read = read_model_file(path, false);
  EXPECT_FALSE(read.checksummed);
  EXPECT_TRUE(same_tensors(layout, read.params, params));
}

}  // namespace
}  // namespace par
