// How a case of the parity table (tests/op_cases.h) runs on a backend: its buffers, inputs
// and outputs (Run), and how a case is made from one body for both element types.
// Shared by the files of cases (op_cases.cpp, op_cases_bf16.cpp).
#pragma once

#include <algorithm>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tests/op_cases.h"

namespace par::op_parity {

// One run of a case on a backend: buffers in its memory (freed afterwards), and the
// outputs gathered as doubles.
template <typename T>
class Run {
 public:
  using Value = T;
  explicit Run(Ops<T>& ops) : ops(ops) {}
  ~Run() {
    for (void* p : owned_) ops.deallocate(p);
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  // A buffer holding `v`, each value rounded to float first (the same inputs for every
  // backend and element type).
  T* put(const std::vector<double>& v) {
    std::vector<T> t(v.size());
    for (size_t i = 0; i < v.size(); ++i) t[i] = T(float(v[i]));
    return raw(t);
  }
  // n normal values of standard deviation `scale`.
  T* random(int64_t n, uint64_t seed, double scale = 1.0) { return put(normal(n, seed, scale)); }
  T* filled(int64_t n, double value) { return put(std::vector<double>(size_t(n), value)); }
  // A buffer holding `v` as it is (ids, masks, positions).
  template <typename U>
  U* raw(const std::vector<U>& v) {
    U* p = static_cast<U*>(ops.allocate(std::max<size_t>(v.size(), 1) * sizeof(U)));
    owned_.push_back(p);
    if (!v.empty()) ops.upload(p, v.data(), v.size() * sizeof(U));
    return p;
  }

  template <typename U>
  std::vector<U> host(const U* p, int64_t n) {
    std::vector<U> v(static_cast<size_t>(n));
    if (n > 0) ops.download(v.data(), p, size_t(n) * sizeof(U));
    return v;
  }
  // Records n values of p as output `name`.
  template <typename U>
  void out(const std::string& name, const U* p, int64_t n, bool product = false) {
    const std::vector<U> v = host(p, n);
    result.values.push_back({name, std::vector<double>(v.begin(), v.end()), product});
  }
  template <typename U>
  void product(const std::string& name, const U* p, int64_t n) {
    out(name, p, n, true);
  }
  void value(const std::string& name, double v) { result.values.push_back({name, {v}, false}); }
  void check(bool ok, const std::string& what) {
    if (!ok) result.problems.push_back(what);
  }

  static std::vector<double> normal(int64_t n, uint64_t seed, double scale = 1.0) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> dist(0.0, scale);
    std::vector<double> v(static_cast<size_t>(n));
    for (auto& x : v) x = double(float(dist(rng)));
    return v;
  }

  Ops<T>& ops;
  Outputs result;

 private:
  std::vector<void*> owned_;
};

template <typename Body>
OpCase make_case(std::string name, std::vector<std::string> ops, double tol, Products products,
                 bool gpu_bitwise, Body body) {
  OpCase c;
  c.name = std::move(name);
  c.ops = std::move(ops);
  c.tol = tol;
  c.products = products;
  c.gpu_bitwise = gpu_bitwise;
  c.run_float = [body](Ops<float>& o) {
    Run<float> r(o);
    body(r);
    return std::move(r.result);
  };
  c.run_double = [body](Ops<double>& o) {
    Run<double> r(o);
    body(r);
    return std::move(r.result);
  };
  return c;
}

// The element type of a case body's Run.
template <typename R>
using ValueOf = typename std::decay_t<R>::Value;

// The cases of the bfloat16-storage operations (op_cases_bf16.cpp).
void bf16_storage_cases(std::vector<OpCase>& t);

}  // namespace par::op_parity
