// The numeric backend of a run (--device cpu|cuda, --precision): its Ops and, on GPUs with
// several ranks, the NCCL communicators it gives the process grid for the groups whose
// data lives in device memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/ops.h"
#include "parallel/process_grid.h"

namespace par {

struct Backend {
  std::unique_ptr<Ops<float>> ops;
  std::string description;  // for the log: "cpu (OpenBLAS ...)" or "cuda:0 (H100 ...), bf16"
  bool cuda = false;
};

// UserError unless the options name a backend par has: an unknown device, precision or
// attention, or a combination that cannot run (make_backend checks them first).
void check_backend_options(const std::string& device, const std::string& precision,
                           const std::string& attention);
// This rank's backend. UserError for an unknown device, precision or attention, cuda in a
// build without it, or no visible GPU. Not collective.
// `attention`: auto, blocked, fused or cudnn (cuda::AttentionKernel); the CPU takes auto
// and blocked (it has one attention). No default: every command passes its --attention,
// so none can silently drop it.
Backend make_backend(const std::string& device, const std::string& precision,
                     const ProcessGrid& grid, const std::string& attention);
// Collective over the grid: attaches to `grid` the device communicators (NCCL) that a
// multi-rank GPU job needs for sp, tp and dp x sp (ProcessGrid::device_group). Call on
// every rank after make_backend succeeded everywhere. A wait for the GPU behind their
// collectives fails after collective_timeout seconds (<= 0: never; --collective-timeout).
void connect_backend(const Backend& backend, ProcessGrid& grid, double collective_timeout);
// The same for a single-process command (eval, sample), which has no process grid: the
// GPU is chosen from the launcher's node-local rank (OMPI_COMM_WORLD_LOCAL_RANK, else
// SLURM_LOCALID; 0 outside a job), so several such processes on one node spread out.
Backend make_local_backend(const std::string& device, const std::string& precision,
                           const std::string& attention);

// The most device memory the backend has held at once (allocations and its scratch), in
// bytes; 0 for the CPU backend, whose memory is the process's resident set.
int64_t device_peak_bytes(Backend& backend);

// The free memory of the backend's device, in bytes (all processes counted); -1 for the
// CPU backend.
int64_t device_free_bytes(Backend& backend);

// Visible GPUs (loads the CUDA backend; 0 in a build without it).
int cuda_device_count();

// Whether this build has the CUDA backend.
bool cuda_built();

}  // namespace par
