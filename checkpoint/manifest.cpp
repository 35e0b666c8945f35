#include "checkpoint/manifest.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <sstream>
#include <type_traits>
#include <variant>

#include "core/error.h"

namespace par {

std::vector<int64_t> ManifestEntry::shape() const {
  std::vector<int64_t> s = global_shape;
  if (axis >= 0) s[size_t(axis)] = count;
  return s;
}

uint64_t checksum_bytes(const void* p, size_t n, bool legacy) {
  uint64_t h = legacy ? 1469598103934665603ull : 14695981039346656037ull;
  const auto* bytes = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}

uint64_t checksum(const float* x, int64_t n, bool legacy) {
  return checksum_bytes(x, size_t(n) * sizeof(float), legacy);
}

namespace {

std::string exact(double x) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

std::string hex64(uint64_t x) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(x));
  return hex;
}

std::string dims(const std::vector<int64_t>& d) {
  std::string out;
  for (size_t i = 0; i < d.size(); ++i) out += cat(i ? "," : "", d[i]);
  return out;
}

}  // namespace

std::string Manifest::header_text() const {
  std::ostringstream os;
  const TrainingPosition& p = position;
  os << "par-checkpoint " << kManifestVersion << "\n"
     << "step " << p.step << "\nnext_batch " << p.next_batch << "\nseed " << p.seed << "\nlr "
     << exact(p.lr) << "\nlayout " << dp << " " << sp << " " << tp << "\n"
     << "model";
  // Optional fields at their default are left out: manifests of models without them stay
  // as they were.
  const ModelConfig m = model.resolved();
  for (const ModelField& f : kModelFields) {
    if (!f.recorded(m)) continue;
    os << " " << f.key << "=";
    std::visit(
        [&](auto member) {
          const auto& v = m.*member;
          if constexpr (std::is_same_v<decltype(member), PositionEncoding ModelConfig::*>)
            os << position_encoding_name(v);
          else if constexpr (std::is_same_v<decltype(member), double ModelConfig::*>)
            os << exact(v);
          else
            os << v;
        },
        f.member);
  }
  os << "\n";
  return os.str();
}

std::string Manifest::entries_text() const {
  std::ostringstream os;
  for (const ManifestEntry& e : entries) {
    os << "tensor " << e.kind << " " << e.name << " " << dims(e.global_shape) << " " << e.axis
       << " " << e.begin << " " << e.count << " " << e.file << " " << hex64(e.checksum) << "\n";
  }
  return os.str();
}

std::string Manifest::seal(const std::string& text) {
  return text + "checksum " + hex64(checksum_bytes(text.data(), text.size())) + "\n";
}

namespace {

template <typename V>
V number(const std::string& word, const std::string& path, int line) {
  V v{};
  const auto r = std::from_chars(word.data(), word.data() + word.size(), v);
  if (r.ec != std::errc() || r.ptr != word.data() + word.size())
    fail_user(path, " line ", line, ": '", word, "' is not a number: the manifest is corrupt");
  return v;
}

}  // namespace

Manifest Manifest::parse(const std::string& sealed, const std::string& path) {
  // Versions 2 and 3 end with the checksum of everything before its line: check it first.
  std::string text = sealed;
  const bool v2 = sealed.rfind("par-checkpoint 2\n", 0) == 0;
  if (v2 || sealed.rfind("par-checkpoint 3\n", 0) == 0) {
    const size_t at = sealed.rfind("\nchecksum ");
    if (at == std::string::npos)
      fail_user(path, " has no checksum line: the manifest is truncated or was edited; use "
                "an earlier checkpoint");
    text = sealed.substr(0, at + 1);
    std::istringstream last(sealed.substr(at + 1));
    std::string word, value, more;
    last >> word >> value;
    if ((last >> more) || value != hex64(checksum_bytes(text.data(), text.size(), v2)))
      fail_user(path, " does not match its checksum: the manifest was edited or is damaged; "
                "use an earlier checkpoint");
  }
  Manifest m;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  bool header = false, have_model = false, have_step = false;
  while (std::getline(in, line)) {
    ++n;
    std::istringstream ls(line);
    std::vector<std::string> w;
    for (std::string t; ls >> t;) w.push_back(t);
    if (w.empty()) continue;
    auto need = [&](size_t k) {
      if (w.size() != k) fail_user(path, " line ", n, ": expected ", k - 1, " values after '", w[0], "'");
    };
    if (w[0] == "par-checkpoint") {
      need(2);
      if (w[1] != "1" && w[1] != "2" && w[1] != "3")
        fail_user(path, ": manifest version ", w[1], " is newer than this par reads (",
                  kManifestVersion, ")");
      m.version = w[1][0] - '0';
      header = true;
    } else if (w[0] == "step") {
      need(2);
      m.position.step = number<int64_t>(w[1], path, n);
      have_step = true;
    } else if (w[0] == "next_batch") {
      need(2);
      m.position.next_batch = number<int64_t>(w[1], path, n);
    } else if (w[0] == "seed") {
      need(2);
      m.position.seed = number<uint64_t>(w[1], path, n);
    } else if (w[0] == "lr") {
      need(2);
      m.position.lr = number<double>(w[1], path, n);
    } else if (w[0] == "layout") {
      need(4);
      m.dp = number<int>(w[1], path, n);
      m.sp = number<int>(w[2], path, n);
      m.tp = number<int>(w[3], path, n);
    } else if (w[0] == "model") {
      for (size_t i = 1; i < w.size(); ++i) {
        const auto eq = w[i].find('=');
        if (eq == std::string::npos) fail_user(path, " line ", n, ": expected key=value, got '", w[i], "'");
        const std::string k = w[i].substr(0, eq), v = w[i].substr(eq + 1);
        const ModelField* f = nullptr;
        for (const ModelField& g : kModelFields)
          if (k == g.key) f = &g;
        if (!f) fail_user(path, " line ", n, ": unknown model key '", k, "'");
        std::visit(
            [&](auto member) {
              auto& value = m.model.*member;
              using V = std::remove_reference_t<decltype(value)>;
              if constexpr (std::is_same_v<V, PositionEncoding>)
                value = parse_position_encoding(v, cat(path, " line ", n, ": ", k));
              else
                value = number<V>(v, path, n);
            },
            f->member);
      }
      have_model = true;
    } else if (w[0] == "tensor") {
      need(9);
      ManifestEntry e;
      e.kind = w[1];
      e.name = w[2];
      std::istringstream ds(w[3]);
      for (std::string d; std::getline(ds, d, ',');) e.global_shape.push_back(number<int64_t>(d, path, n));
      e.axis = number<int>(w[4], path, n);
      e.begin = number<int64_t>(w[5], path, n);
      e.count = number<int64_t>(w[6], path, n);
      e.file = w[7];
      e.checksum = std::strtoull(w[8].c_str(), nullptr, 16);
      const bool negative_dim = std::any_of(e.global_shape.begin(), e.global_shape.end(),
                                            [](int64_t d) { return d < 0; });
      if (negative_dim || e.axis >= int(e.global_shape.size()) || e.axis < -1 || e.begin < 0 ||
          e.count < 0 ||
          (e.axis >= 0 && e.begin > e.global_shape[size_t(e.axis)] - e.count) ||
          e.file.find('/') != std::string::npos)
        fail_user(path, " line ", n, ": the tensor record is inconsistent: the manifest is corrupt");
      m.entries.push_back(std::move(e));
    } else {
      fail_user(path, " line ", n, ": unknown record '", w[0], "': not a par checkpoint manifest");
    }
  }
  if (!header || !have_model || !have_step)
    fail_user(path, " is not a complete par checkpoint manifest (header, step or model missing)");
  // What the checksum cannot vouch for: a manifest sealed again after an edit, or a writer
  // of another tool's.
  if (m.position.step < 0 || m.position.next_batch < 0)
    fail_user(path, ": step ", m.position.step, " and next_batch ", m.position.next_batch,
              " must be >= 0: the manifest is corrupt");
  if (m.dp < 1 || m.sp < 1 || m.tp < 1)
    fail_user(path, ": layout ", m.dp, " ", m.sp, " ", m.tp, " is not a layout of ranks (each "
              "must be >= 1): the manifest is corrupt");
  try {
    m.model.validate();
  } catch (const UserError& e) {
    fail_user(path, ": inconsistent model configuration: ", e.what());
  }
  return m;
}

}  // namespace par
