#include "launch/bench_decode.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/decoder.h"
#include "core/init.h"
#include "core/profiled_ops.h"
#include "launch/host_memory.h"
#include "launch/options.h"

namespace par {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct DecodeRun {
  double prefill_s = 0, tokens_per_s = 0;
  int64_t refills = 0;
  bool token_tables = false, bf16_cache = false;
  Decoder<float>::StepCounts steps;
};

}  // namespace

int bench_decode(const ModelConfig& mc, const RunConfig& rc, int64_t tokens, int64_t samples,
                 const std::vector<float>* weights, Backend& backend, const MemoryPlan& plan,
                 bool profile, bool step_capture) {
  Ops<float>& inner = *backend.ops;
  ProfiledOps<float> profiled(inner);
  Ops<float>& ops = profile ? static_cast<Ops<float>&>(profiled) : inner;
  // A trained model's scores are far sharper than fresh weights' (the CPU's token-table
  // attention then takes another path), so its rate can differ.
  std::vector<float> fresh;
  if (!weights) init_parameters(ParamLayout(mc), rc.seed, fresh);
  const std::vector<float>& host = weights ? *weights : fresh;
  float* params = static_cast<float*>(ops.allocate(host.size() * sizeof(float)));
  ops.upload(params, host.data(), host.size() * sizeof(float));
  std::mt19937_64 rng(rc.seed);
  // Room for the generated tokens: the window never slides, so uncached decoding (which
  // matches cached decoding only within the context) does the same work.
  const int64_t prompt_length = std::max<int64_t>(1, mc.context_length - tokens - 4);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_length));
  for (auto& t : prompt) t = int32_t(3 + rng() % uint64_t(mc.vocab_size - 3));
  // n steps of K samples; tokens_per_s counts all K. until_refill: stop one step after the
  // first refill (at most n steps).
  auto run = [&](bool cached, int64_t n, int64_t K, bool until_refill = false) {
    DecodeRun r;
    Decoder<float> dec(mc, ops, params, cached, TokenTables::kAuto, K,
                       decoding_cache_storage(rc.kv_storage, rc.device, rc.precision,
                                              rc.attention, K, mc));
    dec.set_step_capture(step_capture);
    auto t = Clock::now();
    dec.start(prompt);
    ops.synchronize();  // on a GPU the pass is queued, not done, when start returns
    r.prefill_s = since(t);
    const int64_t refills_before = dec.refills();
    profiled.reset();
    // Each step draws the samples' next tokens from their logits (temperature 1) where the
    // logits are, as par sample does.
    std::vector<double> u(static_cast<size_t>(K));
    t = Clock::now();
    bool refilled = false;
    for (int64_t i = 0; i < n; ++i) {
      for (auto& x : u) x = uniform_from_bits(rng());
      dec.append(dec.choose(SamplingOptions{}, u));
      if (until_refill && refilled) break;
      refilled = dec.refills() > refills_before;
    }
    ops.synchronize();
    r.tokens_per_s = double(n * K) / since(t);
    r.refills = dec.refills() - refills_before;
    r.token_tables = dec.token_tables();
    r.bf16_cache = dec.bf16_cache();
    r.steps = dec.step_counts();
    return r;
  };
  // A process's first decode pays once what the steady rate should not: on a GPU cuDNN
  // builds a plan per attention shape (compiling its kernels), among them those of a
  // refill the prompt's pass does not have (several samples' latents), the steps are
  // recorded for the first time, scratch grows. A throwaway decode through its first refill
  // pays them; its time is printed on its own line.
  const auto warm_start = Clock::now();
  const std::mt19937_64 drawn = rng;  // the timed run draws what it would without it
  run(true, tokens, samples, true);
  rng = drawn;
  const double warmup_s = since(warm_start);
  const DecodeRun cached = run(true, tokens, samples);
  const auto cached_profile = profiled.times();
  // Uncached decoding of K samples is K full passes a token: one sample says its rate.
  const int64_t slow_tokens = std::max<int64_t>(2, std::min<int64_t>(tokens, 4));
  const DecodeRun uncached = run(false, slow_tokens, 1);
  ops.deallocate(params);
  const double mib = 1 << 20, peak_rss = double(peak_resident_bytes()) / mib,
               peak_device = double(device_peak_bytes(backend)) / mib;

  std::printf("model       %s | %d threads | %s\n", mc.summary().c_str(), current_threads(),
              backend.description.c_str());
  std::printf("decode      prompt of %lld tokens: full pass %.2f s\n",
              static_cast<long long>(prompt.size()), cached.prefill_s);
  std::printf("            warm-up:  %.2f s, untimed (a cached decode of the same prompt through "
              "its first refill: one-time costs such as cuDNN's plans)\n",
              warmup_s);
  std::printf("            cached:   %.2f tokens/s over %lld tokens, %lld refills included%s%s\n",
              cached.tokens_per_s, static_cast<long long>(tokens * samples),
              static_cast<long long>(cached.refills),
              cached.token_tables ? " (cross-attention through token tables)" : "",
              cached.bf16_cache ? " | cross caches in bf16" : "");
  // Only a backend that replays captured steps (CUDA graphs) has anything to count here.
  if (ops.replays_captures())
    std::printf("            steps: %lld replayed, %lld captured, %lld run as given%s\n",
                static_cast<long long>(cached.steps.replayed),
                static_cast<long long>(cached.steps.captured),
                static_cast<long long>(cached.steps.plain),
                step_capture ? "" : " (--cuda-graphs off)");
  if (samples > 1)
    std::printf("            %lld samples decoded together: %.2f tokens/s per sample\n",
                static_cast<long long>(samples), cached.tokens_per_s / double(samples));
  std::printf("            uncached: %.3f tokens/s over %lld tokens | cached/uncached = %.1fx\n",
              uncached.tokens_per_s, static_cast<long long>(slow_tokens),
              cached.tokens_per_s / uncached.tokens_per_s);
  std::printf("memory      peak resident %.0f MiB | planned %.0f MiB\n", peak_rss,
              plan.host_bytes() / mib);
  if (backend.cuda)
    std::printf("            peak device %.0f MiB | planned %.0f MiB\n", peak_device,
                plan.device_bytes() / mib);
  if (profile) {
    std::vector<std::pair<std::string, OpTime>> rows(cached_profile.begin(), cached_profile.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    double total = 0;
    for (const auto& row : rows) total += row.second.seconds;
    if (samples == 1)
      std::printf("profile     cached decoding, ms/token  share  calls/token  op\n");
    else
      std::printf("profile     cached decoding, ms/step  share  calls/step  op (a step: a token of each sample)\n");
    for (const auto& [op, t] : rows)
      std::printf("            %8.3f  %5.1f%%  %8.1f  %s\n", 1e3 * t.seconds / double(tokens),
                  100 * t.seconds / total, double(t.calls) / double(tokens), op.c_str());
  }
  std::printf("{\"context_length\": %lld, \"samples\": %lld, \"cached_tokens_per_s\": %.3f, "
              "\"cached_tokens_per_s_per_sample\": %.3f, \"uncached_tokens_per_s\": %.4f, "
              "\"speedup\": %.2f, \"refills\": %lld, \"steps_replayed\": %lld, "
              "\"steps_captured\": %lld, \"peak_rss_mib\": %.1f, \"planned_host_mib\": %.1f, "
              "\"peak_device_mib\": %.1f, \"planned_device_mib\": %.1f}\n",
              static_cast<long long>(mc.context_length), static_cast<long long>(samples),
              cached.tokens_per_s, cached.tokens_per_s / double(samples), uncached.tokens_per_s,
              cached.tokens_per_s / uncached.tokens_per_s, static_cast<long long>(cached.refills),
              // The decoder's own counts: on a backend without graphs, the steps it asked to
              // capture (what the CPU's tests check of it), none of them replayed.
              static_cast<long long>(cached.steps.replayed),
              static_cast<long long>(cached.steps.captured), peak_rss, plan.host_bytes() / mib,
              peak_device, plan.device_bytes() / mib);
  return 0;
}

}  // namespace par
