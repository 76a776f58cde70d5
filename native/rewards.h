// SCST rewards of sampled captions: the reward callback (JS tokenises for CLIP, or a custom reward answers with
// numbers), the CLIP text tower, the reward functions of losses.h, the repetition penalty and the scale.
#pragma once
#include <functional>
#include <utility>

#include "captioner_model.h"

namespace semicap {

struct TrainConfig;
struct TrainData;

class Rewards {
 public:
  // ids [N, L] (CPU, -1-padded), images [N] (CPU) -> (CLIP ids [N, T], custom rewards [N]); one of them defined.
  using ScoreFn = std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor& ids, const at::Tensor& images)>;

  // `features` [N, D] on the training device (the cached CLIP image features).
  Rewards(const TrainConfig& cfg, CaptionerModel& model, const at::Tensor& features, const TrainData& data, ScoreFn score);

  // Rewards [N] of captions `ids` [N, L] of images `owners` [N], repetition penalty and scale applied. `batch`: the
  // images of the whole global batch (the contrastive reward compares each caption against all of them, so
  // data-parallel ranks must pass the same set one process would).
  at::Tensor operator()(const at::Tensor& ids, const at::Tensor& owners, const at::Tensor& batch) const;

 private:
  at::Tensor raw(const at::Tensor& ids, const at::Tensor& owners, const at::Tensor& batch) const;

  const TrainConfig& cfg_;
  CaptionerModel& m_;
  at::Tensor features_, refs_, ref_image_;
  ScoreFn score_;
};

}  // namespace semicap
