#include "rewards.h"

#include "errors.h"
#include "losses.h"
#include "trainer.h"

namespace semicap {

namespace {
at::Tensor unit_rows(const at::Tensor& x) { return x / x.norm(2, -1, true).clamp_min(1e-12); }
}  // namespace

Rewards::Rewards(const TrainConfig& cfg, CaptionerModel& model, const at::Tensor& features, const TrainData& d, ScoreFn score)
    : cfg_(cfg), m_(model), features_(features), score_(std::move(score)) {
  if (d.ref_features.defined() && d.ref_features.numel()) {
    refs_ = unit_rows(d.ref_features.to(features.device(), at::kFloat));
    ref_image_ = d.ref_image.to(features.device(), at::kLong);
  }
}

at::Tensor Rewards::operator()(const at::Tensor& ids, const at::Tensor& owners, const at::Tensor& batch) const {
  at::Tensor r = raw(ids, owners, batch);
  if (cfg_.rep_coef > 0) r = r - cfg_.rep_coef * repeated_ngrams(ids, cfg_.rep_ngram).to(r.device());
  return r * cfg_.reward_scale;
}

at::Tensor Rewards::raw(const at::Tensor& ids, const at::Tensor& owners, const at::Tensor& batch) const {
  const at::Device device = features_.device();
  auto [clip_ids, custom] = score_(ids.cpu(), owners.cpu());
  if (cfg_.reward == "custom") {
    check(custom.defined() && custom.dim() == 1 && custom.size(0) == ids.size(0), "E_VALUE", "a custom reward must return one number per caption");
    check(at::isfinite(custom).all().item<bool>(), "E_VALUE", "a custom reward returned NaN or infinity");
    return custom.to(device, at::kFloat);
  }
  check(clip_ids.defined() && clip_ids.dim() == 2 && clip_ids.size(0) == ids.size(0), "E_VALUE", "reward tokenization returned the wrong shape");
  at::Tensor text;
  {
    auto clip = m_.clip;
    check(clip && clip->model, "E_DISPOSED", "the CLIP model was disposed");
    std::lock_guard<std::mutex> lock(clip->mu);
    c10::NoGradGuard no_grad;
    text = unit_rows(clip->model->text(clip_ids).features.to(device));
  }
  at::Tensor own = owners.to(device);
  if (cfg_.reward == "clipS") return clip_s_reward(text, unit_rows(features_.index_select(0, own)), cfg_.clip_w);
  if (cfg_.reward == "refText") return ref_text_reward(text, own, refs_, ref_image_, cfg_.ref_max);
  if (cfg_.reward == "refContrastive") return ref_contrastive_reward(text, own, refs_, ref_image_, batch.to(device), cfg_.contrastive_tau);
  fail("E_CONFIG", "unknown reward '" + cfg_.reward + "'");
}

}  // namespace semicap
