// `par sample`: generates a continuation from a trained model with the cached decoding of
// spec/MODEL.md section 12 (core/decoder.h). Prompts: text or a file (bytes, for byte-level
// models) or a slice of a token shard (ids). Output: text (bytes; what is not printable
// UTF-8 is escaped), ids, or JSON.
#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>

#include "checkpoint/model_file.h"
#include "core/decoder.h"
#include "core/constants.h"
#include "core/error.h"
#include "data/shard.h"
#include "launch/backend.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/options.h"
#include "launch/text.h"
#include "launch/threads.h"
#include "train/sampling.h"

namespace par {

namespace {

constexpr int64_t kMaxTokens = 100'000'000;

std::vector<int32_t> bytes_to_ids(const std::string& bytes) {
  std::vector<int32_t> ids;
  for (unsigned char c : bytes) ids.push_back(int32_t(c) + kByteOffset);
  return ids;
}

}  // namespace

int cmd_sample(int argc, char** argv) {
  std::string checkpoint, prompt, prompt_file, prompt_shard, format;
  int64_t prompt_begin = 0, prompt_length = 0, tokens = 256, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  bool stop_at_eos = false, uncached = false;
  int threads = 0;
  std::string device = "cpu", precision = "fp32", attention = "auto";
  po::options_description opts("Options");
  opts.add_options()
      ("checkpoint", po::value(&checkpoint), "checkpoint directory, run directory (its newest checkpoint) or exported model")
      ("prompt", po::value(&prompt), "prompt text (byte-level models)")
      ("prompt-file", po::value(&prompt_file), "prompt: the bytes of this file (byte-level models)")
      ("prompt-shard", po::value(&prompt_shard), "prompt: token ids from this shard...")
      ("prompt-begin", po::value(&prompt_begin)->default_value(0), "...starting at this position...")
      ("prompt-length", po::value(&prompt_length)->default_value(0), "...this many tokens")
      ("tokens", po::value(&tokens)->default_value(tokens), "tokens to generate")
      ("temperature", po::value(&temperature)->default_value(temperature), "sampling temperature; 0: always the most likely token (greedy)")
      ("top-k", po::value(&top_k)->default_value(top_k), "sample among the k most likely tokens (0: all)")
      ("top-p", po::value(&top_p)->default_value(top_p), "sample among the most likely tokens whose probabilities sum to p (1: all)")
      ("seed", po::value(&seed)->default_value(seed), "random seed of the sampling")
      ("format", po::value(&format), "output: text (byte-level models; the default for them), ids (the default otherwise) or json")
      ("stop-at-eos", po::bool_switch(&stop_at_eos), "stop after generating EOS")
      ("uncached", po::bool_switch(&uncached), "run a full forward pass per token (slow; for checking the caches)")
      ("threads", po::value(&threads)->default_value(threads), "CPU threads (0: all cores)")
      ("device", po::value(&device)->default_value(device), "cpu or cuda (the GPU chosen by the launcher's node-local rank, else GPU 0)")
      ("precision", po::value(&precision)->default_value(precision), "matrix products on cuda: fp32, tf32 or bf16")
      ("attention", po::value(&attention)->default_value(attention), kAttentionHelp);
  po::variables_map vm;
  const cli::Command cmd{"sample",
                         "Generates a continuation of a prompt with cached decoding. An empty "
                         "prompt starts from SOS; a prompt longer than the context keeps its "
                         "last tokens.",
                         "par sample --checkpoint DIR [--prompt TEXT | --prompt-file F | "
                         "--prompt-shard F --prompt-begin B --prompt-length N] [options]"};
  if (!cli::parse(argc, argv, cmd, opts, vm)) return 0;
  if (checkpoint.empty()) fail_user("--checkpoint is required");
  const int sources = int(vm.count("prompt")) + int(vm.count("prompt-file")) + int(vm.count("prompt-shard"));
  if (sources > 1) fail_user("give one prompt: --prompt, --prompt-file or --prompt-shard");
  if (tokens <= 0) fail_user("--tokens must be positive");
  if (tokens > kMaxTokens)
    fail_user("--tokens ", tokens, " is more than one run generates (at most ", kMaxTokens,
              ": the tokens are kept in memory until printed): generate in parts, each "
              "prompted with the end of the last");
  if (threads < 0) fail_user("--threads must be >= 0 (0: all cores)");
  SamplingOptions so;
  so.temperature = temperature;
  so.top_k = top_k;
  so.top_p = top_p;
  so.validate();
  warn_threads("sample", apply_threads(threads, 1));

  // Bad --device, --precision or --attention fail here, before the model is read.
  Backend backend = make_local_backend(device, precision, attention);
  const ModelFile model = read_model_file(checkpoint, false);
  const ModelConfig& c = model.model;
  const bool byte_model = c.vocab_size == kByteVocabSize;
  if (format.empty()) format = byte_model ? "text" : "ids";
  if (format != "text" && format != "ids" && format != "json")
    fail_user("--format must be text, ids or json (got '", format, "')");
  if (format == "text" && !byte_model)
    fail_user("--format text needs a byte-level model (vocabulary 259); this one has ",
              c.vocab_size, ": use --format ids");
  std::vector<int32_t> ids;
  if (vm.count("prompt") || vm.count("prompt-file")) {
    if (!byte_model)
      fail_user("a text prompt needs a byte-level model (vocabulary 259); this one has ",
                c.vocab_size, ": give token ids with --prompt-shard");
    if (vm.count("prompt")) {
      ids = bytes_to_ids(prompt);
    } else {
      // A directory opens and reads as empty: it would silently mean "no prompt".
      std::error_code ec;
      if (!std::filesystem::is_regular_file(prompt_file, ec))
        fail_user("--prompt-file '", prompt_file, "' is ",
                  std::filesystem::exists(prompt_file, ec) ? "not a regular file" : "missing");
      std::ifstream in(prompt_file, std::ios::binary);
      if (!in) fail_user("--prompt-file: cannot read '", prompt_file, "'");
      std::ostringstream os;
      os << in.rdbuf();
      if (in.bad()) fail_user("--prompt-file: cannot read '", prompt_file, "'");
      ids = bytes_to_ids(os.str());
    }
  } else if (vm.count("prompt-shard")) {
    const ShardReader reader(prompt_shard);
    const int64_t n = reader.info().num_tokens;
    if (prompt_begin < 0 || prompt_length < 0 || prompt_begin + prompt_length > n)
      fail_user("--prompt-begin ", prompt_begin, " --prompt-length ", prompt_length,
                " is outside ", prompt_shard, " (", n, " tokens)");
    ids.resize(size_t(prompt_length));
    reader.read(prompt_begin, prompt_length, ids.data(), c.vocab_size);
  }
  if (ids.empty()) ids.push_back(2);  // SOS: what an empty prompt starts from
  if (int64_t(ids.size()) > c.context_length)
    LOG(INFO) << "the prompt has " << ids.size() << " tokens: keeping the last " << c.context_length
              << " (the context length)";

  Ops<float>& ops = *backend.ops;
  LOG(INFO) << "backend: " << backend.description;
  float* params = static_cast<float*>(ops.allocate(model.params.size() * sizeof(float)));
  ops.upload(params, model.params.data(), model.params.size() * sizeof(float));
  Decoder<float> dec(c, ops, params, !uncached);
  std::mt19937_64 rng(seed);
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  dec.start(ids);
  const double prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::vector<int32_t> used_prompt(ids.end() - std::min<int64_t>(int64_t(ids.size()), dec.length()), ids.end());
  std::vector<int32_t> out;
  t0 = Clock::now();
  auto last_log = t0;
  for (int64_t i = 0; i < tokens; ++i) {
    const int32_t t = sample_token(dec.logits(), so, rng);
    out.push_back(t);
    if (stop_at_eos && t == kEosToken) break;
    if (i + 1 < tokens) dec.append(t);
    // Output comes at the end: a long generation says how far it is.
    const auto now = Clock::now();
    if (std::chrono::duration<double>(now - last_log).count() >= 10) {
      last_log = now;
      LOG(INFO) << i + 1 << " of " << tokens << " tokens generated ("
                << fmt("%.0f", double(i + 1) / std::chrono::duration<double>(now - t0).count())
                << " tokens/s)";
    }
  }
  const double gen_s = std::chrono::duration<double>(Clock::now() - t0).count();
  ops.deallocate(params);
  LOG(INFO) << "prompt " << used_prompt.size() << " tokens (" << prefill_s << " s) | generated "
            << out.size() << " tokens at " << double(out.size()) / std::max(gen_s, 1e-9)
            << " tokens/s | " << (uncached ? "uncached" : "cached") << " decoding, "
            << dec.refills() << " full passes";

  if (format == "text") {
    std::cout << decode_bytes(out) << std::endl;
  } else if (format == "ids") {
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    std::cout << std::endl;
  } else {
    auto list = [](const std::vector<int32_t>& v) {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); ++i) s += cat(i ? ", " : "", v[i]);
      return s + "]";
    };
    std::cout << "{\"prompt\": " << list(used_prompt) << ", \"generated\": " << list(out)
              << ", \"tokens_per_s\": " << double(out.size()) / std::max(gen_s, 1e-9) << "}"
              << std::endl;
  }
  return 0;
}

}  // namespace par
