// An Ops decorator that times every call of the backend it wraps, by op name. `par bench
// --profile` uses it to show where a training step's time goes. The wrapped backend is
// synchronized after each call, so asynchronous (GPU) work is charged to its own op.
#pragma once

#include <chrono>
#include <cstring>
#include <map>
#include <string>

#include "core/ops_decorator.h"

namespace par {

struct OpTime {
  double seconds = 0;
  int64_t calls = 0;
};

template <typename T>
class ProfiledOps final : public ForwardingOps<T> {
 public:
  explicit ProfiledOps(Ops<T>& inner) : ForwardingOps<T>(inner) {}
  const std::map<std::string, OpTime>& times() const { return times_; }
  void reset() { times_.clear(); }

  // Matrix products and attention are timed apart by what they run over: all inputs (more
  // than 4096 rows or keys: the cross-attention's keys and values) or the latents.
  void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in,
                      int64_t out) override {
    label_ = rows > 4096 ? "linear_forward (inputs)" : "linear_forward (latents)";
    ForwardingOps<T>::linear_forward(y, x, w, b, rows, in, out);
  }
  void linear_backward(T* dx, bool acc, T* dw, T* db, const T* dy, const T* x, const T* w,
                       int64_t rows, int64_t in, int64_t out) override {
    label_ = rows > 4096 ? "linear_backward (inputs)" : "linear_backward (latents)";
    ForwardingOps<T>::linear_backward(dx, acc, dw, db, dy, x, w, rows, in, out);
  }
  // Each op is timed to its end (a synchronization), which no recording may hold: profiled
  // work runs as it is given.
  void begin_capture() override {}
  void end_capture(uint64_t) override {}
  void abort_capture() override {}
  bool replays_captures() override { return false; }
  bool replay_capture(uint64_t) override { return false; }
  // A question about the backend, not work: not a line of the profile.
  bool token_attention_takes_own_keys() override {
    return this->inner().token_attention_takes_own_keys();
  }
  void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                         T* lse) override {
    label_ = s.nk > 4096 ? "attention_forward (cross)" : "attention_forward (latents)";
    ForwardingOps<T>::attention_forward(s, q, k, v, o, lse);
  }
  void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* o,
                          const T* d_o, const T* lse, T* dq, T* dk, T* dv) override {
    label_ = s.nk > 4096 ? "attention_backward (cross)" : "attention_backward (latents)";
    ForwardingOps<T>::attention_backward(s, q, k, v, o, d_o, lse, dq, dk, dv);
  }
  // Keys and values stored in bfloat16 (--kv-storage) are timed on the same lines.
  void attention_forward_bf16_kv(const AttentionShape& s, const T* q, const uint16_t* k,
                                 const uint16_t* v, T* o, T* lse) override {
    label_ = s.nk > 4096 ? "attention_forward (cross)" : "attention_forward (latents)";
    ForwardingOps<T>::attention_forward_bf16_kv(s, q, k, v, o, lse);
  }
  void attention_backward_bf16_kv(const AttentionShape& s, const T* q, const uint16_t* k,
                                  const uint16_t* v, const T* o, const T* d_o, const T* lse,
                                  T* dq, uint16_t* dk, uint16_t* dv) override {
    label_ = s.nk > 4096 ? "attention_backward (cross)" : "attention_backward (latents)";
    ForwardingOps<T>::attention_backward_bf16_kv(s, q, k, v, o, d_o, lse, dq, dk, dv);
  }
  void linear_forward_bf16_x(T* y, const uint16_t* x, const T* w, const T* b, int64_t rows,
                             int64_t in, int64_t out) override {
    label_ = rows > 4096 ? "linear_forward (inputs)" : "linear_forward (latents)";
    ForwardingOps<T>::linear_forward_bf16_x(y, x, w, b, rows, in, out);
  }
  void linear_forward_to_bf16(uint16_t* y, T* staging, const uint16_t* x, const T* w, const T* b,
                              int64_t rows, int64_t in, int64_t out) override {
    label_ = rows > 4096 ? "linear_forward (inputs)" : "linear_forward (latents)";
    ForwardingOps<T>::linear_forward_to_bf16(y, staging, x, w, b, rows, in, out);
  }
  void linear_backward_bf16(T* dx, bool acc, T* dw, T* db, const uint16_t* dy, const uint16_t* x,
                            const T* w, int64_t rows, int64_t in, int64_t out) override {
    label_ = rows > 4096 ? "linear_backward (inputs)" : "linear_backward (latents)";
    ForwardingOps<T>::linear_backward_bf16(dx, acc, dw, db, dy, x, w, rows, in, out);
  }
  void layernorm_forward_bf16(uint16_t* y, T* mean, T* rstd, const T* x, const T* w, const T* b,
                              int64_t rows, int64_t d, double eps) override {
    label_ = "layernorm_forward";
    ForwardingOps<T>::layernorm_forward_bf16(y, mean, rstd, x, w, b, rows, d, eps);
  }

 protected:
  void around(const char* op, const OpCall& call) override {
    const char* label = label_ ? label_ : label_of(op);
    label_ = nullptr;
    if (!label) return call();  // memory management is not timed
    const auto t0 = std::chrono::steady_clock::now();
    call();
    this->inner().synchronize();
    OpTime& t = times_[label];
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++t.calls;
  }

 private:
  // The forward and backward of the cheap ops share a line; null: not timed.
  static const char* label_of(const char* op) {
    for (const char* untimed : {"allocate", "deallocate", "synchronize"})
      if (std::strcmp(op, untimed) == 0) return nullptr;
    static const std::map<std::string, const char*> shared = {
        {"sqrelu_forward", "sqrelu"},
        {"sqrelu_backward", "sqrelu"},
        {"attention_merge_scale", "attention_merge"},
        {"attention_merge_finish", "attention_merge"},
        {"attention_merge_pair", "attention_merge"},
        {"cross_entropy_forward", "cross_entropy"},
        {"cross_entropy_backward", "cross_entropy"},
        {"adam_update_spans", "adam_update"},
    };
    const auto it = shared.find(op);
    return it == shared.end() ? op : it->second;
  }

  const char* label_ = nullptr;  // set by the ops above for the call they forward
  std::map<std::string, OpTime> times_;
};

}  // namespace par
