// An Ops that forwards every operation to another backend, made from PAR_OPS_METHODS so that
// it forwards whatever the interface has, with one hook around each call: the base of
// ProfiledOps (timing by op name) and of the tests' recording and rounding backends. A
// decorator overrides around(), and where it needs an op's arguments, that op itself.
#pragma once

#include <type_traits>

#include "core/ops.h"

namespace par {

// A call that around() runs (a reference to the caller's lambda: no allocation).
class OpCall {
 public:
  template <typename F>
  explicit OpCall(F& f) : f_(&f), run_([](void* g) { (*static_cast<F*>(g))(); }) {}
  void operator()() const { run_(f_); }

 private:
  void* f_;
  void (*run_)(void*);
};

template <typename T>
class ForwardingOps : public Ops<T> {
 public:
  explicit ForwardingOps(Ops<T>& inner) : inner_(inner) {}
  const char* name() const override { return inner_.name(); }

#define PAR_OPS_FORWARD(ret, op, params, args) \
  ret op params override { return forward(#op, [&] { return inner_.op args; }); }
  PAR_OPS_METHODS(PAR_OPS_FORWARD)
#undef PAR_OPS_FORWARD

 protected:
  Ops<T>& inner() { return inner_; }
  // Runs `call`, the forwarded call of the operation named `op`.
  virtual void around(const char* /*op*/, const OpCall& call) { call(); }

 private:
  template <typename F>
  auto forward(const char* op, F&& f) {
    using R = decltype(f());
    if constexpr (std::is_void_v<R>) {
      around(op, OpCall(f));
    } else {
      R result{};
      auto keep = [&] { result = f(); };
      around(op, OpCall(keep));
      return result;
    }
  }

  Ops<T>& inner_;
};

}  // namespace par
