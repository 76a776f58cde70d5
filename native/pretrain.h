// Pretraining the stand-ins for the web-scale models, with the same code as the real ones: CLIP contrastively
// (symmetric InfoNCE over image-text pairs with the learned logit scale) and GPT-2 as a language model (next-token
// cross-entropy). Same optimiser, schedule, progress and abort as the captioner trainer.
#pragma once
#include "clip.h"
#include "gpt2.h"
#include "trainer.h"

namespace semicap {

struct PretrainConfig {
  int64_t steps = 100, batch_size = 32;
  double lr = 1e-3, weight_decay = 0.01, beta1 = 0.9, beta2 = 0.98, adam_eps = 1e-6, grad_clip = 1.0;
  int64_t warmup = 0;
  std::string schedule = "cosine";
  uint64_t seed = 0;
};

// pixels [N, C, S, S] float32 paired with text ids [N, T] (each row's end token where the model pools).
TrainSummary pretrain_clip(ClipModel& clip, const PretrainConfig& cfg, const at::Tensor& pixels, const at::Tensor& ids, const TrainCallbacks& cb);

// ids [M, L] int64, -1-padded; every real token is predicted from the ones before it.
TrainSummary pretrain_lm(Gpt2Model& gpt, const PretrainConfig& cfg, const at::Tensor& ids, const TrainCallbacks& cb);

// Symmetric InfoNCE: (CE(logits, diag) + CE(logits^T, diag)) / 2 with logits = exp(scale) * cos.
at::Tensor clip_contrastive_loss(const at::Tensor& image_features, const at::Tensor& text_features, const at::Tensor& logit_scale);

}  // namespace semicap
