#include "checkpoint/model_file.h"

#include <cstdio>
#include <filesystem>
#include <type_traits>
#include <variant>

#include "checkpoint/checkpoint_dir.h"
#include "core/error.h"
#include "data/h5.h"

namespace par {

namespace {

// The fields of core/model_config.h as attributes of the file's root. Optional ones at
// their default are left out (spec/FORMATS.md: absent means the default), so exports of
// models without them stay as older loaders read them.
void write_model_attributes(hid_t root, const ModelConfig& config) {
  const ModelConfig c = config.resolved();
  for (const ModelField& f : kModelFields) {
    if (!f.recorded(c)) continue;
    std::visit(
        [&](auto member) {
          const auto& v = c.*member;
          using V = std::remove_cvref_t<decltype(v)>;
          if constexpr (std::is_same_v<V, PositionEncoding>)
            h5::write_attribute<std::string>(root, f.key, position_encoding_name(v));
          else
            h5::write_attribute<V>(root, f.key, v);
        },
        f.member);
  }
}

ModelConfig read_model_attributes(hid_t root) {
  ModelConfig c;
  for (const ModelField& f : kModelFields) {
    if (f.optional && !h5::has_attribute(root, f.key)) continue;
    std::visit(
        [&](auto member) {
          auto& v = c.*member;
          using V = std::remove_reference_t<decltype(v)>;
          if constexpr (std::is_same_v<V, PositionEncoding>)
            v = parse_position_encoding(h5::read_attribute<std::string>(root, f.key),
                                        cat("attribute ", f.key));
          else
            v = h5::read_attribute<V>(root, f.key);
        },
        f.member);
  }
  return c;
}

void write_tensors(hid_t root, const std::string& group, const ParamLayout& layout,
                   const float* base) {
  for (const ParamInfo& p : layout.params())
    h5::write_dataset<float>(root, group + "/" + p.name, base + p.offset, p.shape,
                             h5::Storage::kChecksummed);
}

// Every tensor's shape before anything is allocated for them: attributes edited to a far
// larger model than the file holds are a mismatch, not an allocation of the larger model.
void check_tensor_shapes(hid_t root, const std::string& group, const ParamLayout& layout,
                         const std::string& path) {
  for (const ParamInfo& p : layout.params()) {
    const std::string name = group + "/" + p.name;
    if (!h5::exists(root, name))
      fail_user(path, ": missing tensor ", name, " (the file is incomplete or not from par)");
    if (h5::dataset_shape(root, name) != p.shape)
      fail_user(path, ": tensor ", name, " has the wrong shape for the model in its attributes");
  }
}

// Writes through `fill` into PATH.tmp, then renames over PATH. The file's metadata carries
// checksums as its tensors do (h5::FileFormat::kChecksummedMetadata).
template <typename F>
void write_atomically(const std::string& path, F&& fill) {
  const std::string tmp = path + ".tmp";
  try {
    h5::Object file = h5::create_file(tmp, h5::FileFormat::kChecksummedMetadata);
    fill(file.id());
    file.close(cat("cannot write file ", tmp));
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail_user("cannot move ", tmp, " to ", path, ": check the directory's permissions");
  }
}

}  // namespace

void write_export(const std::string& path, const ModelConfig& model, int64_t step,
                  const float* params) {
  const ParamLayout layout(model);
  write_atomically(path, [&](hid_t root) {
    h5::write_attribute<std::string>(root, "format", kExportFormat);
    write_model_attributes(root, model);
    h5::write_attribute<int64_t>(root, "step", step);
    write_tensors(root, "params", layout, params);
  });
}

namespace {

std::string read_format(hid_t root, const std::string& path) {
  if (!h5::has_attribute(root, "format"))
    fail_user(path, " is not a par exported model (no 'format' attribute)");
  const std::string f = h5::read_attribute<std::string>(root, "format");
  if (f != kExportFormat)
    fail_user(path, " has format '", f, "', not a par exported model (", kExportFormat,
              "); a checkpoint is a directory (OUT/checkpoints/step-N)");
  return f;
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec);
}

ModelConfig read_valid_config(hid_t root, const std::string& path) {
  ModelConfig c;
  try {
    c = read_model_attributes(root);
    c.validate();
  } catch (const UserError& e) {
    fail_user(path, ": inconsistent model configuration: ", e.what());
  }
  return c;
}

// A checkpoint directory (OUT/checkpoints/step-N) of manifest `manifest`: all but its
// tensors.
ModelFile checkpoint_description(const std::string& path, const Manifest& manifest) {
  ModelFile m;
  m.path = path;
  m.format = kCheckpointFormat;
  m.model = manifest.model;
  m.position = manifest.position;
  m.config_text = read_checkpoint_config(path);
  m.dp = manifest.dp;
  m.sp = manifest.sp;
  m.tp = manifest.tp;
  m.pieces = manifest.entries.size();
  return m;
}

// An exported model (one HDF5 file) open at `root`: all but its tensors, whose shapes are
// checked.
ModelFile exported_description(hid_t root, const std::string& path, bool with_optimizer) {
  ModelFile m;
  m.path = path;
  if (with_optimizer)
    fail_user(path, " is an exported model without optimizer state; training resumes only "
                    "from a checkpoint directory (OUT/checkpoints/step-N)");
  m.format = read_format(root, path);
  m.model = read_valid_config(root, path);
  m.position.step = h5::read_attribute<int64_t>(root, "step");
  const ParamLayout layout(m.model);
  check_tensor_shapes(root, "params", layout, path);
  m.checksummed = true;
  for (const ParamInfo& p : layout.params())
    m.checksummed = m.checksummed && h5::has_checksums(root, "params/" + p.name);
  return m;
}

// Each visited tensor copied into m's state (`layout` order), allocated at the first
// visit: the visits come only after the file's claims were checked against its datasets,
// so attributes or a manifest claiming a far larger model are refused before the
// allocation.
TensorVisitor copy_into(ModelFile& m, const ParamLayout& layout, bool with_optimizer) {
  return [&m, &layout, with_optimizer](int kind, const ParamInfo& p, const float* values) {
    if (m.params.empty()) {
      m.params.assign(size_t(layout.total()), 0.0f);
      if (with_optimizer) {
        m.adam_m.assign(m.params.size(), 0.0f);
        m.adam_v.assign(m.params.size(), 0.0f);
      }
    }
    std::vector<float>* state[3] = {&m.params, &m.adam_m, &m.adam_v};
    std::copy_n(values, p.numel, state[kind]->begin() + p.offset);
  };
}

// A checkpoint directory's tensors to `visit`, or into the ModelFile when it is null.
ModelFile from_checkpoint_directory(const std::string& path, bool with_optimizer,
                                   const TensorVisitor* visit) {
  const Manifest manifest = read_manifest(path);
  ModelFile m = checkpoint_description(path, manifest);
  const ParamLayout layout(m.model);
  const TensorVisitor copy = visit ? nullptr : copy_into(m, layout, with_optimizer);
  visit_checkpoint(path, manifest, layout, with_optimizer, visit ? *visit : copy);
  return m;
}

// An exported model's, the same way.
ModelFile from_exported_model(const std::string& path, bool with_optimizer,
                              const TensorVisitor* visit) {
  h5::Object file = h5::open_file(path);
  ModelFile m = exported_description(file.id(), path, with_optimizer);
  const ParamLayout layout(m.model);
  const TensorVisitor copy = visit ? nullptr : copy_into(m, layout, false);
  const TensorVisitor& to = visit ? *visit : copy;
  for (const ParamInfo& p : layout.params()) {
    const std::string name = "params/" + p.name;
    std::vector<float> values;
    try {
      values = h5::read_dataset<float>(file.id(), name);
    } catch (const UserError& e) {
      // Its shape was read: what fails now is its data (with checksums: a flipped bit).
      fail_user(path, ": tensor ", name, " is damaged (", e.what(),
                "): export it again from its checkpoint");
    }
    to(0, p, values.data());
  }
  return m;
}

// Whether the checkpoint directory `dir` reads whole (one tensor held at a time).
bool checkpoint_reads(const std::string& dir, bool with_optimizer) {
  try {
    const TensorVisitor ignore = [](int, const ParamInfo&, const float*) {};
    from_checkpoint_directory(dir, with_optimizer, &ignore);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// The checkpoint or export `given` names, its tensors to `visit` or (null) into the
// ModelFile. For a run directory, its newest complete checkpoint, or, where that is
// damaged, the name of the newest that reads (not taken silently: an export or evaluation
// of an older step than asked for would pass unnoticed).
ModelFile read_resolved(const std::string& given, bool with_optimizer, const TensorVisitor* visit) {
  const auto read = [&](const std::string& path) {
    return is_directory(path) ? from_checkpoint_directory(path, with_optimizer, visit)
                              : from_exported_model(path, with_optimizer, visit);
  };
  const std::string path = resolve_checkpoint(given);
  if (!is_directory(path) || path == given) return read(path);
  try {
    return read(path);
  } catch (const UserError& e) {
    for (const std::string& older : checkpoints_newest_first(given)) {
      // Damaged too: the first error is the one reported.
      if (older == path || !checkpoint_reads(older, with_optimizer)) continue;
      fail_user(e.what(), "; the run's newest intact checkpoint is ", older,
                " (pass it as --checkpoint)");
    }
    throw;
  }
}

}  // namespace

ModelFile read_model_file(const std::string& given, bool with_optimizer) {
  return read_resolved(given, with_optimizer, nullptr);
}

ModelFile visit_model_file(const std::string& given, bool with_optimizer,
                           const TensorVisitor& visit) {
  return read_resolved(given, with_optimizer, &visit);
}

ModelFile export_model_file(const std::string& given, const std::string& out) {
  ModelFile f;
  write_atomically(out, [&](hid_t root) {
    f = visit_model_file(given, false, [&](int, const ParamInfo& p, const float* values) {
      h5::write_dataset<float>(root, "params/" + p.name, values, p.shape,
                               h5::Storage::kChecksummed);
    });
    h5::write_attribute<std::string>(root, "format", kExportFormat);
    write_model_attributes(root, f.model);
    h5::write_attribute<int64_t>(root, "step", f.position.step);
  });
  return f;
}

ModelConfig read_model_config(const std::string& given) {
  const std::string path = resolve_checkpoint(given);
  if (is_directory(path)) return read_manifest(path).model;
  h5::Object file = h5::open_file(path);
  read_format(file.id(), path);
  return read_valid_config(file.id(), path);
}

void require_same_model(const ModelConfig& expected, const ModelConfig& found,
                        const std::string& path) {
  if (!expected.same_shape(found))
    fail_user(path, " holds a different model (", found.summary(), ") than the configuration (",
              expected.summary(), "): use the configuration it was trained with, or another --out");
}

}  // namespace par
