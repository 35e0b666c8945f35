// A decorator for tests on a GPU: every attention call that says something of its arrays
// (core/attention_claims.h) has them downloaded and the claims checked before it runs, as
// the CPU backend checks every call. Downloads wait for the device: never inside a
// recording, where the decoder's calls say nothing (one query per sample).
#pragma once

#include <cstdint>
#include <vector>

#include "core/attention_claims.h"
#include "tests/attention_hook.h"

namespace par::cuda_test {

class ClaimCheckingOps final : public testing_util::AttentionHook {
 public:
  using testing_util::AttentionHook::AttentionHook;
  // Calls whose claims were checked.
  int64_t checked() const { return checked_; }

 private:
  void on_attention(const AttentionShape& s, bool /*bf16_kv*/) override {
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
