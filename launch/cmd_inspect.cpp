// `par inspect`: what a checkpoint (or exported model) holds: its step and position in
// training, the layout that wrote it, the model and the run's options, and every tensor
// with its shape and a checksum of the whole tensor -- the same whichever layout wrote
// it, so two checkpoints can be compared. Reading it checks every piece's checksum.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/manifest.h"
#include "checkpoint/model_file.h"
#include "core/error.h"
#include "launch/cli.h"
#include "launch/commands.h"

namespace par {

namespace po = boost::program_options;

int cmd_inspect(int argc, char** argv) {
  std::string path;
  bool no_config = false;
  po::options_description opts("Options");
  opts.add_options()
      ("checkpoint", po::value(&path), "checkpoint directory, run directory (its newest checkpoint) or exported model")
      ("no-config", po::bool_switch(&no_config), "do not print the run's options");
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  po::variables_map vm;
  const cli::Command cmd{"inspect",
                         "Prints what a checkpoint holds: step, data position, layout, model, "
                         "options, and each tensor's shape and checksum (all pieces verified).",
                         "par inspect [--checkpoint] PATH"};
  if (!cli::parse(argc, argv, cmd, opts, vm, &pos)) return 0;
  if (path.empty()) fail_user("give a checkpoint: par inspect OUT/checkpoints/step-N");
  // A checkpoint directory has optimizer state to show; an exported model does not. One
  // tensor is held at a time (a checkpoint larger than this host's memory reads through);
  // the lines wait for the last checksum, so a damaged checkpoint prints only its error.
  const bool directory = std::filesystem::is_directory(path);
  std::string tensors;
  const ModelFile f =
      visit_model_file(path, directory, [&](int kind, const ParamInfo& p, const float* values) {
        std::string shape;
        for (size_t i = 0; i < p.shape.size(); ++i) shape += cat(i ? " x " : "", p.shape[i]);
        char line[160];
        std::snprintf(line, sizeof line, "  %-7s %-34s %-12s %016llx\n", kStateKinds[kind],
                      p.name.c_str(), shape.c_str(),
                      static_cast<unsigned long long>(checksum(values, p.numel)));
        tensors += line;
      });
  std::printf("checkpoint  %s\n", f.path.c_str());
  std::printf("format      %s\n", f.format.c_str());
  std::printf("step        %lld\n", static_cast<long long>(f.position.step));
  if (f.format == kCheckpointFormat) {
    std::printf("next_batch  %lld (data loader counter)\nseed        %llu\nlr          %g\n",
                static_cast<long long>(f.position.next_batch),
                static_cast<unsigned long long>(f.position.seed), f.position.lr);
    std::printf("written by  dp %d x sp %d x tp %d (%zu pieces)\n", f.dp, f.sp, f.tp,
                f.pieces);
  }
  std::printf("model       %s\n", f.model.summary().c_str());
  std::printf("parameters  %lld\n", static_cast<long long>(ParamLayout(f.model).num_parameters()));
  if (!f.checksummed)
    std::printf("verified    no: this export has no checksums (an older par wrote it); export it "
                "again from its checkpoint to add them\n");
  std::printf("tensors (checksum: FNV-1a 64 of the whole tensor's float32 bytes)\n%s", tensors.c_str());
  if (!no_config && !f.config_text.empty())
    std::printf("options of the run that wrote it:\n%s", f.config_text.c_str());
  return 0;
}

}  // namespace par
