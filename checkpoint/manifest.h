// The manifest of a checkpoint directory: what training state the checkpoint holds and
// where each piece of every tensor lies, so that any layout can reassemble what it needs.
//
// A text file (`manifest.txt`), one record per line, so that people and scripts can read
// it:
//   par-checkpoint 3
//   step 1200                      optimizer steps done (also the schedule's position)
//   next_batch 2400                the data loader's counter (micro-batches consumed)
//   seed 7
//   lr 0.0003                      learning rate of the last step
//   layout 2 2 1                   dp sp tp of the run that wrote it
//   model vocab_size=259 d_model=256 ... (the configuration: core/model_config.h's fields,
//                                  as in the export format)
//   tensor KIND NAME DIMS AXIS BEGIN COUNT FILE CHECKSUM
// A tensor record says: elements [BEGIN, BEGIN+COUNT) along AXIS (-1: the whole tensor) of
// tensor NAME (of global shape DIMS, comma-separated) of state KIND (params, adam_m,
// adam_v) are dataset KIND/NAME of FILE, whose float32 bytes hash to CHECKSUM (FNV-1a 64,
// hex). The last line, `checksum HEX`, is the FNV-1a 64 of every byte before it, so that
// no edited or damaged line is read as truth. Versions written before are read as they
// are: version 2 hashed from a mistyped offset basis (see checksum_bytes), and version 1
// has no checksum line. The resolved options of the run are in config.ini beside it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"

namespace par {

inline constexpr const char* kStateKinds[] = {"params", "adam_m", "adam_v"};

struct ManifestEntry {
  std::string kind;                   // "params", "adam_m" or "adam_v"
  std::string name;                   // spec/MODEL.md section 10
  std::vector<int64_t> global_shape;
  int axis = -1;                      // -1: the whole tensor
  int64_t begin = 0, count = 0;       // along axis
  std::string file;                   // relative to the checkpoint directory
  uint64_t checksum = 0;

  // The slice's own shape (global_shape with `count` along `axis`).
  std::vector<int64_t> shape() const;
};

// Where training stands: what a checkpoint records besides the model and its tensors,
// and what a run needs to continue exactly where it stopped.
struct TrainingPosition {
  int64_t step = 0;        // optimizer steps done (also the schedule's position)
  int64_t next_batch = 0;  // the data loader's counter (micro-batches consumed)
  uint64_t seed = 0;
  double lr = 0;           // learning rate of the last step
};

inline constexpr int kManifestVersion = 3;

struct Manifest {
  int version = kManifestVersion;  // as parsed; what to_text() writes is always the newest
  TrainingPosition position;
  int dp = 1, sp = 1, tp = 1;  // the layout that wrote it
  ModelConfig model;
  std::vector<ManifestEntry> entries;

  std::string to_text() const { return seal(header_text() + entries_text()); }
  std::string header_text() const;   // everything but the tensor records
  std::string entries_text() const;  // the tensor records
  // Manifest text (header and records) with its checksum line appended.
  static std::string seal(const std::string& text);
  // UserError naming `path` (and the line) when the text is not a valid manifest.
  static Manifest parse(const std::string& text, const std::string& path);
  // The checksums of its records as its version computed them.
  bool legacy_checksums() const { return version < 3; }
};

// FNV-1a 64 of n bytes, and of n floats' bytes. `legacy`: as manifests of versions 1 and 2
// computed it, from the offset basis with its last digit lost (1469598103934665603, not
// 14695981039346656037); what standard FNV-1a tools give is the default.
uint64_t checksum_bytes(const void* p, size_t n, bool legacy = false);
uint64_t checksum(const float* x, int64_t n, bool legacy = false);

}  // namespace par
