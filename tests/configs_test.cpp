// Every config in configs/ parses with the options of `par train` and describes a valid
// model, optimizer and run (a typo in a shipped config would otherwise show up only when
// someone runs it).
#include <gtest/gtest.h>

#include <filesystem>

#include "core/model.h"
#include "launch/cli.h"
#include "launch/options.h"

namespace par {
namespace {

TEST(Configs, EveryShippedConfigIsValid) {
  int checked = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(PAR_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".ini") continue;
    SCOPED_TRACE(e.path().string());
    ModelConfig mc;
    OptimizerConfig oc;
    RunConfig rc;
    po::options_description opts;
    opts.add(run_options(rc)).add(model_options(mc)).add(optimizer_options(oc));
    po::variables_map vm;
    std::string path = e.path().string();
    std::string config_flag = "--config";
    std::string cmd_name = "train";
    char* argv[] = {cmd_name.data(), config_flag.data(), path.data()};
    ASSERT_NO_THROW(cli::parse(3, argv, cli::Command{"train", "", ""}, opts, vm, nullptr, "config"));
    EXPECT_NO_THROW(rc.validate());
    EXPECT_NO_THROW(mc.validate());
    oc.total_steps = rc.steps;
    EXPECT_NO_THROW(oc.validate());
    EXPECT_NO_THROW(rc.validate_layout(mc));
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

}  // namespace
}  // namespace par
