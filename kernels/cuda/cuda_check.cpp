// See cuda_check.h.
#include "kernels/cuda/cuda_check.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "core/error.h"

namespace par::cuda {

namespace {

// Paths from the source root on: __FILE__ is absolute in a CMake build.
const char* short_path(const char* file) {
  for (const char* dir : {"/kernels/", "/parallel/", "/tests/", "/launch/", "/core/"}) {
    const char* p = std::strstr(file, dir);
    if (p) return p + 1;
  }
  return file;
}

std::string current_device() {
  int d = -1;
  // Not checked: this runs while reporting another error, and a broken context may fail
  // this call too.
  if (cudaGetDevice(&d) != cudaSuccess) return "device ?";
  return cat("device ", d);
}

}  // namespace

std::string where() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "(unknown)");
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* v = std::getenv(var)) return cat("rank ", v, " on host ", host);
  return cat("host ", host);
}

void fail_cuda(cudaError_t e, const char* call, const char* file, int line) {
  throw std::runtime_error(cat(short_path(file), ":", line, ": ", call, " failed on ",
                               current_device(), ", ", where(), ": ", cudaGetErrorString(e),
                               " (", cudaGetErrorName(e), ")"));
}

void fail_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw std::runtime_error(cat(short_path(file), ":", line, ": ", call, " failed on ",
                               current_device(), ", ", where(), ": ", cublasGetStatusString(s),
                               " (", cublasGetStatusName(s), ")"));
}

}  // namespace par::cuda
