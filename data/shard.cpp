// Token shard validation, range reads and streaming writes (see shard.h, spec/FORMATS.md).
#include "data/shard.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/fatal_signals.h"

namespace par {

namespace {

const char* const kPrepHint = "token shards are written by `par prep` (see spec/FORMATS.md)";

// "uint16", "float32", ... for messages.
std::string type_name(hid_t type) {
  const H5T_class_t c = H5Tget_class(type);
  const size_t bits = H5Tget_size(type) * 8;
  if (c == H5T_INTEGER) return cat(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int", bits);
  if (c == H5T_FLOAT) return cat("float", bits);
  if (c == H5T_STRING) return "string";
  return "a non-numeric type";
}

struct OpenedShard {
  ShardInfo info;
  h5::Object file;
  h5::Object tokens;
  bool unsigned32 = false;
};

// The whole of inspect_shard; the reader keeps the handles.
OpenedShard open_shard(const std::string& path) {
  h5::Lock lock;
  OpenedShard s;
  s.info.path = path;
  try {
    s.file = h5::open_file(path);
  } catch (const UserError& e) {
    fail_user(e.what(), " (opening a token shard; ", kPrepHint, ")");
  }
  const hid_t f = s.file.id();

  if (!h5::has_attribute(f, "format"))
    fail_user("shard ", path, " has no `format` attribute (expected \"", kShardFormat, "\"); ",
              kPrepHint);
  std::string format;
  try {
    format = h5::read_attribute<std::string>(f, "format");
  } catch (const UserError& e) {
    fail_user("shard ", path, ": the `format` attribute must be the string \"", kShardFormat,
              "\" (", e.what(), "); ", kPrepHint);
  }
  if (format != kShardFormat)
    fail_user("shard ", path, " has format \"", format, "\", expected \"", kShardFormat,
              "\"; ", kPrepHint);

  if (!h5::has_attribute(f, "vocab_size"))
    fail_user("shard ", path, " has no `vocab_size` attribute (an integer: every token is "
              "below it); ", kPrepHint);
  try {
    s.info.vocab_size = h5::read_attribute<int64_t>(f, "vocab_size");
  } catch (const UserError& e) {
    fail_user("shard ", path, ": the `vocab_size` attribute must be an integer (", e.what(),
              "); ", kPrepHint);
  }
  if (s.info.vocab_size <= 0)
    fail_user("shard ", path, " has vocab_size ", s.info.vocab_size, "; it must be positive");

  if (h5::has_attribute(f, "max_token")) {
    try {
      s.info.max_token = h5::read_attribute<int64_t>(f, "max_token");
    } catch (const UserError& e) {
      fail_user("shard ", path, ": the `max_token` attribute must be an integer (", e.what(),
                "); ", kPrepHint);
    }
    // What the writer says it holds, checked before any window is read.
    if (s.info.max_token < 0 || s.info.max_token >= s.info.vocab_size)
      fail_user("shard ", path, " holds ids up to ", s.info.max_token, " (its max_token attribute), "
                "outside its vocabulary [0, ", s.info.vocab_size, "); fix the data or prepare it "
                "again with `par prep`");
  }

  if (!h5::exists(f, "tokens")) fail_user("shard ", path, " has no /tokens dataset; ", kPrepHint);
  const hid_t ds = H5Dopen2(f, "tokens", H5P_DEFAULT);
  if (ds < 0) {
    H5Eclear2(H5E_DEFAULT);
    fail_user("shard ", path, ": /tokens is not a dataset; ", kPrepHint);
  }
  s.tokens = h5::Object(ds);
  h5::Object space = h5::checked(H5Dget_space(ds), cat("cannot read /tokens of shard ", path));
  const int rank = H5Sget_simple_extent_ndims(space.id());
  if (rank != 1)
    fail_user("shard ", path, ": /tokens has ", rank, " dimensions; it must be 1-D; ", kPrepHint);
  hsize_t n = 0;
  h5::check(H5Sget_simple_extent_dims(space.id(), &n, nullptr),
            cat("cannot read /tokens of shard ", path));
  s.info.num_tokens = static_cast<int64_t>(n);

  h5::Object type = h5::checked(H5Dget_type(ds), cat("cannot read /tokens of shard ", path));
  const bool is_int = H5Tget_class(type.id()) == H5T_INTEGER;
  const size_t size = H5Tget_size(type.id());
  const bool is_unsigned = is_int && H5Tget_sign(type.id()) == H5T_SGN_NONE;
  const bool accepted = is_int && ((is_unsigned && (size == 1 || size == 2 || size == 4)) ||
                                   (!is_unsigned && size == 4));
  if (!accepted)
    fail_user("shard ", path, ": /tokens has type ", type_name(type.id()),
              "; accepted types are uint8, uint16, int32 and uint32 (convert it, e.g. with "
              "`par prep tokens`)");
  s.unsigned32 = is_unsigned && size == 4;

  // Storage never written reads as the fill value, 0 = PAD, without a word: what a writer
  // killed before it finished leaves (h5py's files stay readable). Chunks are counted
  // (H5Dget_space_status compares bytes, which compression makes smaller).
  h5::Object dcpl = h5::checked(H5Dget_create_plist(ds), cat("cannot read /tokens of shard ", path));
  if (s.info.num_tokens > 0) {
    hsize_t chunk = 0, chunks = 0;
    const H5D_layout_t layout = H5Pget_layout(dcpl.id());
    if (layout == H5D_CHUNKED && H5Pget_chunk(dcpl.id(), 1, &chunk) == 1 && chunk > 0 &&
        H5Dget_num_chunks(ds, space.id(), &chunks) >= 0) {
      const hsize_t expected = (n + chunk - 1) / chunk;
      if (chunks < expected)
        fail_user("shard ", path, ": ", expected - chunks, " of the ", expected, " chunks of "
                  "/tokens were never written (its writer did not finish?); write it again");
    } else if (layout == H5D_CONTIGUOUS && H5Dget_storage_size(ds) == 0) {
      fail_user("shard ", path, ": /tokens was never written (its writer did not finish?); "
                "write it again");
    }
    H5Eclear2(H5E_DEFAULT);
  }
  // A filter this HDF5 lacks (h5py's lzf, a plugin's) fails only when a chunk is read,
  // mid-run and with a message about plugin directories: name it now.
  const int filters = H5Pget_nfilters(dcpl.id());
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0;
    size_t nvalues = 0;
    char name[64] = {};
    unsigned config = 0;
    const H5Z_filter_t id =
        H5Pget_filter2(dcpl.id(), unsigned(i), &flags, &nvalues, nullptr, sizeof name, name, &config);
    if (id < 0) continue;
    if (H5Zfilter_avail(id) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      fail_user("shard ", path, ": /tokens is compressed with HDF5 filter ", int(id),
                name[0] ? cat(" (", name, ")") : std::string(),
                ", which this par's HDF5 cannot read; write it with gzip or no compression, or "
                "convert it with `par prep tokens`");
    }
  }
  return s;
}

template <typename U>
void pack(const int32_t* in, int64_t n, uint8_t* out) {
  U* o = reinterpret_cast<U*>(out);
  for (int64_t i = 0; i < n; ++i) o[i] = static_cast<U>(in[i]);
}

}  // namespace

ShardInfo inspect_shard(const std::string& path) { return open_shard(path).info; }

ShardReader::ShardReader(const std::string& path) {
  h5::Lock lock;
  OpenedShard s = open_shard(path);
  info_ = s.info;
  file_ = std::move(s.file);
  unsigned32_ = s.unsigned32;
  // Reopen /tokens with a chunk cache that holds a whole chunk (HDF5's default is 1 MiB, less
  // than one 1 Mi-token uint16 chunk), so reading a window in several column slices does not
  // inflate the same chunk each time. Capped: one reader stays open per shard.
  size_t cache_bytes = 1 << 20;
  {
    h5::Object dcpl = h5::checked(H5Dget_create_plist(s.tokens.id()), "H5Dget_create_plist");
    h5::Object type = h5::checked(H5Dget_type(s.tokens.id()), "H5Dget_type");
    hsize_t chunk = 0;
    if (H5Pget_layout(dcpl.id()) == H5D_CHUNKED && H5Pget_chunk(dcpl.id(), 1, &chunk) == 1)
      cache_bytes = std::clamp<size_t>(chunk * H5Tget_size(type.id()) + 4096, cache_bytes,
                                       size_t{8} << 20);
  }
  s.tokens.close();
  h5::Object dapl = h5::checked(H5Pcreate(H5P_DATASET_ACCESS), "H5Pcreate(dataset access)");
  h5::check(H5Pset_chunk_cache(dapl.id(), 521, cache_bytes, 1.0), "H5Pset_chunk_cache");
  tokens_ = h5::checked(H5Dopen2(file_.id(), "tokens", dapl.id()),
                        cat("cannot open /tokens of shard ", path));
}

void ShardReader::read(int64_t offset, int64_t count, int32_t* out, int64_t vocab_limit) const {
  PAR_ASSERT(offset >= 0 && count >= 0 && offset + count <= info_.num_tokens, "shard ",
             info_.path, " read [", offset, ", ", offset + count, ") of ", info_.num_tokens);
  if (count == 0) return;
  {
    h5::Lock lock;
    const std::string what = cat("cannot read tokens [", offset, ", ", offset + count,
                                 ") of shard ", info_.path);
    const CrashContext context(cat("reading tokens [", offset, ", ", offset + count,
                                   ") of shard ", info_.path));
    h5::Object space = h5::checked(H5Dget_space(tokens_.id()), what);
    const hsize_t start = static_cast<hsize_t>(offset), n = static_cast<hsize_t>(count);
    h5::check(H5Sselect_hyperslab(space.id(), H5S_SELECT_SET, &start, nullptr, &n, nullptr),
              what);
    h5::Object mem = h5::checked(H5Screate_simple(1, &n, nullptr), what);
    h5::check(H5Dread(tokens_.id(), unsigned32_ ? H5T_NATIVE_UINT32 : H5T_NATIVE_INT32,
                      mem.id(), space.id(), H5P_DEFAULT, out),
              what);
  }
  // The check runs outside the HDF5 lock so other readers are not held up by it.
  for (int64_t i = 0; i < count; ++i) {
    const int64_t v = unsigned32_ ? static_cast<int64_t>(static_cast<uint32_t>(out[i]))
                                  : static_cast<int64_t>(out[i]);
    if (v < 0 || v >= vocab_limit)
      fail_user("shard ", info_.path, ": token at position ", offset + i, " is ", v,
                ", outside the vocabulary [0, ", vocab_limit, ") (shard vocab_size ",
                info_.vocab_size, "); fix the data or prepare it again with `par prep`");
  }
}

int64_t shard_token_bytes(int64_t vocab_size) {
  return vocab_size <= 256 ? 1 : vocab_size <= 65536 ? 2 : 4;
}

ShardWriter::ShardWriter(std::string path, int64_t num_tokens, int64_t vocab_size)
    : path_(std::move(path)), num_tokens_(num_tokens), vocab_size_(vocab_size) {
  PAR_ASSERT(num_tokens >= 0, "shard ", path_, " of ", num_tokens, " tokens");
  if (vocab_size <= 0 || vocab_size > (int64_t{1} << 32))
    fail_user("cannot write shard ", path_, ": vocab_size ", vocab_size,
              " must be between 1 and 2^32");
  elem_bytes_ = shard_token_bytes(vocab_size);
  mem_type_ = elem_bytes_ == 1 ? H5T_NATIVE_UINT8
              : elem_bytes_ == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
  const hid_t file_type = elem_bytes_ == 1 ? H5T_STD_U8LE
                          : elem_bytes_ == 2 ? H5T_STD_U16LE : H5T_STD_U32LE;
  chunk_tokens_ = std::max<int64_t>(1, std::min(kShardChunkTokens, num_tokens));

  h5::Lock lock;
  const std::string tmp = tmp_path();
  file_ = h5::create_file(tmp);
  h5::write_attribute<std::string>(file_.id(), "format", kShardFormat);
  h5::write_attribute<int64_t>(file_.id(), "vocab_size", vocab_size);
  const hsize_t dims = static_cast<hsize_t>(num_tokens);
  h5::Object space = h5::checked(H5Screate_simple(1, &dims, nullptr), "H5Screate_simple");
  h5::Object dcpl = h5::untimed_creation(H5P_DATASET_CREATE);
  // A fixed-size dataset cannot have a chunk larger than itself, and HDF5 has no zero-sized
  // chunks: an empty shard stays contiguous.
  if (num_tokens > 0) {
    const hsize_t chunk = static_cast<hsize_t>(chunk_tokens_);
    h5::check(H5Pset_chunk(dcpl.id(), 1, &chunk), "H5Pset_chunk");
    h5::check(H5Pset_shuffle(dcpl.id()), "H5Pset_shuffle");
    h5::check(H5Pset_deflate(dcpl.id(), 1), "H5Pset_deflate");
  }
  tokens_ = h5::checked(H5Dcreate2(file_.id(), "tokens", file_type, space.id(), H5P_DEFAULT,
                                   dcpl.id(), H5P_DEFAULT),
                        cat("cannot create /tokens in ", tmp));
  chunk_.resize(static_cast<size_t>(chunk_tokens_ * elem_bytes_));
}

ShardWriter::~ShardWriter() {
  if (committed_) return;
  tokens_ = h5::Object();
  file_ = h5::Object();
  ::unlink(tmp_path().c_str());
}

void ShardWriter::append(const int32_t* tokens, int64_t n) {
  PAR_ASSERT(!closed_ && n >= 0 && written_ + n <= num_tokens_, "shard ", path_, ": appending ",
             n, " tokens after ", written_, " of ", num_tokens_);
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size_)
      fail_user("cannot write shard ", path_, ": token at position ", written_ + i, " is ",
                tokens[i], ", outside the vocabulary [0, ", vocab_size_, ")");
    max_token_ = std::max<int64_t>(max_token_, tokens[i]);
  }
  while (n > 0) {
    const int64_t take = std::min(n, chunk_tokens_ - pending_);
    uint8_t* dst = chunk_.data() + pending_ * elem_bytes_;
    if (elem_bytes_ == 1) pack<uint8_t>(tokens, take, dst);
    else if (elem_bytes_ == 2) pack<uint16_t>(tokens, take, dst);
    else pack<uint32_t>(tokens, take, dst);
    pending_ += take;
    written_ += take;
    tokens += take;
    n -= take;
    if (pending_ == chunk_tokens_) flush_chunk();
  }
}

// Writes whole chunks only: a partial write into a compressed chunk bigger than HDF5's chunk
// cache would read, inflate and rewrite it for every piece.
void ShardWriter::flush_chunk() {
  if (pending_ == 0) return;
  h5::Lock lock;
  const std::string what = cat("cannot write shard ", tmp_path());
  const hsize_t start = static_cast<hsize_t>(written_ - pending_),
                count = static_cast<hsize_t>(pending_);
  h5::Object space = h5::checked(H5Dget_space(tokens_.id()), what);
  h5::check(H5Sselect_hyperslab(space.id(), H5S_SELECT_SET, &start, nullptr, &count, nullptr),
            what);
  h5::Object mem = h5::checked(H5Screate_simple(1, &count, nullptr), what);
  h5::check(H5Dwrite(tokens_.id(), mem_type_, mem.id(), space.id(), H5P_DEFAULT, chunk_.data()),
            what);
  pending_ = 0;
}

void ShardWriter::close() {
  if (closed_) return;
  PAR_ASSERT(written_ == num_tokens_, "shard ", path_, " closed after ", written_, " of ",
             num_tokens_, " tokens");
  flush_chunk();
  const std::string what = cat("cannot write shard ", tmp_path());
  tokens_.close(what);
  if (max_token_ >= 0) h5::write_attribute<int64_t>(file_.id(), "max_token", max_token_);
  file_.close(what);
  chunk_ = {};
  closed_ = true;
}

void ShardWriter::commit() {
  close();
  if (std::rename(tmp_path().c_str(), path_.c_str()) != 0)
    fail_user("cannot rename ", tmp_path(), " to ", path_, ": ", std::strerror(errno));
  committed_ = true;
}

void write_shard(const std::string& path, const int32_t* tokens, int64_t n, int64_t vocab_size) {
  ShardWriter w(path, n, vocab_size);
  w.append(tokens, n);
  w.commit();
}

}  // namespace par
