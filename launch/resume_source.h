// Where `par train` resumes from: the checkpoints --resume names (auto: the run's own,
// newest first), which of them is read, and what a rank does with the run's checkpoints
// that lie past the chosen one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "launch/options.h"
#include "parallel/process_grid.h"

namespace par {

// Checkpoint directories to try in this order (for --resume auto, every complete one of
// `out_dir`, newest first), or none for a fresh run. UserError for --resume none where
// `out_dir` already holds a checkpoint, and for a --resume PATH that is not complete.
std::vector<std::string> resume_candidates(const RunConfig& run, const std::string& out_dir);

// The warning for a candidate `dir` that cannot be read (`why`), where `next` is tried.
std::string damaged_checkpoint_warning(const std::string& dir, const std::string& why,
                                       const std::string& next);

// Drops the candidates whose manifest cannot be read (edited, damaged, renamed) from the
// front, with a warning each, as long as an older one is left (--resume auto); a given
// --resume PATH must read. The first left must be of this model.
void choose_resume(std::vector<std::string>& candidates, const ModelConfig& model,
                   std::vector<std::string>& warnings);

// Starting --out's run over again from another run's checkpoint behind --out's own newest
// would leave two runs' lines of steps in one folder (and a rollback's set-aside would take
// --out's own for abandoned): refused. From --out's own checkpoint it is a rollback.
void refuse_other_run_behind(const RunConfig& run, const std::vector<std::string>& resume_from);

// Collective: rank 0 moves the run's checkpoints newer than `step`, the one this run
// resumed from, out of the way of its own (set_aside_checkpoints_after says why).
void set_aside_newer(const ProcessGrid& grid, const std::string& out, int64_t step);

}  // namespace par
