// Decoder: the steps of cached decoding -- the latent on the newest input of each sample
// through every layer -- given to the backend as captures, and replayed where it keeps them
// (Ops::replay_capture) while the step's plan holds: everything that changes from one token
// to the next reaches the step through device buffers uploaded before it.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "core/decoder_buffers.h"
#include "core/error.h"

namespace par {

template <typename T>
void Decoder<T>::set_step_capture(bool on) {
  PAR_ASSERT(length() == 0, "set_step_capture before start()");
  const bool was = replay_;
  capture_steps_ = on;
  replay_ = on && cached_ && ops_.replays_captures();
  if (replay_ && !was) zero_rows_read_unfilled();
}

// Rows that a step reads but that hold nothing yet (weighted 0 at far positions) must hold
// numbers, not whatever the memory held: the self caches (several samples, or replayed
// steps), and the cross cache of a replayed step with one sample (start() keeps its rows
// after the window far).
template <typename T>
void Decoder<T>::zero_rows_read_unfilled() {
  if (!cached_) return;
  const int64_t layers = cfg_.num_layers, d = cfg_.d_model, M = cfg_.num_latents;
  ops_.fill(b_->self_k[0], 2 * layers * samples() * M * d, T(0));
  if (replay_ && samples() == 1) {
    const int64_t cap = cfg_.context_length + M;
    ops_.fill(b_->cross_k, cap * cache_width_, T(0));  // zero bits: bfloat16 zeros too
    ops_.fill(b_->cross_v, cap * cache_width_, T(0));
  }
}

// The latent on the newest input of every sample (already in the cross caches) through
// every layer, attending over the caches.
template <typename T>
void Decoder<T>::incremental(int64_t position) {
  const int64_t row = refill_row(position);
  run_step([&] {
    push_inputs_device();
    cross_attend_newest();
    latent_stack(samples(), 1, position, false, true);
  });
  logits_fresh_ = false;  // a replayed step ran no host code: not finish_logits either
  if (row >= 0) {
    save_for_refill(row);
    ++saved_rows_;
  }
  ++latents_;
}

// What a step at `position` reads from the host, into the device buffers it reads them
// from: the newest latent's position (once per sample), its rotary rows, its row in the
// self caches and that row's position, and the newest inputs' row in the cross caches
// (push_inputs).
template <typename T>
void Decoder<T>::upload_step_inputs(int64_t position) {
  Buffers& b = *b_;
  // Laid out as the buffers are (decoder_buffers.h), for one upload.
  char* const base = reinterpret_cast<char*>(b.step_cos);
  std::vector<char> host(size_t(reinterpret_cast<char*>(b.latent_pos + samples()) - base));
  auto put = [&](void* device, const void* src, size_t bytes) {
    std::memcpy(host.data() + (static_cast<char*>(device) - base), src, bytes);
  };
  std::vector<T> c, s;
  for (const auto& [spec, cos, sin] : {std::tuple{rot_cross_, b.step_cos, b.step_sin},
                                       std::tuple{rot_self_, b.step_self_cos, b.step_self_sin}}) {
    if (spec.bands == 0) continue;
    make_rotary_tables(spec, position, 1, c, s);
    put(cos, c.data(), c.size() * sizeof(T));
    put(sin, s.data(), s.size() * sizeof(T));
  }
  put(b.step_row, &latents_, sizeof(int64_t));
  put(b.input_row, &input_row_, sizeof(int64_t));
  const int64_t first = std::max<int64_t>(0, length() - cfg_.context_length);
  put(b.first_position, &first, sizeof(int64_t));
  for (int64_t k = 0; k < samples(); ++k) put(b.latent_pos + k, &position, sizeof(int64_t));
  ops_.upload(base, host.data(), host.size());
  // Else a refill follows, with its own positions.
  if (latents_ < cfg_.num_latents) ops_.upload(b.self_pos + latents_, &position, sizeof(int64_t));
}

// What the captured work of a step depends on, other than device buffers: see StepPlan.
template <typename T>
typename Decoder<T>::StepPlan Decoder<T>::replay_plan() const {
  // The rows after the groups matter only where the groups are offered.
  const bool groups = token_tables_ && groups_end_ > 0;
  const auto [gf, gc] = groups ? shared_rows(1, true) : std::pair<int64_t, int64_t>{0, 0};
  const auto [sf, sc] = shared_rows(1, false);
  return StepPlan{groups_end_, group_stride_, gf, gc, sf, sc, own_k_, own_cap_, own_count_ > 0,
                  own_groups_memory_, own_groups_end_,
                  positions_ ? positions_->table() : nullptr, true};
}

// The capture's key: what changes the step's kernels (parts of the window), and the
// decoder (its buffers), so that two decoders on one backend never replay each other's.
template <typename T>
uint64_t Decoder<T>::step_key() const {
  return 1 | uint64_t(groups_end_ > 0) << 1 | uint64_t(own_count_ > 0) << 2 |
         uint64_t(reinterpret_cast<uintptr_t>(memory_)) << 3;
}

// A step's device work, given as one capture where the backend records, under a key naming
// the parts that change what is recorded. A refused recording ran none of it (on a
// backend that records; one that does not has run some): the step is given again as it
// is, which it may be, since it writes only what it computes from the caches and the new
// inputs.
template <typename T>
template <typename F>
void Decoder<T>::run_step(const F& step) {
  if (!capture_steps_) {
    ++step_counts_.plain;
    return step();
  }
  const uint64_t key = step_key();
  auto kept = std::find_if(captured_plans_.begin(), captured_plans_.end(),
                           [&](const auto& e) { return e.first == key; });
  StepPlan plan = replay_ ? replay_plan() : StepPlan{};
  if (replay_ && kept != captured_plans_.end() && kept->second.holds_for(plan) &&
      ops_.replay_capture(key)) {
    ++step_counts_.replayed;
    return;
  }
  step_reads_all_rows_ = false;
  ops_.begin_capture();
  try {
    step();
  } catch (const CaptureRefused&) {
    ++step_counts_.plain;
    step();
    return;
  } catch (const UserError&) {
    ops_.abort_capture();
    throw;
  } catch (const std::runtime_error& e) {
    ops_.abort_capture();
    // A backend failure inside a recording may come from the recording itself: say so, and
    // how to run without it.
    throw std::runtime_error(cat(e.what(), " (while the backend recorded a decoding step; "
                                 "par sample and par bench take --cuda-graphs off to run "
                                 "the steps unrecorded)"));
  } catch (...) {  // an assertion (logic_error), bad_alloc: the stream must not stay recording
    ops_.abort_capture();
    throw;
  }
  ops_.end_capture(key);
  ++step_counts_.captured;
  if (!replay_) return;
  plan.reads_all_rows = step_reads_all_rows_;
  if (kept == captured_plans_.end())
    captured_plans_.emplace_back(key, plan);
  else
    kept->second = plan;
}

// The members defined here, for the element types decoder.cpp instantiates the class with.
#define PAR_INSTANTIATE(T)                                                                  \
  template void Decoder<T>::set_step_capture(bool);                                         \
  template void Decoder<T>::zero_rows_read_unfilled();                                    \
  template void Decoder<T>::incremental(int64_t);                                           \
  template void Decoder<T>::upload_step_inputs(int64_t);                                    \
  template typename Decoder<T>::StepPlan Decoder<T>::replay_plan() const;                   \
  template uint64_t Decoder<T>::step_key() const;
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par
