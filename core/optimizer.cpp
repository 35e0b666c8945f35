#include "core/optimizer.h"

#include <cmath>
#include <utility>

#include "core/error.h"

namespace par {

void OptimizerConfig::validate() const {
  for (const auto& [name, v] : {std::pair<const char*, double>{"lr", lr}, {"min-lr", min_lr},
                                {"beta1", beta1}, {"beta2", beta2}, {"adam-eps", eps},
                                {"weight-decay", weight_decay}, {"clip-norm", clip_norm}})
    if (!std::isfinite(v)) fail_user("--", name, " must be a finite number (got ", v, ")");
  if (!(lr >= 0)) fail_user("--lr must be >= 0 (got ", lr, ")");
  if (!(min_lr >= 0 && min_lr <= lr)) fail_user("--min-lr must be in [0, --lr] (got ", min_lr, ")");
  if (warmup_steps < 0) fail_user("--warmup-steps must be >= 0");
  if (schedule != "constant" && schedule != "cosine")
    fail_user("--schedule must be 'constant' or 'cosine' (got '", schedule, "')");
  if (!(beta1 >= 0 && beta1 < 1)) fail_user("--beta1 must be in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) fail_user("--beta2 must be in [0, 1)");
  if (!(eps > 0)) fail_user("--adam-eps must be > 0");
  if (!(weight_decay >= 0)) fail_user("--weight-decay must be >= 0");
  if (!(clip_norm >= 0))
    fail_user("--clip-norm must be >= 0 (got ", clip_norm, "); 0 turns clipping off");
}

double learning_rate(const OptimizerConfig& c, int64_t step) {
  // The rate of a step is where the schedule stands once the step is done: warm-up's last
  // step reaches the peak, the decay's first is already below it, and the run's last step
  // (total_steps - 1) reaches min_lr.
  if (step < c.warmup_steps) return c.lr * double(step + 1) / double(c.warmup_steps);
  if (c.schedule == "constant") return c.lr;
  const int64_t span = std::max<int64_t>(1, c.total_steps - c.warmup_steps);
  const double progress = std::min(1.0, double(step - c.warmup_steps + 1) / double(span));
  return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

std::vector<AdamSpan> adam_spans(const ParamLayout& layout, bool weight_decay) {
  std::vector<AdamSpan> spans;
  for (const ParamInfo& p : layout.params()) {
    PAR_ASSERT(spans.empty() || p.offset >= spans.back().begin, "parameters out of order");
    const bool decays =
        weight_decay && (p.kind == ParamKind::kMatrix || p.kind == ParamKind::kEmbedding);
    if (!spans.empty() && spans.back().decays == decays) continue;  // extends the last span
    if (!spans.empty()) spans.back().end = p.offset;
    spans.push_back(AdamSpan{spans.empty() ? 0 : p.offset, 0, decays});
  }
  if (!spans.empty()) spans.back().end = layout.total();
  return spans;
}

template <typename T>
Adam<T>::Adam(const OptimizerConfig& cfg, const ParamLayout& layout, Ops<T>& ops)
    : cfg_(cfg), layout_(layout), ops_(ops) {
  const size_t bytes = size_t(layout.total()) * sizeof(T);
  m_ = static_cast<T*>(ops_.allocate(bytes));
  v_ = static_cast<T*>(ops_.allocate(bytes));
  ops_.fill(m_, layout.total(), T(0));
  ops_.fill(v_, layout.total(), T(0));
}

template <typename T>
Adam<T>::~Adam() {
  ops_.deallocate(v_);
  ops_.deallocate(m_);
}

template <typename T>
OptimizerStats Adam<T>::step(T* params, const T* grads, int64_t step, HostGroup tp) {
  OptimizerStats st;
  double sq = 0;
  if (tp.size() == 1) {
    sq = ops_.sum_squares(grads, layout_.total());  // alignment gaps are zero
  } else {
    for (const ParamInfo& p : layout_.params())
      if (p.sharded() || tp.rank() == 0) sq += ops_.sum_squares(grads + p.offset, p.numel);
    sq = tp->all_reduce_value(sq);
  }
  st.grad_norm = std::sqrt(sq);
  if (cfg_.clip_norm > 0 && st.grad_norm > cfg_.clip_norm)
    st.clip_scale = cfg_.clip_norm / st.grad_norm;
  st.lr = learning_rate(cfg_, step);
  AdamStep a;
  a.lr = st.lr;
  a.beta1 = cfg_.beta1;
  a.beta2 = cfg_.beta2;
  a.eps = cfg_.eps;
  a.t = step + 1;
  a.grad_scale = st.clip_scale;
  a.weight_decay = cfg_.weight_decay;
  const std::vector<AdamSpan> spans = adam_spans(layout_, cfg_.weight_decay > 0);
  ops_.adam_update_spans(params, m_, v_, grads, spans.data(), int64_t(spans.size()), a);
  return st;
}

template class Adam<float>;
template class Adam<double>;

}  // namespace par
