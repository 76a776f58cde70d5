// Training losses and rewards, as plain tensor functions (tested against hand computations from JS).
#pragma once
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

namespace semicap {

// Per-token log-probabilities of `ids` [N, L] (-1 = padding) under `logits` [N, L, V] (logits[:, t] predicts
// ids[:, t]). Returns (logp [N, L] with 0 at padding, mask [N, L] float).
std::pair<at::Tensor, at::Tensor> token_logprobs(const at::Tensor& logits, const at::Tensor& ids);

// Mean cross-entropy over real tokens.
at::Tensor ce_loss(const at::Tensor& logp, const at::Tensor& mask);

// Self-critical policy gradient: -sum_n (reward_n - baseline_n) * sum_t logp[n, t] / (number of real tokens).
at::Tensor scst_loss(const at::Tensor& logp, const at::Tensor& mask, const at::Tensor& reward, const at::Tensor& baseline);

// The numerators of scst_loss and kl_penalty (sums over real tokens), for callers that normalise by a count of
// their own (data-parallel training divides by the global token count).
at::Tensor scst_loss_sum(const at::Tensor& logp, const at::Tensor& reward, const at::Tensor& baseline);
at::Tensor kl_penalty_sum(const at::Tensor& policy_logits, const at::Tensor& reference_logits, const at::Tensor& mask);

// Per-token KL(policy || reference) over the vocabulary, averaged over real tokens.
at::Tensor kl_penalty(const at::Tensor& policy_logits, const at::Tensor& reference_logits, const at::Tensor& mask);

// Number of repeated n-grams per row of `ids` [N, L] (-1 = end): occurrences beyond the first of each n-gram.
at::Tensor repeated_ngrams(const at::Tensor& ids, int64_t n);

// Rewards from L2-normalised CLIP features.
// CLIP-S: w * max(cos(image, text), 0).
at::Tensor clip_s_reward(const at::Tensor& text, const at::Tensor& image, double w);
// Text-text: cosine to the references of the row's image (ref_owner[r] = image of reference r), mean or max.
at::Tensor ref_text_reward(const at::Tensor& text, const at::Tensor& text_image, const at::Tensor& refs,
                           const at::Tensor& ref_owner, bool use_max);
// Contrastive: log-softmax over the batch's images of (mean cosine to each image's references) / tau, at the
// row's own image. Rewards captions that single out their image among the others in the batch.
at::Tensor ref_contrastive_reward(const at::Tensor& text, const at::Tensor& text_image, const at::Tensor& refs,
                                  const at::Tensor& ref_owner, const at::Tensor& batch_images, double tau);

}  // namespace semicap
