// Evaluates a graph of kernels/cuda/sdpa_graph.h on the CPU, operation by operation, in
// double precision, rounding every tensor to its type (bfloat16, int32, bool) where it is
// written, as cuDNN's types round it. It defines what the descriptions mean, so the tests
// can check them against the reference attention without a GPU.
//
// Bound tensors are flat host arrays laid out by their strides (values as doubles: the
// test rounds bf16 inputs itself). Virtual tensors live inside the interpreter; a reshape
// is a view of its input's memory through the output's strides (how the graphs transpose
// the scores).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "kernels/cuda/sdpa_graph.h"

namespace par::cuda_test {

// bound: for every uid of graph.bound_uids(), an array covering its strides. Outputs are
// written into their arrays.
void interpret(const cuda::sdpa::Graph& graph, std::map<int64_t, std::vector<double>>& bound);

// x rounded to bfloat16 (round to nearest even), as a double.
double round_bf16(double x);

}  // namespace par::cuda_test
