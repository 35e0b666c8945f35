// A small RAII layer over the HDF5 C API, shared by token shards, checkpoints and golden
// test vectors.
//
// Two things every caller would otherwise get wrong: closing ids on every path (Object), and
// serializing HDF5 (the Debian build is not thread-safe, and the data loader reads shards on
// a background thread). Every function here takes the library-wide lock itself. Code that
// makes raw H5* calls must hold an h5::Lock for the duration: Lock is re-entrant on one
// thread, so raw calls and these wrappers can be mixed freely. Do not lock global_mutex()
// directly around calls to these wrappers; that would deadlock.
//
// Failures are UserErrors that name the file and the object, because nearly every HDF5
// failure a user sees is about a file they gave us (missing, corrupt, wrong layout).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace par::h5 {

// The one lock serializing all HDF5 calls made by par. Prefer h5::Lock.
std::mutex& global_mutex();

// Holds global_mutex() for its lifetime; nested Locks on the same thread are free. The
// first Lock in the process also switches off HDF5's automatic error-stack printing, so
// users see only our messages.
class Lock {
 public:
  Lock();
  ~Lock();
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
};

// Owns one HDF5 id (file, group, dataset, attribute, dataspace, datatype or property list)
// and closes it with the matching H5?close. Move-only.
class Object {
 public:
  Object() = default;
  explicit Object(hid_t id) : id_(id) {}
  ~Object();
  Object(Object&& o) noexcept : id_(o.id_) { o.id_ = H5I_INVALID_HID; }
  Object& operator=(Object&& o) noexcept;
  Object(const Object&) = delete;
  Object& operator=(const Object&) = delete;

  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now (errors included), instead of silently in the destructor; a failure says
  // `what` (e.g. the file being written).
  void close(const std::string& what = "closing an HDF5 object");

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// For raw H5* calls: throw a UserError "<what>: <HDF5's innermost message>" when the call
// failed (negative result), else own / return it.
Object checked(hid_t id, const std::string& what);
void check(herr_t rc, const std::string& what);

// Opens an existing HDF5 file; UserError naming the path when it is missing, unreadable or
// not HDF5.
Object open_file(const std::string& path, bool writable = false);
// How a new file is laid out: as HDF5's earliest format allows (any HDF5 reads it), or in
// HDF5 1.10's format (HDF5 1.10 or later reads it), whose metadata -- object headers, chunk
// indexes, the superblock -- carries checksums, so that damage to it is an error too, not
// another tensor's chunk or type read without a word.
enum class FileFormat { kEarliest, kChecksummedMetadata };

// Creates (truncating) a file.
Object create_file(const std::string& path, FileFormat format = FileFormat::kEarliest);

// The name the file holding `any` was opened under, for error messages.
std::string file_name(hid_t any);

// Whether a link exists; nested paths ("a/b/c") are checked one component at a time, so a
// missing parent is "false", not an error.
bool exists(hid_t loc, const std::string& name);
Object open_group(hid_t loc, const std::string& name);
// Creates the group and any missing parents; an existing group is opened.
Object create_group(hid_t loc, const std::string& name);
// Creation properties of a dataset (H5P_DATASET_CREATE) or group (H5P_GROUP_CREATE) that
// record no times: HDF5 stamps each object with its creation time otherwise, so the same
// weights exported twice would differ in bytes and no checksum could tell them equal.
Object untimed_creation(hid_t cls);
// Links in a group, sorted by name.
std::vector<std::string> list_names(hid_t group);

// Dimensions of a dataset ({} for a scalar).
std::vector<int64_t> dataset_shape(hid_t loc, const std::string& name);

// Whole dataset, row-major, converted by HDF5 from its stored numeric type.
// T in {float, double, int32_t, int64_t, uint8_t}.
template <typename T>
std::vector<T> read_dataset(hid_t loc, const std::string& name);
// The block [offset, offset + count) of a dataset (one entry per dimension), row-major
// into out (product of count elements). UserError when the block is outside the dataset.
template <typename T>
void read_block(hid_t loc, const std::string& name, const std::vector<int64_t>& offset,
                const std::vector<int64_t>& count, T* out);
// How write_dataset stores a dataset: contiguous, or in chunks that carry HDF5's Fletcher32
// checksum, which every HDF5 reader (h5py too) verifies as it reads, so that a flipped bit
// is a read error, not a silently different number. (A scalar or an empty dataset has no
// chunks: it is stored contiguous either way.)
enum class Storage { kContiguous, kChecksummed };

// Writes a new dataset of T's native type (parents created); shape {} is a scalar. An
// existing dataset of that name is an error.
template <typename T>
void write_dataset(hid_t loc, const std::string& name, const T* data,
                   const std::vector<int64_t>& shape, Storage storage = Storage::kContiguous);
// Whether a dataset's chunks carry Fletcher32 checksums (Storage::kChecksummed).
bool has_checksums(hid_t loc, const std::string& name);

// T in {int64_t, double, std::string}. Strings may be fixed or variable length; integer
// attributes read as double too.
template <typename T>
T read_attribute(hid_t loc, const std::string& name);
// Replaces an existing attribute. Strings are written variable-length UTF-8 (what h5py
// writes for a Python str, so h5py users read back a str).
template <typename T>
void write_attribute(hid_t loc, const std::string& name, const T& value);
bool has_attribute(hid_t loc, const std::string& name);

}  // namespace par::h5
