// `par prep MODE ...`: the command line of data preparation. Parsing only; the work is in
// data/prep.cpp so tests can call it directly.
#include <iostream>
#include <string>

#include "checkpoint/checkpoint_dir.h"
#include "core/error.h"
#include "data/prep.h"
#include "launch/cli.h"
#include "launch/commands.h"

namespace par {

namespace {

namespace po = boost::program_options;

const char* const kPrepUsage =
    "usage: par prep <mode> [options]   (par prep <mode> --help for its options)\n\n"
    "Writes token shards (HDF5, spec/FORMATS.md) as DIR/train-NNNNN.h5 and DIR/val-NNNNN.h5.\n\n"
    "modes:\n"
    "  bytes     byte-level tokens (id = byte + 3) from files, one document per file\n"
    "  tokens    an existing 1-D token array (HDF5 dataset or raw little-endian binary)\n"
    "  mirror    the synthetic mirror-copy task (random bytes, then the same reversed)\n"
    "  copy      the copy task (random bytes, then the same again in order)\n";

void add_common(po::options_description& o, PrepCommon& c) {
  o.add_options()
      ("out", po::value<std::string>(&c.out_dir)->required()->value_name("DIR"),
       "directory for the shards (created if missing)")
      ("shard-tokens", po::value<int64_t>(&c.shard_tokens)->default_value(c.shard_tokens)
           ->value_name("T"), "at most this many tokens per shard")
      ("force", po::bool_switch(&c.force), "replace shards already in DIR");
}

int prep_bytes_cmd(int argc, char** argv) {
  BytesPrepOptions opts;
  std::vector<std::string> inputs;
  po::options_description o("options");
  add_common(o, opts.common);
  o.add_options()
      ("val-fraction", po::value<double>(&opts.val_fraction)->default_value(0.01)
           ->value_name("F"), "the last fraction F of the token stream goes to val shards")
      ("input", po::value<std::vector<std::string>>(&inputs)->value_name("FILE"),
       "input files (also as positional arguments; glob patterns allowed)");
  po::positional_options_description pos;
  pos.add("input", -1);
  po::variables_map vm;
  if (!cli::parse(argc, argv,
                  {"prep bytes", "Byte-level shards: each FILE is one document, ids = byte + 3, "
                                 "EOS (1) after each document; vocab_size 259.",
                   "par prep bytes --out DIR [options] FILE..."},
                  o, vm, &pos))
    return 0;
  if (inputs.empty()) fail_user("no input files: give one or more FILE arguments (see `par prep bytes --help`)");
  opts.inputs = cli::expand_paths(inputs, "FILE");
  refuse_inside_checkpoint(opts.common.out_dir, "--out");
  prep_bytes(opts, std::cout);
  return 0;
}

int prep_tokens_cmd(int argc, char** argv) {
  TokensPrepOptions opts;
  po::options_description o("options");
  o.add_options()
      ("input", po::value<std::string>(&opts.input)->required()->value_name("FILE"),
       "the token array: an HDF5 file, or raw little-endian binary (then --dtype)")
      ("vocab-size", po::value<int64_t>(&opts.vocab_size)->required()->value_name("V"),
       "every id must be in [0, V)");
  add_common(o, opts.common);
  o.add_options()
      ("dataset", po::value<std::string>(&opts.dataset)->value_name("NAME"),
       "dataset in the HDF5 file (default: tokens)")
      ("dtype", po::value<std::string>(&opts.dtype)->value_name("TYPE"),
       "element type of raw input: uint8, uint16, int32, uint32 or int64")
      ("val-fraction", po::value<double>(&opts.val_fraction)->default_value(0.01)
           ->value_name("F"), "the last fraction F of the tokens goes to val shards");
  po::variables_map vm;
  if (!cli::parse(argc, argv,
                  {"prep tokens", "Shards from an existing 1-D token array.",
                   "par prep tokens --input FILE --vocab-size V --out DIR [options]"},
                  o, vm))
    return 0;
  refuse_inside_checkpoint(opts.common.out_dir, "--out");
  prep_tokens(opts, std::cout);
  return 0;
}

int prep_mirror_cmd(int argc, char** argv, bool reverse) {
  MirrorPrepOptions opts;
  opts.reverse = reverse;
  po::options_description o("options");
  o.add_options()
      ("length", po::value<int64_t>(&opts.length)->required()->value_name("E"),
       reverse ? "tokens per example (at least 3): (E-1)/2 random bytes, the same reversed, EOS to E"
               : "tokens per example (at least 3): (E-1)/2 random bytes, the same again, EOS to E")
      ("examples", po::value<int64_t>(&opts.examples)->required()->value_name("K"),
       "training examples")
      ("val-examples", po::value<int64_t>(&opts.val_examples)->value_name("K2"),
       "validation examples (default max(1, K/10))")
      ("seed", po::value<uint64_t>(&opts.seed)->default_value(0)->value_name("S"),
       "random seed")
      ("half", po::value<int64_t>(&opts.half)->value_name("H"),
       "random tokens per example (default (E-1)/2; 2H <= E, the rest is EOS): a copy then "
       "lies H tokens back")
      ("keep", po::value<int64_t>(&opts.keep)->value_name("K"),
       "keep only the last K tokens of the second half and the random tokens they repeat; "
       "every other position of the halves is PAD: the same distances back with only 2K "
       "inputs to attend to, a warm-up for long contexts (see tools/main_job.sh)");
  add_common(o, opts.common);
  po::variables_map vm;
  const cli::Command cmd =
      reverse ? cli::Command{"prep mirror",
                             "The mirror-copy task of the Perceiver AR paper; vocab_size 259.",
                             "par prep mirror --out DIR --length E --examples K [options]"}
              : cli::Command{"prep copy",
                             "The copy task: like mirror, but the second half repeats the first "
                             "in order, a constant distance back; vocab_size 259.",
                             "par prep copy --out DIR --length E --examples K [options]"};
  if (!cli::parse(argc, argv, cmd, o, vm))
    return 0;
  refuse_inside_checkpoint(opts.common.out_dir, "--out");
  prep_mirror(opts, std::cout);
  return 0;
}

}  // namespace

bool is_prep_mode(const std::string& word) {
  return word == "bytes" || word == "tokens" || word == "mirror" || word == "copy";
}

int cmd_prep(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "par prep: error: no mode given\n\n" << kPrepUsage;
    return 2;
  }
  const std::string mode = argv[1];
  if (mode == "--help" || mode == "-h") {
    std::cout << kPrepUsage;
    return 0;
  }
  // argv + 1: the mode plays argv[0] for the option parser.
  if (mode == "bytes") return prep_bytes_cmd(argc - 1, argv + 1);
  if (mode == "tokens") return prep_tokens_cmd(argc - 1, argv + 1);
  if (mode == "mirror") return prep_mirror_cmd(argc - 1, argv + 1, true);
  if (mode == "copy") return prep_mirror_cmd(argc - 1, argv + 1, false);
  PAR_ASSERT(!is_prep_mode(mode), "prep mode ", mode, " has no command");
  fail_user("unknown mode '", mode, "'; use bytes, tokens, mirror or copy (see `par prep --help`)");
}

}  // namespace par
