// Lowering sdpa_graph.h's descriptions to cuDNN backend descriptors (cudnn_graph.h).
#include "kernels/cuda/cudnn_graph.h"

#include <algorithm>

#include "core/error.h"

namespace par::cuda {

namespace {

cudnnDataType_t data_type(sdpa::DType t) {
  switch (t) {
    case sdpa::DType::kFloat: return CUDNN_DATA_FLOAT;
    case sdpa::DType::kBF16: return CUDNN_DATA_BFLOAT16;
    case sdpa::DType::kInt32: return CUDNN_DATA_INT32;
    case sdpa::DType::kBool: return CUDNN_DATA_BOOLEAN;
  }
  return CUDNN_DATA_FLOAT;
}

cudnnPointwiseMode_t pointwise_mode(sdpa::Pointwise p) {
  using P = sdpa::Pointwise;
  switch (p) {
    case P::kMul: return CUDNN_POINTWISE_MUL;
    case P::kAdd: return CUDNN_POINTWISE_ADD;
    case P::kSub: return CUDNN_POINTWISE_SUB;
    case P::kDiv: return CUDNN_POINTWISE_DIV;
    case P::kExp: return CUDNN_POINTWISE_EXP;
    case P::kLog: return CUDNN_POINTWISE_LOG;
    case P::kIdentity: return CUDNN_POINTWISE_IDENTITY;
    case P::kGenIndex: return CUDNN_POINTWISE_GEN_INDEX;
    case P::kCmpLt: return CUDNN_POINTWISE_CMP_LT;
    case P::kCmpGe: return CUDNN_POINTWISE_CMP_GE;
    case P::kLogicalAnd: return CUDNN_POINTWISE_LOGICAL_AND;
    case P::kBinarySelect: return CUDNN_POINTWISE_BINARY_SELECT;
  }
  return CUDNN_POINTWISE_IDENTITY;
}

// Inputs a pointwise mode takes besides x: 0 (unary), 1 (b) or 2 (b and t).
int extra_inputs(sdpa::Pointwise p) {
  using P = sdpa::Pointwise;
  switch (p) {
    case P::kExp: case P::kLog: case P::kIdentity: case P::kGenIndex: return 0;
    case P::kBinarySelect: return 2;
    default: return 1;
  }
}

}  // namespace

CudnnDescriptor::CudnnDescriptor(const CudnnApi& api, cudnnBackendDescriptorType_t type,
                                 const char* what)
    : api_(&api), what_(what) {
  const cudnnStatus_t s = api.BackendCreateDescriptor(type, &d_);
  if (s != CUDNN_STATUS_SUCCESS)
    throw CudnnError(cat("cuDNN: creating the descriptor of ", what_, ": ", api.describe(s)));
}

CudnnDescriptor::~CudnnDescriptor() {
  if (d_) api_->BackendDestroyDescriptor(d_);
}

void CudnnDescriptor::set(cudnnBackendAttributeName_t attr, cudnnBackendAttributeType_t type,
                          int64_t count, const void* values, const char* attr_name) {
  const cudnnStatus_t s = api_->BackendSetAttribute(d_, attr, type, count, values);
  if (s != CUDNN_STATUS_SUCCESS)
    throw CudnnError(cat("cuDNN: setting ", attr_name, " of ", what_, ": ", api_->describe(s)));
}

void CudnnDescriptor::finalize() {
  const cudnnStatus_t s = api_->BackendFinalize(d_);
  if (s != CUDNN_STATUS_SUCCESS)
    throw CudnnError(cat("cuDNN: finalizing ", what_, ": ", api_->describe(s)));
}

// The attribute's name in the error message is its C name.
#define PAR_SET(desc, attr, type, count, values) (desc).set(attr, type, count, values, #attr)

CudnnGraph::CudnnGraph(const CudnnApi& api, const sdpa::Graph& graph, cudnnHandle_t handle)
    : api_(&api), graph_(graph) {
  // Tensors, in the graph's order; ops refer to them by index.
  std::vector<int64_t> uids;
  for (const sdpa::Tensor& t : graph_.tensors) {
    CudnnDescriptor d(api, CUDNN_BACKEND_TENSOR_DESCRIPTOR, ("tensor " + t.name).c_str());
    const cudnnDataType_t type = data_type(t.type);
    const int64_t alignment = 16;
    PAR_SET(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    PAR_SET(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, int64_t(t.dims.size()),
            t.dims.data());
    PAR_SET(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, int64_t(t.strides.size()),
            t.strides.data());
    PAR_SET(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &t.uid);
    PAR_SET(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    const bool yes = true;
    if (t.is_virtual) PAR_SET(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes);
    if (t.by_value) {
      PAR_SET(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes);
      scalar_uids_.push_back(t.uid);
      scalar_values_.push_back(t.value);
    }
    d.finalize();
    tensors_.push_back(std::move(d));
    uids.push_back(t.uid);
  }
  auto tensor = [&](int64_t uid) -> cudnnBackendDescriptor_t {
    const auto it = std::find(uids.begin(), uids.end(), uid);
    PAR_ASSERT(it != uids.end(), "cudnn graph: no tensor ", uid);
    return tensors_[size_t(it - uids.begin())].get();
  };

  for (const sdpa::Op& op : graph_.ops) {
    const std::string what = "operation " + op.name;
    const cudnnDataType_t compute = data_type(op.compute);
    switch (op.kind) {
      case sdpa::Op::Kind::kPointwise: {
        CudnnDescriptor pw(api, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, (what + " (mode)").c_str());
        const cudnnPointwiseMode_t mode = pointwise_mode(op.pointwise);
        PAR_SET(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
        PAR_SET(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &compute);
        if (op.pointwise == sdpa::Pointwise::kGenIndex)
          PAR_SET(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &op.axis);
        pw.finalize();
        CudnnDescriptor d(api, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, what.c_str());
        const cudnnBackendDescriptor_t pw_desc = pw.get(), x = tensor(op.x), y = tensor(op.y);
        PAR_SET(d, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                &pw_desc);
        PAR_SET(d, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        PAR_SET(d, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        const int extra = extra_inputs(op.pointwise);
        if (extra >= 1) {
          const cudnnBackendDescriptor_t b = tensor(op.b);
          PAR_SET(d, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
        }
        if (extra >= 2) {
          const cudnnBackendDescriptor_t t = tensor(op.t);
          PAR_SET(d, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
        }
        const float one = 1.0f;
        PAR_SET(d, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one);
        PAR_SET(d, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one);
        d.finalize();
        ops_.push_back(std::move(d));
        break;
      }
      case sdpa::Op::Kind::kMatmul: {
        CudnnDescriptor mm(api, CUDNN_BACKEND_MATMUL_DESCRIPTOR, (what + " (matmul)").c_str());
        PAR_SET(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
        mm.finalize();
        // The padding value is 0, cuDNN's default: cudnn-frontend sets the attribute only
        // for other values.
        CudnnDescriptor d(api, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, what.c_str());
        const cudnnBackendDescriptor_t a = tensor(op.x), b = tensor(op.b), c = tensor(op.y);
        const cudnnBackendDescriptor_t mm_desc = mm.get();
        PAR_SET(d, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
        PAR_SET(d, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
        PAR_SET(d, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
        const struct {
          int64_t uid;
          cudnnBackendAttributeName_t attr;
          const char* name;
        } overrides[] = {
            {op.m_override, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, "M override"},
            {op.n_override, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, "N override"},
            {op.k_override, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, "K override"}};
        for (const auto& o : overrides) {
          if (!o.uid) continue;
          const cudnnBackendDescriptor_t t = tensor(o.uid);
          d.set(o.attr, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, o.name);
        }
        PAR_SET(d, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm_desc);
        d.finalize();
        ops_.push_back(std::move(d));
        break;
      }
      case sdpa::Op::Kind::kReduction: {
        CudnnDescriptor red(api, CUDNN_BACKEND_REDUCTION_DESCRIPTOR,
                            (what + " (reduction)").c_str());
        const cudnnReduceTensorOp_t mode =
            op.reduce == sdpa::Reduce::kMax ? CUDNN_REDUCE_TENSOR_MAX : CUDNN_REDUCE_TENSOR_ADD;
        PAR_SET(red, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
        PAR_SET(red, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
        if (api.version >= 91100) {  // the attribute exists from 9.11
          const bool deterministic = false;
          PAR_SET(red, CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, 1,
                  &deterministic);
        }
        red.finalize();
        CudnnDescriptor d(api, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, what.c_str());
        const cudnnBackendDescriptor_t red_desc = red.get(), x = tensor(op.x), y = tensor(op.y);
        PAR_SET(d, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                &red_desc);
        PAR_SET(d, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        PAR_SET(d, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        d.finalize();
        ops_.push_back(std::move(d));
        break;
      }
      case sdpa::Op::Kind::kReshape: {
        CudnnDescriptor d(api, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, what.c_str());
        const cudnnBackendDescriptor_t x = tensor(op.x), y = tensor(op.y);
        PAR_SET(d, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        PAR_SET(d, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        d.finalize();
        ops_.push_back(std::move(d));
        break;
      }
    }
  }

  op_graph_.emplace(api, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "the operation graph");
  std::vector<cudnnBackendDescriptor_t> ops;
  for (const CudnnDescriptor& d : ops_) ops.push_back(d.get());
  PAR_SET(*op_graph_, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
          int64_t(ops.size()), ops.data());
  if (handle) {
    // Deprecated from cuDNN 9.8 (a device-property descriptor may serve instead) but
    // required before it, and still honoured.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    PAR_SET(*op_graph_, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
#pragma GCC diagnostic pop
  }
  op_graph_->finalize();
}

std::string cudnn_device_properties_json(const CudnnApi& api, int device) {
  CudnnDescriptor d(api, CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "the device properties");
  const int32_t id = device;
  PAR_SET(d, CUDNN_ATTR_DEVICEPROP_DEVICE_ID, CUDNN_TYPE_INT32, 1, &id);
  d.finalize();
  int64_t size = 0;
  cudnnStatus_t s = api.BackendGetAttribute(d.get(), CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION,
                                            CUDNN_TYPE_CHAR, 0, &size, nullptr);
  if (s != CUDNN_STATUS_SUCCESS)
    throw CudnnError(cat("cuDNN: the size of the device properties' JSON: ", api.describe(s)));
  std::string json(size_t(size), '\0');
  s = api.BackendGetAttribute(d.get(), CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION,
                              CUDNN_TYPE_CHAR, size, &size, json.data());
  if (s != CUDNN_STATUS_SUCCESS)
    throw CudnnError(cat("cuDNN: the device properties' JSON: ", api.describe(s)));
  json.resize(size_t(size));
  while (!json.empty() && json.back() == '\0') json.pop_back();
  return json;
}

CudnnDescriptor cudnn_device_properties(const CudnnApi& api, const std::string& json) {
  CudnnDescriptor d(api, CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "the device properties");
  PAR_SET(d, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, int64_t(json.size()),
          json.data());
  d.finalize();
  return d;
}

void CudnnGraph::build_plan(cudnnHandle_t handle, cudnnBackendDescriptor_t device_properties) {
  const CudnnApi& api = *api_;
  std::string failures;
  int64_t tried = 0;
  for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    CudnnDescriptor heur(api, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "the engine heuristics");
    const cudnnBackendDescriptor_t g = op_graph_->get();
    PAR_SET(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g);
    PAR_SET(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (device_properties)
      PAR_SET(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
              &device_properties);
    try {
      heur.finalize();
    } catch (const CudnnError& e) {
      failures += cat("\n  heuristics mode ", int(mode), ": ", e.what());
      continue;
    }
    int64_t count = 0;
    cudnnStatus_t s = api.BackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
    if (s != CUDNN_STATUS_SUCCESS || count <= 0) {
      // (Without a device or its properties, heuristics offer nothing: count 0.)
      failures += cat("\n  heuristics mode ", int(mode), ": no engine (",
                      s == CUDNN_STATUS_SUCCESS ? "none offered" : api.describe(s), ")");
      continue;
    }
    configs_.clear();
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      configs_.emplace_back(api, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "an engine config");
      raw.push_back(configs_.back().get());
    }
    int64_t returned = 0;
    s = api.BackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned, raw.data());
    if (s != CUDNN_STATUS_SUCCESS)
      throw CudnnError(cat("cuDNN: reading the heuristics' engines: ", api.describe(s)));
    engines_offered_ = std::max(engines_offered_, count);
    if (returned == 0) {
      // Reading the results runs cuDNN's support checks, which may drop every engine (the
      // attention engines compile their kernels at run time: no driver or NVRTC, no engine).
      char last[1024] = {0};
      api.GetLastErrorString(last, sizeof last);
      failures += cat("\n  heuristics mode ", int(mode), ": none of its ", count,
                      " engine configs passed cuDNN's support checks (", last, ")");
    }
    for (int64_t i = 0; i < returned; ++i) {
      ++tried;
      CudnnDescriptor plan(api, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "an execution plan");
      try {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        if (handle) PAR_SET(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
#pragma GCC diagnostic pop
        PAR_SET(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                &raw[size_t(i)]);
        plan.finalize();
      } catch (const CudnnError& e) {
        failures += cat("\n  engine config ", i, " (mode ", int(mode), "): ", e.what());
        continue;
      }
      int64_t n = 0, bytes = 0;
      s = api.BackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                  CUDNN_TYPE_INT64, 1, &n, &bytes);
      if (s != CUDNN_STATUS_SUCCESS)
        throw CudnnError(cat("cuDNN: reading a plan's workspace size: ", api.describe(s)));
      // The engine's global index names it in cuDNN's own logs.
      int64_t engine_index = -1;
      CudnnDescriptor engine(api, CUDNN_BACKEND_ENGINE_DESCRIPTOR, "an engine");
      cudnnBackendDescriptor_t engine_raw = engine.get();
      if (api.BackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_ENGINECFG_ENGINE,
                                  CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                  &engine_raw) == CUDNN_STATUS_SUCCESS)
        api.BackendGetAttribute(engine_raw, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1,
                                &n, &engine_index);
      workspace_bytes_ = bytes;
      engine_ = cat("engine ", engine_index, " (", mode == CUDNN_HEUR_MODE_A ? "heuristics" : "fallback",
                    " choice ", i + 1, " of ", returned, ")");
      plan_.emplace(std::move(plan));
      return;
    }
  }
  throw CudnnError(cat("cuDNN has no engine for this graph (", tried, " engine configs tried):",
                       failures));
}

void CudnnGraph::execute(cudnnHandle_t handle,
                         const std::vector<std::pair<int64_t, void*>>& bound,
                         void* workspace) const {
  PAR_ASSERT(plan_.has_value(), "cudnn graph: execute before build_plan");
  const CudnnApi& api = *api_;
  std::vector<int64_t> uids;
  std::vector<void*> pointers;
  for (const auto& [uid, p] : bound) {
    uids.push_back(uid);
    pointers.push_back(p);
  }
  // By-value scalars: pointers to their host values.
  for (size_t i = 0; i < scalar_uids_.size(); ++i) {
    uids.push_back(scalar_uids_[i]);
    pointers.push_back(const_cast<float*>(&scalar_values_[i]));
  }
  CudnnDescriptor pack(api, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "the variant pack");
  PAR_SET(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(uids.size()),
          uids.data());
  PAR_SET(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
          int64_t(pointers.size()), pointers.data());
  PAR_SET(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  const cudnnStatus_t s = api.BackendExecute(handle, plan_->get(), pack.get());
  if (s != CUDNN_STATUS_SUCCESS)
    throw CudnnError(cat("cuDNN: running the attention graph (", engine_, "): ", api.describe(s)));
}

}  // namespace par::cuda
