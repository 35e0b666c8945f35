// Reading and writing whole models in HDF5: the training checkpoint (parameters, Adam
// moments, the position in training) and the exported weights of spec/FORMATS.md
// (parameters only). Both store every parameter under /params/NAME with its spec shape and
// the model configuration as root attributes, so `par eval`, `par export` and
// `par sample` read either.
//
// Files are written to PATH.tmp and renamed into place once complete: a crash never
// leaves a half-written file under the real name, and an existing file is replaced only
// by a complete one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/param_layout.h"

namespace par {

inline constexpr const char* kCheckpointFormat = "par-checkpoint-1";
inline constexpr const char* kExportFormat = "par-model-1";

struct TrainingPosition {
  int64_t step = 0;        // optimizer steps completed
  int64_t next_batch = 0;  // the data loader's counter (micro-batches consumed)
  uint64_t seed = 0;
  std::string config_text;  // the resolved options of the run that wrote it (INI)
};

struct ModelFile {
  std::string path;
  std::string format;  // kCheckpointFormat or kExportFormat
  ModelConfig model;
  TrainingPosition position;  // step only, for an export
  std::vector<float> params;  // layout order (ParamLayout(model))
  std::vector<float> adam_m, adam_v;  // empty for an export
};

// Writes a training checkpoint. Buffers are host float32 in `layout` order.
void write_checkpoint(const std::string& path, const ModelConfig& model,
                      const TrainingPosition& pos, const float* params, const float* adam_m,
                      const float* adam_v);

// Writes the single-file weights format of spec/FORMATS.md.
void write_export(const std::string& path, const ModelConfig& model, int64_t step,
                  const float* params);

// Reads a checkpoint or an export (with_optimizer requires a checkpoint). Every problem
// is a UserError naming the file: not HDF5, another format, a missing or mis-shaped
// tensor, an inconsistent configuration.
ModelFile read_model_file(const std::string& path, bool with_optimizer);

// The model configuration stored in a checkpoint or export, without reading tensors.
ModelConfig read_model_config(const std::string& path);

// UserError unless `found` (read from `path`) has the shape of `expected`.
void require_same_model(const ModelConfig& expected, const ModelConfig& found,
                        const std::string& path);

}  // namespace par
