// Which attention calls may have a cuDNN plan of their own under --attention auto.
//
// cuDNN builds a plan per shape, compiling its kernels at run time: a large part of a second
// each, against a few tens of milliseconds more for the blocked path to run even the 100M
// config's 131072-key cross-attention once. A shape pays its plan back only where it comes
// again and again (training's fixed shapes). Where the keys' count keeps changing, each new
// count would cost a plan for a call or two: a decoder's refills past the context with
// several samples (the prompt's entries leave the shared cache one by one), several prompts
// of different lengths. So each kind of call (the family: direction, batch, heads, queries,
// head size, causal) takes at most a few key counts to cuDNN, the ones that come again;
// the others take the blocked path. Header-only, so that the CPU tests check it.
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

  // Whether a call of `family` over `keys` keys may go to cuDNN: one of the counts the
  // family holds, which are its first max counts, except that a count coming a second
  // time takes the place of one that has come only once (so that two prompts' passes do
  // not keep out the refills that follow them). *first_refusal: set when this is the
  // family's first refusal (to say so once).
  bool admit(const Family& family, int64_t keys, bool* first_refusal = nullptr) {
    if (first_refusal) *first_refusal = false;
    Counts& f = families_[family];
    const int64_t times = ++f.times[keys];
    if (f.held.count(keys)) return true;
    if (f.held.size() < max_) {
      f.held.insert(keys);
      return true;
    }
    if (times >= 2)
      for (const int64_t held : f.held)
        if (f.times[held] == 1) {
          f.held.erase(held);
          f.held.insert(keys);
          return true;
        }
    if (first_refusal) *first_refusal = !f.said;
    f.said = true;
    return false;
  }
  size_t max_counts() const { return max_; }

 private:
  struct Counts {
    std::map<int64_t, int64_t> times;  // calls per key count
    std::set<int64_t> held;            // the counts that go to cuDNN
    bool said = false;
  };
  size_t max_;
  std::map<Family, Counts> families_;
};

}  // namespace par::cuda
