// The kernels' scratch in a rank's memory plan (launch/memory_plan.h), each sized by the
// functions the kernels size their own buffers with, for the calls the model makes. Those
// sized in int64 are 0 for a micro-batch whose activations on a rank pass 2^44 elements,
// past any machine (the activations refuse it).
#pragma once

#include "launch/memory_plan.h"

namespace par {

// Bytes of host memory the CPU kernels keep in the backend's Workspace over a training step
// (or a forward pass, where !r.training).
double cpu_kernel_scratch(const PlanRequest& r);
// Bytes of GPU memory: the blocked attention's scratch and, where r.cudnn_attention, cuDNN's.
double cuda_attention_scratch(const PlanRequest& r);
// The bfloat16 copies of the large products' operands (r.bf16_products).
double cuda_bf16_copies(const PlanRequest& r);
// Where bfloat16 keys and values meet a float32 path, their widened copies.
double cuda_widened_keys_values(const PlanRequest& r);
// The backward's reductions and cuBLAS's workspace.
double cuda_reduction_scratch(const PlanRequest& r);

}  // namespace par
