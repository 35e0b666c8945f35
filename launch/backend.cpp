#include "launch/backend.h"

#include <glog/logging.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/cpu_ops.h"

#ifdef PAR_HAVE_CUDA
#include <dlfcn.h>
#include <unistd.h>

#include "kernels/cuda/backend_plugin.h"
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

#ifdef PAR_HAVE_CUDA
// The directory of the running executable ("" if unknown).
std::string executable_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string path(buf, size_t(n));
  return path.substr(0, path.rfind('/'));
}

// The CUDA plugin, loaded once: from $PAR_CUDA_BACKEND, else next to the executable (an
// installed or bundled par), else where the build put it. UserError naming what failed.
const cuda_plugin::Api& cuda_api() {
  static const cuda_plugin::Api* api = [] {
    std::string tried, errors;
    std::vector<std::string> paths;
    if (const char* env = std::getenv("PAR_CUDA_BACKEND"); env && *env) {
      paths = {env};
    } else {
      paths = {executable_dir() + "/libpar_cuda_backend.so", PAR_CUDA_BACKEND_BUILD_PATH};
    }
    for (const auto& path : paths) {
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle) {
        errors += cat("\n  ", dlerror());
        continue;
      }
      using Entry = const cuda_plugin::Api* (*)();
      auto entry = reinterpret_cast<Entry>(dlsym(handle, "par_cuda_backend_api"));
      if (!entry) fail_user("--device cuda: ", path, " is not par's CUDA backend (no entry point)");
      const cuda_plugin::Api* found = entry();
      if (found->version != cuda_plugin::kApiVersion)
        fail_user("--device cuda: ", path, " is from another version of par (interface ",
                  found->version, ", expected ", cuda_plugin::kApiVersion, ")");
      if (found->ops_hash != cuda_plugin::ops_interface_hash())
        fail_user("--device cuda: ", path, " was built against another version of par's "
                  "operations (core/ops.h): rebuild it with this par");
      return found;
    }
    fail_user("--device cuda: cannot load the CUDA backend (set PAR_CUDA_BACKEND to "
              "libpar_cuda_backend.so):", errors);
  }();
  return *api;
}
#endif

#ifdef PAR_HAVE_CUDA
// The CUDA backend's messages in par's log.
void log_from_backend(cuda::LogLevel level, const std::string& message) {
  if (level == cuda::LogLevel::kWarning)
    LOG(WARNING) << message;
  else
    LOG(INFO) << message;
}
#endif

Backend backend_for(const std::string& device, const std::string& precision,
                    const std::string& attention, int local_rank) {
  check_backend_options(device, precision, attention);
  Backend b;
  if (device == "cpu") {
    b.ops = std::make_unique<cpu::CpuOps<float>>();
    b.description = "cpu (" + blas_description() + ")";
    // Once per node: the environment, and so the kernels, can differ between nodes.
    const std::string slow_kernels = blas_kernel_warning();
    if (local_rank == 0 && !slow_kernels.empty()) LOG(WARNING) << slow_kernels;
    return b;
  }
#ifdef PAR_HAVE_CUDA
  const cuda_plugin::Api& api = cuda_api();
  api.set_log_sink(log_from_backend);
  if (api.device_count() == 0)
    fail_user("--device cuda: no GPU is visible (", api.no_device_reason(),
              "; check CUDA_VISIBLE_DEVICES and the driver)");
  const int gpu = api.select_device(local_rank);
  using P = cuda_plugin::Precision;
  const P mode = precision == "bf16" ? P::kBF16 : precision == "tf32" ? P::kTF32 : P::kFloat32;
  b.ops = api.make_ops(gpu, mode, attention);
  b.description = cat("cuda:", gpu, " (", api.describe_device(gpu), "), ", precision,
                      " matrix products; ", api.attention_description(*b.ops));
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

void check_backend_options(const std::string& device, const std::string& precision,
                           const std::string& attention) {
  if (precision != "fp32" && precision != "tf32" && precision != "bf16")
    fail_user("--precision must be fp32, tf32 or bf16 (got '", precision, "')");
  if (attention != "auto" && attention != "blocked" && attention != "fused" &&
      attention != "cudnn")
    fail_user("--attention must be auto, blocked, fused or cudnn (got '", attention, "')");
  if (device == "cpu") {
    if (precision != "fp32")
      fail_user("--precision ", precision, " is for --device cuda; the CPU computes in fp32");
    if (attention != "auto" && attention != "blocked")
      fail_user("--attention ", attention, " is for --device cuda");
    return;
  }
  if (device != "cuda") fail_user("--device must be cpu or cuda (got '", device, "')");
  if (attention == "cudnn" && precision != "bf16")
    fail_user("--attention cudnn needs --precision bf16: cuDNN's flash attention computes in "
              "bf16 (got --precision ", precision, ")");
  if (attention == "fused" && precision == "fp32")
    fail_user("--attention fused needs --precision tf32 or bf16: par's fused kernels run on "
              "tensor cores (with fp32 the blocked kernels run every call: --attention blocked)");
}

Backend make_backend(const std::string& device, const std::string& precision,
                     const ProcessGrid& grid, const std::string& attention) {
  return backend_for(device, precision, attention, grid.local_rank());
}

Backend make_local_backend(const std::string& device, const std::string& precision,
                           const std::string& attention) {
  return backend_for(device, precision, attention, launcher_local_rank());
}

int cuda_device_count() {
#ifdef PAR_HAVE_CUDA
  return cuda_api().device_count();
#else
  return 0;
#endif
}

int64_t device_peak_bytes(Backend& b) {
#ifdef PAR_HAVE_CUDA
  if (b.cuda) return cuda_api().peak_bytes(*b.ops);
#endif
  (void)b;
  return 0;
}

int64_t device_free_bytes(Backend& b) {
#ifdef PAR_HAVE_CUDA
  if (b.cuda) return cuda_api().free_bytes(*b.ops);
#endif
  (void)b;
  return -1;
}

void connect_backend(const Backend& b, ProcessGrid& grid, double collective_timeout) {
  if (!b.cuda || grid.world_size() == 1) return;
#ifdef PAR_HAVE_CUDA
  const cuda_plugin::Api& api = cuda_api();
  api.set_collective_timeout(collective_timeout);
  void* stream = api.stream(*b.ops);
  using G = ProcessGrid::GroupName;
  for (const G g : {G::kSp, G::kTp, G::kDpSp})
    grid.attach_device_group(g, api.make_nccl_communicator(*grid.host_group(g), stream));
#else
  (void)collective_timeout;
#endif
}

}  // namespace par
