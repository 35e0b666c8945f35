// cuDNN, loaded at run time: the dozen functions of its backend (graph) API that par uses.
//
// Why not link it: cuDNN is optional. Where it is missing (or too old) the CUDA backend
// still runs, with its own attention (the blocked path), and says so once; a link-time
// dependency would make the whole backend fail to load instead. dlopen also lets a machine
// with two cuDNNs (the system's and PyTorch's) choose one: PAR_CUDNN_LIBRARY names the
// library file; otherwise "libcudnn.so.9" is found as the loader finds any library.
#pragma once

#include <cudnn_graph.h>

#include <cstdint>
#include <string>

namespace par::cuda {

struct CudnnApi {
  size_t (*GetVersion)();
  const char* (*GetErrorString)(cudnnStatus_t);
  void (*GetLastErrorString)(char*, size_t);
  cudnnStatus_t (*Create)(cudnnHandle_t*);
  cudnnStatus_t (*Destroy)(cudnnHandle_t);
  cudnnStatus_t (*SetStream)(cudnnHandle_t, cudaStream_t);
  cudnnStatus_t (*BackendCreateDescriptor)(cudnnBackendDescriptorType_t,
                                           cudnnBackendDescriptor_t*);
  cudnnStatus_t (*BackendDestroyDescriptor)(cudnnBackendDescriptor_t);
  cudnnStatus_t (*BackendFinalize)(cudnnBackendDescriptor_t);
  cudnnStatus_t (*BackendSetAttribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                                       cudnnBackendAttributeType_t, int64_t, const void*);
  cudnnStatus_t (*BackendGetAttribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                                       cudnnBackendAttributeType_t, int64_t, int64_t*, void*);
  cudnnStatus_t (*BackendExecute)(cudnnHandle_t, cudnnBackendDescriptor_t,
                                  cudnnBackendDescriptor_t);

  int64_t version = 0;  // cudnnGetVersion(): 91400 for 9.14.0
  std::string path;     // what was loaded

  // "9.14.0".
  std::string version_string() const;
  // Status and cuDNN's own last message, for an error text.
  std::string describe(cudnnStatus_t status) const;
};

// The process's cuDNN, loaded on first use; null when there is none usable (then
// cudnn_unavailable_reason() says why: not found, a symbol missing, older than 9.0).
const CudnnApi* cudnn_api();
std::string cudnn_unavailable_reason();

}  // namespace par::cuda
