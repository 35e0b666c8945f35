// The table of dense peak rates (gpu_peaks.h).
#include "launch/gpu_peaks.h"

namespace par {

std::optional<DensePeak> dense_peak(const std::string& device, const std::string& precision) {
  struct Card {
    const char* name;
    double fp32, tf32, bf16;
  };
  // Longer names first: "H100 PCIe" before "H100", "H200 NVL" before "H200".
  static const Card kCards[] = {
      {"H100 PCIe", 51.2, 378.0, 756.0}, {"H100 NVL", 60.0, 417.5, 835.0},
      {"H200 NVL", 60.0, 417.5, 835.0},  {"GH200", 66.9, 494.7, 989.4},
      {"H200", 66.9, 494.7, 989.4},
      {"H100", 66.9, 494.7, 989.4},      {"A100", 19.5, 156.0, 312.0},
  };
  for (const Card& c : kCards) {
    if (device.find(c.name) == std::string::npos) continue;
    if (precision == "bf16") return DensePeak{c.name, c.bf16};
    if (precision == "tf32") return DensePeak{c.name, c.tf32};
    if (precision == "fp32") return DensePeak{c.name, c.fp32};
    return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace par
