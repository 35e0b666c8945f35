// The dense (no sparsity) peak matrix-product rates of the GPUs par is measured on, so
// that `par bench` can say what share of the card a step uses. Vendor figures, TFLOP/s:
// float32 on the CUDA cores, TF32 and bf16 on the tensor cores.
#pragma once

#include <optional>
#include <string>

namespace par {

struct DensePeak {
  std::string card;  // the name matched, e.g. "H200"
  double tflops = 0;
};

// The peak for a device description (the CUDA backend's, which names the card) and a
// --precision (fp32, tf32, bf16); nullopt for an unknown card.
std::optional<DensePeak> dense_peak(const std::string& device, const std::string& precision);

}  // namespace par
