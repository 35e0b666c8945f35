// A decorator for tests that shows every attention call's shape to a hook before the call
// goes on to the backend: forward and backward, with float32 or bfloat16 keys and values.
#pragma once

#include <cstdint>

#include "core/ops_decorator.h"

namespace par::testing_util {

class AttentionHook : public ForwardingOps<float> {
 public:
  using ForwardingOps<float>::ForwardingOps;

  void attention_forward(const AttentionShape& s, const float* q, const float* k,
                         const float* v, float* o, float* lse) override {
    on_attention(s, false);
    ForwardingOps<float>::attention_forward(s, q, k, v, o, lse);
  }
  void attention_backward(const AttentionShape& s, const float* q, const float* k,
                          const float* v, const float* o, const float* d_o, const float* lse,
                          float* dq, float* dk, float* dv) override {
    on_attention(s, false);
    ForwardingOps<float>::attention_backward(s, q, k, v, o, d_o, lse, dq, dk, dv);
  }
  void attention_forward_bf16_kv(const AttentionShape& s, const float* q, const uint16_t* k,
                                 const uint16_t* v, float* o, float* lse) override {
    on_attention(s, true);
    ForwardingOps<float>::attention_forward_bf16_kv(s, q, k, v, o, lse);
  }
  void attention_backward_bf16_kv(const AttentionShape& s, const float* q, const uint16_t* k,
                                  const uint16_t* v, const float* o, const float* d_o,
                                  const float* lse, float* dq, uint16_t* dk,
                                  uint16_t* dv) override {
    on_attention(s, true);
    ForwardingOps<float>::attention_backward_bf16_kv(s, q, k, v, o, d_o, lse, dq, dk, dv);
  }

 protected:
  // Before the call; may throw to stop it. bf16_kv: the keys and values are bfloat16.
  virtual void on_attention(const AttentionShape& s, bool bf16_kv) = 0;
};

}  // namespace par::testing_util
