// The entry point of libpar_cuda_backend.so (kernels/cuda/backend_plugin.h).
#include "kernels/cuda/backend_plugin.h"

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_wait.h"
#include "kernels/cuda/nccl_communicator.h"

namespace par::cuda_plugin {
namespace {

std::unique_ptr<Ops<float>> make_ops(int device, Precision precision,
                                     const std::string& attention) {
  const auto mode = precision == Precision::kBF16   ? cuda::MatmulPrecision::kBF16
                    : precision == Precision::kTF32 ? cuda::MatmulPrecision::kTF32
                                                    : cuda::MatmulPrecision::kFloat32;
  const cuda::AttentionKernel kernel = cuda::parse_attention_kernel(attention);
  auto ops = cuda::make_cuda_ops(device, mode);
  cuda::set_attention_kernel(*ops, kernel);
  return ops;
}

int64_t peak_bytes(Ops<float>& ops) { return cuda::memory_stats(ops).peak_bytes; }
int64_t free_bytes(Ops<float>& ops) { return cuda::memory_stats(ops).device_free_bytes; }

std::unique_ptr<Communicator> nccl(Communicator& group, void* stream) {
  return make_nccl_communicator(group, stream);
}

const Api kApi{kApiVersion,           ops_interface_hash(),
               cuda::device_count,    cuda::no_device_reason,
               cuda::select_device,   cuda::describe_device, make_ops,
               cuda::attention_description, cuda::set_log_sink, peak_bytes,
               cuda::cuda_stream,     nccl,                  free_bytes,
               cuda::set_wait_timeout};

}  // namespace
}  // namespace par::cuda_plugin

extern "C" __attribute__((visibility("default"))) const par::cuda_plugin::Api*
par_cuda_backend_api() {
  return &par::cuda_plugin::kApi;
}
