// A graph of sdpa_graph.h as cuDNN backend descriptors: tensors, operations, the operation
// graph, then (with a handle) the engine cuDNN's heuristics choose and its execution
// plan, and finally runs of it.
//
// Building the descriptors needs no GPU, so the CPU tests build every graph par uses and
// cuDNN checks each tensor and operation (tests/cuda/cudnn_graph_test.cpp); choosing an
// engine and running need a handle, i.e. a device.
#pragma once

#include <cudnn_graph.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cudnn_api.h"
#include "kernels/cuda/sdpa_graph.h"

namespace par::cuda {

// A cuDNN call failed; what() names the step and gives cuDNN's status and message.
struct CudnnError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One backend descriptor, destroyed with the object.
class CudnnDescriptor {
 public:
  CudnnDescriptor(const CudnnApi& api, cudnnBackendDescriptorType_t type, const char* what);
  ~CudnnDescriptor();
  CudnnDescriptor(CudnnDescriptor&& o) noexcept : api_(o.api_), d_(o.d_), what_(o.what_) {
    o.d_ = nullptr;
  }
  CudnnDescriptor(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(CudnnDescriptor&&) = delete;

  void set(cudnnBackendAttributeName_t attr, cudnnBackendAttributeType_t type, int64_t count,
           const void* values, const char* attr_name);
  void finalize();
  cudnnBackendDescriptor_t get() const { return d_; }

 private:
  const CudnnApi* api_;
  cudnnBackendDescriptor_t d_ = nullptr;
  std::string what_;
};

// The properties of a device as cuDNN describes them (JSON, cuDNN 9.8 and later), so that
// plans can be built for that device on a machine without it; and a descriptor made from
// such a text. Throw CudnnError.
std::string cudnn_device_properties_json(const CudnnApi& api, int device);
CudnnDescriptor cudnn_device_properties(const CudnnApi& api, const std::string& json);

class CudnnGraph {
 public:
  // Creates and finalizes the descriptors of every tensor and operation and the operation
  // graph. `handle` may be null where there is no device (cuDNN 9.8 and later finalize an
  // operation graph without one). Throws CudnnError when cuDNN refuses a piece.
  CudnnGraph(const CudnnApi& api, const sdpa::Graph& graph, cudnnHandle_t handle);

  // Asks cuDNN's heuristics (mode A, then its fallback list) for engines and keeps the
  // first whose execution plan builds. Throws CudnnError when none does. Without a handle,
  // a device-property descriptor (cudnn_device_properties) stands for the device: the plan
  // is then built but cannot run (cuDNN 9.8 and later).
  void build_plan(cudnnHandle_t handle, cudnnBackendDescriptor_t device_properties = nullptr);
  bool has_plan() const { return plan_.has_value(); }
  // The most engine configs one heuristics mode offered in build_plan, before cuDNN's
  // support checks (which need a driver: without a GPU the count is all there is to see).
  int64_t engines_offered() const { return engines_offered_; }
  int64_t workspace_bytes() const { return workspace_bytes_; }
  // "engine 8 of 12 candidates" (for the log).
  const std::string& engine() const { return engine_; }

  // Runs the plan with device pointers for every uid of graph.bound_uids() (any order) and
  // a workspace of workspace_bytes(), on the handle's stream.
  void execute(cudnnHandle_t handle, const std::vector<std::pair<int64_t, void*>>& bound,
               void* workspace) const;

 private:
  const CudnnApi* api_;
  sdpa::Graph graph_;
  std::vector<CudnnDescriptor> tensors_, ops_;
  std::optional<CudnnDescriptor> op_graph_;
  std::vector<CudnnDescriptor> configs_;  // the heuristics' engine configs (the plan's is one)
  std::optional<CudnnDescriptor> plan_;
  int64_t workspace_bytes_ = 0;
  int64_t engines_offered_ = 0;
  std::string engine_;
  std::vector<float> scalar_values_;  // by-value scalars and their uids, in graph order
  std::vector<int64_t> scalar_uids_;
};

}  // namespace par::cuda
