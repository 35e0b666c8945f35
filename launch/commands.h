// The subcommands of `par`. Each takes argv with argv[0] = the subcommand's name and
// returns the process exit status. UserError escaping from one is reported by main().
#pragma once

namespace par {

int cmd_prep(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_sample(int argc, char** argv);

}  // namespace par
