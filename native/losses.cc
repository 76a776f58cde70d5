#include "losses.h"

#include <map>
#include <vector>

namespace semicap {

std::pair<at::Tensor, at::Tensor> token_logprobs(const at::Tensor& logits, const at::Tensor& ids) {
  at::Tensor mask = (ids >= 0).to(logits.scalar_type() == at::kBFloat16 ? at::kFloat : logits.scalar_type());
  at::Tensor lp = at::log_softmax(logits.to(at::kFloat), -1).gather(-1, ids.clamp_min(0).unsqueeze(-1)).squeeze(-1);
  return {lp * mask, mask};
}

at::Tensor ce_loss(const at::Tensor& logp, const at::Tensor& mask) { return -logp.sum() / mask.sum().clamp_min(1); }

at::Tensor scst_loss_sum(const at::Tensor& logp, const at::Tensor& reward, const at::Tensor& baseline) {
  at::Tensor adv = (reward - baseline).detach().to(logp.scalar_type());
  return -(adv * logp.sum(1)).sum();
}

at::Tensor scst_loss(const at::Tensor& logp, const at::Tensor& mask, const at::Tensor& reward, const at::Tensor& baseline) {
  return scst_loss_sum(logp, reward, baseline) / mask.sum().clamp_min(1);
}

at::Tensor kl_penalty_sum(const at::Tensor& policy_logits, const at::Tensor& reference_logits, const at::Tensor& mask) {
  at::Tensor lp = at::log_softmax(policy_logits.to(at::kFloat), -1);
  at::Tensor lq = at::log_softmax(reference_logits.to(at::kFloat), -1);
  at::Tensor kl = (lp.exp() * (lp - lq)).sum(-1);  // [N, L]
  return (kl * mask).sum();
}

at::Tensor kl_penalty(const at::Tensor& policy_logits, const at::Tensor& reference_logits, const at::Tensor& mask) {
  return kl_penalty_sum(policy_logits, reference_logits, mask) / mask.sum().clamp_min(1);
}

at::Tensor repeated_ngrams(const at::Tensor& ids_in, int64_t n) {
  at::Tensor ids = ids_in.to(at::kCPU, at::kLong).contiguous();
  const int64_t N = ids.size(0), L = ids.size(1);
  const int64_t* d = ids.data_ptr<int64_t>();
  at::Tensor out = at::zeros({N}, at::kFloat);
  for (int64_t r = 0; r < N; ++r) {
    int64_t len = 0;
    while (len < L && d[r * L + len] >= 0) ++len;
    std::map<std::vector<int64_t>, int> seen;
    float rep = 0;
    for (int64_t i = 0; i + n <= len; ++i) {
      std::vector<int64_t> g(d + r * L + i, d + r * L + i + n);
      if (seen[g]++ > 0) rep += 1;
    }
    out[r] = rep;
  }
  return out.to(ids_in.device());
}

at::Tensor clip_s_reward(const at::Tensor& text, const at::Tensor& image, double w) {
  return w * (text * image).sum(-1).clamp_min(0);
}

at::Tensor ref_text_reward(const at::Tensor& text, const at::Tensor& text_image, const at::Tensor& refs,
                           const at::Tensor& ref_owner, bool use_max) {
  at::Tensor sims = at::matmul(text, refs.t());                                  // [N, R]
  at::Tensor own = text_image.unsqueeze(1) == ref_owner.unsqueeze(0);            // [N, R]
  if (use_max) return sims.masked_fill(own.logical_not(), -2.0).amax(1);
  at::Tensor ownf = own.to(sims.scalar_type());
  return (sims * ownf).sum(1) / ownf.sum(1).clamp_min(1);
}

at::Tensor ref_contrastive_reward(const at::Tensor& text, const at::Tensor& text_image, const at::Tensor& refs,
                                  const at::Tensor& ref_owner, const at::Tensor& batch_images, double tau) {
  at::Tensor sims = at::matmul(text, refs.t());                                         // [N, R]
  at::Tensor owner = ref_owner.unsqueeze(0) == batch_images.unsqueeze(1);               // [I, R]
  at::Tensor ownerf = owner.to(sims.scalar_type());
  at::Tensor per_image = at::matmul(sims, ownerf.t()) / ownerf.sum(1).clamp_min(1);     // [N, I] mean cosine
  at::Tensor logp = at::log_softmax(per_image / tau, 1);
  at::Tensor col = (text_image.unsqueeze(1) == batch_images.unsqueeze(0)).to(at::kLong).argmax(1);
  return logp.gather(1, col.unsqueeze(1)).squeeze(1);
}

}  // namespace semicap
