// Mapper + GPT-2 in one parameter store (keys "clip_project.*" and "gpt.*", ClipCap's names), with the CLIP it
// captions from. Shared by inference (models_binding) and training (trainer).
#pragma once
#include <memory>
#include <mutex>

#include "clip.h"
#include "gpt2.h"
#include "mapper.h"

namespace semicap {

class ProductTape;

// A model plus the lock that serialises work on it (weights are shared; grad mode and caches are per call).
template <class M>
struct Locked {
  std::unique_ptr<M> model;
  std::mutex mu;
};

struct CaptionerModel {
  ParamStore params;
  std::unique_ptr<Mapper> mapper;
  std::unique_ptr<Gpt2Model> gpt;
  std::shared_ptr<Locked<ClipModel>> clip;
  bool normalize_prefix = false;

  CaptionerModel(const MapperConfig& mc, const Gpt2Config& gc, bool normalize, uint64_t seed = 0);
  at::Tensor prefix_from_features(const at::Tensor& features) const;
  // Logits [N, L, V] where logits[:, t] predicts ids[:, t] (ids -1-padded), after the prefix mapped from features;
  // each row of features serves `repeat` consecutive rows of ids (N = features rows x repeat), mapped once.
  // tape (repeat > 1): the decoding that sampled ids recorded its products there (packed.h), and the forward over
  // ids replays them.
  at::Tensor sequence_logits(const at::Tensor& features, const at::Tensor& ids, int64_t repeat = 1, ProductTape* tape = nullptr) const;
  // Rename map for Captioner checkpoints (tolerates GPT-2 buffers and a "transformer." prefix after "gpt.").
  static std::string checkpoint_key(const std::string& key);
  // checkpoint_key for this model (keeps gpt.lm_head.weight when GPT-2's head is untied).
  std::string key(const std::string& key) const;
};

}  // namespace semicap
