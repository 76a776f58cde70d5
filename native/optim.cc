#include "optim.h"

#include <ATen/Parallel.h>

#include <cmath>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

namespace {

// One pass over a float32 CPU parameter: reads p, g, m, v once and writes p, m, v once, with no temporaries.
// The foreach sequence below allocated two parameter-sized buffers per tensor per step, and fresh memory is what
// costs most on CPU (page faults). Same arithmetic, in float, as the foreach path, element for element: SSE2's
// sqrtps / divps / mulps / addps round exactly as their scalar forms, so the vector loop gives the scalar loop's bits.
// (Written out because the compiler keeps the scalar loop scalar: std::sqrt may set errno, so it does not vectorise
// it, and a scalar sqrt + two divides per element made this pass ~2x slower than memory, ~20% of a CE step.)
void adamw_cpu_float(float* p, const float* g, float* m, float* v, int64_t n, float decay, float beta1, float beta2,
                     float sqrt_bc2, float eps, float step_size) {
  const float one_minus_b1 = 1 - beta1, one_minus_b2 = 1 - beta2;
  at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__SSE2__)
    const __m128 b1 = _mm_set1_ps(beta1), b2 = _mm_set1_ps(beta2), c1 = _mm_set1_ps(one_minus_b1),
                 c2 = _mm_set1_ps(one_minus_b2), sb = _mm_set1_ps(sqrt_bc2), ep = _mm_set1_ps(eps),
                 dc = _mm_set1_ps(decay), st = _mm_set1_ps(step_size);
    for (; i + 4 <= end; i += 4) {
      const __m128 gi = _mm_loadu_ps(g + i);
      const __m128 mi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), b1), _mm_mul_ps(gi, c1));
      const __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), b2), _mm_mul_ps(_mm_mul_ps(gi, gi), c2));
      _mm_storeu_ps(m + i, mi);
      _mm_storeu_ps(v + i, vi);
      const __m128 den = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), sb), ep);
      _mm_storeu_ps(p + i, _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(p + i), dc), _mm_mul_ps(st, _mm_div_ps(mi, den))));
    }
#endif
    for (; i < end; ++i) {
      const float gi = g[i];
      const float mi = m[i] * beta1 + gi * one_minus_b1;
      const float vi = v[i] * beta2 + gi * gi * one_minus_b2;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay + step_size * (mi / (std::sqrt(vi) / sqrt_bc2 + eps));
    }
  });
}

bool fusable_on_cpu(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v) {
  for (const at::Tensor* t : {&p, &g, &m, &v})
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || !t->is_contiguous()) return false;
  return g.numel() == p.numel();
}

}  // namespace

// CPU float32: the fused loop above. Elsewhere (CUDA, other dtypes): multi-tensor (foreach) updates, a handful of
// kernels for all parameters instead of ~6 per parameter, as eager PyTorch's AdamW does on CUDA.
void AdamW::step(double lr) {
  c10::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1 - std::pow(cfg_.beta1, static_cast<double>(step_));
  const double bc2 = 1 - std::pow(cfg_.beta2, static_cast<double>(step_));
  std::vector<at::Tensor> p, g, m, v;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& grad = params_[i].grad();
    if (!grad.defined()) continue;
    if (fusable_on_cpu(params_[i], grad, m_[i], v_[i])) {
      adamw_cpu_float(params_[i].data_ptr<float>(), grad.data_ptr<float>(), m_[i].data_ptr<float>(),
                      v_[i].data_ptr<float>(), params_[i].numel(), static_cast<float>(1 - lr * cfg_.weight_decay),
                      static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2), static_cast<float>(std::sqrt(bc2)),
                      static_cast<float>(cfg_.eps), static_cast<float>(-lr / bc1));
      // Raw writes skip autograd's version counter; bump it so caches keyed on it (GPT-2's wte^T) see the change.
      params_[i].unsafeGetTensorImpl()->bump_version();
      continue;
    }
    p.push_back(params_[i]);
    g.push_back(grad);
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
