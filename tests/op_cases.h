// The cross-backend parity table of the Ops contract, in the spirit of ggml's
// test-backend-ops: cases (shapes, masks, flags) of every operation of core/ops.h, each
// written once for any element type and run on any backend: the CPU in double (the
// reference) and in float (tests/op_parity_test.cpp, run everywhere), and CUDA in every
// matrix-product precision where a GPU is visible (tests/cuda/cuda_op_parity_test.cpp).
//
// A case makes its inputs on the host from values a float holds exactly (so every backend
// starts from the same numbers), calls one or a few operations, and hands back its outputs
// for the runner to compare with the reference. Every name in PAR_OPS_METHODS must be
// named by a case (OpParity.EveryOperationHasACase), and a case must call the operations it
// names (checked by recording the calls).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/ops.h"
#include "core/ops_decorator.h"

namespace par::op_parity {

// What one run of a case gives back.
struct Outputs {
  struct Value {
    std::string name;
    std::vector<double> data;
    bool product = false;  // a matrix product's result: CUDA's tf32/bf16 tolerance applies
  };
  std::vector<Value> values;
  std::vector<std::string> problems;  // what the case checked itself and found wrong
  bool declined = false;  // an operation the backend may lack said so (token attention)
};

// The tolerance family of a case's products on CUDA in tf32 and bf16 (tests/cuda/
// cuda_test_util.h); kNone: no products (the case runs in fp32 only).
enum class Products { kNone, kMatmul, kAttention };

struct OpCase {
  std::string name;              // "layernorm_backward 333x300 accumulate"
  std::vector<std::string> ops;  // the operations it tests: each must be called
  // Largest |got - want| over the largest |want| of each output against the reference, for
  // the CPU in float and CUDA in fp32.
  double tol = 0;
  Products products = Products::kNone;
  bool gpu_bitwise = false;  // CUDA's results are the CPU's in float, bit for bit
  bool gpu_may_decline = false;  // CUDA may decline its operation (beyond its kernel's sizing)
  std::function<Outputs(Ops<float>&)> run_float;
  std::function<Outputs(Ops<double>&)> run_double;
};

// The table.
const std::vector<OpCase>& op_cases();

// The names PAR_OPS_METHODS lists.
std::vector<std::string> listed_operations();

// The Adam steps of the optimizer cases: three, weight decay on the second, a clipping
// factor.
std::vector<AdamStep> adam_steps();

// Whether `got` has the outputs of `want`, each within tol of the largest |want| entry
// (`product_tol` for products); infinities and NaN must match exactly.
::testing::AssertionResult agree(const Outputs& got, const Outputs& want, double tol,
                                 double product_tol);
// The same outputs, bit for bit (as doubles: a float output converts exactly).
::testing::AssertionResult identical(const Outputs& a, const Outputs& b);

// A backend that records the operations called through it (by name, in order).
template <typename T>
class RecordingOps final : public ForwardingOps<T> {
 public:
  explicit RecordingOps(Ops<T>& inner) : ForwardingOps<T>(inner) {}
  const std::vector<std::string>& called() const { return called_; }

 protected:
  void around(const char* op, const OpCall& call) override {
    called_.push_back(op);
    call();
  }

 private:
  std::vector<std::string> called_;
};

// A case on a backend: its outputs, and a failure for each operation it names but did not
// call.
Outputs run_case(const OpCase& c, Ops<float>& ops);
Outputs run_case(const OpCase& c, Ops<double>& ops);

// GoogleTest names ("layernorm_backward_333x300_accumulate").
std::string test_name(const std::string& case_name);

}  // namespace par::op_parity
