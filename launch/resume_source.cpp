// Where `par train` resumes from (launch/resume_source.h): the candidates --resume names,
// the one that reads, and the run's own checkpoints past it.
#include "launch/resume_source.h"

#include <glog/logging.h>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/manifest.h"
#include "checkpoint/model_file.h"
#include "core/error.h"

namespace par {

std::vector<std::string> resume_candidates(const RunConfig& run, const std::string& out_dir) {
  const std::vector<std::string> found = checkpoints_newest_first(out_dir);
  if (run.resume == "none") {
    if (!found.empty())
      fail_user("run directory ", out_dir, " already holds a checkpoint (", found.front(),
                "): pass --resume auto to continue that run, or choose another --out");
    return {};
  }
  if (run.resume == "auto") return found;
  const std::string dir = resolve_checkpoint(run.resume);
  if (!is_complete_checkpoint(dir))
    fail_user("--resume ", run.resume, " is not a complete checkpoint directory (",
              "OUT/checkpoints/step-N with a COMPLETE file, or a run directory holding one)");
  return {dir};
}

std::string damaged_checkpoint_warning(const std::string& dir, const std::string& why,
                                       const std::string& next) {
  return cat("the checkpoint ", dir, " is damaged (", why, "): resuming from an earlier one, ", next);
}

void choose_resume(std::vector<std::string>& candidates, const ModelConfig& model,
                   std::vector<std::string>& warnings) {
  while (!candidates.empty()) {
    Manifest m;
    try {
      m = read_manifest(candidates.front());
    } catch (const UserError& e) {
      if (candidates.size() == 1) throw;
      warnings.push_back(damaged_checkpoint_warning(candidates[0], e.what(), candidates[1]));
      candidates.erase(candidates.begin());
      continue;
    }
    require_same_model(model, m.model, candidates.front());
    return;
  }
}

void refuse_other_run_behind(const RunConfig& run, const std::vector<std::string>& resume_from) {
  if (run.resume == "auto" || resume_from.empty() || is_checkpoint_of_run(resume_from[0], run.out))
    return;
  const int64_t from = read_manifest(resume_from[0]).position.step;
  const std::vector<std::string> newer = checkpoints_after(run.out, from);
  if (!newer.empty())
    fail_user("--out ", run.out, " holds checkpoints of its own run past step ", from, " of --resume ",
              run.resume, " (the newest: ", newer.back(), "): to continue that run, pass --resume "
              "auto; to start from ", run.resume, ", choose another --out");
}

void set_aside_newer(const ProcessGrid& grid, const std::string& out, int64_t step) {
  std::string error;
  if (grid.world_rank() == 0) {
    try {
      const std::vector<std::string> moves = set_aside_checkpoints_after(out, step);
      if (!moves.empty()) {
        std::string list;
        for (const std::string& m : moves) list += "\n  " + m;
        LOG(WARNING) << "this run goes on from step " << step << ", behind " << moves.size()
                     << " newer checkpoint(s) of an abandoned run in " << checkpoints_root(out)
                     << ": set aside, still readable, so that --resume auto and pruning do "
                     << "not take them for this run's:" << list;
      }
    } catch (const UserError& e) {
      error = e.what();
    }
  }
  if (grid.world()->all_reduce_value(int64_t(error.empty() ? 0 : 1), ReduceOp::kSum) > 0)
    fail_user(error.empty() ? cat("rank 0 could not set aside the checkpoints newer than step ",
                                  step, " (its log says why)")
                            : error);
}

}  // namespace par
