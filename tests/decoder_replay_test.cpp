// Replayed decoding steps: a Decoder on a backend that keeps captures (Ops::replays_captures)
// captures a step once and replays it while the step's plan holds. Replayed steps must give
// the logits of steps captured afresh, bit for bit, and those of plain steps.
//
// The backend here keeps a capture the way a CUDA graph does: each op with the arguments it
// was given (pointers, sizes, shapes, values), run again at the replay on whatever the
// buffers hold then. A value the decoder baked into a capture that changes from one step to
// the next, without changing the plan, gives other logits.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "core/decoder.h"
#include "core/ops.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/decoder_model.h"
#include "tests/test_util.h"

namespace par {
namespace {

// Every op of `inner`, kept by value while a capture is open.
template <typename T>
class KeepingOps : public Ops<T> {
 public:
  explicit KeepingOps(Ops<T>& inner) : inner_(inner) {}
  const char* name() const override { return "keeping captures"; }

#define PAR_KEEP(ret, op, params, args) \
  ret op params override { return run(#op, [=, this] { return inner_.op args; }); }
  PAR_OPS_METHODS(PAR_KEEP)
#undef PAR_KEEP

 protected:
  bool capturing_ = false, uploaded_ = false;
  std::vector<std::function<void()>> recording_;

 private:
  template <typename F>
  auto run(const char* op, F f) {
    if (capturing_) {
      for (const char* waits : {"download", "synchronize", "sum_squares"})
        EXPECT_NE(std::strcmp(op, waits), 0) << op << " inside a capture";
      // The host memory a captured upload copies from is gone at a replay.
      if (std::strcmp(op, "upload") == 0) uploaded_ = true;
      recording_.push_back([f] { f(); });
    }
    return f();
  }

  Ops<T>& inner_;
};

class ReplayingOps final : public KeepingOps<double> {
 public:
  // replay: whether replay_capture replays (else every step is captured afresh, with the
  // same layout of the decoder's caches).
  ReplayingOps(Ops<double>& inner, bool replay) : KeepingOps<double>(inner), replay_(replay) {}
  void begin_capture() override {
    EXPECT_FALSE(capturing_) << "a capture inside a capture";
    capturing_ = true;
    uploaded_ = false;
    recording_.clear();
  }
  void end_capture(uint64_t key) override {
    EXPECT_TRUE(capturing_) << "end_capture without begin_capture";
    capturing_ = false;
    kept_[key] = Kept{recording_, !uploaded_};
    ++captured;
  }
  bool replays_captures() override { return true; }
  bool replay_capture(uint64_t key) override {
    EXPECT_FALSE(capturing_) << "a replay inside a capture";
    const auto it = kept_.find(key);
    if (!replay_ || it == kept_.end() || !it->second.replayable) return false;
    for (const auto& op : it->second.ops) op();
    ++replayed;
    return true;
  }
  int captured = 0, replayed = 0;

 private:
  struct Kept {
    std::vector<std::function<void()>> ops;
    bool replayable = false;
  };
  bool replay_;
  std::map<uint64_t, Kept> kept_;
};

struct Case {
  int64_t samples;
  TokenTables tables;
  PositionEncoding pe;
  KeyValueStorage cache = KeyValueStorage::kNative;
};

// 100 steps from a 10-token prompt: refills, regrouped windows, buckets of the newest
// cross rows, and past N = 64 the moving window and its compactions.
void check_replayed_steps(const Case& cs) {
  const ModelConfig c = testing_util::small_decoder_config(cs.pe);
  cpu::CpuOps<double> cpu;
  const std::vector<double> p = testing_util::small_decoder_params<double>(c, 41);
  double* params = static_cast<double*>(cpu.allocate(p.size() * sizeof(double)));
  cpu.upload(params, p.data(), p.size() * sizeof(double));
  const int64_t K = cs.samples;
  ReplayingOps replaying(cpu, true), afresh(cpu, false);
  Decoder<double> replayed(c, replaying, params, true, cs.tables, K, cs.cache);
  Decoder<double> recaptured(c, afresh, params, true, cs.tables, K, cs.cache);
  Decoder<double> plain(c, cpu, params, true, cs.tables, K, cs.cache);
  plain.set_step_capture(false);
  std::mt19937_64 rng(5);
  std::vector<int32_t> prompt(10);
  for (auto& t : prompt) t = int32_t(rng() % 19);
  prompt[4] = 0;  // PAD
  const std::array<Decoder<double>*, 3> all = {&replayed, &recaptured, &plain};
  for (Decoder<double>* d : all) d->start(prompt);
  EXPECT_LE(testing_util::max_rel_err(replayed.logits(), plain.logits()), 1e-12) << "start";
  int within_context = 0;
  for (int step = 0; step < 100; ++step) {
    std::vector<int32_t> next;
    for (int64_t k = 0; k < K; ++k) next.push_back(int32_t((step * 7 + k * 5 + 2) % 19));
    if (step % 9 == 0 && K > 1) next[1] = next[0];  // samples with equal tokens
    for (Decoder<double>* d : all) d->append(next);
    if (replayed.length() <= c.context_length) ++within_context;
    ASSERT_EQ(replayed.logits(), recaptured.logits()) << "step " << step;
    ASSERT_LE(testing_util::max_rel_err(replayed.logits(), plain.logits()), 1e-12) << "step " << step;
  }
  // Every fifth token refills (M = 8: from 4 latents to 8), the others are steps. Within the
  // context most steps replay: a plan changes at refills and every M tokens.
  EXPECT_EQ(afresh.captured, 80);
  EXPECT_EQ(afresh.replayed, 0);
  EXPECT_EQ(replaying.captured + replaying.replayed, 80);
  EXPECT_GE(replaying.replayed, within_context / 2) << replaying.captured << " captured";
  std::printf("%d of 80 steps replayed, %d within the context\n", replaying.replayed, within_context);
  cpu.deallocate(params);
}

TEST(DecoderReplay, OneSampleThroughTokenTables) {
  check_replayed_steps({1, TokenTables::kOn, PositionEncoding::kRotary});
}

TEST(DecoderReplay, OneSampleOverTheCrossCache) {
  check_replayed_steps({1, TokenTables::kOff, PositionEncoding::kRotary});
}

TEST(DecoderReplay, SeveralSamplesThroughTokenTables) {
  check_replayed_steps({3, TokenTables::kOn, PositionEncoding::kRotary});
}

TEST(DecoderReplay, SeveralSamplesOverTheCrossCache) {
  check_replayed_steps({3, TokenTables::kOff, PositionEncoding::kRotary});
}

// The cross caches in bfloat16: rows of d bfloat16 values, copied and moved at that width.
TEST(DecoderReplay, Bf16CrossCaches) {
  check_replayed_steps({1, TokenTables::kOff, PositionEncoding::kRotary, KeyValueStorage::kBf16});
  check_replayed_steps({3, TokenTables::kOff, PositionEncoding::kRotary, KeyValueStorage::kBf16});
  check_replayed_steps({2, TokenTables::kAuto, PositionEncoding::kAbsolute, KeyValueStorage::kBf16});
}

TEST(DecoderReplay, AbsolutePositions) {
  check_replayed_steps({1, TokenTables::kAuto, PositionEncoding::kAbsolute});
  check_replayed_steps({2, TokenTables::kAuto, PositionEncoding::kAbsolute});
}

}  // namespace
}  // namespace par
