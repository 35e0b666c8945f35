// Checking CUDA runtime and cuBLAS calls where they are made (shared/DESIGN.md, habit 6).
// A failure throws std::runtime_error naming the call, its file:line, the library's own
// description of the error, the current device and "rank R on host H", because in a job
// of many GPUs "an illegal memory access was encountered" alone says nothing.
//
// Internal to the CUDA backend and the NCCL communicator: includes CUDA headers.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

namespace par::cuda {

// "rank 3 on host node17" from the launcher's environment (the backend does not use MPI),
// or "host node17" when not launched as a job.
std::string where();

[[noreturn]] void fail_cuda(cudaError_t e, const char* call, const char* file, int line);
[[noreturn]] void fail_cublas(cublasStatus_t s, const char* call, const char* file, int line);

}  // namespace par::cuda

#define PAR_CUDA_CHECK(call)                                                    \
  do {                                                                          \
    const cudaError_t par_e_ = (call);                                          \
    if (par_e_ != cudaSuccess) ::par::cuda::fail_cuda(par_e_, #call, __FILE__, __LINE__); \
  } while (0)

#define PAR_CUBLAS_CHECK(call)                                                  \
  do {                                                                          \
    const cublasStatus_t par_s_ = (call);                                       \
    if (par_s_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::par::cuda::fail_cublas(par_s_, #call, __FILE__, __LINE__);              \
  } while (0)

// After a kernel launch: configuration errors show up here, faults in the kernel at the
// next synchronizing call.
#define PAR_CUDA_CHECK_LAUNCH(kernel_name)                                      \
  do {                                                                          \
    const cudaError_t par_e_ = cudaGetLastError();                              \
    if (par_e_ != cudaSuccess)                                                  \
      ::par::cuda::fail_cuda(par_e_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (0)
