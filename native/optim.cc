#include "optim.h"

#include <cmath>

#include "errors.h"

namespace semicap {

AdamW::AdamW(std::vector<at::Tensor> params, std::vector<std::string> names, AdamWConfig cfg)
    : params_(std::move(params)), names_(std::move(names)), cfg_(cfg) {
  for (auto& p : params_) {
    m_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    v_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
  }
}

void AdamW::zero_grad() {
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

// Multi-tensor (foreach) updates: a handful of kernels for all parameters instead of ~6 per parameter, which is
// what eager PyTorch's default AdamW does on CUDA. Same arithmetic as torch.optim.AdamW.
void AdamW::step(double lr) {
  c10::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1 - std::pow(cfg_.beta1, static_cast<double>(step_));
  const double bc2 = 1 - std::pow(cfg_.beta2, static_cast<double>(step_));
  std::vector<at::Tensor> p, g, m, v;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    p.push_back(params_[i]);
    g.push_back(params_[i].grad());
    m.push_back(m_[i]);
    v.push_back(v_[i]);
  }
  if (p.empty()) return;
  at::_foreach_mul_(p, 1 - lr * cfg_.weight_decay);
  at::_foreach_mul_(m, cfg_.beta1);
  at::_foreach_add_(m, g, 1 - cfg_.beta1);
  at::_foreach_mul_(v, cfg_.beta2);
  at::_foreach_addcmul_(v, g, g, 1 - cfg_.beta2);
  std::vector<at::Tensor> denom = at::_foreach_sqrt(v);
  at::_foreach_div_(denom, std::sqrt(bc2));
  at::_foreach_add_(denom, cfg_.eps);
  at::_foreach_addcdiv_(p, m, denom, -lr / bc1);
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(names_[i] + ".exp_avg", m_[i]);
    out.emplace_back(names_[i] + ".exp_avg_sq", v_[i]);
  }
  return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, at::Tensor>>& named, int64_t step) {
  c10::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> by_name(named.begin(), named.end());
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [suffix, dst] : {std::make_pair(".exp_avg", &m_[i]), std::make_pair(".exp_avg_sq", &v_[i])}) {
      auto it = by_name.find(names_[i] + suffix);
      check(it != by_name.end(), "E_CHECKPOINT", "optimizer state lacks " + names_[i] + suffix);
      check(it->second.sizes() == dst->sizes(), "E_CHECKPOINT", "optimizer state " + names_[i] + suffix + " is mis-shaped");
      dst->copy_(it->second);
    }
  }
  step_ = step;
}

double schedule_lr(double base, int64_t step, int64_t warmup, int64_t total, const std::string& kind) {
  if (warmup > 0 && step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (kind == "constant" || total <= warmup) return base;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  progress = std::min(1.0, std::max(0.0, progress));
  if (kind == "cosine") return base * 0.5 * (1 + std::cos(M_PI * progress));
  return base * (1 - progress);
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0;
  double total = at::stack(at::_foreach_norm(grads, 2)).to(at::kFloat).norm(2).item<double>();
  if (max_norm > 0 && total > max_norm) at::_foreach_mul_(grads, max_norm / (total + 1e-6));
  return total;
}

}  // namespace semicap
