#include "launch/backend.h"

#include <cstdlib>

#include "core/error.h"
#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/cpu_ops.h"

#ifdef PAR_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#include "parallel/nccl_communicator.h"
#endif

namespace par {

bool cuda_built() {
#ifdef PAR_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

namespace {

Backend backend_for(const std::string& device, const std::string& precision,
                    const std::string& attention, int local_rank) {
  if (precision != "fp32" && precision != "tf32" && precision != "bf16")
    fail_user("--precision must be fp32, tf32 or bf16 (got '", precision, "')");
  if (attention != "blocked" && attention != "fused")
    fail_user("--attention must be blocked or fused (got '", attention, "')");
  Backend b;
  if (device == "cpu") {
    if (precision != "fp32")
      fail_user("--precision ", precision, " is for --device cuda; the CPU computes in fp32");
    if (attention != "blocked")
      fail_user("--attention ", attention, " is for --device cuda");
    b.ops = std::make_unique<cpu::CpuOps<float>>();
    b.description = "cpu (" + blas_description() + ")";
    return b;
  }
  if (device != "cuda") fail_user("--device must be cpu or cuda (got '", device, "')");
#ifdef PAR_HAVE_CUDA
  if (cuda::device_count() == 0)
    fail_user("--device cuda: no GPU is visible (", cuda::no_device_reason(),
              "; check CUDA_VISIBLE_DEVICES and the driver)");
  const int gpu = cuda::select_device(local_rank);
  const auto mode = precision == "bf16"   ? cuda::MatmulPrecision::kBF16
                    : precision == "tf32" ? cuda::MatmulPrecision::kTF32
                                          : cuda::MatmulPrecision::kFloat32;
  b.ops = cuda::make_cuda_ops(gpu, mode);
  b.description = cat("cuda:", gpu, " (", cuda::describe_device(gpu), "), ", precision,
                      " matrix products");
  if (attention == "fused") {
    cuda::set_attention_kernel(*b.ops, cuda::AttentionKernel::kFused);
    b.description += ", fused attention";
  }
  b.cuda = true;
  return b;
#else
  (void)local_rank;
  fail_user("--device cuda: this par was built without the CUDA backend (CMake option "
            "PAR_CUDA; it is on when nvcc is found)");
#endif
}

// The launcher's node-local rank, or 0 (a malformed value is ignored, as MPI's own
// environment code does).
int launcher_local_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"}) {
    const char* v = std::getenv(var);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long r = std::strtol(v, &end, 10);
    if (*end == '\0' && r >= 0 && r < (1L << 20)) return int(r);
  }
  return 0;
}

}  // namespace

Backend make_backend(const std::string& device, const std::string& precision,
                     const ProcessGrid& grid, const std::string& attention) {
  return backend_for(device, precision, attention, grid.local_rank());
}

Backend make_local_backend(const std::string& device, const std::string& precision,
                           const std::string& attention) {
  return backend_for(device, precision, attention, launcher_local_rank());
}

int64_t device_peak_bytes(Backend& b) {
#ifdef PAR_HAVE_CUDA
  if (b.cuda) return cuda::memory_stats(*b.ops).peak_bytes;
#endif
  (void)b;
  return 0;
}

void connect_backend(Backend& b, const ProcessGrid& grid) {
  if (!b.cuda || grid.world_size() == 1) return;
#ifdef PAR_HAVE_CUDA
  void* stream = cuda::cuda_stream(*b.ops);
  using G = ProcessGrid::Group;
  b.sp = make_nccl_communicator(grid.mpi_comm(G::kSp), stream);
  b.tp = make_nccl_communicator(grid.mpi_comm(G::kTp), stream);
  b.dp_sp = make_nccl_communicator(grid.mpi_comm(G::kDpSp), stream);
#endif
}

}  // namespace par
