// Checkpoint directories under misuse and accidents: pruning killed half-way, manifests
// edited by hand, directories renamed or damaged, strays in checkpoints/.
#include <gtest/gtest.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/manifest.h"
#include "checkpoint/model_file.h"
#include "data/h5.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

// One value of the dataset `name` in the HDF5 file `path` changed in place, as damage that
// keeps the file readable would.
void change_one_value(const std::string& path, const std::string& name) {
  h5::Object f = h5::open_file(path, /*writable=*/true);
  std::vector<float> w = h5::read_dataset<float>(f.id(), name);
  ASSERT_GT(w.size(), 3u);
  w[3] += 1.0f;
  h5::Lock lock;
  h5::Object ds(H5Dopen2(f.id(), name.c_str(), H5P_DEFAULT));
  ASSERT_GE(H5Dwrite(ds.id(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w.data()), 0);
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Pruning removes a checkpoint's COMPLETE before any other of its files (watched with
// inotify), so a kill -9 at any moment of it leaves nothing that looks like a checkpoint
// and lacks a file; the next prune removes such remains.
TEST(ReliabilityManifest, PruningRemovesCompleteFirst) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string run = dir.file("run");
  ASSERT_EQ(run_par(dir, tiny_train_args(data, run, 4) + " --checkpoint-every 1 --keep-checkpoints 10").rc, 0);
  // What a prune killed half-way leaves: a step directory without COMPLETE.
  fs::remove(checkpoint_dir(run, 1) + "/COMPLETE");
  const int fd = inotify_init1(IN_NONBLOCK);
  ASSERT_GE(fd, 0);
  std::map<int, std::string> watched;
  for (int step : {2, 3, 4})
    watched[inotify_add_watch(fd, checkpoint_dir(run, step).c_str(), IN_DELETE)] = checkpoint_dir(run, step);
  const ParRun r = run_par(dir, tiny_train_args(data, run, 5) + " --checkpoint-every 1 --resume auto --keep-checkpoints 1");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::map<std::string, std::vector<std::string>> deleted;  // directory -> files, in order
  alignas(inotify_event) char buf[1 << 16];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;)
    for (char* p = buf; p < buf + n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(p);
      if ((e->mask & IN_DELETE) && e->len > 0) deleted[watched[e->wd]].push_back(e->name);
      p += sizeof(inotify_event) + e->len;
    }
  close(fd);
  for (const auto& [wd, ckpt] : watched) {
    SCOPED_TRACE(ckpt);
    ASSERT_FALSE(deleted[ckpt].empty()) << "not pruned";
    EXPECT_EQ(deleted[ckpt].front(), "COMPLETE") << "deleted first: " << deleted[ckpt].front();
  }
  EXPECT_EQ(names_in(run + "/checkpoints"), std::vector<std::string>{"step-00000005"});
}

// Copies a checkpoint directory (to be damaged) under another name.
std::string copy_of(const std::string& dir, const std::string& to) {
  fs::copy(dir, to, fs::copy_options::recursive);
  return to;
}

void replace_in(const std::string& file, const std::string& from, const std::string& to) {
  std::string text = slurp(file);
  ASSERT_NE(text.find(from), std::string::npos) << from;
  text.replace(text.find(from), from.size(), to);
  std::ofstream(file) << text;
}

// Every line of the manifest is covered by its checksum: an edited step or data position
// was accepted silently; now inspect, eval and --resume refuse it.
TEST(ReliabilityManifest, EditedManifestIsRefused) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 2)).rc, 0);
  const std::string good = latest_checkpoint(dir.file("run"));
  for (const auto& [from, to] : {std::pair<std::string, std::string>{"\nstep 2\n", "\nstep 7\n"},
                                 {"\nnext_batch 2\n", "\nnext_batch 0\n"},
                                 {"\nlr ", "\nlr 1"}}) {
    SCOPED_TRACE(from);
    const std::string c = copy_of(good, dir.file("edited"));
    replace_in(c + "/manifest.txt", from, to);
    EXPECT_USER_ERROR(run_par(dir, cat("inspect ", quote(c))), "does not match its checksum");
    EXPECT_USER_ERROR(run_par(dir, tiny_train_args(data, dir.file("other"), 4) + " --resume " + quote(c)),
                      "does not match its checksum");
    fs::remove_all(c);
  }
  // A manifest cut short loses its checksum line.
  const std::string c = copy_of(good, dir.file("cut"));
  const std::string text = slurp(c + "/manifest.txt");
  std::ofstream(c + "/manifest.txt") << text.substr(0, text.rfind("checksum "));
  EXPECT_USER_ERROR(run_par(dir, cat("inspect ", quote(c))), "has no checksum line");
}

// The manifest of `dir` rewritten as par wrote it at `version`: 1 without the checksum line,
// 1 and 2 with checksums from the mistyped offset basis (checksum_bytes' `legacy`).
void rewrite_as_version(const std::string& dir, int version) {
  const std::string path = dir + "/manifest.txt";
  Manifest m = Manifest::parse(slurp(path), path);
  for (ManifestEntry& e : m.entries) {
    h5::Object f = h5::open_file(dir + "/" + e.file);
    const std::vector<float> x = h5::read_dataset<float>(f.id(), e.kind + "/" + e.name);
    e.checksum = checksum(x.data(), int64_t(x.size()), /*legacy=*/true);
  }
  std::string text = m.header_text() + m.entries_text();
  text.replace(0, text.find('\n'), cat("par-checkpoint ", version));
  if (version == 2) {
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx",
                  (unsigned long long)checksum_bytes(text.data(), text.size(), /*legacy=*/true));
    text += cat("checksum ", hex, "\n");
  }
  std::ofstream(path) << text;
}

// What the checksum cannot vouch for (a manifest sealed again after an edit, another
// tool's writer) is checked too: one clear error each, where a negative step reached the
// loader's assertion and a huge begin wrapped the bounds check around.
TEST(ReliabilityManifest, ResealedNonsenseIsRefused) {
  Manifest m;
  m.position = {1200, 2400, 7, 3e-4};
  const std::string header = m.header_text();
  const std::string entry = "tensor params embed 259,256 0 0 259 shard-00000.h5 0\n";
  ASSERT_NO_THROW(Manifest::parse(Manifest::seal(header + entry), "manifest.txt"));
  auto refused = [&](const std::string& text, const std::string& part) {
    try {
      Manifest::parse(Manifest::seal(text), "manifest.txt");
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << "accepted:\n" << text;
  };
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = header + entry;
    const size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? t : t.replace(at, from.size(), to);
  };
  refused(with("step 1200", "step -1"), "step -1 and next_batch 2400 must be >= 0");
  refused(with("next_batch 2400", "next_batch -5"), "must be >= 0");
  refused(with("layout 1 1 1", "layout 0 0 0"), "layout 0 0 0 is not a layout of ranks");
  refused(with("layout 1 1 1", "layout -1 2 1"), "is not a layout of ranks");
  refused(with(" 0 0 259 ", " 0 9223372036854775807 1 "), "the tensor record is inconsistent");
  refused(with("259,256", "-9223372036854775807,256"), "the tensor record is inconsistent");
}

// A manifest sealed again with a far larger model than its files hold (d 2^19: terabytes
// of state), and an export whose attributes were edited the same way: inspect, export and
// eval compare the claim with the files before allocating the model's state, so each says
// what does not match. They allocated first and ended in "out of memory".
TEST(ReliabilityManifest, LargerModelThanTheFilesIsRefusedBeforeAllocating) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 2)).rc, 0);
  const std::string c = copy_of(latest_checkpoint(dir.file("run")), dir.file("resealed"));
  const std::string path = c + "/manifest.txt";
  Manifest m = Manifest::parse(slurp(path), path);
  m.model.d_model = int64_t(1) << 19;
  ASSERT_NO_THROW(m.model.validate());
  std::ofstream(path) << m.to_text();
  const std::string mismatch = "has another shape in the checkpoint: it holds a different model";
  EXPECT_USER_ERROR(run_par(dir, cat("inspect ", quote(c))), mismatch);
  EXPECT_USER_ERROR(run_par(dir, cat("export --checkpoint ", quote(c), " --out ",
                                     quote(dir.file("out.h5")))),
                    mismatch);
  EXPECT_FALSE(fs::exists(dir.file("out.h5")));
  EXPECT_USER_ERROR(run_par(dir, cat("eval --checkpoint ", quote(c), " --data '", data, "'")),
                    mismatch);

  const std::string model = dir.file("model.h5");
  write_small_model(model);
  {
    h5::Object f = h5::open_file(model, /*writable=*/true);
    h5::Lock lock;
    ASSERT_GE(H5Adelete(f.id(), "d_model"), 0);
    h5::write_attribute<int64_t>(f.id(), "d_model", int64_t(1) << 19);
  }
  EXPECT_USER_ERROR(run_par(dir, cat("inspect ", quote(model))),
                    "has the wrong shape for the model in its attributes");
}

// Checkpoints of earlier versions load and resume; their checksums still catch damage.
// FNV-1a 64 is the standard one (its test vector), as other tools compute it.
TEST(ReliabilityManifest, EarlierVersionsLoadWithTheirChecksums) {
  EXPECT_EQ(checksum_bytes("a", 1), 0xaf63dc4c8601ec8cull);
  const std::vector<float> zeros(32, 0.0f);
  EXPECT_EQ(checksum(zeros.data(), 32), 0x8421ae126c7ced25ull);
  EXPECT_EQ(checksum(zeros.data(), 32, /*legacy=*/true), 0x306c537b2ff38983ull);

  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 2)).rc, 0);
  const std::string good = latest_checkpoint(dir.file("run"));
  for (int version : {1, 2}) {
    SCOPED_TRACE(version);
    const std::string c = copy_of(good, dir.file(cat("v", version)));
    rewrite_as_version(c, version);
    ASSERT_EQ(slurp(c + "/manifest.txt").rfind(cat("par-checkpoint ", version, "\n"), 0), 0u);
    const ParRun r = run_par(dir, tiny_train_args(data, dir.file(cat("resumed", version)), 3) +
                                      " --resume " + quote(c));
    EXPECT_EQ(r.rc, 0) << r.err;
    // A tensor changed after the fact is caught by the version's own checksum.
    change_one_value(c + "/shard-00000.h5", "params/embed.weight");
    EXPECT_USER_ERROR(run_par(dir, tiny_train_args(data, dir.file(cat("bad", version)), 3) +
                                       " --resume " + quote(c)),
                      "is corrupt (its checksum does not match the manifest)");
  }
}

// A directory renamed to a later step was taken as the newest; its name must match its
// manifest's step, and --resume auto falls back, with a warning, to the newest intact
// checkpoint. So it does when the newest one's data is damaged.
TEST(ReliabilityManifest, ResumeFallsBackFromADamagedNewest) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string run = dir.file("run");
  ASSERT_EQ(run_par(dir, tiny_train_args(data, run, 3) + " --checkpoint-every 1").rc, 0);
  fs::rename(checkpoint_dir(run, 2), checkpoint_dir(run, 99));
  EXPECT_USER_ERROR(run_par(dir, cat("inspect ", quote(checkpoint_dir(run, 99)))),
                    "is named for step 99 but its manifest holds step 2");
  ParRun r = run_par(dir, tiny_train_args(data, run, 5) + " --resume auto");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find(cat("the checkpoint ", checkpoint_dir(run, 99), " is damaged")), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(cat("resumed from ", checkpoint_dir(run, 3), " at step 3")), std::string::npos) << r.err;
  // Step 99, behind which the run went on from step 3, was set aside, not removed: a
  // damaged checkpoint is the user's to look at.
  EXPECT_TRUE(is_complete_checkpoint(abandoned_checkpoints_root(run) + "/step-00000099"));
  EXPECT_EQ(latest_checkpoint(run), checkpoint_dir(run, 5));
  // Damage step 5's last tensor, found when every other one was read: the resume falls back
  // to step 3.
  change_one_value(checkpoint_dir(run, 5) + "/shard-00000.h5", "adam_v/head.bias");
  r = run_par(dir, tiny_train_args(data, run, 6) + " --resume auto");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find(cat("the checkpoint ", checkpoint_dir(run, 5), " is damaged")), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("adam_v/head.bias is corrupt"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(cat("resumed from ", checkpoint_dir(run, 3), " at step 3")), std::string::npos) << r.err;
  // What the damaged step 5 had loaded before its damage was found was all overwritten: the
  // run went on exactly as one never interrupted.
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("straight"), 6)).rc, 0);
  const ModelFile resumed = read_model_file(checkpoint_dir(run, 6), true);
  const ModelFile straight = read_model_file(dir.file("straight"), true);
  EXPECT_EQ(resumed.position.step, 6);
  EXPECT_TRUE(resumed.params == straight.params && resumed.adam_m == straight.adam_m &&
              resumed.adam_v == straight.adam_v);
  // A given --resume PATH that is damaged is an error, not a fallback.
  replace_in(checkpoint_dir(run, 6) + "/manifest.txt", "\nstep 6\n", "\nstep 9\n");
  // The damaged step 5 was set aside too. The commands that read a run's newest checkpoint
  // name the newest intact one (step 3) instead of taking it unasked.
  for (const std::string& c : {cat("export --checkpoint ", quote(run), " --out ",
                                   quote(dir.file("model.h5"))),
                               cat("eval --checkpoint ", quote(run), " --data ", quote(data)),
                               cat("sample --checkpoint ", quote(run), " --tokens 2")}) {
    SCOPED_TRACE(c);
    EXPECT_USER_ERROR(run_par(dir, c),
                      cat("does not match its checksum: the manifest was edited or is damaged; "
                          "use an earlier checkpoint; the run's newest intact checkpoint is ",
                          checkpoint_dir(run, 3), " (pass it as --checkpoint)"));
  }
  EXPECT_USER_ERROR(run_par(dir, tiny_train_args(data, dir.file("other"), 8) + " --resume " +
                                     quote(checkpoint_dir(run, 6))),
                    "does not match its checksum");
}

// A run resumed behind newer checkpoints of its run (a rollback) sets them aside, so that
// neither pruning nor --resume auto takes them for its own; each stays readable, and a name
// already set aside by an earlier rollback is kept beside the new one.
TEST(ReliabilityManifest, RollbackSetsNewerCheckpointsAside) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string run = dir.file("run"), aside = abandoned_checkpoints_root(run);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, run, 6) + " --checkpoint-every 2").rc, 0);
  const std::string old6 = slurp(checkpoint_dir(run, 6) + "/manifest.txt");
  ParRun r = run_par(dir, tiny_train_args(data, run, 5) + " --checkpoint-every 1 " +
                              "--keep-checkpoints 1 --lr 5e-4 --resume " +
                              quote(checkpoint_dir(run, 2)));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find(cat("this run goes on from step 2, behind 2 newer checkpoint(s) of an "
                           "abandoned run in ", checkpoints_root(run), ": set aside")),
            std::string::npos) << r.err;
  EXPECT_NE(r.err.find(cat(checkpoint_dir(run, 6), " -> ", aside, "/step-00000006")),
            std::string::npos) << r.err;
  // --keep-checkpoints 1 kept this run's newest, not the abandoned step 6.
  EXPECT_EQ(names_in(run + "/checkpoints"),
            (std::vector<std::string>{"abandoned", "step-00000005"}));
  EXPECT_EQ(names_in(aside), (std::vector<std::string>{"step-00000004", "step-00000006"}));
  EXPECT_EQ(slurp(aside + "/step-00000006/manifest.txt"), old6);
  r = run_par(dir, tiny_train_args(data, run, 7) + " --checkpoint-every 1 --resume auto");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find(cat("resumed from ", checkpoint_dir(run, 5), " at step 5")),
            std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("set aside"), std::string::npos) << r.err;
  // A second rollback over step 6: its name is taken in the folder, so it gets a suffix.
  r = run_par(dir, tiny_train_args(data, run, 6) + " --resume " + quote(checkpoint_dir(run, 5)));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(names_in(aside), (std::vector<std::string>{"step-00000004", "step-00000006",
                                                       "step-00000006.2", "step-00000007"}));
  EXPECT_TRUE(is_complete_checkpoint(aside + "/step-00000006.2"));
  // Resuming at the newest step moves nothing; nor does a resume with nothing left to do.
  r = run_par(dir, tiny_train_args(data, run, 7) + " --resume " + quote(checkpoint_dir(run, 6)));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("set aside"), std::string::npos) << r.err;
  r = run_par(dir, tiny_train_args(data, run, 5) + " --resume " + quote(checkpoint_dir(run, 5)));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("nothing to do"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("set aside"), std::string::npos) << r.err;
  EXPECT_TRUE(is_complete_checkpoint(checkpoint_dir(run, 7)));
  // From an abandoned checkpoint, the run's own too, the current line is set aside.
  r = run_par(dir, tiny_train_args(data, run, 7) + " --resume " + quote(aside + "/step-00000006"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find(cat(checkpoint_dir(run, 7), " -> ", aside, "/step-00000007.2")),
            std::string::npos) << r.err;
  // Another run's checkpoint behind this run's own newest: refused, nothing moved.
  const std::string other = dir.file("other");
  ASSERT_EQ(run_par(dir, tiny_train_args(data, other, 2)).rc, 0);
  EXPECT_USER_ERROR(run_par(dir, tiny_train_args(data, run, 9) + " --resume " + quote(other)),
                    cat("--out ", run, " holds checkpoints of its own run past step 2 of --resume ",
                        other, " (the newest: ", checkpoint_dir(run, 7), "): to continue that "
                        "run, pass --resume auto"));
  EXPECT_TRUE(is_complete_checkpoint(checkpoint_dir(run, 7)));
  // Ahead of this run's newest, another run's checkpoint starts the next steps (a fine-tune).
  ASSERT_EQ(run_par(dir, tiny_train_args(data, other, 12) + " --resume auto").rc, 0);
  r = run_par(dir, tiny_train_args(data, run, 13) + " --resume " + quote(other));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("set aside"), std::string::npos) << r.err;
}

// Only the names par gives are read and removed: a stray step-abc and other entries in
// checkpoints/ survive pruning.
TEST(ReliabilityManifest, StraysInCheckpointsAreLeftAlone) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string run = dir.file("run");
  for (const std::string stray : {"step-abc", "step-0001", ".step-x.tmp", "notes"}) {
    fs::create_directories(run + "/checkpoints/" + stray);
    std::ofstream(run + "/checkpoints/" + stray + "/COMPLETE") << "mine\n";
    std::ofstream(run + "/checkpoints/" + stray + "/manifest.txt") << "mine\n";
  }
  ASSERT_EQ(run_par(dir, tiny_train_args(data, run, 3) + " --checkpoint-every 1 --keep-checkpoints 1").rc, 0);
  EXPECT_EQ(names_in(run + "/checkpoints"),
            (std::vector<std::string>{".step-x.tmp", "notes", "step-00000003", "step-0001", "step-abc"}));
}

}  // namespace
}  // namespace par
