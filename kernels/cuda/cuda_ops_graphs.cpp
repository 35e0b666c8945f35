// CudaOps's step graphs (kernels/cuda/cuda_ops_impl.h, step_graphs.h): a step recorded
// once and replayed (Ops::begin_capture and the rest), what a recording refuses, and when
// recording is given up because it does not pay.
#include "kernels/cuda/backend_log.h"
#include "kernels/cuda/cuda_ops_impl.h"

namespace par::cuda {

namespace {

// Recordings instantiated afresh (not updated in place) or refused before the backend may
// give recording up (give_up_graphs_if_they_do_not_pay).
constexpr int64_t kCostlyRecordingsBeforeGivingUp = 32;

}  // namespace

void CudaOps::refuse_in_graph(const char* what) {
  if (!graphs_->capturing()) return;
  graphs_->abort();
  give_up_graphs_if_they_do_not_pay();
  throw CaptureRefused(cat(what, " cannot be part of a CUDA graph (it waits for the GPU); "
                           "the step's recording is discarded"));
}

void CudaOps::begin_capture() { begin_graph(); }

void CudaOps::end_capture(uint64_t key) { end_graph(key); }

void CudaOps::abort_capture() { graphs_->abort(); }

bool CudaOps::replays_captures() { return graphs_on_; }

bool CudaOps::replay_capture(uint64_t key) {
  if (!graphs_on_ || !graphs_->replayable(key)) return false;
  return replay_graph(key);
}

void CudaOps::begin_graph() {
  if (!graphs_on_) return;
  use_device();
  // Room in the staging ring for the step's uploads, which cannot wait for it to drain.
  if (staging_used_ > kStagingBytes / 2) synchronize();
  graph_uploaded_ = false;
  graphs_->begin();
}

void CudaOps::end_graph(uint64_t key) {
  if (!graphs_on_) return;
  use_device();
  graphs_->end(key, !graph_uploaded_);
  give_up_graphs_if_they_do_not_pay();
}

// A recording that cannot update the kept graph (its topology changed) is instantiated
// afresh, which costs more than launching its kernels one by one; a refused one is given
// again. Where that is most of the graphs' uses, recording is given up. A use that pays is
// a recording that updated a kept graph or a replay with no recording at all (launches
// less fresh instantiations): a decoder replays most steps and records anew only at its
// refills and bucket changes, which must not count against it for a long generation.
void CudaOps::give_up_graphs_if_they_do_not_pay() {
  const GraphStats& st = graphs_->stats();
  const int64_t costly = st.instantiated + st.refused;
  const int64_t paying = st.launched - st.instantiated;
  if (costly < kCostlyRecordingsBeforeGivingUp || 2 * costly <= paying) return;
  graphs_on_ = false;
  backend_log(LogLevel::kWarning,
              cat("CUDA graphs off: of ", costly + st.updated, " recorded steps (and ",
                  paying - st.updated, " replayed), ",
                  st.instantiated, " could not update a kept graph (their kernels changed) and ",
                  st.refused, " were refused (something in them would wait for the GPU); "
                  "that costs more than it saves, so steps now launch kernel by kernel"));
}

bool CudaOps::replay_graph(uint64_t key) {
  use_device();
  return graphs_->replay(key);
}

}  // namespace par::cuda
