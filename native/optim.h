// AdamW (decoupled weight decay, as torch.optim.AdamW), learning-rate schedule, gradient clipping.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <string>
#include <vector>

namespace semicap {

struct AdamWConfig {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
};

class AdamW {
 public:
  AdamW(std::vector<at::Tensor> params, std::vector<std::string> names, AdamWConfig cfg);
  // Gradients scaled by grad_scale (their clipping), then the update. On the CPU the scale is applied as each
  // gradient is read, in the same float multiply as scaling it in place first, so the result is bitwise the same.
  void step(double lr, double grad_scale = 1);
  // Clips the gradients' global L2 norm to max_norm (<= 0: no clipping) through step's grad_scale; returns the norm
  // before clipping.
  double clip_and_step(double lr, double max_norm);
  void zero_grad();
  int64_t steps() const { return step_; }
  // Moments as named tensors ("<param>.exp_avg", "<param>.exp_avg_sq") plus the step count, for checkpoints.
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& named, int64_t step);
  const std::vector<at::Tensor>& params() const { return params_; }

 private:
  std::vector<at::Tensor> params_, m_, v_;
  std::vector<std::string> names_;
  AdamWConfig cfg_;
  int64_t step_ = 0;
};

// Linear warm-up to the base rate over `warmup` steps, then "linear" decay to 0 at `total`, "cosine", or "constant".
double schedule_lr(double base, int64_t step, int64_t warmup, int64_t total, const std::string& kind);

}  // namespace semicap
