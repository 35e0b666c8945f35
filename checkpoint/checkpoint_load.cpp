// Reading a checkpoint directory written by any layout into the slices one rank needs.
// Everything the manifest claims is checked against the model and against the files'
// datasets before the first tensor reaches the visitor (where callers allocate what they
// read into), so a manifest that does not match its files is a clear error, not a huge
// allocation or a read out of bounds.
#include <algorithm>
#include <map>

#include "checkpoint/checkpoint_dir.h"
#include "core/error.h"
#include "data/h5.h"

namespace par {

namespace {

// One piece of the manifest and what of it lands in this rank's slice of a tensor:
// [lo, hi) along `axis` of the global tensor, of the piece's [eb, eb + count) and the
// slice's [b, b + n).
struct PieceRead {
  int kind = 0;
  const ParamInfo* param = nullptr;
  const ManifestEntry* entry = nullptr;
  int axis = 0;
  int64_t b = 0, eb = 0, lo = 0, hi = 0;
};

// The open files of one checkpoint, by name.
class CheckpointFiles {
 public:
  explicit CheckpointFiles(std::string dir) : dir_(std::move(dir)) {}
  hid_t operator()(const std::string& name) {
    auto it = files_.find(name);
    if (it == files_.end()) it = files_.emplace(name, h5::open_file(dir_ + "/" + name)).first;
    return it->second.id();
  }

 private:
  std::string dir_;
  std::map<std::string, h5::Object> files_;
};

// The pieces to read for the kinds in `wanted` (params, adam_m, adam_v), every claim of the
// manifest checked: each tensor of `layout` present with its global shape, split along the
// axis it is read along, covered exactly, and each piece's dataset in its file with the
// piece's shape.
std::vector<PieceRead> plan_reads(const std::string& dir, const Manifest& m,
                                  const ParamLayout& layout, const bool (&wanted)[3],
                                  CheckpointFiles& files) {
  std::map<std::pair<std::string, std::string>, std::vector<const ManifestEntry*>> index;
  for (const ManifestEntry& e : m.entries) index[{e.kind, e.name}].push_back(&e);
  std::vector<PieceRead> reads;
  for (int k = 0; k < 3; ++k) {
    if (!wanted[k]) continue;
    for (const ParamInfo& p : layout.params()) {
      const auto it = index.find({kStateKinds[k], p.name});
      if (it == index.end())
        fail_user(dir, ": the manifest has no ", kStateKinds[k], " for ", p.name,
                  ": a checkpoint of another model or an incomplete one");
      // The part of the tensor this rank needs: [b, b+n) along `axis`.
      const int axis = p.sharded() ? p.shard_axis : std::max(p.split_axis, 0);
      const int64_t b = p.sharded() ? p.shard_begin : 0;
      const int64_t n = p.shape[size_t(axis)];
      int64_t covered = 0;
      for (const ManifestEntry* e : it->second) {
        if (e->global_shape != p.global_shape)
          fail_user(dir, ": tensor ", p.name, " has another shape in the checkpoint: it holds a "
                    "different model");
        const int64_t eb = e->axis < 0 ? 0 : e->begin;
        const int64_t en = e->axis < 0 ? p.global_shape[size_t(axis)] : e->count;
        const int64_t lo = std::max(b, eb), hi = std::min(b + n, eb + en);
        if (lo >= hi) continue;
        if (e->axis >= 0 && e->axis != axis)
          fail_user(dir, ": tensor ", p.name, " is split along another axis in the manifest");
        const std::string ds = e->kind + "/" + e->name;
        if (h5::dataset_shape(files(e->file), ds) != e->shape())
          fail_user(dir, "/", e->file, ": ", ds, " does not have the shape the manifest gives");
        reads.push_back({k, &p, e, axis, b, eb, lo, hi});
        covered += hi - lo;
      }
      if (covered != n)
        fail_user(dir, ": the pieces of ", kStateKinds[k], " ", p.name, " in the manifest cover ",
                  covered, " of the ", n, " needed along axis ", axis,
                  ": the manifest does not match its files");
    }
  }
  return reads;
}

// A piece's values, checked against the manifest's checksum.
void read_piece(const std::string& dir, const Manifest& m, CheckpointFiles& files,
                const PieceRead& r, std::vector<float>& piece) {
  const ManifestEntry& e = *r.entry;
  const std::string ds = e.kind + "/" + e.name;
  int64_t numel = 1;
  for (int64_t s : e.shape()) numel *= s;
  piece.resize(size_t(numel));
  h5::read_block<float>(files(e.file), ds, std::vector<int64_t>(e.shape().size(), 0), e.shape(),
                        piece.data());
  if (checksum(piece.data(), numel, m.legacy_checksums()) != e.checksum)
    fail_user(dir, "/", e.file, ": ", ds, " is corrupt (its checksum does not match the "
              "manifest): use an earlier checkpoint");
}

// A piece's part of the slice into `out`, the slice's values (r.param's shape).
void place(const PieceRead& r, const std::vector<float>& piece, float* out) {
  const ParamInfo& p = *r.param;
  const int64_t inner = r.axis == 0 && p.shape.size() == 2 ? p.shape[1] : 1;  // row length
  if (p.shape.size() == 1 || r.axis == 0) {
    // Whole rows (or a vector): one contiguous run.
    std::copy_n(piece.data() + (r.lo - r.eb) * inner, (r.hi - r.lo) * inner,
                out + (r.lo - r.b) * inner);
  } else {
    // Columns [lo, hi) of every row.
    const int64_t rows = p.shape[0], ecols = r.entry->shape()[1], cols = p.shape[1];
    for (int64_t row = 0; row < rows; ++row)
      std::copy_n(piece.data() + row * ecols + (r.lo - r.eb), r.hi - r.lo,
                  out + row * cols + (r.lo - r.b));
  }
}

}  // namespace

void visit_checkpoint(const std::string& dir, const Manifest& m, const ParamLayout& layout,
                      bool with_optimizer, const TensorVisitor& visit) {
  CheckpointFiles files(dir);
  const std::vector<PieceRead> reads =
      plan_reads(dir, m, layout, {true, with_optimizer, with_optimizer}, files);
  std::vector<float> piece, tensor;
  // plan_reads lists each (kind, tensor)'s pieces one after the other.
  for (size_t i = 0; i < reads.size();) {
    const PieceRead& first = reads[i];
    tensor.assign(size_t(first.param->numel), 0.0f);
    for (; i < reads.size() && reads[i].kind == first.kind && reads[i].param == first.param; ++i) {
      read_piece(dir, m, files, reads[i], piece);
      place(reads[i], piece, tensor.data());
    }
    visit(first.kind, *first.param, tensor.data());
  }
}

}  // namespace par
