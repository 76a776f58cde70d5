#include "optim.h"

#include <ATen/Parallel.h>

#include <algorithm>
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
// grad_scale: the gradient's clipping, applied as it is read (g * scale in float, as an in-place scaling would).
void adamw_cpu_float(float* p, const float* g, float* m, float* v, int64_t n, float decay, float beta1, float beta2,
                     float sqrt_bc2, float eps, float step_size, float grad_scale) {
  const float one_minus_b1 = 1 - beta1, one_minus_b2 = 1 - beta2;
  const bool scaled = grad_scale != 1;
  at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__SSE2__)
    const __m128 b1 = _mm_set1_ps(beta1), b2 = _mm_set1_ps(beta2), c1 = _mm_set1_ps(one_minus_b1),
                 c2 = _mm_set1_ps(one_minus_b2), sb = _mm_set1_ps(sqrt_bc2), ep = _mm_set1_ps(eps),
                 dc = _mm_set1_ps(decay), st = _mm_set1_ps(step_size), gs = _mm_set1_ps(grad_scale);
    for (; i + 4 <= end; i += 4) {
      const __m128 gi = scaled ? _mm_mul_ps(_mm_loadu_ps(g + i), gs) : _mm_loadu_ps(g + i);
      const __m128 mi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), b1), _mm_mul_ps(gi, c1));
      const __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), b2), _mm_mul_ps(_mm_mul_ps(gi, gi), c2));
      _mm_storeu_ps(m + i, mi);
      _mm_storeu_ps(v + i, vi);
      const __m128 den = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), sb), ep);
      _mm_storeu_ps(p + i, _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(p + i), dc), _mm_mul_ps(st, _mm_div_ps(mi, den))));
    }
#endif
    for (; i < end; ++i) {
      const float gi = scaled ? g[i] * grad_scale : g[i];
      const float mi = m[i] * beta1 + gi * one_minus_b1;
      const float vi = v[i] * beta2 + gi * gi * one_minus_b2;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay + step_size * (mi / (std::sqrt(vi) / sqrt_bc2 + eps));
    }
  });
}

// Sum of squares of x[0..n): float partial sums in four vectors (16 lanes) over blocks of 1024 elements, each block's
// lanes folded in a fixed order into double, so a sum's float rounding spans at most 64 terms.
double sum_squares(const float* x, int64_t n) {
  double total = 0;
  for (int64_t b = 0; b < n; b += 1024) {
    const int64_t e = std::min(n, b + 1024);
    int64_t i = b;
#if defined(__SSE2__)
    __m128 a[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (; i + 16 <= e; i += 16)
      for (int j = 0; j < 4; ++j) {
        const __m128 xi = _mm_loadu_ps(x + i + 4 * j);
        a[j] = _mm_add_ps(a[j], _mm_mul_ps(xi, xi));
      }
    alignas(16) float lanes[16];
    for (int j = 0; j < 4; ++j) _mm_store_ps(lanes + 4 * j, a[j]);
    for (float l : lanes) total += l;
#endif
    for (; i < e; ++i) total += static_cast<double>(x[i]) * x[i];
  }
  return total;
}

// What the loops above read: contiguous float32 in CPU memory.
bool cpu_float32(const at::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(); }

bool fusable_on_cpu(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v) {
  return cpu_float32(p) && cpu_float32(g) && cpu_float32(m) && cpu_float32(v) && g.numel() == p.numel();
}

// The global L2 norm of the parameters' gradients (those that have one). CPU float32 gradients: one parallel pass
// over fixed chunks of 64 Ki elements (the chunks, not the threads, decide the order of the sums, so the norm is the
// same at any thread count), where per-tensor foreach norms read the gradients on one thread (~85 ms a CE step for
// GPT-2 124M + mapper, at one thread or two). Elsewhere: foreach.
double grad_norm(const std::vector<at::Tensor>& params) {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  bool cpu_float = true;
  for (const auto& p : params) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    cpu_float = cpu_float && cpu_float32(g);
  }
  if (grads.empty()) return 0;
  if (!cpu_float) return at::stack(at::_foreach_norm(grads, 2)).to(at::kFloat).norm(2).item<double>();
  constexpr int64_t kChunk = int64_t(1) << 16;
  struct Chunk {
    const float* x;
    int64_t n;
  };
  std::vector<Chunk> chunks;
  for (const auto& g : grads)
    for (int64_t i = 0; i < g.numel(); i += kChunk) chunks.push_back({g.data_ptr<float>() + i, std::min(kChunk, g.numel() - i)});
  std::vector<double> sums(chunks.size());
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) sums[c] = sum_squares(chunks[c].x, chunks[c].n);
  });
  double total = 0;
  for (double s : sums) total += s;
  return std::sqrt(total);
}

}  // namespace

// CPU float32: the fused loop above. Elsewhere (CUDA, other dtypes): multi-tensor (foreach) updates, a handful of
// kernels for all parameters instead of ~6 per parameter, as eager PyTorch's AdamW does on CUDA.
void AdamW::step(double lr, double grad_scale) {
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
                      static_cast<float>(cfg_.eps), static_cast<float>(-lr / bc1), static_cast<float>(grad_scale));
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
  if (grad_scale != 1) at::_foreach_mul_(g, grad_scale);
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

double AdamW::clip_and_step(double lr, double max_norm) {
  const double norm = grad_norm(params_);
  step(lr, max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0);
  return norm;
}

}  // namespace semicap
