#include "captioner_model.h"

#include "errors.h"
#include "packed.h"

namespace semicap {

CaptionerModel::CaptionerModel(const MapperConfig& mc, const Gpt2Config& gc, bool normalize, uint64_t seed) : normalize_prefix(normalize) {
  check(mc.n_embd == gc.n_embd, "E_CONFIG", "mapper nEmbd must equal GPT-2's n_embd");
  params.seed(seed);
  mapper = std::make_unique<Mapper>(mc, &params);
  gpt = std::make_unique<Gpt2Model>(gc, &params, "gpt.");
}

at::Tensor CaptionerModel::prefix_from_features(const at::Tensor& features) const {
  at::Tensor f = features.to(gpt->device(), at::kFloat);
  if (normalize_prefix) f = f / f.norm(2, -1, true).clamp_min(1e-12);
  return (*mapper)(f);
}

at::Tensor CaptionerModel::sequence_logits(const at::Tensor& features, const at::Tensor& ids_in, int64_t repeat, ProductTape* tape) const {
  check(ids_in.dim() == 2 && ids_in.size(1) >= 1, "E_SHAPE", "caption ids must have shape [N, L] with L >= 1");
  check(repeat >= 1 && features.size(0) * repeat == ids_in.size(0), "E_SHAPE", "caption ids must have a row per feature row and repeat");
  at::Tensor ids = ids_in.to(gpt->device(), at::kLong);
  at::Tensor prefix = prefix_from_features(features);
  const int64_t P = prefix.size(1), L = ids.size(1);
  // Every token but the last is an input (the last is only a target).
  const at::Tensor tokens = L > 1 ? gpt->embed_tokens(ids.slice(1, 0, L - 1).clamp_min(0)) : at::Tensor();
  if (repeat == 1) {
    at::Tensor hidden = gpt->forward(tokens.defined() ? at::cat({prefix, tokens}, 1) : prefix, nullptr);
    return gpt->logits(hidden.slice(1, P - 1, P - 1 + L));
  }
  // The rows of an image share its prefix, and GPT-2 is causal: the prefix positions are computed once per image
  // (forward and backward) and their keys and values repeated for its rows' tokens, whose gradients autograd sums
  // back. SCST's 5 samples of 20 tokens after a 10-position prefix: 28% fewer rows through GPT-2.
  KvCache shared;  // exact length: concatenated, so autograd follows
  at::Tensor first = gpt->logits(gpt->forward(prefix, &shared).narrow(1, P - 1, 1)).repeat_interleave(repeat, 0);
  if (!tokens.defined()) return first;
  for (size_t i = 0; i < shared.k.size(); ++i) {
    shared.k[i] = shared.k[i].repeat_interleave(repeat, 0);
    shared.v[i] = shared.v[i].repeat_interleave(repeat, 0);
  }
  ProductTape::Replay replay(tape);
  return at::cat({first, gpt->logits(gpt->forward(tokens, &shared))}, 1);
}

std::string CaptionerModel::checkpoint_key(const std::string& k) {
  if (k.rfind("gpt.", 0) == 0) {
    std::string n = Gpt2Model::checkpoint_key(k.substr(4));
    return n.empty() ? n : "gpt." + n;
  }
  return k;
}

std::string CaptionerModel::key(const std::string& k) const {
  if (k.rfind("gpt.", 0) == 0) {
    std::string n = gpt->key(k.substr(4));
    return n.empty() ? n : "gpt." + n;
  }
  return k;
}

}  // namespace semicap
