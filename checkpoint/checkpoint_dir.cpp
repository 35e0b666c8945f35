#include "checkpoint/checkpoint_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/checked_file.h"
#include "data/h5.h"

namespace par {

namespace fs = std::filesystem;

namespace {

constexpr const char* kComplete = "COMPLETE";
constexpr const char* kManifest = "manifest.txt";
constexpr const char* kConfig = "config.ini";

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// The step of a directory named as step_name() names them (`step-` and at least 8
// digits), or, when `in_progress`, as a save in progress (`.step-NNNNNNNN.tmp`); -1 for
// any other name. Nothing else in checkpoints/ is par's to read or remove.
int64_t step_of(const std::string& name, bool in_progress) {
  const std::string prefix = in_progress ? ".step-" : "step-", suffix = in_progress ? ".tmp" : "";
  if (name.size() < prefix.size() + 8 + suffix.size() || name.rfind(prefix, 0) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return -1;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

// The shard file's data reaches the disk before the commit that makes it part of a
// checkpoint.
void sync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_user("cannot open ", path, ": ", std::strerror(errno));
  const int err = ::fsync(fd) != 0 ? errno : 0;
  ::close(fd);
  if (err != 0) fail_user("cannot write ", path, ": ", std::strerror(err));
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_user("cannot read ", path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// A checkpoint stops being one the moment its COMPLETE goes, so that goes first (and is
// made durable): killed half-way through the rest, the directory is never taken for a
// checkpoint that lacks a file. The next prune removes what is left.
void remove_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::remove(dir + "/" + kComplete, ec) && ec) return;  // keep it whole, not half
  try {
    sync_directory(dir);
  } catch (const UserError&) {
    return;  // the same
  }
  fs::remove_all(dir, ec);
}

// Which pieces a rank writes: piece i (over tensors x kinds, in layout order) of a
// tensor split by tensor parallelism goes to rank i mod |dp x sp| among the ranks holding
// that slice; a replicated tensor (the same on every rank) to world rank i mod |world|.
bool writes_piece(const ProcessGrid& g, const ParamInfo& p, int64_t i) {
  if (p.sharded()) return g.dp_sp()->rank() == int(i % g.dp_sp()->size());
  return g.world_rank() == int(i % g.world_size());
}

}  // namespace

std::string checkpoints_root(const std::string& out_dir) { return out_dir + "/checkpoints"; }

std::string checkpoint_dir(const std::string& out_dir, int64_t step) {
  return checkpoints_root(out_dir) + "/" + step_name(step);
}

bool is_complete_checkpoint(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir + "/" + kComplete, ec) && fs::is_regular_file(dir + "/" + kManifest, ec);
}

std::string enclosing_checkpoint(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return "";
  for (; !p.empty() && p != p.root_path(); p = p.parent_path()) {
    const bool in_progress = step_of(p.filename().string(), true) >= 0;
    if (in_progress || fs::exists(p / kManifest, ec) || fs::exists(p / kComplete, ec))
      return p.string();
  }
  return "";
}

void refuse_inside_checkpoint(const std::string& path, const std::string& option) {
  const std::string inside = enclosing_checkpoint(path);
  if (!inside.empty())
    fail_user(option, " ", path, " is inside the checkpoint ", inside,
              ": writing there would damage it (with or without --force); choose a path "
              "outside it");
}

void refuse_inside_run_checkpoints(const std::string& path, const std::string& option) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return;
  for (; !p.empty() && p != p.root_path(); p = p.parent_path()) {
    const fs::path run = p.parent_path();
    if (p.filename() == "checkpoints" && fs::is_regular_file(run / "config.ini", ec) &&
        fs::is_directory(p, ec))
      fail_user(option, " ", path, " is inside the checkpoints of the run ", run.string(),
                ": to continue that run, pass --out ", run.string(),
                " --resume auto; for a new run, choose a path outside them");
  }
}

namespace {

// Complete checkpoint directories under out_dir, oldest first.
std::vector<std::pair<int64_t, std::string>> complete_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoints_root(out_dir), ec)) {
    const int64_t step = step_of(e.path().filename().string(), false);
    if (step < 0 || !is_complete_checkpoint(e.path().string())) continue;
    found.emplace_back(step, e.path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

std::string abandoned_checkpoints_root(const std::string& out_dir) {
  return checkpoints_root(out_dir) + "/abandoned";
}

namespace {

std::vector<std::pair<int64_t, fs::path>> newer_than(const std::string& out_dir, int64_t step) {
  std::vector<std::pair<int64_t, fs::path>> newer;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoints_root(out_dir), ec)) {
    const int64_t s = step_of(e.path().filename().string(), false);
    if (s > step && e.is_directory(ec)) newer.emplace_back(s, e.path());
  }
  std::sort(newer.begin(), newer.end());
  return newer;
}

}  // namespace

std::vector<std::string> checkpoints_after(const std::string& out_dir, int64_t step) {
  std::vector<std::string> dirs;
  for (const auto& [s, p] : newer_than(out_dir, step)) dirs.push_back(p.string());
  return dirs;
}

bool is_checkpoint_of_run(const std::string& dir, const std::string& out_dir) {
  std::error_code ec;
  const fs::path d = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  const fs::path root = fs::weakly_canonical(fs::absolute(checkpoints_root(out_dir), ec), ec);
  if (ec) return false;
  const auto [r, p] = std::mismatch(root.begin(), root.end(), d.begin(), d.end());
  return r == root.end() && p != d.end();
}

std::vector<std::string> set_aside_checkpoints_after(const std::string& out_dir, int64_t step) {
  const std::vector<std::pair<int64_t, fs::path>> newer = newer_than(out_dir, step);
  std::error_code ec;
  std::vector<std::string> moves;
  if (newer.empty()) return moves;
  const fs::path root = abandoned_checkpoints_root(out_dir);
  fs::create_directories(root, ec);
  if (ec) fail_user("cannot create ", root.string(), ": ", ec.message());
  for (const auto& [s, from] : newer) {
    fs::path to = root / from.filename();
    for (int k = 2; fs::exists(to, ec); ++k) to = root / cat(from.filename().string(), ".", k);
    fs::rename(from, to, ec);
    if (ec)
      fail_user("cannot move ", from.string(), " (a checkpoint newer than the step this run ",
                "resumes from) to ", to.string(), ": ", ec.message());
    moves.push_back(cat(from.string(), " -> ", to.string()));
  }
  sync_directory(root.string());
  sync_directory(checkpoints_root(out_dir));
  return moves;
}

std::vector<std::string> checkpoints_newest_first(const std::string& out_dir) {
  std::vector<std::string> dirs;
  const auto found = complete_checkpoints(out_dir);
  for (auto it = found.rbegin(); it != found.rend(); ++it) dirs.push_back(it->second);
  return dirs;
}

std::string latest_checkpoint(const std::string& out_dir) {
  const auto found = complete_checkpoints(out_dir);
  return found.empty() ? "" : found.back().second;
}

std::string resolve_checkpoint(const std::string& path) {
  if (is_complete_checkpoint(path)) return path;
  const std::string latest = latest_checkpoint(path);
  return latest.empty() ? path : latest;
}

CheckpointSaver::CheckpointSaver(const ProcessGrid& grid, std::string out_dir, int keep)
    : grid_(grid), out_dir_(std::move(out_dir)), keep_(std::max(1, keep)) {}

CheckpointSaver::~CheckpointSaver() {
  if (writer_.joinable()) writer_.join();
}

double CheckpointSaver::start(const ModelConfig& model, const ParamLayout& layout,
                              std::vector<float> params, std::vector<float> adam_m,
                              std::vector<float> adam_v, const TrainingPosition& position,
                              const std::string& config_text) {
  PAR_ASSERT(!pending_, "a checkpoint save is already in progress");
  const double t0 = now_seconds();
  model_ = model;
  position_ = position;
  config_text_ = config_text;
  final_dir_ = checkpoint_dir(out_dir_, position.step);
  tmp_dir_ = checkpoints_root(out_dir_) + "/." + step_name(position.step) + ".tmp";
  char file[32];
  std::snprintf(file, sizeof file, "shard-%05d.h5", grid_.world_rank());
  file_ = file;
  if (grid_.world_rank() == 0) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);  // a save that crashed before
    fs::create_directories(tmp_dir_, ec);
    if (ec) fail_user("cannot create the checkpoint directory ", tmp_dir_, ": ", ec.message());
  }
  grid_.world()->barrier();  // the directory exists for everyone
  mine_.clear();
  mine_kind_.clear();
  int64_t i = 0;
  for (const ParamInfo& p : layout.params())
    for (int k = 0; k < 3; ++k, ++i)
      if (writes_piece(grid_, p, i)) {
        mine_.push_back(&p);
        mine_kind_.push_back(k);
      }
  state_.clear();
  state_.push_back(std::move(params));
  state_.push_back(std::move(adam_m));
  state_.push_back(std::move(adam_v));
  records_.clear();
  error_ = nullptr;
  written_ = false;
  pending_ = true;
  started_ = t0;
  writer_ = std::thread([this] {
    try {
      write_share();
    } catch (...) {
      error_ = std::current_exception();
    }
    written_ = true;
  });
  return now_seconds() - t0;
}

void CheckpointSaver::write_share() {
  if (mine_.empty()) return;
  const std::string path = tmp_dir_ + "/" + file_;
  try {
    h5::Object f = h5::create_file(path);
    for (size_t j = 0; j < mine_.size(); ++j) {
      const ParamInfo& p = *mine_[j];
      const char* kind = kStateKinds[mine_kind_[j]];
      const float* data = state_[size_t(mine_kind_[j])].data() + p.offset;
      h5::write_dataset<float>(f.id(), std::string(kind) + "/" + p.name, data, p.shape);
      ManifestEntry e;
      e.kind = kind;
      e.name = p.name;
      e.global_shape = p.global_shape;
      e.axis = p.sharded() ? p.shard_axis : -1;
      e.begin = p.sharded() ? p.shard_begin : 0;
      e.count = p.sharded() ? p.shape[size_t(p.shard_axis)] : 0;
      e.file = file_;
      e.checksum = checksum(data, p.numel);
      records_.push_back(std::move(e));
    }
    f.close();
    sync_file(path);
  } catch (const UserError& e) {
    // HDF5's messages name the object, not always the file.
    const std::string what = e.what();
    if (what.find(path) != std::string::npos) throw;
    fail_user("cannot write ", path, ": ", what);
  }
}

std::string CheckpointSaver::finish(bool wait) {
  if (!pending_) return "";
  if (!wait && !all_written()) return "";
  if (wait) wait_all_written();
  writer_.join();
  pending_ = false;
  state_.clear();
  // Every rank learns whether a write failed anywhere.
  std::string error;
  if (error_) {
    try {
      std::rethrow_exception(error_);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  const int64_t failed = grid_.world()->all_reduce_value(int64_t(error.empty() ? 0 : 1), ReduceOp::kSum);
  if (failed) {
    // The unfinished save must not keep its space: every rank has stopped writing into it.
    if (grid_.world_rank() == 0) remove_unfinished();
    if (!error.empty()) fail_user("writing the checkpoint of step ", position_.step, ": ", error);
    fail_user("writing the checkpoint of step ", position_.step, " failed on another rank (see its message)");
  }
  // Rank 0 collects every rank's records: lengths first, then the padded texts.
  Manifest m;
  m.position = position_;
  m.dp = grid_.shape().dp;
  m.sp = grid_.shape().sp;
  m.tp = grid_.shape().tp;
  m.model = model_;
  m.entries = records_;
  const std::string text = m.entries_text();
  const int64_t n = grid_.world_size();
  std::vector<int64_t> lengths(static_cast<size_t>(n));
  const int64_t mine = int64_t(text.size());
  grid_.world()->all_gather(&mine, lengths.data(), 1, DataType::kInt64);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  std::vector<uint8_t> padded(static_cast<size_t>(longest), 0), all(size_t(longest * n));
  std::copy(text.begin(), text.end(), padded.begin());
  grid_.world()->all_gather(padded.data(), all.data(), longest, DataType::kUInt8);
  if (grid_.world_rank() == 0) {
    m.entries.clear();
    std::string records;
    for (int64_t r = 0; r < n; ++r)
      records.append(reinterpret_cast<const char*>(all.data()) + r * longest, size_t(lengths[size_t(r)]));
    const std::string manifest = Manifest::seal(m.header_text() + records);
    Manifest::parse(manifest, tmp_dir_ + "/" + kManifest);  // what we commit must read back
    try {
      write_file(tmp_dir_ + "/" + kConfig, config_text_);
      write_file(tmp_dir_ + "/" + kManifest, manifest);
      write_file(tmp_dir_ + "/" + kComplete, "complete\n");
      sync_directory(tmp_dir_);
      std::error_code ec;
      if (fs::exists(final_dir_, ec)) remove_checkpoint(final_dir_);  // an older save of this step
      fs::rename(tmp_dir_, final_dir_, ec);
      if (ec) fail_user("cannot move ", tmp_dir_, " to ", final_dir_, ": ", ec.message());
      sync_directory(checkpoints_root(out_dir_));
    } catch (const UserError& e) {
      remove_unfinished();
      fail_user("writing the checkpoint of step ", position_.step, ": ", e.what());
    }
    prune();
  }
  write_seconds_ = now_seconds() - started_;
  grid_.world()->barrier();  // no rank goes on before the checkpoint exists
  return final_dir_;
}

// Waiting, the ranks ask again every 20 ms, so that no single collective waits for the
// slowest rank's writes (one that waits longer than --collective-timeout is taken for a hung
// rank).
void CheckpointSaver::wait_all_written() {
  if (grid_.world_size() == 1) return;
  while (!all_written()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

bool CheckpointSaver::all_written() const {
  return grid_.world()->all_reduce_value(int64_t(written_ ? 1 : 0), ReduceOp::kSum) ==
         grid_.world_size();
}

void CheckpointSaver::abandon() {
  if (!pending_) return;
  // Once every rank has written its share, none writes into the directory any more.
  wait_all_written();
  writer_.join();
  pending_ = false;
  state_.clear();
  error_ = nullptr;
  if (grid_.world_rank() == 0) remove_unfinished();
}

void CheckpointSaver::remove_unfinished() {
  std::error_code ec;
  fs::remove_all(tmp_dir_, ec);
}


// Keeps the newest `keep_` complete checkpoints and removes leftovers of failed saves and
// of interrupted prunes. Touches only the names par gives (step_of).
void CheckpointSaver::prune() {
  const auto found = complete_checkpoints(out_dir_);
  for (size_t i = 0; i + size_t(keep_) < found.size(); ++i) remove_checkpoint(found[i].second);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoints_root(out_dir_), ec)) {
    const std::string name = e.path().filename().string(), path = e.path().string();
    if (step_of(name, true) >= 0 || (step_of(name, false) >= 0 && !is_complete_checkpoint(path))) {
      std::error_code ec2;
      fs::remove_all(e.path(), ec2);
    }
  }
}

Manifest read_manifest(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail_user("no checkpoint directory '", dir, "'");
  if (!is_complete_checkpoint(dir)) {
    if (!fs::exists(dir + "/" + kManifest, ec) && !fs::exists(dir + "/" + kComplete, ec))
      fail_user(dir, " is neither a checkpoint directory (OUT/checkpoints/step-N) nor a run "
                "directory with a complete checkpoint");
    fail_user(dir, " is not a complete checkpoint (no ", kComplete, " or ", kManifest,
              "): it was not finished; use an earlier one");
  }
  const Manifest m = Manifest::parse(read_text(dir + "/" + kManifest), dir + "/" + kManifest);
  fs::path name = fs::path(dir).lexically_normal();
  if (name.filename().empty()) name = name.parent_path();  // "step-00000020/"
  const int64_t named = step_of(name.filename().string(), false);
  if (named >= 0 && named != m.position.step)
    fail_user(dir, " is named for step ", named, " but its manifest holds step ", m.position.step,
              ": it was renamed or copied over; rename it to ", step_name(m.position.step),
              " or use another checkpoint");
  return m;
}

std::string read_checkpoint_config(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir + "/" + kConfig, ec) ? read_text(dir + "/" + kConfig) : "";
}

}  // namespace par
