// Which attention calls may have a cuDNN plan of their own under --attention auto.
//
// cuDNN builds a plan per shape, compiling its kernels at run time: a large part of a second
// each, against a few tens of milliseconds more for the blocked path to run even the 100M
// config's 131072-key cross-attention once. A shape pays its plan back only where it comes
// again and again (training's fixed shapes). Where the keys' count keeps changing, each new
// count would cost a plan for a call or two: a decoder's refills past the context with
// several samples (the prompt's entries leave the shared cache one by one), several prompts
// of different lengths. So each kind of call (the family: direction, batch, heads, queries,
// head size, causal) takes at most a few key counts to cuDNN; later ones take the blocked
// path. Header-only, so that the CPU tests check it.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <tuple>

namespace par::cuda {

class KeyCountBudget {
 public:
  // direction (backward), batch, heads, queries, head size, causal
  using Family = std::tuple<bool, int64_t, int64_t, int64_t, int64_t, bool>;
  static constexpr size_t kDefaultCounts = 2;

  explicit KeyCountBudget(size_t counts = kDefaultCounts) : max_(counts) {}

  // Whether a call of `family` over `keys` keys may go to cuDNN: a count the family has
  // had, or one of its first max counts. *first_refusal: set when this is the family's
  // first refusal (to say so once).
  bool admit(const Family& family, int64_t keys, bool* first_refusal = nullptr) {
    if (first_refusal) *first_refusal = false;
    std::set<int64_t>& seen = counts_[family];
    if (seen.count(keys)) return true;
    if (seen.size() < max_) {
      seen.insert(keys);
      return true;
    }
    if (first_refusal) *first_refusal = refused_.insert(family).second;
    return false;
  }
  size_t max_counts() const { return max_; }

 private:
  size_t max_;
  std::map<Family, std::set<int64_t>> counts_;
  std::set<Family> refused_;
};

}  // namespace par::cuda
