// HDF5 RAII wrappers (see h5.h). Every function takes h5::Lock before its first H5* call.
#include "data/h5.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/fatal_signals.h"

namespace par::h5 {

namespace {

// Re-entrancy depth of Lock on this thread: nested wrappers (and Object destructors run
// inside a wrapper) must not lock the non-recursive mutex twice.
thread_local int64_t lock_depth = 0;

// HDF5's innermost error message for the failed call, then a clean stack.
std::string hdf5_detail() {
  std::string msg;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* data) -> herr_t {
        auto* out = static_cast<std::string*>(data);
        if (n == 0 && err->desc) *out = err->desc;
        return 0;
      },
      &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg;
}

// HDF5's message in one line. A failed system call comes as several lines of raw
// detail ("file write failed: time = ...\n, filename = ..., errno = 28, error message =
// 'No space left on device', buf = 0x..."): its error message says it all.
std::string one_line(const std::string& detail) {
  const std::string key = "error message = '";
  const size_t at = detail.find(key);
  if (at != std::string::npos) {
    const size_t end = detail.find('\'', at + key.size());
    if (end != std::string::npos) return detail.substr(at + key.size(), end - at - key.size());
  }
  std::string out;
  for (char c : detail) {
    const bool space = c == '\n' || c == '\r' || c == '\t' || c == ' ';
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : c;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::string with_detail(const std::string& what) {
  const std::string d = one_line(hdf5_detail());
  return d.empty() ? what : cat(what, " (HDF5: ", d, ")");
}

herr_t close_id(hid_t id) {
  switch (H5Iget_type(id)) {
    case H5I_FILE: return H5Fclose(id);
    case H5I_GROUP: return H5Gclose(id);
    case H5I_DATASET: return H5Dclose(id);
    case H5I_ATTR: return H5Aclose(id);
    case H5I_DATASPACE: return H5Sclose(id);
    case H5I_DATATYPE: return H5Tclose(id);
    case H5I_GENPROP_LST: return H5Pclose(id);
    default: return H5Idec_ref(id) < 0 ? -1 : 0;
  }
}

template <typename T>
hid_t native_type() {
  if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
  else if constexpr (std::is_same_v<T, int32_t>) return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, int64_t>) return H5T_NATIVE_INT64;
  else if constexpr (std::is_same_v<T, uint8_t>) return H5T_NATIVE_UINT8;
  else static_assert(sizeof(T) == 0, "unsupported HDF5 element type");
}

// "file F: object 'name'" prefix for messages about a file's contents.
std::string where(hid_t loc, const std::string& kind, const std::string& name) {
  return cat("file ", file_name(loc), ": ", kind, " '", name, "'");
}

// What a crash inside HDF5 names while the object `what` (where()'s words) is read
// (core/fatal_signals.h).
CrashContext reading(const std::string& what) { return CrashContext(cat("reading ", what)); }

Object open_dataset(hid_t loc, const std::string& name) {
  if (!exists(loc, name)) fail_user("file ", file_name(loc), " has no dataset '", name, "'");
  const hid_t id = H5Dopen2(loc, name.c_str(), H5P_DEFAULT);
  if (id < 0) fail_user(with_detail(cat(where(loc, "object", name), " is not a dataset")));
  return Object(id);
}

Object open_attribute(hid_t loc, const std::string& name) {
  if (!has_attribute(loc, name))
    fail_user("file ", file_name(loc), " has no attribute '", name, "'");
  return checked(H5Aopen(loc, name.c_str(), H5P_DEFAULT),
                 cat("cannot open ", where(loc, "attribute", name)));
}

// Link-creation properties that make missing parent groups on the way.
Object intermediate_lcpl() {
  Object lcpl = checked(H5Pcreate(H5P_LINK_CREATE), "H5Pcreate(link create)");
  check(H5Pset_create_intermediate_group(lcpl.id(), 1), "H5Pset_create_intermediate_group");
  return lcpl;
}

std::string class_name(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length";
    default: return "non-numeric";
  }
}

// Whether a float type is IEEE 754's binary16, 32 or 64 (either byte order).
bool is_ieee_float(hid_t type, size_t size) {
  struct Fields {
    size_t sign, exponent_at, exponent_bits, mantissa_bits, bias;
  };
  const Fields want = size == 2   ? Fields{15, 10, 5, 10, 15}
                      : size == 4 ? Fields{31, 23, 8, 23, 127}
                                  : Fields{63, 52, 11, 52, 1023};
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
  return spos == want.sign && epos == want.exponent_at && esize == want.exponent_bits &&
         mpos == 0 && msize == want.mantissa_bits && H5Tget_ebias(type) == want.bias &&
         H5Tget_norm(type) == H5T_NORM_IMPLIED;
}

// The numbers a dataset holds, as stored: integers of 1, 2, 4 or 8 bytes, IEEE floats of 2,
// 4 or 8, every bit used. Anything else (which a damaged datatype message makes of a float
// or integer type) is refused before HDF5 converts from it: a width that the stored bytes
// do not have makes the conversion read past HDF5's buffers, other fields change every
// value without an error.
void check_numeric_type(hid_t dataset, const std::string& what) {
  Object type = checked(H5Dget_type(dataset), cat("cannot read the type of ", what));
  const hid_t t = type.id();
  const H5T_class_t c = H5Tget_class(t);
  if (c != H5T_INTEGER && c != H5T_FLOAT)
    fail_user(what, " holds ", class_name(c), " data, not numbers");
  const size_t size = H5Tget_size(t);
  const bool whole = H5Tget_precision(t) == 8 * size && H5Tget_offset(t) == 0;
  const bool standard = c == H5T_INTEGER ? size == 1 || size == 2 || size == 4 || size == 8
                                         : (size == 2 || size == 4 || size == 8) &&
                                               is_ieee_float(t, size);
  H5Eclear2(H5E_DEFAULT);  // a getter that failed on a damaged type: refused below
  if (!whole || !standard)
    fail_user(what, " holds ", class_name(c), "s of ", size, " bytes that are not ",
              c == H5T_INTEGER ? "plain integers" : "IEEE floats",
              ": the file is damaged, or holds numbers par does not read (integers of 1, 2, 4 "
              "or 8 bytes, IEEE floats of 2, 4 or 8)");
}

}  // namespace

// No clean-up of HDF5's at the process's exit: a file whose closing failed (a full disk)
// stays in HDF5's list, and closing it again at exit crashes inside HDF5, turning one clear
// error into a segmentation fault. par closes its files itself; a file left open at exit is
// an unfinished .tmp file, which nothing reads. Set while the program starts, since it
// only holds before HDF5's first call (which H5T_NATIVE_* make too).
[[maybe_unused]] const bool no_clean_up_at_exit = (H5dont_atexit(), true);

std::mutex& global_mutex() {
  static std::mutex m;
  return m;
}

Lock::Lock() {
  if (lock_depth == 0) {
    global_mutex().lock();
    // Per thread, because a thread-safe HDF5 build keeps one error stack per thread.
    thread_local bool silenced = false;
    if (!silenced) {
      H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
      silenced = true;
    }
  }
  ++lock_depth;
}

Lock::~Lock() {
  if (--lock_depth == 0) global_mutex().unlock();
}

Object::~Object() {
  if (id_ < 0) return;
  Lock lock;
  close_id(id_);
  H5Eclear2(H5E_DEFAULT);
}

Object& Object::operator=(Object&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) {
      Lock lock;
      close_id(id_);
    }
    id_ = o.id_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Object::close(const std::string& what) {
  if (id_ < 0) return;
  Lock lock;
  const hid_t id = id_;
  id_ = H5I_INVALID_HID;
  check(close_id(id), what);
}

Object checked(hid_t id, const std::string& what) {
  if (id < 0) {
    Lock lock;
    fail_user(with_detail(what));
  }
  return Object(id);
}

void check(herr_t rc, const std::string& what) {
  if (rc < 0) {
    Lock lock;
    fail_user(with_detail(what));
  }
}

Object open_file(const std::string& path, bool writable) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    fail_user("cannot open ", path, ": ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail_user(path, " is a directory, not an HDF5 file");
  if (::access(path.c_str(), writable ? (R_OK | W_OK) : R_OK) != 0)
    fail_user("cannot open ", path, ": ", std::strerror(errno));
  Lock lock;
  const CrashContext context(cat("opening HDF5 file ", path));
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  // Negative: the check itself failed (no file descriptor left, an I/O error), which says
  // nothing about the file's contents.
  if (is_hdf5 < 0) fail_user(with_detail(cat("cannot open ", path)));
  if (is_hdf5 == 0) {
    H5Eclear2(H5E_DEFAULT);
    fail_user(path, " is not an HDF5 file (no HDF5 signature; is it corrupt or truncated?)");
  }
  const hid_t id = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) fail_user(with_detail(cat("cannot open HDF5 file ", path, " (corrupt or locked?)")));
  return Object(id);
}

Object create_file(const std::string& path, FileFormat format) {
  Lock lock;
  Object fapl = checked(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate(file access)");
  if (format == FileFormat::kChecksummedMetadata)
    check(H5Pset_libver_bounds(fapl.id(), H5F_LIBVER_V110, H5F_LIBVER_V110),
          "H5Pset_libver_bounds");
  const hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id());
  if (id < 0)
    fail_user(with_detail(cat("cannot create HDF5 file ", path,
                              " (does its directory exist, and is it writable?)")));
  return Object(id);
}

std::string file_name(hid_t any) {
  Lock lock;
  const ssize_t n = H5Fget_name(any, nullptr, 0);
  if (n < 0) {
    H5Eclear2(H5E_DEFAULT);
    return "<unknown HDF5 file>";
  }
  std::string name(static_cast<size_t>(n) + 1, '\0');
  H5Fget_name(any, name.data(), name.size());
  name.resize(static_cast<size_t>(n));
  return name;
}

bool exists(hid_t loc, const std::string& name) {
  Lock lock;
  std::string prefix = (!name.empty() && name[0] == '/') ? "/" : "";
  size_t pos = 0;
  bool any = false;
  while (pos <= name.size()) {
    size_t end = name.find('/', pos);
    if (end == std::string::npos) end = name.size();
    const std::string part = name.substr(pos, end - pos);
    pos = end + 1;
    if (part.empty() || part == ".") continue;
    if (!prefix.empty() && prefix.back() != '/') prefix += '/';
    prefix += part;
    any = true;
    const htri_t r = H5Lexists(loc, prefix.c_str(), H5P_DEFAULT);
    if (r < 0) {
      H5Eclear2(H5E_DEFAULT);
      return false;  // e.g. a parent component is a dataset, not a group
    }
    if (r == 0) return false;
  }
  return any || name == "/" || name == ".";
}

Object open_group(hid_t loc, const std::string& name) {
  Lock lock;
  if (!exists(loc, name)) fail_user("file ", file_name(loc), " has no group '", name, "'");
  const hid_t id = H5Gopen2(loc, name.c_str(), H5P_DEFAULT);
  if (id < 0) fail_user(with_detail(cat(where(loc, "object", name), " is not a group")));
  return Object(id);
}

Object untimed_creation(hid_t cls) {
  Object plist = checked(H5Pcreate(cls), "H5Pcreate(object create)");
  check(H5Pset_obj_track_times(plist.id(), 0), "H5Pset_obj_track_times");
  return plist;
}

Object create_group(hid_t loc, const std::string& name) {
  Lock lock;
  if (exists(loc, name)) return open_group(loc, name);
  Object lcpl = intermediate_lcpl();
  Object gcpl = untimed_creation(H5P_GROUP_CREATE);
  return checked(H5Gcreate2(loc, name.c_str(), lcpl.id(), gcpl.id(), H5P_DEFAULT),
                 cat("cannot create ", where(loc, "group", name)));
}

std::vector<std::string> list_names(hid_t group) {
  Lock lock;
  const CrashContext context(cat("listing a group of file ", file_name(group)));
  H5G_info_t info{};
  check(H5Gget_info(group, &info), cat("cannot list group in file ", file_name(group)));
  std::vector<std::string> names;
  names.reserve(info.nlinks);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n =
        H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    check(static_cast<herr_t>(n < 0 ? -1 : 0), cat("cannot list group in file ", file_name(group)));
    std::string name(static_cast<size_t>(n) + 1, '\0');
    H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(),
                       H5P_DEFAULT);
    name.resize(static_cast<size_t>(n));
    names.push_back(std::move(name));
  }
  return names;
}

std::vector<int64_t> dataset_shape(hid_t loc, const std::string& name) {
  Lock lock;
  const std::string what = where(loc, "dataset", name);
  const CrashContext context = reading(what);
  Object ds = open_dataset(loc, name);
  Object space = checked(H5Dget_space(ds.id()), cat("cannot read the shape of ", what));
  const int rank = H5Sget_simple_extent_ndims(space.id());
  check(rank, cat("cannot read the shape of ", what));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  check(H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr),
        cat("cannot read the shape of ", what));
  return std::vector<int64_t>(dims.begin(), dims.end());
}

template <typename T>
std::vector<T> read_dataset(hid_t loc, const std::string& name) {
  Lock lock;
  const std::string what = where(loc, "dataset", name);
  const CrashContext context = reading(what);
  Object ds = open_dataset(loc, name);
  check_numeric_type(ds.id(), what);
  Object space = checked(H5Dget_space(ds.id()), cat("cannot read ", what));
  const hssize_t n = H5Sget_simple_extent_npoints(space.id());
  check(n < 0 ? -1 : 0, cat("cannot read ", what));
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0)
    check(H5Dread(ds.id(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
          cat("cannot read ", what));
  return out;
}

template <typename T>
void read_block(hid_t loc, const std::string& name, const std::vector<int64_t>& offset,
                const std::vector<int64_t>& count, T* out) {
  Lock lock;
  const std::string what = where(loc, "dataset", name);
  const CrashContext context = reading(what);
  Object ds = open_dataset(loc, name);
  check_numeric_type(ds.id(), what);
  Object space = checked(H5Dget_space(ds.id()), cat("cannot read ", what));
  const int rank = H5Sget_simple_extent_ndims(space.id());
  if (rank != int(offset.size()) || offset.size() != count.size())
    fail_user(what, " has ", rank, " dimensions, not ", offset.size());
  std::vector<hsize_t> dims(size_t(rank > 0 ? rank : 0)), start, n;
  H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr);
  int64_t total = 1;
  for (size_t i = 0; i < offset.size(); ++i) {
    if (offset[i] < 0 || count[i] < 0 || hsize_t(offset[i] + count[i]) > dims[i])
      fail_user(what, " is smaller than expected (dimension ", i, ": ",
                dims[i], ", need ", offset[i] + count[i], ")");
    start.push_back(hsize_t(offset[i]));
    n.push_back(hsize_t(count[i]));
    total *= count[i];
  }
  if (total == 0) return;
  check(H5Sselect_hyperslab(space.id(), H5S_SELECT_SET, start.data(), nullptr, n.data(), nullptr),
        cat("cannot select a block of ", what));
  Object mem = checked(H5Screate_simple(rank, n.data(), nullptr),
                       cat("cannot read ", what));
  check(H5Dread(ds.id(), native_type<T>(), mem.id(), space.id(), H5P_DEFAULT, out),
        cat("cannot read ", what));
}

namespace {

// Chunks of at most kChecksumChunkBytes, split along the leading dimensions: a writer and a
// reader hold a chunk's copy besides the data (the filter runs on a copy), and chunks of
// HDF5's default chunk cache size keep that copy small whatever the tensor.
constexpr int64_t kChecksumChunkBytes = int64_t(1) << 20;

// The leading dimensions are cut to 1 until one step of a dimension fits in a chunk; that
// dimension takes as many steps as fit, the ones after it stay whole. dims are all >= 1.
std::vector<hsize_t> checksum_chunks(const std::vector<hsize_t>& dims, int64_t element_bytes) {
  std::vector<hsize_t> chunk = dims;
  int64_t step = element_bytes;  // bytes of one step of dimension d
  for (size_t e = 1; e < dims.size(); ++e) step *= int64_t(dims[e]);
  for (size_t d = 0; d < dims.size(); ++d) {
    if (step <= kChecksumChunkBytes) {
      chunk[d] = hsize_t(std::min<int64_t>(int64_t(dims[d]), kChecksumChunkBytes / step));
      break;
    }
    chunk[d] = 1;
    step /= int64_t(dims[d + 1]);  // d is not the last: a step of it is one element
  }
  return chunk;
}

}  // namespace

bool has_checksums(hid_t loc, const std::string& name) {
  Lock lock;
  Object ds = open_dataset(loc, name);
  Object dcpl = checked(H5Dget_create_plist(ds.id()), cat("cannot read ", where(loc, "dataset", name)));
  unsigned flags = 0;
  size_t n = 0;
  const herr_t r = H5Pget_filter_by_id2(dcpl.id(), H5Z_FILTER_FLETCHER32, &flags, &n, nullptr, 0,
                                        nullptr, nullptr);
  if (r < 0) H5Eclear2(H5E_DEFAULT);  // no such filter
  return r >= 0;
}

template <typename T>
void write_dataset(hid_t loc, const std::string& name, const T* data,
                   const std::vector<int64_t>& shape, Storage storage) {
  Lock lock;
  if (exists(loc, name)) fail_user(where(loc, "dataset", name), " already exists");
  std::vector<hsize_t> dims;
  int64_t n = 1;
  for (int64_t d : shape) {
    PAR_ASSERT(d >= 0, "negative dimension for dataset ", name);
    dims.push_back(static_cast<hsize_t>(d));
    n *= d;
  }
  Object space = checked(shape.empty() ? H5Screate(H5S_SCALAR)
                                       : H5Screate_simple(static_cast<int>(dims.size()),
                                                          dims.data(), nullptr),
                         cat("cannot make the dataspace of ", where(loc, "dataset", name)));
  Object lcpl = intermediate_lcpl();
  Object dcpl = untimed_creation(H5P_DATASET_CREATE);
  if (storage == Storage::kChecksummed && !shape.empty() && n > 0) {
    const std::vector<hsize_t> chunk = checksum_chunks(dims, int64_t(sizeof(T)));
    check(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()),
          cat("cannot chunk ", where(loc, "dataset", name)));
    check(H5Pset_fletcher32(dcpl.id()), cat("cannot checksum ", where(loc, "dataset", name)));
  }
  // No chunk cache: each chunk goes through the filter and to the file as it is written.
  Object dapl = checked(H5Pcreate(H5P_DATASET_ACCESS), "H5Pcreate(dataset access)");
  check(H5Pset_chunk_cache(dapl.id(), 0, 0, 1.0), "H5Pset_chunk_cache");
  Object ds = checked(H5Dcreate2(loc, name.c_str(), native_type<T>(), space.id(), lcpl.id(),
                                 dcpl.id(), dapl.id()),
                      cat("cannot create ", where(loc, "dataset", name)));
  const std::string what = cat("cannot write ", where(loc, "dataset", name));
  if (n > 0) check(H5Dwrite(ds.id(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  ds.close(what);
}

bool has_attribute(hid_t loc, const std::string& name) {
  Lock lock;
  const htri_t r = H5Aexists(loc, name.c_str());
  if (r < 0) H5Eclear2(H5E_DEFAULT);
  return r > 0;
}

template <typename T>
T read_attribute(hid_t loc, const std::string& name) {
  Lock lock;
  const std::string what = where(loc, "attribute", name);
  const CrashContext context = reading(what);
  Object attr = open_attribute(loc, name);
  Object type = checked(H5Aget_type(attr.id()), cat("cannot read the type of ", what));
  Object space = checked(H5Aget_space(attr.id()), cat("cannot read ", what));
  const H5T_class_t c = H5Tget_class(type.id());
  if (H5Sget_simple_extent_npoints(space.id()) != 1)
    fail_user(what, " is not a single value");
  if constexpr (std::is_same_v<T, std::string>) {
    if (c != H5T_STRING) fail_user(what, " is ", class_name(c), ", not a string");
    const htri_t is_var = H5Tis_variable_str(type.id());
    check(is_var < 0 ? -1 : 0, cat("cannot read ", what));
    Object mem = checked(H5Tcopy(H5T_C_S1), "H5Tcopy");
    check(H5Tset_cset(mem.id(), H5Tget_cset(type.id())), "H5Tset_cset");
    if (is_var) {
      check(H5Tset_size(mem.id(), H5T_VARIABLE), "H5Tset_size");
      char* buf = nullptr;
      check(H5Aread(attr.id(), mem.id(), &buf), cat("cannot read ", what));
      std::string value = buf ? buf : "";
      H5Dvlen_reclaim(mem.id(), space.id(), H5P_DEFAULT, &buf);
      return value;
    }
    // Null-padded in memory: a null-terminated memory type of the stored size would give
    // up the last character of a string that fills it (numpy's bytes_, h5py's "S12").
    const size_t size = H5Tget_size(type.id());
    check(H5Tset_size(mem.id(), size), "H5Tset_size");
    check(H5Tset_strpad(mem.id(), H5T_STR_NULLPAD), "H5Tset_strpad");
    std::string value(size, '\0');
    if (size > 0) check(H5Aread(attr.id(), mem.id(), value.data()), cat("cannot read ", what));
    value.resize(std::strlen(value.c_str()));
    if (H5Tget_strpad(type.id()) == H5T_STR_SPACEPAD)
      while (!value.empty() && value.back() == ' ') value.pop_back();
    return value;
  } else {
    static_assert(std::is_same_v<T, int64_t> || std::is_same_v<T, double>,
                  "read_attribute: int64_t, double or std::string");
    if (std::is_same_v<T, int64_t> ? c != H5T_INTEGER : (c != H5T_INTEGER && c != H5T_FLOAT))
      fail_user(what, " is ", class_name(c), ", not ",
                std::is_same_v<T, int64_t> ? "an integer" : "a number");
    T value{};
    check(H5Aread(attr.id(), native_type<T>(), &value), cat("cannot read ", what));
    return value;
  }
}

template <typename T>
void write_attribute(hid_t loc, const std::string& name, const T& value) {
  Lock lock;
  const std::string what = where(loc, "attribute", name);
  if (has_attribute(loc, name)) check(H5Adelete(loc, name.c_str()), cat("cannot replace ", what));
  Object space = checked(H5Screate(H5S_SCALAR), "H5Screate");
  if constexpr (std::is_same_v<T, std::string>) {
    Object type = checked(H5Tcopy(H5T_C_S1), "H5Tcopy");
    check(H5Tset_size(type.id(), H5T_VARIABLE), "H5Tset_size");
    check(H5Tset_cset(type.id(), H5T_CSET_UTF8), "H5Tset_cset");
    Object attr = checked(H5Acreate2(loc, name.c_str(), type.id(), space.id(), H5P_DEFAULT,
                                     H5P_DEFAULT),
                          cat("cannot create ", what));
    const char* p = value.c_str();
    check(H5Awrite(attr.id(), type.id(), &p), cat("cannot write ", what));
    attr.close(cat("cannot write ", what));
  } else {
    static_assert(std::is_same_v<T, int64_t> || std::is_same_v<T, double>,
                  "write_attribute: int64_t, double or std::string");
    Object attr = checked(H5Acreate2(loc, name.c_str(), native_type<T>(), space.id(),
                                     H5P_DEFAULT, H5P_DEFAULT),
                          cat("cannot create ", what));
    check(H5Awrite(attr.id(), native_type<T>(), &value), cat("cannot write ", what));
    attr.close(cat("cannot write ", what));
  }
}

#define PAR_H5_DATASET(T)                                                         \
  template std::vector<T> read_dataset<T>(hid_t, const std::string&);             \
  template void read_block<T>(hid_t, const std::string&, const std::vector<int64_t>&, \
                              const std::vector<int64_t>&, T*);                  \
  template void write_dataset<T>(hid_t, const std::string&, const T*,             \
                                 const std::vector<int64_t>&, Storage);
PAR_H5_DATASET(float)
PAR_H5_DATASET(double)
PAR_H5_DATASET(int32_t)
PAR_H5_DATASET(int64_t)
PAR_H5_DATASET(uint8_t)
#undef PAR_H5_DATASET

#define PAR_H5_ATTRIBUTE(T)                                      \
  template T read_attribute<T>(hid_t, const std::string&);       \
  template void write_attribute<T>(hid_t, const std::string&, const T&);
PAR_H5_ATTRIBUTE(int64_t)
PAR_H5_ATTRIBUTE(double)
PAR_H5_ATTRIBUTE(std::string)
#undef PAR_H5_ATTRIBUTE

}  // namespace par::h5
