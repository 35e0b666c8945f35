// A decorator for tests on a GPU: every attention call that says something of its arrays
// (core/attention_claims.h) has them downloaded and the claims checked before it runs, as
// the CPU backend checks every call. Downloads wait for the device: never inside a
// recording, where the decoder's calls say nothing (one query per sample).
#pragma once

#include <cstdint>
#include <vector>

#include "core/attention_claims.h"
#include "core/ops_decorator.h"

namespace par::cuda_test {

class ClaimCheckingOps final : public ForwardingOps<float> {
 public:
  using ForwardingOps<float>::ForwardingOps;
  // Calls whose claims were checked.
  int64_t checked() const { return checked_; }

  void attention_forward(const AttentionShape& s, const float* q, const float* k,
                         const float* v, float* o, float* lse) override {
    check(s);
    ForwardingOps<float>::attention_forward(s, q, k, v, o, lse);
  }
  void attention_backward(const AttentionShape& s, const float* q, const float* k,
                          const float* v, const float* o, const float* d_o, const float* lse,
                          float* dq, float* dk, float* dv) override {
    check(s);
    ForwardingOps<float>::attention_backward(s, q, k, v, o, d_o, lse, dq, dk, dv);
  }
  void attention_forward_bf16_kv(const AttentionShape& s, const float* q, const uint16_t* k,
                                 const uint16_t* v, float* o, float* lse) override {
    check(s);
    ForwardingOps<float>::attention_forward_bf16_kv(s, q, k, v, o, lse);
  }
  void attention_backward_bf16_kv(const AttentionShape& s, const float* q, const uint16_t* k,
                                  const uint16_t* v, const float* o, const float* d_o,
                                  const float* lse, float* dq, uint16_t* dk,
                                  uint16_t* dv) override {
    check(s);
    ForwardingOps<float>::attention_backward_bf16_kv(s, q, k, v, o, d_o, lse, dq, dk, dv);
  }

 private:
  void check(const AttentionShape& s) {
    if (!has_attention_claims(s)) return;
    std::vector<int64_t> q_pos(size_t(s.nq)), k_pos(size_t(s.nk));
    std::vector<uint8_t> keep(s.k_keep ? size_t(s.batch * s.nk) : 0);
    inner().download(q_pos.data(), s.q_pos, q_pos.size() * sizeof(int64_t));
    inner().download(k_pos.data(), s.k_pos, k_pos.size() * sizeof(int64_t));
    if (s.k_keep) inner().download(keep.data(), s.k_keep, keep.size());
    AttentionShape host = s;
    host.q_pos = q_pos.data();
    host.k_pos = k_pos.data();
    host.k_keep = s.k_keep ? keep.data() : nullptr;
    check_attention_claims(host);
    ++checked_;
  }
  int64_t checked_ = 0;
};

}  // namespace par::cuda_test
