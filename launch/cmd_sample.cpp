// `par sample`: generates continuations from a trained model with the cached decoding of
// spec/MODEL.md section 12 (core/decoder.h). Prompts: text or a file (bytes, for byte-level
// models), a file of prompts (one a line), or windows of a token shard (ids). Each prompt
// gets --num-samples continuations, decoded together as one batch; sample k draws with
// --seed + k, so it equals a run of that one sample with that seed. Output: text (bytes;
// what is not printable UTF-8 is escaped), ids, or one JSON line per sample.
#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>

#include "checkpoint/model_file.h"
#include "core/decoder.h"
#include "core/constants.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/shard.h"
#include "launch/backend.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/decode_memory_plan.h"
#include "launch/host_memory.h"
#include "launch/memory_plan.h"
#include "launch/options.h"
#include "launch/sample_output.h"
#include "launch/text.h"
#include "launch/threads.h"
#include "train/sampling.h"

namespace par {

namespace {

constexpr int64_t kMaxTokens = 100'000'000;
constexpr double kProgressEvery = 5;  // seconds between progress lines

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<int32_t> bytes_to_ids(const std::string& bytes) {
  std::vector<int32_t> ids;
  for (unsigned char c : bytes) ids.push_back(int32_t(c) + kByteOffset);
  return ids;
}

// The bytes of a file that must be a regular one (a directory opens and reads as empty: it
// would silently mean "no prompt").
std::string read_prompt_file(const std::string& option, const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail_user(option, " '", path, "' is ",
              std::filesystem::exists(path, ec) ? "not a regular file" : "missing");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_user(option, ": cannot read '", path, "'");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail_user(option, ": cannot read '", path, "'");
  return os.str();
}

// One prompt a line (the newline is not part of it; an empty line is an empty prompt).
std::vector<std::vector<int32_t>> prompts_of_lines(const std::string& text, const std::string& path) {
  std::vector<std::vector<int32_t>> prompts;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    // A file written on Windows ends its lines with \r\n: the \r is not the prompt's.
    const size_t stop = end > begin && text[end - 1] == '\r' ? end - 1 : end;
    prompts.push_back(bytes_to_ids(text.substr(begin, stop - begin)));
    begin = end + 1;
  }
  if (prompts.empty()) fail_user("--prompts-file '", path, "' holds no prompt (no line)");
  return prompts;
}

// Counts generated tokens over all prompts and samples, and logs how far it is every few
// seconds: output comes at the end of each prompt.
class Progress {
 public:
  explicit Progress(int64_t total) : total_(total) {}
  void add(int64_t tokens) {
    done_ += tokens;
    if (since(last_) < kProgressEvery) return;
    last_ = Clock::now();
    LOG(INFO) << progress_text(done_, total_, since(t0_));
  }

 private:
  int64_t total_, done_ = 0;
  Clock::time_point t0_ = Clock::now(), last_ = Clock::now();
};

struct Generation {
  SamplingOptions sampling;
  int64_t tokens = 0;
  uint64_t seed = 0;
  bool stop_at_eos = false;
};

// The samples of one prompt, decoded as one batch; sample k draws with seed + k. A sample
// that has stopped at its EOS rides along (the batch has one length) without drawing.
std::vector<SampleRecord> generate(Decoder<float>& dec, int64_t prompt_index,
                                   const std::vector<int32_t>& prompt, const Generation& g,
                                   Progress& progress) {
  const int64_t K = dec.samples();
  std::vector<std::mt19937_64> rngs;
  for (int64_t k = 0; k < K; ++k) rngs.emplace_back(g.seed + uint64_t(k));
  auto t0 = Clock::now();
  dec.start(prompt);
  dec.synchronize();  // on a GPU the prompt's pass is queued, not done, when start returns
  const double prefill_s = since(t0);
  std::vector<SampleRecord> out(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    out[size_t(k)].prompt_index = prompt_index;
    out[size_t(k)].sample = k;
    out[size_t(k)].seed = g.seed + uint64_t(k);
    out[size_t(k)].prompt.assign(prompt.end() - std::min<int64_t>(int64_t(prompt.size()), dec.length()),
                                 prompt.end());
  }
  std::vector<int32_t> next(static_cast<size_t>(K), kEosToken);
  std::vector<bool> stopped(static_cast<size_t>(K), false);
  std::vector<double> u(static_cast<size_t>(K));
  t0 = Clock::now();
  for (int64_t i = 0; i < g.tokens; ++i) {
    // Each live sample draws from its own generator (none when greedy), as sample_token
    // does; the choice runs where the logits are.
    for (int64_t k = 0; k < K; ++k)
      u[size_t(k)] = stopped[size_t(k)] || g.sampling.temperature == 0 ? 0.0 : draw_uniform(rngs[size_t(k)]);
    const std::vector<int32_t> chosen = dec.choose(g.sampling, u);
    int64_t live = 0;
    for (int64_t k = 0; k < K; ++k) {
      if (stopped[size_t(k)]) continue;
      const int32_t t = chosen[size_t(k)];
      out[size_t(k)].generated.push_back(t);
      next[size_t(k)] = t;
      ++live;
      if (g.stop_at_eos && t == kEosToken) stopped[size_t(k)] = true;
    }
    progress.add(live);
    if (std::find(stopped.begin(), stopped.end(), false) == stopped.end()) break;
    if (i + 1 < g.tokens) dec.append(next);
  }
  const double gen_s = std::max(since(t0), 1e-9);
  int64_t generated = 0;
  for (SampleRecord& r : out) {
    r.tokens_per_s = double(r.generated.size()) / gen_s;
    generated += int64_t(r.generated.size());
  }
  LOG(INFO) << "prompt " << prompt_index << ": " << out[0].prompt.size() << " tokens ("
            << fmt("%.2f", prefill_s) << " s) | " << K << " sample" << (K > 1 ? "s" : "")
            << ", generated " << generated << " tokens at " << fmt("%.1f", double(generated) / gen_s)
            << " tokens/s | " << dec.refills() << " full passes";
  return out;
}

}  // namespace

int cmd_sample(int argc, char** argv) {
  std::string checkpoint, prompt, prompt_file, prompts_file, prompt_shard, format;
  int64_t prompt_begin = 0, prompt_length = 0, prompt_count = 1, tokens = 256, top_k = 0;
  int64_t num_samples = 1;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  bool stop_at_eos = false, uncached = false;
  int threads = 0;
  std::string device = "cpu", precision = "fp32", attention = "auto", cuda_graphs = "on";
  po::options_description opts("Options");
  opts.add_options()
      ("checkpoint", po::value(&checkpoint), "checkpoint directory, run directory (its newest checkpoint) or exported model")
      ("prompt", po::value(&prompt), "prompt text (byte-level models)")
      ("prompt-file", po::value(&prompt_file), "prompt: the bytes of this file (byte-level models)")
      ("prompts-file", po::value(&prompts_file), "several prompts: each line of this file is one (its bytes without the newline, \\n or \\r\\n; byte-level models)")
      ("prompt-shard", po::value(&prompt_shard), "prompt: token ids from this shard...")
      ("prompt-begin", po::value(&prompt_begin)->default_value(0), "...starting at this position...")
      ("prompt-length", po::value(&prompt_length)->default_value(0), "...this many tokens...")
      ("prompt-count", po::value(&prompt_count)->default_value(prompt_count), "...and this many such prompts, one after the other in the shard")
      ("num-samples", po::value(&num_samples)->default_value(num_samples), "continuations of each prompt, decoded together as one batch; sample k draws with --seed + k")
      ("tokens", po::value(&tokens)->default_value(tokens), "tokens to generate (each sample)")
      ("temperature", po::value(&temperature)->default_value(temperature), "sampling temperature; 0: always the most likely token (greedy)")
      ("top-k", po::value(&top_k)->default_value(top_k), "sample among the k most likely tokens (0: all)")
      ("top-p", po::value(&top_p)->default_value(top_p), "sample among the most likely tokens whose probabilities sum to p (1: all)")
      ("seed", po::value(&seed)->default_value(seed), "random seed of the sampling (of sample 0; sample k: seed + k)")
      ("format", po::value(&format), "output: text (byte-level models; the default for them), ids (the default otherwise) or json (one line per sample)")
      ("stop-at-eos", po::bool_switch(&stop_at_eos), "stop each sample after it generates EOS")
      ("uncached", po::bool_switch(&uncached), "run a full forward pass per token (slow; for checking the caches)")
      ("threads", po::value(&threads)->default_value(threads), "CPU threads (0: $OMP_NUM_THREADS if set, else all cores)")
      ("device", po::value(&device)->default_value(device), "cpu or cuda (the GPU chosen by the launcher's node-local rank, else GPU 0)")
      ("precision", po::value(&precision)->default_value(precision), "matrix products on cuda: fp32, tf32 or bf16")
      ("attention", po::value(&attention)->default_value(attention), kAttentionHelp)
      ("cuda-graphs", po::value(&cuda_graphs)->default_value(cuda_graphs), kCudaGraphsHelp);
  po::variables_map vm;
  const cli::Command cmd{"sample",
                         "Generates continuations of prompts with cached decoding. An empty "
                         "prompt starts from SOS; a prompt longer than the context keeps its "
                         "last tokens. Several samples of a prompt decode together; with "
                         "several, text output heads each with a line naming it.",
                         "par sample --checkpoint PATH [--prompt TEXT | --prompt-file F | "
                         "--prompts-file F | --prompt-shard F --prompt-begin B --prompt-length "
                         "N [--prompt-count C]] [--num-samples K] [options]"};
  if (!cli::parse(argc, argv, cmd, opts, vm)) return 0;
  if (checkpoint.empty()) fail_user("--checkpoint is required");
  const int sources = int(vm.count("prompt")) + int(vm.count("prompt-file")) +
                      int(vm.count("prompts-file")) + int(vm.count("prompt-shard"));
  if (sources > 1)
    fail_user("give one prompt source: --prompt, --prompt-file, --prompts-file or --prompt-shard");
  // An empty prompt is asked for by giving no prompt source, not a shard's 0 tokens.
  if (vm.count("prompt-shard") && prompt_length <= 0)
    fail_user("--prompt-shard needs --prompt-length N > 0: the prompt is the N tokens from "
              "--prompt-begin (for no prompt, leave out the prompt source)");
  // The shard's slice options mean nothing for a text prompt: silently ignored, they would
  // hide that the prompt is not what the user meant.
  for (const char* o : {"prompt-begin", "prompt-length", "prompt-count"})
    if (!vm[o].defaulted() && !vm.count("prompt-shard"))
      fail_user("--", o, " takes prompts from a shard: it needs --prompt-shard",
                std::string(o) == "prompt-count" ? " (for several text prompts use --prompts-file)"
                                                 : "");
  if (!vm["prompt-count"].defaulted() && prompt_count < 1)
    fail_user("--prompt-count must be at least 1");
  if (num_samples < 1) fail_user("--num-samples must be at least 1");
  if (num_samples > kMaxDecodeSamples)
    fail_user("--num-samples ", num_samples, " is more than one batch decodes (at most ",
              kMaxDecodeSamples, "): draw them in several runs, with --seed advanced by the count");
  // Sample k draws with seed + k: past 2^64 - 1 it would wrap to another run's seeds.
  if (seed > std::numeric_limits<uint64_t>::max() - uint64_t(num_samples - 1))
    fail_user("--seed ", seed, " + --num-samples ", num_samples, " passes 2^64 - 1 (sample k draws ",
              "with --seed + k): choose a smaller --seed");
  if (tokens <= 0) fail_user("--tokens must be positive");
  if (tokens > kMaxTokens / num_samples)
    fail_user("--tokens ", tokens, num_samples > 1 ? cat(" x --num-samples ", num_samples) : "",
              " is more than one run generates (at most ", kMaxTokens, " tokens for the samples "
              "of a prompt: they are kept in memory until printed): generate in parts, each "
              "prompted with the end of the last");
  if (threads < 0) fail_user("--threads must be >= 0 (0: all cores)");
  SamplingOptions so;
  so.temperature = temperature;
  so.top_k = top_k;
  so.top_p = top_p;
  so.validate();
  const bool step_capture = parse_cuda_graphs(cuda_graphs);
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
  std::vector<std::vector<int32_t>> prompts;
  if (vm.count("prompt") || vm.count("prompt-file") || vm.count("prompts-file")) {
    if (!byte_model)
      fail_user("a text prompt needs a byte-level model (vocabulary 259); this one has ",
                c.vocab_size, ": give token ids with --prompt-shard");
    if (vm.count("prompt"))
      prompts.push_back(bytes_to_ids(prompt));
    else if (vm.count("prompt-file"))
      prompts.push_back(bytes_to_ids(read_prompt_file("--prompt-file", prompt_file)));
    else
      prompts = prompts_of_lines(read_prompt_file("--prompts-file", prompts_file), prompts_file);
  } else if (vm.count("prompt-shard")) {
    const ShardReader reader(prompt_shard);
    const int64_t n = reader.info().num_tokens;
    check_vocabulary(reader.info(), c.vocab_size);  // as eval and training check shards
    // (Divided, not multiplied: the options' product can pass int64.)
    if (prompt_begin < 0 || prompt_length < 0 || prompt_begin > n ||
        (prompt_length > 0 && prompt_count > (n - prompt_begin) / prompt_length))
      fail_user("--prompt-begin ", prompt_begin, " --prompt-length ", prompt_length,
                prompt_count > 1 ? cat(" --prompt-count ", prompt_count) : std::string(),
                " is outside ", prompt_shard, " (", n, " tokens)");
    for (int64_t p = 0; p < prompt_count; ++p) {
      std::vector<int32_t> ids(static_cast<size_t>(prompt_length));
      reader.read(prompt_begin + p * prompt_length, prompt_length, ids.data(),
                  reader.info().vocab_size);  // at most the model's (checked above)
      prompts.push_back(std::move(ids));
    }
  } else {
    prompts.emplace_back();
  }
  for (std::vector<int32_t>& ids : prompts) {
    if (ids.empty()) ids.push_back(kSosToken);  // what an empty prompt starts from
    if (int64_t(ids.size()) > c.context_length)
      LOG(INFO) << "a prompt has " << ids.size() << " tokens: keeping the last "
                << c.context_length << " (the context length)";
  }

  // Before anything is allocated: several samples' caches grow as they generate, so a
  // generation too large would otherwise fail only part-way.
  const KeyValueStorage cache_storage =
      decoding_cache_storage("auto", device, precision, attention, num_samples, c);
  size_t longest = 0;
  for (const std::vector<int32_t>& ids : prompts) longest = std::max(longest, ids.size());
  DecodePlanRequest plan;
  plan.model = c;
  plan.samples = num_samples;
  plan.tokens = tokens;
  plan.decoder = [&](int64_t samples) {
    return Decoder<float>::memory(c, !uncached, TokenTables::kAuto, samples, cache_storage,
                                  int64_t(longest), tokens);
  };
  plan.params_bytes = double(model.params.size()) * sizeof(float);
  plan.threads = current_threads();
  plan.cudnn_attention = plans_cudnn_attention(backend.cuda, precision, attention);
  plan.bf16_products = plans_bf16_products(backend.cuda, precision);
  plan.runtime_bytes = double(resident_bytes());
  // describe() gives the host's line, then the device's: each a log line of its own.
  const std::string estimate =
      describe(require_decoder_fits(plan, backend), memory_budget(backend, 1));
  for (size_t at = 0; at < estimate.size();) {
    const size_t end = std::min(estimate.find('\n', at), estimate.size());
    LOG(INFO) << "memory (estimate): " << estimate.substr(at, end - at);
    at = end + 1;
  }
  Ops<float>& ops = *backend.ops;
  LOG(INFO) << "backend: " << backend.description;
  float* params = static_cast<float*>(ops.allocate(model.params.size() * sizeof(float)));
  ops.upload(params, model.params.data(), model.params.size() * sizeof(float));
  const Generation g{so, tokens, seed, stop_at_eos};
  const int64_t total = int64_t(prompts.size()) * num_samples;
  Progress progress(total * tokens);
  {
    Decoder<float> dec(c, ops, params, !uncached, TokenTables::kAuto, num_samples,
                       cache_storage);
    dec.set_step_capture(step_capture);
    LOG(INFO) << (uncached ? "uncached" : "cached") << " decoding of " << prompts.size()
              << " prompt" << (prompts.size() > 1 ? "s" : "") << " x " << num_samples
              << " sample" << (num_samples > 1 ? "s" : "") << ", " << tokens << " tokens each"
              << (dec.bf16_cache() ? " | cross caches in bf16" : "");
    for (size_t p = 0; p < prompts.size(); ++p)
      for (const SampleRecord& r : generate(dec, int64_t(p), prompts[p], g, progress)) {
        if (format == "json") {
          std::cout << json_line(r, byte_model) << std::endl;
          continue;
        }
        if (format == "text") {
          if (total > 1)
            std::cout << "=== prompt " << r.prompt_index << ", sample " << r.sample << " (seed "
                      << r.seed << ") ===\n";
          std::cout << decode_bytes(r.generated) << std::endl;
        } else {
          for (size_t i = 0; i < r.generated.size(); ++i)
            std::cout << (i ? " " : "") << r.generated[i];
          std::cout << std::endl;
        }
      }
  }
  ops.deallocate(params);
  return 0;
}

}  // namespace par
