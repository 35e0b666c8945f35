// The public functions of kernels/cuda/cuda_ops.h: precisions and attention kernels by
// name, the devices, the backend's making, and the settings and figures reached through
// an Ops<float> that is a CudaOps.
#include "kernels/cuda/cuda_ops.h"

#include "kernels/cuda/cuda_ops_impl.h"

namespace par::cuda {

MatmulPrecision parse_precision(const std::string& name) {
  std::string s = name;
  for (char& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (s == "fp32" || s == "float32" || s == "f32") return MatmulPrecision::kFloat32;
  if (s == "tf32") return MatmulPrecision::kTF32;
  if (s == "bf16" || s == "bfloat16") return MatmulPrecision::kBF16;
  fail_user("--precision must be fp32, tf32 or bf16 (got '", name, "')");
}

const char* precision_name(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kFloat32: return "fp32";
    case MatmulPrecision::kTF32: return "tf32";
    case MatmulPrecision::kBF16: return "bf16";
  }
  return "?";
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // not sticky, but clear it anyway
    return 0;
  }
  return n;
}

std::string no_device_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cat(cudaGetErrorString(e), " (", cudaGetErrorName(e), ")");
  }
  return n > 0 ? std::string() : std::string("no CUDA device is visible");
}

int select_device(int local_rank) {
  const int n = device_count();
  if (n == 0)
    fail_user("--device cuda: no usable CUDA device on ", where(), ": ", no_device_reason());
  PAR_ASSERT(local_rank >= 0, "select_device: negative local rank ", local_rank);
  const int device = local_rank % n;
  PAR_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::string describe_device(int device) {
  cudaDeviceProp p{};
  PAR_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  int driver = 0, runtime = 0;
  PAR_CUDA_CHECK(cudaDriverGetVersion(&driver));
  PAR_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  char mem[32];
  std::snprintf(mem, sizeof mem, "%.1f GiB", double(p.totalGlobalMem) / double(1 << 30));
  return cat(p.name, " (sm_", p.major, p.minor, ", ", p.multiProcessorCount, " SMs, ", mem,
             ", driver ", driver / 1000, ".", (driver % 1000) / 10, ", runtime ", runtime / 1000,
             ".", (runtime % 1000) / 10, ")");
}

std::unique_ptr<Ops<float>> make_cuda_ops(int device, MatmulPrecision precision) {
  return std::make_unique<CudaOps>(device, precision);
}

namespace {

CudaOps& as_cuda(Ops<float>& ops) {
  auto* c = dynamic_cast<CudaOps*>(&ops);
  if (!c)
    throw std::invalid_argument(cat("expected the CUDA backend, got '", ops.name(),
                                    "' (pass the CudaOps itself, not a decorator)"));
  return *c;
}

}  // namespace

bool is_cuda_ops(const Ops<float>& ops) { return dynamic_cast<const CudaOps*>(&ops) != nullptr; }

void* cuda_stream(Ops<float>& ops) { return static_cast<void*>(as_cuda(ops).stream()); }

void cuda_synchronize(Ops<float>& ops) { as_cuda(ops).synchronize(); }

MatmulPrecision matmul_precision(const Ops<float>& ops) {
  return as_cuda(const_cast<Ops<float>&>(ops)).precision();
}

MemoryStats memory_stats(Ops<float>& ops) { return as_cuda(ops).memory(); }

void begin_graph(Ops<float>& ops) { as_cuda(ops).begin_graph(); }
void end_graph(Ops<float>& ops, uint64_t key) { as_cuda(ops).end_graph(key); }
bool replay_graph(Ops<float>& ops, uint64_t key) { return as_cuda(ops).replay_graph(key); }
void set_graphs(Ops<float>& ops, bool enabled) { as_cuda(ops).set_graphs(enabled); }

void set_bf16_operands(Ops<float>& ops, Bf16Operands mode) { as_cuda(ops).set_bf16_operands(mode); }
GraphStats graph_stats(Ops<float>& ops) { return as_cuda(ops).graph_stats(); }

void set_attention_key_block(Ops<float>& ops, int64_t keys) { as_cuda(ops).set_key_block(keys); }

void set_cudnn_deterministic_workspace_max(Ops<float>& ops, int64_t bytes) {
  as_cuda(ops).set_cudnn_deterministic_max(bytes);
}

void set_cudnn_key_splits(Ops<float>& ops, int64_t splits) {
  as_cuda(ops).set_cudnn_key_splits(splits);
}

int64_t cudnn_plans_built() { return CudnnPlans::built(); }

void set_attention_kernel(Ops<float>& ops, AttentionKernel kernel) {
  as_cuda(ops).set_attention_kernel(kernel);
}

std::string attention_description(Ops<float>& ops) { return as_cuda(ops).attention_description(); }

AttentionKernel parse_attention_kernel(const std::string& name) {
  if (name == "auto") return AttentionKernel::kAuto;
  if (name == "blocked") return AttentionKernel::kBlocked;
  if (name == "fused") return AttentionKernel::kFused;
  if (name == "cudnn") return AttentionKernel::kCudnn;
  fail_user("--attention must be auto, blocked, fused or cudnn (got '", name, "')");
}

}  // namespace par::cuda
