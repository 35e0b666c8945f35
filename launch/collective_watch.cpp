#include "launch/collective_watch.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/communicator_decorator.h"
#include "core/error.h"

namespace par {

namespace {

const char* type_name(DataType t) {
  switch (t) {
    case DataType::kFloat32: return "float32";
    case DataType::kFloat64: return "float64";
    case DataType::kInt64: return "int64";
    case DataType::kUInt8: return "bytes";
  }
  return "?";
}

// Every collective of the wrapped communicator between watch->begin() and end().
class WatchedCommunicator final : public CommunicatorDecorator {
 public:
  WatchedCommunicator(std::shared_ptr<CollectiveWatch> watch, std::unique_ptr<Communicator> inner,
                      std::string group)
      : CommunicatorDecorator(std::move(inner)), watch_(std::move(watch)), group_(std::move(group)) {}

 private:
  void begin(CollectiveOp op, int64_t count, DataType type) override {
    watch_->begin(CollectiveWatch::Collective{collective_name(op), &group_, size(), count, type});
  }
  void end() override { watch_->end(); }

  std::shared_ptr<CollectiveWatch> watch_;
  std::string group_;
};

}  // namespace

CollectiveWatch::CollectiveWatch(double timeout, std::string where)
    : timeout_(timeout), where_(std::move(where)) {
  PAR_ASSERT(timeout > 0, "CollectiveWatch needs a positive timeout, got ", timeout);
  thread_ = std::thread([this] { run(); });
}

CollectiveWatch::~CollectiveWatch() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::unique_ptr<Communicator> CollectiveWatch::wrap(std::shared_ptr<CollectiveWatch> watch,
                                                    std::unique_ptr<Communicator> c,
                                                    std::string group) {
  return std::make_unique<WatchedCommunicator>(std::move(watch), std::move(c), std::move(group));
}

void CollectiveWatch::begin(const Collective& c) {
  std::lock_guard<std::mutex> lock(mutex_);
  waiting_ = true;
  current_ = c;
  since_ = std::chrono::steady_clock::now();
}

void CollectiveWatch::end() {
  std::lock_guard<std::mutex> lock(mutex_);
  waiting_ = false;
}

void CollectiveWatch::run() {
  // A look every quarter of the timeout, at most every second: a rank leaves at most a
  // quarter (or a second) past it.
  const auto period = std::chrono::duration<double>(std::min(1.0, timeout_ / 4));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, period, [&] { return stop_; })) {
    if (!waiting_) continue;
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - since_).count();
    if (waited < timeout_) continue;
    const Collective& c = current_;
    const std::string data = c.count > 0 ? cat(" of ", c.count, " ", type_name(c.type)) : "";
    const std::string message =
        cat("par: ", where_.empty() ? std::string() : where_ + ": ", c.op, data, " over the ",
            c.group ? *c.group : std::string("?"), " group (", c.group_size, " ranks) has waited ",
            std::round(waited * 10) / 10, " s for the other ranks, longer than --collective-timeout ",
            timeout_, ": one of them, its GPU, its storage or the network hangs; ending this rank\n");
    // Not an exception: the main thread is blocked in MPI, and only it may call MPI.
    std::fputs(message.c_str(), stderr);
    std::fflush(stderr);
    ::_exit(1);
  }
}

void watch_groups(ProcessGrid& grid, const std::shared_ptr<CollectiveWatch>& watch) {
  if (!watch || grid.world_size() == 1) return;
  size_t g = 0;  // decorate() goes through the groups in the order of kGroupNames
  grid.decorate([&](std::unique_ptr<Communicator> c) {
    return CollectiveWatch::wrap(watch, std::move(c),
                                 ProcessGrid::name(ProcessGrid::kGroupNames[g++]));
  });
}

}  // namespace par
