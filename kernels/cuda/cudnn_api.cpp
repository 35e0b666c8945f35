// Loading cuDNN (cudnn_api.h).
#include "kernels/cuda/cudnn_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "core/error.h"

namespace par::cuda {

namespace {

struct Loaded {
  CudnnApi api{};
  bool ok = false;
  std::string reason;
};

template <typename F>
bool resolve(void* lib, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
  return fn != nullptr;
}

Loaded load() {
  Loaded l;
  const char* env = std::getenv("PAR_CUDNN_LIBRARY");
  const std::string path = env && *env ? env : "libcudnn.so.9";
  // RTLD_LOCAL: cuDNN's symbols stay out of the global namespace (PyTorch in the same
  // process, were it ever, brings its own).
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = dlerror();
    l.reason = cat("cannot load ", path, " (", e ? e : "unknown error", ")");
    return l;
  }
  CudnnApi& a = l.api;
  std::string missing;
  resolve(lib, "cudnnGetVersion", a.GetVersion, missing);
  resolve(lib, "cudnnGetErrorString", a.GetErrorString, missing);
  resolve(lib, "cudnnGetLastErrorString", a.GetLastErrorString, missing);
  resolve(lib, "cudnnCreate", a.Create, missing);
  resolve(lib, "cudnnDestroy", a.Destroy, missing);
  resolve(lib, "cudnnSetStream", a.SetStream, missing);
  resolve(lib, "cudnnBackendCreateDescriptor", a.BackendCreateDescriptor, missing);
  resolve(lib, "cudnnBackendDestroyDescriptor", a.BackendDestroyDescriptor, missing);
  resolve(lib, "cudnnBackendFinalize", a.BackendFinalize, missing);
  resolve(lib, "cudnnBackendSetAttribute", a.BackendSetAttribute, missing);
  resolve(lib, "cudnnBackendGetAttribute", a.BackendGetAttribute, missing);
  resolve(lib, "cudnnBackendExecute", a.BackendExecute, missing);
  if (!missing.empty()) {
    l.reason = cat(path, " lacks ", missing, " (cuDNN 9 is needed)");
    return l;
  }
  a.version = int64_t(a.GetVersion());
  Dl_info info{};
  a.path = dladdr(reinterpret_cast<void*>(a.GetVersion), &info) && info.dli_fname
               ? info.dli_fname
               : path;
  // The graphs follow cuDNN 9's flash-attention support (sdpa_graph.h).
  if (a.version < 90000) {
    l.reason = cat(a.path, " is cuDNN ", a.version_string(), "; cuDNN 9 is needed");
    return l;
  }
  l.ok = true;
  return l;  // the library stays loaded for the life of the process
}

const Loaded& loaded() {
  static const Loaded l = load();
  return l;
}

}  // namespace

std::string CudnnApi::version_string() const {
  return cat(version / 10000, ".", (version / 100) % 100, ".", version % 100);
}

std::string CudnnApi::describe(cudnnStatus_t status) const {
  char last[1024] = {0};
  GetLastErrorString(last, sizeof last);
  std::string s = GetErrorString(status);
  if (last[0]) s += cat(" (", last, ")");
  return s;
}

const CudnnApi* cudnn_api() {
  const Loaded& l = loaded();
  return l.ok ? &l.api : nullptr;
}

std::string cudnn_unavailable_reason() { return loaded().reason; }

}  // namespace par::cuda
