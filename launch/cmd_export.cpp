// `par export`: a checkpoint to the single-file weights format of spec/FORMATS.md, for
// loading into other frameworks.
#include <glog/logging.h>

#include <filesystem>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/model_file.h"
#include "core/error.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/run_dir.h"

namespace par {

namespace po = boost::program_options;

int cmd_export(int argc, char** argv) {
  std::string checkpoint, out;
  bool force = false;
  po::options_description opts("Options");
  opts.add_options()
      ("checkpoint", po::value(&checkpoint), "checkpoint directory to export (or a run directory: its newest checkpoint)")
      ("out", po::value(&out), "the weights file to write (HDF5, format par-model-1)")
      ("force", po::bool_switch(&force), "replace --out if it exists");
  po::variables_map vm;
  const cli::Command cmd{"export",
                         "Writes a checkpoint's parameters as one HDF5 file in the public "
                         "format of spec/FORMATS.md.",
                         "par export --checkpoint PATH --out FILE"};
  if (!cli::parse(argc, argv, cmd, opts, vm)) return 0;
  if (checkpoint.empty()) fail_user("--checkpoint is required");
  if (out.empty()) fail_user("--out is required: the file to write");
  refuse_inside_checkpoint(out, "--out");
  std::error_code ec;
  if (std::filesystem::is_directory(out, ec))
    fail_user("--out ", out, " is a directory: give the path of the file to write (",
              (std::filesystem::path(out) / "model.h5").string(), ", say)");
  // A run's own records are not --force's to replace.
  const std::filesystem::path p(out);
  if (std::filesystem::is_regular_file(p.parent_path() / "config.ini", ec) &&
      (p.filename() == "train.log" || p.filename() == "metrics.jsonl" ||
       p.filename() == "config.ini" || p.filename() == "lock"))
    fail_user("--out ", out, " is a record of the run in ", p.parent_path().string(),
              ": choose another name");
  if (file_exists(out) && !force)
    fail_user("--out ", out, " exists: choose another name or pass --force to replace it");
  const ModelFile file = export_model_file(checkpoint, out);
  LOG(INFO) << "exported " << checkpoint << " (step " << file.position.step << ", "
            << file.model.summary() << ") -> " << out;
  return 0;
}

}  // namespace par
