#include "pretrain.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>

#include "errors.h"
#include "losses.h"
#include "optim.h"

namespace semicap {
namespace {

// Rows step*B .. step*B+B-1 of per-epoch permutations of [0, n), seeded by (seed, epoch).
at::Tensor batch_rows(int64_t n, int64_t step, int64_t B, uint64_t seed) {
  std::vector<int64_t> out;
  int64_t cached_epoch = -1;
  at::Tensor perm;
  for (int64_t i = 0; i < B; ++i) {
    int64_t c = step * B + i, epoch = c / n;
    if (epoch != cached_epoch) {
      at::Generator g = at::detail::createCPUGenerator(seed * 1000003ull + static_cast<uint64_t>(epoch) + 17);
      perm = at::randperm(n, g, at::TensorOptions().dtype(at::kLong));
      cached_epoch = epoch;
    }
    out.push_back(perm[c % n].item<int64_t>());
  }
  return at::tensor(out, at::kLong);
}

TrainSummary loop(ParamStore& params, const PretrainConfig& cfg, const char* stage, int64_t examples_per_step, const TrainCallbacks& cb,
                  const std::function<at::Tensor(int64_t step)>& loss_at) {
  check(cfg.steps >= 1 && cfg.batch_size >= 1 && cfg.lr > 0, "E_VALUE", "steps and batchSize must be >= 1 and lr > 0");
  params.set_requires_grad(true);
  AdamW opt(params.all(), params.names(), AdamWConfig{cfg.lr, cfg.beta1, cfg.beta2, cfg.adam_eps, cfg.weight_decay});
  struct Reset {
    ParamStore& p;
    AdamW& o;
    ~Reset() { o.zero_grad(); p.set_requires_grad(false); }
  } reset{params, opt};
  TrainSummary s;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < cfg.steps; ++step) {
    if (cb.should_stop()) fail("E_ABORTED", "training aborted at step " + std::to_string(step));
    auto ts = std::chrono::steady_clock::now();
    Progress p;
    p.stage = stage;
    p.step = step + 1;
    p.total = cfg.steps;
    p.lr = schedule_lr(cfg.lr, step, cfg.warmup, cfg.steps, cfg.schedule);
    opt.zero_grad();
    at::Tensor loss = loss_at(step);
    loss.backward();
    p.grad_norm = opt.clip_and_step(p.lr, cfg.grad_clip);
    p.loss = loss.item<double>();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    p.examples_per_sec = static_cast<double>(examples_per_step) / std::max(dt, 1e-9);
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.steps = step + 1;
    s.last_loss = p.loss;
    cb.progress(p);
  }
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

}  // namespace

at::Tensor clip_contrastive_loss(const at::Tensor& image_features, const at::Tensor& text_features, const at::Tensor& logit_scale) {
  at::Tensor i = image_features / image_features.norm(2, -1, true).clamp_min(1e-12);
  at::Tensor t = text_features / text_features.norm(2, -1, true).clamp_min(1e-12);
  // CLIP clamps the temperature at 100 so the logits cannot blow up.
  at::Tensor logits = logit_scale.clamp_max(std::log(100.0)).exp() * at::matmul(i, t.t());
  at::Tensor target = at::arange(logits.size(0), logits.options().dtype(at::kLong));
  return (at::cross_entropy_loss(logits, target) + at::cross_entropy_loss(logits.t(), target)) / 2;
}

TrainSummary pretrain_clip(ClipModel& clip, const PretrainConfig& cfg, const at::Tensor& pixels_in, const at::Tensor& ids_in, const TrainCallbacks& cb) {
  check(pixels_in.dim() == 4 && ids_in.dim() == 2 && pixels_in.size(0) == ids_in.size(0) && pixels_in.size(0) >= 2, "E_SHAPE",
        "contrastive pretraining needs pixels [N, C, S, S] and ids [N, T] with the same N >= 2");
  check(cfg.batch_size >= 2, "E_VALUE", "contrastive batches need at least 2 pairs");
  at::Tensor pixels = pixels_in.to(clip.device(), at::kFloat), ids = ids_in.to(clip.device(), at::kLong);
  const int64_t n = pixels.size(0), B = std::min(cfg.batch_size, n);
  return loop(clip.params(), cfg, "clip-contrastive", B, cb, [&](int64_t step) {
    at::Tensor rows = batch_rows(n, step, B, cfg.seed).to(clip.device());
    at::Tensor img = clip.vision(pixels.index_select(0, rows)).features;
    at::Tensor txt = clip.text(ids.index_select(0, rows)).features;
    return clip_contrastive_loss(img, txt, clip.logit_scale());
  });
}

TrainSummary pretrain_lm(Gpt2Model& gpt, const PretrainConfig& cfg, const at::Tensor& ids_in, const TrainCallbacks& cb) {
  check(ids_in.dim() == 2 && ids_in.size(0) >= 1 && ids_in.size(1) >= 2, "E_SHAPE", "language-model pretraining needs ids [M, L] with L >= 2");
  at::Tensor ids = ids_in.to(gpt.device(), at::kLong);
  const int64_t n = ids.size(0), B = std::min(cfg.batch_size, n);
  return loop(gpt.params(), cfg, "lm", B, cb, [&](int64_t step) {
    at::Tensor rows = batch_rows(n, step, B, cfg.seed).to(gpt.device());
    at::Tensor batch = ids.index_select(0, rows);
    int64_t L = (batch >= 0).sum(1).max().item<int64_t>();
    batch = batch.slice(1, 0, std::max<int64_t>(L, 2));
    at::Tensor input = batch.slice(1, 0, -1).clamp_min(0), target = batch.slice(1, 1);
    at::Tensor logits = gpt.logits(gpt.forward(gpt.embed_tokens(input), nullptr));
    auto [logp, mask] = token_logprobs(logits, target);
    return ce_loss(logp, mask);
  });
}

}  // namespace semicap
