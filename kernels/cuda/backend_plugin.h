// The CUDA backend as a plugin (libpar_cuda_backend.so), loaded by launch/backend.cpp only
// for --device cuda.
//
// Why a plugin: cuBLAS and cuBLASLt carry ~400,000 relocations; merely linking them makes
// every process ~150 MB larger in resident memory (relocated data and the pages read to
// relocate it), whether or not it touches a GPU. CPU runs, and every rank of them, should
// not pay that. The plugin is built from the same sources with the same compiler as par,
// so C++ types cross the boundary; only the entry point is extern "C" (for dlsym).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/communicator.h"
#include "core/ops.h"
#include "kernels/cuda/backend_log.h"

namespace par::cuda_plugin {

// Bumped whenever Api changes, so a stale plugin next to a new par is refused.
constexpr int kApiVersion = 6;

// Every operation's signature (core/ops.h's PAR_OPS_METHODS) as one string, hashed (FNV-1a):
// Ops<float>'s virtual calls cross the boundary too, and a plugin built against another
// list of operations would run the wrong ones without a word. par and the plugin each
// compute it from the header they were built with.
#define PAR_OPS_SIGNATURE(ret, name, params, args) #ret " " #name #params ";"
constexpr std::string_view kOpsSignatures = PAR_OPS_METHODS(PAR_OPS_SIGNATURE);
#undef PAR_OPS_SIGNATURE
constexpr uint64_t ops_interface_hash() {
  uint64_t h = 14695981039346656037ull;
  for (const char c : kOpsSignatures) {
    h ^= uint64_t(uint8_t(c));
    h *= 1099511628211ull;
  }
  return h;
}

enum class Precision { kFloat32, kTF32, kBF16 };

struct Api {
  int version;
  uint64_t ops_hash;  // ops_interface_hash() of the plugin's build
  int (*device_count)();
  std::string (*no_device_reason)();
  int (*select_device)(int local_rank);
  std::string (*describe_device)(int device);
  // attention: auto | blocked | fused | cudnn (cuda::AttentionKernel); UserError otherwise.
  std::unique_ptr<Ops<float>> (*make_ops)(int device, Precision precision,
                                          const std::string& attention);
  std::string (*attention_description)(Ops<float>& ops);
  // Where the backend's messages go (its log lines: which attention each shape takes).
  void (*set_log_sink)(cuda::LogSink sink);
  int64_t (*peak_bytes)(Ops<float>& ops);
  void* (*stream)(Ops<float>& ops);
  // Collective over `group` (host memory), whose ranks it joins in an NCCL communicator.
  std::unique_ptr<Communicator> (*make_nccl_communicator)(Communicator& group, void* stream);
  int64_t (*free_bytes)(Ops<float>& ops);  // the device's free memory (all processes counted)
  // How long a wait for the GPU behind NCCL collectives may take before the communicators
  // are aborted and the wait fails (--collective-timeout; <= 0: no limit).
  void (*set_collective_timeout)(double seconds);
};

}  // namespace par::cuda_plugin

// The plugin's one exported symbol.
extern "C" const par::cuda_plugin::Api* par_cuda_backend_api();
