// Whole models, for the single-process tools (`par eval`, `par export`, `par inspect`,
// `par sample`): read from a checkpoint directory (checkpoint/checkpoint_dir.h, written by
// any layout) or from the exported weights of spec/FORMATS.md, and written as the latter.
//
// Exports are written to PATH.tmp and renamed into place once complete: a crash never
// leaves a half-written file under the real name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/manifest.h"
#include "core/model_config.h"
#include "core/param_layout.h"

namespace par {

inline constexpr const char* kCheckpointFormat = "par-checkpoint";  // a checkpoint directory
inline constexpr const char* kExportFormat = "par-model-1";

struct ModelFile {
  std::string path;
  std::string format;  // kCheckpointFormat or kExportFormat
  ModelConfig model;
  TrainingPosition position;  // step only, for an export
  std::string config_text;    // a checkpoint's: the resolved options of the run that wrote it
  int dp = 1, sp = 1, tp = 1;  // the layout that wrote a checkpoint
  size_t pieces = 0;           // a checkpoint's: the pieces its manifest lists
  // Whether every tensor is checked as it is read: a checkpoint's against its manifest, an
  // export's by HDF5's checksums (exports of par before them have none).
  bool checksummed = true;
  std::vector<float> params;  // layout order (ParamLayout(model))
  std::vector<float> adam_m, adam_v;  // empty for an export or without with_optimizer
};

// Writes the single-file weights format of spec/FORMATS.md, each tensor with HDF5's
// checksums (h5::Storage::kChecksummed), which any HDF5 reader verifies.
void write_export(const std::string& path, const ModelConfig& model, int64_t step,
                  const float* params);

// Exports the checkpoint or exported model `given` names (read_model_file) to `out`, as
// write_export writes it, one tensor at a time: a checkpoint larger than the host's memory
// exports too. Returns what was read, without its tensors.
ModelFile export_model_file(const std::string& given, const std::string& out);

// Reads a checkpoint directory (given itself, or the run directory whose newest checkpoint
// it is) or an export file (with_optimizer requires a checkpoint).
// Every problem is a UserError naming the file: not HDF5, another format, a missing or
// mis-shaped tensor, an inconsistent configuration, a corrupt piece.
ModelFile read_model_file(const std::string& path, bool with_optimizer);

// The same, without holding the tensors: each goes to `visit` (checkpoint_dir.h's
// TensorVisitor) as it is read and checked, and the ModelFile comes back without params
// and moments. For tools that must read models larger than the host's memory (inspect).
ModelFile visit_model_file(const std::string& path, bool with_optimizer,
                           const TensorVisitor& visit);

// The model configuration stored in a checkpoint or export, without reading tensors.
ModelConfig read_model_config(const std::string& path);

// UserError unless `found` (read from `path`) has the shape of `expected`.
void require_same_model(const ModelConfig& expected, const ModelConfig& found,
                        const std::string& path);

}  // namespace par
