// The work behind `par prep` (see prep.h). launch/cmd_prep.cpp only parses options.
#include "data/prep.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include "core/error.h"

namespace par {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kBlockTokens = int64_t{1} << 20;  // tokens per read/convert step

std::string shard_path(const std::string& dir, const std::string& split, int64_t i) {
  std::ostringstream os;
  os << split << '-' << std::setw(5) << std::setfill('0') << i << ".h5";
  return (fs::path(dir) / os.str()).string();
}

// "train-00012.h5", "val-00000.h5": the names prep writes (any number of digits).
bool is_shard_name(const std::string& name) {
  for (const char* split : {"train-", "val-"}) {
    const size_t n = std::strlen(split);
    if (name.size() <= n + 3 || name.compare(0, n, split) != 0) continue;
    if (name.compare(name.size() - 3, 3, ".h5") != 0) continue;
    const std::string digits = name.substr(n, name.size() - n - 3);
    if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return true;
  }
  return false;
}

std::vector<std::string> existing_shards(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (is_shard_name(e.path().filename().string())) out.push_back(e.path().string());
  if (ec) fail_user("cannot list --out directory ", dir, ": ", ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

// The output directory, where this run made it: should the run fail (a token outside the
// vocabulary, a full disk), the directory goes too if nothing is left in it.
class OutDir {
 public:
  OutDir(std::string path, bool made) : path_(std::move(path)), made_(made) {}
  OutDir(const OutDir&) = delete;
  OutDir& operator=(const OutDir&) = delete;
  ~OutDir() {
    std::error_code ec;
    if (made_ && std::uncaught_exceptions() > 0 && fs::is_empty(path_, ec) && !ec)
      fs::remove(path_, ec);
  }

 private:
  std::string path_;
  bool made_;
};

// Validates the common options and makes the output directory; refuses to mix with shards
// already there unless --force (then they are replaced, and leftovers removed at the end).
[[nodiscard]] std::unique_ptr<OutDir> prepare_out_dir(const PrepCommon& c) {
  if (c.out_dir.empty()) fail_user("--out is required: the directory to write shards into");
  if (c.shard_tokens < 1) fail_user("--shard-tokens must be positive, not ", c.shard_tokens);
  std::error_code ec;
  if (fs::exists(c.out_dir, ec) && !fs::is_directory(c.out_dir, ec))
    fail_user("--out ", c.out_dir, " exists and is not a directory");
  const bool made = !fs::exists(c.out_dir, ec);
  fs::create_directories(c.out_dir, ec);
  if (ec) fail_user("cannot create --out directory ", c.out_dir, ": ", ec.message());
  auto out = std::make_unique<OutDir>(c.out_dir, made);
  const std::vector<std::string> old = existing_shards(c.out_dir);
  if (!old.empty() && !c.force)
    fail_user("--out ", c.out_dir, " already holds ", old.size(), " token shard(s) (", old[0],
              old.size() > 1 ? ", ..." : "",
              "); choose another --out, remove them, or pass --force to replace them");
  return out;
}

void check_val_fraction(double f) {
  if (!(f >= 0.0 && f < 1.0)) fail_user("--val-fraction must be in [0, 1), not ", f);
}

// Routes one token stream into train shards (the first n_train tokens) then val shards (the
// next n_val), at most shard_tokens each. Shards stay as .tmp files until finish().
class SplitSink {
 public:
  SplitSink(const PrepCommon& c, int64_t n_train, int64_t n_val, int64_t vocab_size,
            int64_t shard_tokens)
      : c_(c), train_left_(n_train), val_left_(n_val), vocab_(vocab_size),
        shard_tokens_(shard_tokens) {}

  void push(const int32_t* t, int64_t n) {
    while (n > 0) {
      if (!cur_) open_next();
      const int64_t take = std::min(n, cur_->info().num_tokens - cur_->written());
      cur_->append(t, take);
      t += take;
      n -= take;
      if (cur_->written() == cur_->info().num_tokens) {
        cur_->close();
        done_.push_back({cur_val_, std::move(cur_)});
      }
    }
  }

  PrepResult finish(std::ostream& log) {
    PAR_ASSERT(!cur_ && train_left_ == 0 && val_left_ == 0, "token stream ended early");
    PrepResult r;
    std::set<std::string> written;
    for (Done& d : done_) {
      d.writer->commit();
      log << "wrote " << d.writer->path() << " (" << d.writer->info().num_tokens << " tokens)\n";
      written.insert(d.writer->path());
      (d.val ? r.val : r.train).push_back(d.writer->info());
    }
    // With --force, shards of an earlier, longer run would otherwise mix into this data set.
    for (const std::string& p : existing_shards(c_.out_dir)) {
      if (written.count(p)) continue;
      std::error_code ec;
      fs::remove(p, ec);
      if (ec) fail_user("cannot remove old shard ", p, ": ", ec.message());
      log << "removed old shard " << p << "\n";
    }
    return r;
  }

 private:
  void open_next() {
    int64_t size;
    std::string path;
    if (train_left_ > 0) {
      size = std::min(shard_tokens_, train_left_);
      train_left_ -= size;
      path = shard_path(c_.out_dir, "train", train_index_++);
      cur_val_ = false;
    } else {
      PAR_ASSERT(val_left_ > 0, "token stream longer than announced");
      size = std::min(shard_tokens_, val_left_);
      val_left_ -= size;
      path = shard_path(c_.out_dir, "val", val_index_++);
      cur_val_ = true;
    }
    cur_ = std::make_unique<ShardWriter>(path, size, vocab_);
  }

  const PrepCommon& c_;
  int64_t train_left_, val_left_, vocab_, shard_tokens_;
  int64_t train_index_ = 0, val_index_ = 0;
  struct Done {
    bool val;
    std::unique_ptr<ShardWriter> writer;
  };
  std::unique_ptr<ShardWriter> cur_;
  bool cur_val_ = false;
  std::vector<Done> done_;
};

std::string summary(const std::string& what, const PrepResult& r, int64_t vocab_size,
                    const std::string& dir) {
  int64_t nt = 0, nv = 0;
  for (const auto& s : r.train) nt += s.num_tokens;
  for (const auto& s : r.val) nv += s.num_tokens;
  return cat(what, ": ", nt, " train tokens in ", r.train.size(), " shard(s), ", nv,
             " val tokens in ", r.val.size(), " shard(s), vocab_size ", vocab_size, ", in ",
             dir, "\n");
}

// Splits `total` tokens into (train, val) by the validation fraction.
std::pair<int64_t, int64_t> split_counts(int64_t total, double val_fraction,
                                         const std::string& input_desc) {
  const int64_t n_val = std::llround(static_cast<double>(total) * val_fraction);
  const int64_t n_train = total - n_val;
  if (n_train <= 0)
    fail_user("--val-fraction ", val_fraction, " leaves no training tokens out of ", total,
              " from ", input_desc);
  return {n_train, n_val};
}

// Tokens of an HDF5 or raw input, read block by block as int64 so every stored value can be
// checked exactly.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t size() const = 0;
  // Reads [offset, offset+n) into out[n].
  virtual void read(int64_t offset, int64_t n, int64_t* out) = 0;
};

class H5Source : public TokenSource {
 public:
  H5Source(const std::string& path, const std::string& name) : path_(path), name_(name) {
    h5::Lock lock;
    file_ = h5::open_file(path);
    if (!h5::exists(file_.id(), name))
      fail_user("--input ", path, " has no dataset '", name, "' (name it with --dataset)");
    const std::vector<int64_t> shape = h5::dataset_shape(file_.id(), name);
    if (shape.size() != 1)
      fail_user("--input ", path, ": dataset '", name, "' has ", shape.size(),
                " dimensions; a token array must be 1-D");
    size_ = shape[0];
    h5::Object ds = h5::checked(H5Dopen2(file_.id(), name.c_str(), H5P_DEFAULT),
                                cat("cannot open dataset '", name, "' of --input ", path));
    h5::Object type = h5::checked(H5Dget_type(ds.id()), cat("cannot read --input ", path));
    if (H5Tget_class(type.id()) != H5T_INTEGER)
      fail_user("--input ", path, ": dataset '", name,
                "' does not hold integers; token ids must be integers");
  }
  int64_t size() const override { return size_; }
  // Through h5::read_block, which refuses a damaged number type before HDF5 converts from
  // it and names the file should HDF5 crash on it.
  void read(int64_t offset, int64_t n, int64_t* out) override {
    h5::read_block<int64_t>(file_.id(), name_, {offset}, {n}, out);
  }

 private:
  std::string path_, name_;
  h5::Object file_;
  int64_t size_ = 0;
};

class RawSource : public TokenSource {
 public:
  RawSource(const std::string& path, const std::string& dtype) : path_(path), in_(path, std::ios::binary) {
    if (dtype == "uint8") { bytes_ = 1; signed_ = false; }
    else if (dtype == "uint16") { bytes_ = 2; signed_ = false; }
    else if (dtype == "int32") { bytes_ = 4; signed_ = true; }
    else if (dtype == "uint32") { bytes_ = 4; signed_ = false; }
    else if (dtype == "int64") { bytes_ = 8; signed_ = true; }
    else fail_user("--dtype must be one of uint8, uint16, int32, uint32, int64, not '", dtype, "'");
    if (!in_) fail_user("cannot read --input ", path, ": ", std::strerror(errno));
    std::error_code ec;
    const auto file_bytes = static_cast<int64_t>(fs::file_size(path, ec));
    if (ec) fail_user("cannot read --input ", path, ": ", ec.message());
    if (file_bytes % bytes_ != 0)
      fail_user("--input ", path, " has ", file_bytes, " bytes, not a multiple of ", bytes_,
                " (the size of --dtype ", dtype, "); is --dtype right?");
    size_ = file_bytes / bytes_;
  }
  int64_t size() const override { return size_; }
  void read(int64_t offset, int64_t n, int64_t* out) override {
    buf_.resize(static_cast<size_t>(n * bytes_));
    in_.seekg(offset * bytes_);
    in_.read(reinterpret_cast<char*>(buf_.data()), static_cast<std::streamsize>(buf_.size()));
    if (in_.gcount() != static_cast<std::streamsize>(buf_.size()))
      fail_user("cannot read --input ", path_, " at byte ", offset * bytes_,
                " (did it change while being read?)");
    for (int64_t i = 0; i < n; ++i) {
      // Little-endian by definition of the format, whatever the host.
      uint64_t u = 0;
      for (int64_t b = bytes_ - 1; b >= 0; --b) u = (u << 8) | buf_[static_cast<size_t>(i * bytes_ + b)];
      if (signed_ && bytes_ < 8 && (u >> (8 * bytes_ - 1)))
        u |= ~uint64_t{0} << (8 * bytes_);  // sign-extend
      out[i] = static_cast<int64_t>(u);
    }
  }

 private:
  std::string path_;
  std::ifstream in_;
  int64_t bytes_ = 1;
  bool signed_ = false;
  int64_t size_ = 0;
  std::vector<uint8_t> buf_;
};

}  // namespace

PrepResult prep_bytes(const BytesPrepOptions& opts, std::ostream& log) {
  check_val_fraction(opts.val_fraction);
  if (opts.inputs.empty()) fail_user("no input files: give one or more FILE arguments");
  // Sizes first: the train/val split point must be known before the first shard is sized.
  int64_t total = 0;
  std::vector<int64_t> sizes;  // as measured now: a file that changes later is an error
  for (const std::string& p : opts.inputs) {
    struct stat st{};
    if (::stat(p.c_str(), &st) != 0) fail_user("cannot read input ", p, ": ", std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail_user("input ", p, " is not a regular file");
    sizes.push_back(static_cast<int64_t>(st.st_size));
    total += sizes.back() + 1;  // + the EOS after the document
  }
  // An empty file is a document of EOS alone: harmless among others, but alone it is data
  // with nothing to learn, which training would refuse only later.
  const int64_t empty = std::count(sizes.begin(), sizes.end(), int64_t{0});
  if (empty == int64_t(sizes.size()))
    fail_user(sizes.size() == 1 ? cat("the input file ", opts.inputs[0], " is empty")
                                : cat("all ", sizes.size(), " input files are empty"),
              ": no bytes to make tokens of");
  const auto [n_train, n_val] = split_counts(total, opts.val_fraction, "the input files");
  const auto out_dir = prepare_out_dir(opts.common);
  if (empty > 0) {
    const auto first = std::find(sizes.begin(), sizes.end(), int64_t{0}) - sizes.begin();
    log << "prep bytes: warning: " << empty << " input file(s) are empty (the first: "
        << opts.inputs[size_t(first)] << "); each is a document of EOS alone\n";
  }

  SplitSink sink(opts.common, n_train, n_val, kByteVocabSize, opts.common.shard_tokens);
  std::vector<char> bytes(static_cast<size_t>(kBlockTokens));
  std::vector<int32_t> ids(static_cast<size_t>(kBlockTokens));
  for (size_t f = 0; f < opts.inputs.size(); ++f) {
    const std::string& p = opts.inputs[f];
    std::ifstream in(p, std::ios::binary);
    if (!in) fail_user("cannot read input ", p, ": ", std::strerror(errno));
    int64_t left = sizes[f];
    while (left > 0) {
      const int64_t n = std::min<int64_t>(left, kBlockTokens);
      in.read(bytes.data(), static_cast<std::streamsize>(n));
      if (in.gcount() != static_cast<std::streamsize>(n))
        fail_user("cannot read input ", p, " (did it change while being read?)");
      for (int64_t i = 0; i < n; ++i)
        ids[static_cast<size_t>(i)] = static_cast<unsigned char>(bytes[static_cast<size_t>(i)]) + kByteOffset;
      sink.push(ids.data(), n);
      left -= n;
    }
    sink.push(&kEosToken, 1);
  }
  PrepResult r = sink.finish(log);
  log << summary(cat("prep bytes: ", opts.inputs.size(), " file(s)"), r, kByteVocabSize,
                 opts.common.out_dir);
  return r;
}

PrepResult prep_tokens(const TokensPrepOptions& opts, std::ostream& log) {
  check_val_fraction(opts.val_fraction);
  if (opts.input.empty()) fail_user("--input is required: the token array to convert");
  // The largest a model takes (core/model_config.cpp): a larger one would prep data that
  // nothing can train on.
  if (opts.vocab_size < 1 || opts.vocab_size > (int64_t{1} << 31) - 1)
    fail_user("--vocab-size must be between 1 and 2147483647 (what a model takes), not ",
              opts.vocab_size);
  struct stat st{};
  if (::stat(opts.input.c_str(), &st) != 0)
    fail_user("cannot read --input ", opts.input, ": ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail_user("--input ", opts.input, " is not a regular file");
  bool is_h5;
  {
    h5::Lock lock;
    is_h5 = H5Fis_hdf5(opts.input.c_str()) > 0;
    H5Eclear2(H5E_DEFAULT);
  }
  std::unique_ptr<TokenSource> src;
  if (is_h5 || !opts.dataset.empty()) {
    if (!is_h5)
      fail_user("--input ", opts.input, " is not an HDF5 file (--dataset is for HDF5 input; "
                "for a raw binary array give --dtype instead)");
    if (!opts.dtype.empty())
      fail_user("--dtype is for raw binary input; --input ", opts.input,
                " is an HDF5 file, whose dataset's own type is used");
    src = std::make_unique<H5Source>(opts.input, opts.dataset.empty() ? "tokens" : opts.dataset);
  } else {
    if (opts.dtype.empty())
      fail_user("--dtype is required for raw binary input (--input ", opts.input,
                " is not HDF5): one of uint8, uint16, int32, uint32, int64");
    src = std::make_unique<RawSource>(opts.input, opts.dtype);
  }
  const int64_t total = src->size();
  if (total == 0) fail_user("--input ", opts.input, " holds no tokens");
  const auto [n_train, n_val] = split_counts(total, opts.val_fraction, opts.input);
  const auto out_dir = prepare_out_dir(opts.common);

  SplitSink sink(opts.common, n_train, n_val, opts.vocab_size, opts.common.shard_tokens);
  std::vector<int64_t> raw(static_cast<size_t>(std::min(total, kBlockTokens)));
  std::vector<int32_t> ids(raw.size());
  for (int64_t off = 0; off < total; off += kBlockTokens) {
    const int64_t n = std::min(kBlockTokens, total - off);
    src->read(off, n, raw.data());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = raw[static_cast<size_t>(i)];
      if (v < 0 || v >= opts.vocab_size)
        fail_user("--input ", opts.input, ": token at position ", off + i, " is ", v,
                  ", outside [0, --vocab-size ", opts.vocab_size, ")");
      ids[static_cast<size_t>(i)] = static_cast<int32_t>(v);
    }
    sink.push(ids.data(), n);
  }
  PrepResult r = sink.finish(log);
  log << summary(cat("prep tokens: ", opts.input), r, opts.vocab_size, opts.common.out_dir);
  return r;
}

PrepResult prep_mirror(const MirrorPrepOptions& opts, std::ostream& log) {
  const int64_t e = opts.length;
  if (e < 3) fail_user("--length must be at least 3, not ", e);
  if (opts.examples < 1) fail_user("--examples must be at least 1, not ", opts.examples);
  if (opts.val_examples < -1)
    fail_user("--val-examples must be at least 0, not ", opts.val_examples);
  const int64_t k_train = opts.examples;
  const int64_t k_val = opts.val_examples == -1 ? std::max<int64_t>(1, k_train / 10)
                                                : opts.val_examples;
  const int64_t limit = int64_t{1} << 50;
  if (e > limit || k_train > limit / e)
    fail_user("--examples × --length is too large (", k_train, " × ", e, ")");
  if (k_val > limit / e)
    fail_user("--val-examples × --length is too large (", k_val, " × ", e, ")");
  // Whole examples per shard: a window straddling two shards cannot exist, so an example
  // cut at a shard boundary would be lost.
  const int64_t per_shard = opts.common.shard_tokens / e * e;
  if (per_shard == 0)
    fail_user("--shard-tokens (", opts.common.shard_tokens, ") must be at least --length (", e,
              ") so that no example spans two shards");
  const int64_t h = opts.half == -1 ? (e - 1) / 2 : opts.half;
  if (h < 1 || h > e / 2)
    fail_user("--half must be between 1 and --length / 2 = ", e / 2, ", not ", h);
  if (opts.keep != -1 && (opts.keep < 1 || opts.keep > h))
    fail_user("--keep must be between 1 and the half (", h, "), not ", opts.keep);
  const auto out_dir = prepare_out_dir(opts.common);

  SplitSink sink(opts.common, k_train * e, k_val * e, kByteVocabSize, per_shard);
  const int64_t per_block = std::max<int64_t>(1, kBlockTokens / e);
  std::vector<int32_t> block(static_cast<size_t>(std::min(per_block, std::max(k_train, k_val)) * e));
  auto generate = [&](std::mt19937_64& gen, int64_t k) {
    for (int64_t done = 0; done < k;) {
      const int64_t m = std::min(per_block, k - done);
      for (int64_t x = 0; x < m; ++x) {
        int32_t* ex = block.data() + x * e;
        // Top 8 bits of a 64-bit draw: exactly uniform and the same on every platform
        // (std::uniform_int_distribution is not).
        for (int64_t i = 0; i < h; ++i) ex[i] = kByteOffset + static_cast<int32_t>(gen() >> 56);
        for (int64_t i = 0; i < h; ++i) ex[h + i] = opts.reverse ? ex[h - 1 - i] : ex[i];
        for (int64_t i = 2 * h; i < e; ++i) ex[i] = kEosToken;
        if (opts.keep > 0) {
          // Second-half position h + i repeats first-half position src(i); keep the last
          // `keep` of the second half and their sources (the draws are those of the whole
          // task, so the kept tokens are the same as without --keep).
          std::vector<uint8_t> kept(static_cast<size_t>(h), 0);
          for (int64_t i = h - opts.keep; i < h; ++i)
            kept[static_cast<size_t>(opts.reverse ? h - 1 - i : i)] = 1;
          for (int64_t i = 0; i < h; ++i) {
            if (!kept[static_cast<size_t>(i)]) ex[i] = kPadToken;
            if (i < h - opts.keep) ex[h + i] = kPadToken;
          }
        }
      }
      sink.push(block.data(), m * e);
      done += m;
    }
  };
  std::mt19937_64 train_gen(opts.seed);
  generate(train_gen, k_train);
  // Its own stream, so the validation set does not depend on --examples.
  std::seed_seq val_seq{static_cast<uint32_t>(opts.seed), static_cast<uint32_t>(opts.seed >> 32),
                        0x76616cu};
  std::mt19937_64 val_gen(val_seq);
  generate(val_gen, k_val);

  PrepResult r = sink.finish(log);
  log << summary(cat(opts.reverse ? "prep mirror: " : "prep copy: ", k_train, " train and ", k_val, " val examples of ", e,
                     " tokens"),
                 r, kByteVocabSize, opts.common.out_dir);
  return r;
}

}  // namespace par
