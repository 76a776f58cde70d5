#include "rewards.h"

#include "errors.h"
#include "losses.h"
#include "trainer.h"

namespace semicap {

namespace {
at::Tensor unit_rows(const at::Tensor& x) { return x / x.norm(2, -1, true).clamp_min(1e-12); }

// CLIP text features of ids [N, T] in groups of similar length, each cut after its longest row's pooled position.
// Why: an SCST step's captions (greedy and sampled) are padded to the longest of them, and the tower is causal and
// pools at each row's end token, so the padding is work whose result is never read; sorted into a few groups the
// tower runs on far fewer positions (and its last layer computes each row's pooled position alone,
// ClipModel::text_features). A row's features are the same mathematically (float32 rounding may differ
// where a product's path depends on its row count).
at::Tensor in_length_groups(const ClipModel& clip, const at::Tensor& ids) {
  constexpr int64_t kGroups = 3;
  const int64_t N = ids.size(0), T = ids.size(1);
  if (N < 2 * kGroups) return clip.text_features(ids);
  const at::Tensor lengths = clip.pool_positions(ids).cpu() + 1;
  const at::Tensor order = std::get<1>(lengths.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const int64_t* o = order.data_ptr<int64_t>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  std::vector<at::Tensor> parts;
  for (int64_t g = 0; g < kGroups; ++g) {
    const int64_t b = N * g / kGroups, e = N * (g + 1) / kGroups;
    const at::Tensor rows = order.slice(0, b, e);
    const int64_t L = std::min(T, len[o[e - 1]]);  // the group's longest (sorted ascending)
    parts.push_back(clip.text_features(ids.index_select(0, rows.to(ids.device())).slice(1, 0, L)));
  }
  // Back to the callers' row order (row order[i] is at i).
  return at::cat(parts).index_select(0, order.argsort().to(parts[0].device()));
}

// The same, each distinct caption encoded once: SCST scores an image's greedy caption and its samples, and a trained
// captioner often samples the same caption several times, or its greedy one.
at::Tensor text_features(const ClipModel& clip, const at::Tensor& ids_in) {
  const at::Tensor ids = ids_in.to(at::kLong);
  auto [distinct, inverse, counts] = at::unique_dim(ids, 0, /*sorted=*/true, /*return_inverse=*/true, /*return_counts=*/false);
  if (distinct.size(0) == ids.size(0)) return in_length_groups(clip, ids);
  at::Tensor f = in_length_groups(clip, distinct);
  return f.index_select(0, inverse.to(f.device()));
}
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
    text = unit_rows(text_features(*clip->model, clip_ids).to(device));
  }
  at::Tensor own = owners.to(device);
  if (cfg_.reward == "clipS") return clip_s_reward(text, unit_rows(features_.index_select(0, own)), cfg_.clip_w);
  if (cfg_.reward == "refText") return ref_text_reward(text, own, refs_, ref_image_, cfg_.ref_max);
  if (cfg_.reward == "refContrastive") return ref_contrastive_reward(text, own, refs_, ref_image_, batch.to(device), cfg_.contrastive_tau);
  fail("E_CONFIG", "unknown reward '" + cfg_.reward + "'");
}

}  // namespace semicap
