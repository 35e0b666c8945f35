// Sharded checkpoints: one directory per saved step, written by all the ranks that own
// state, readable by any layout.
//
//   OUT/checkpoints/step-00001200/
//     manifest.txt      the step, data counter, seed, layout, model, and where every
//                       piece of every tensor lies (checkpoint/manifest.h)
//     config.ini        the resolved options of the run
//     shard-00003.h5    the pieces rank 3 wrote: KIND/NAME datasets (float32)
//     COMPLETE          written last
//
// Writing: the pieces (each tensor-parallel slice of the parameters and Adam moments, and
// each replicated tensor once) are dealt out round-robin to the ranks that hold them, so
// the writing is spread over the job. A save goes into OUT/checkpoints/.step-N.tmp; once
// every rank has written its file, rank 0 writes the manifest and COMPLETE and renames the
// directory into place. A directory without COMPLETE, or still named .tmp, is never
// loaded, so a crash during a save leaves the previous checkpoint the newest one.
// Training stops only to copy its state; the files are written on a background thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/manifest.h"
#include "core/param_layout.h"
#include "parallel/process_grid.h"

namespace par {

std::string checkpoints_root(const std::string& out_dir);
std::string checkpoint_dir(const std::string& out_dir, int64_t step);
// Whether `dir` is a complete checkpoint directory (manifest and COMPLETE present).
bool is_complete_checkpoint(const std::string& dir);
// The newest complete checkpoint under out_dir, or "" when there is none.
std::string latest_checkpoint(const std::string& out_dir);
// Every complete checkpoint under out_dir, newest first.
std::vector<std::string> checkpoints_newest_first(const std::string& out_dir);
// A checkpoint directory given as itself or as the run directory holding it (then the
// newest complete one); anything else unchanged.
std::string resolve_checkpoint(const std::string& path);

// The checkpoint directory that `path` (a file or directory, existing or not) would lie in:
// the nearest ancestor holding a manifest or COMPLETE, or named like a save in progress;
// "" if none. Commands that write refuse such paths: a file there damages the checkpoint.
std::string enclosing_checkpoint(const std::string& path);
// UserError naming `option` when `path` lies in a checkpoint directory.
void refuse_inside_checkpoint(const std::string& path, const std::string& option);
// UserError naming `option` when `path` is or lies in a run's checkpoints/ folder (beside
// the run's config.ini): `--out RUN/checkpoints` for `--out RUN` made a second run inside
// the first. (A run elsewhere inside another run's directory, a fine-tune say, is fine.)
void refuse_inside_run_checkpoints(const std::string& path, const std::string& option);

// A run that resumes from a step behind checkpoints already in its checkpoints/ folder (a
// rollback with --resume PATH, or a fall-back past a damaged newest) starts a new line of
// steps: the newer ones belong to the abandoned line, yet --resume auto, `--checkpoint RUN`
// and pruning all take the highest step. So they move to OUT/checkpoints/abandoned/ (in
// the same folder, so on the same file system; a name taken there gets a suffix .2, .3,
// ...), where they stay readable. Returns each move as "FROM -> TO", oldest first.
// UserError when a move fails.
std::string abandoned_checkpoints_root(const std::string& out_dir);
std::vector<std::string> set_aside_checkpoints_after(const std::string& out_dir, int64_t step);
// The checkpoint directories (complete or not) of out_dir's checkpoints/ newer than `step`.
std::vector<std::string> checkpoints_after(const std::string& out_dir, int64_t step);
// Whether `dir` lies in out_dir's checkpoints/ folder (at any depth: abandoned/ too).
bool is_checkpoint_of_run(const std::string& dir, const std::string& out_dir);

class CheckpointSaver {
 public:
  // keep: how many complete checkpoints to keep (the newest never goes).
  CheckpointSaver(const ProcessGrid& grid, std::string out_dir, int keep);
  ~CheckpointSaver();
  CheckpointSaver(const CheckpointSaver&) = delete;
  CheckpointSaver& operator=(const CheckpointSaver&) = delete;

  // Collective. Starts saving: takes this rank's state (host copies in `layout` order:
  // parameters, Adam moments) at `position`, with the run's resolved options
  // (`config_text`, INI), and writes its share on a background thread. Returns the seconds
  // training was paused. A previous save must be finished.
  double start(const ModelConfig& model, const ParamLayout& layout, std::vector<float> params,
               std::vector<float> adam_m, std::vector<float> adam_v,
               const TrainingPosition& position, const std::string& config_text);
  // Collective. Commits the pending save if every rank has written its share (or waits
  // for them when `wait`). Returns the committed directory, or "" if nothing was
  // committed now. A write that failed on any rank is an error on every rank.
  std::string finish(bool wait);
  // Collective. Drops the pending save, once every rank has stopped writing into it: its
  // directory goes, and it never becomes a checkpoint (a save of a state that turned out
  // bad: the step after it diverged).
  void abandon();
  bool pending() const { return pending_; }
  // The step of the pending save (pending() only).
  int64_t pending_step() const { return position_.step; }
  // Seconds from start() to the last commit.
  double last_write_seconds() const { return write_seconds_; }

 private:
  void write_share();
  bool all_written() const;  // collective: whether every rank has written its share
  void wait_all_written();   // collective: until every rank has written its share
  void remove_unfinished();  // rank 0: the .tmp directory of a failed save
  void prune();

  const ProcessGrid& grid_;
  std::string out_dir_;
  int keep_;
  bool pending_ = false;
  std::thread writer_;
  std::atomic<bool> written_{false};
  std::exception_ptr error_;
  // The pending save.
  ModelConfig model_;
  TrainingPosition position_;
  std::string config_text_;
  std::string tmp_dir_, final_dir_, file_;
  std::vector<const ParamInfo*> mine_;   // (tensor, kind) pieces this rank writes
  std::vector<int> mine_kind_;
  std::vector<std::vector<float>> state_;  // params, adam_m, adam_v
  std::vector<ManifestEntry> records_;
  double started_ = 0, write_seconds_ = 0;
};

// Reads this rank's slices (`layout`) of the checkpoint in `dir` (its manifest `m`, as
// read_manifest read it), whatever layout wrote it, one tensor at a time: `visit(kind,
// param, values)` for each tensor of `layout` (its slice there, `param.shape`) of params,
// then (with_optimizer) adam_m and adam_v; kind indexes kStateKinds. At most one tensor is
// held, so a checkpoint larger than the host's memory can be read through. Before the
// first visit, every claim of the manifest is checked against the model and the files'
// datasets: a caller may allocate what it reads into then, and a manifest that claims a
// model larger than its files is refused before that allocation. UserError naming the
// directory and file when the checkpoint is incomplete, of another model, or does not match
// its files (missing pieces, wrong shapes, bad checksums); a bad checksum can be found after
// some tensors were visited. In checkpoint_load.cpp.
using TensorVisitor = std::function<void(int kind, const ParamInfo& param, const float* values)>;
void visit_checkpoint(const std::string& dir, const Manifest& m, const ParamLayout& layout,
                      bool with_optimizer, const TensorVisitor& visit);
// The manifest alone (checked).
Manifest read_manifest(const std::string& dir);
std::string read_checkpoint_config(const std::string& dir);

}  // namespace par
