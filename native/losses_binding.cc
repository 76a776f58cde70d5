// Synchronous access to the loss and reward functions on small tensors, so tests can check them against hand
// computations (the trainer calls the same functions).
#include <napi.h>

#include "addon_state.h"
#include "errors.h"
#include "losses.h"

namespace semicap {

Napi::Object losses_exports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  auto fn = [&](const char* name, std::function<at::Tensor(const Napi::CallbackInfo&, KeepAlive&)> f) {
    o.Set(name, Napi::Function::New(env, [f](const Napi::CallbackInfo& info) {
      return guarded(info.Env(), [&] {
        KeepAlive keep;
        c10::NoGradGuard no_grad;
        return tensor_to_js(info.Env(), f(info, keep).contiguous());
      });
    }));
  };
  auto T = [](const Napi::CallbackInfo& info, size_t i, KeepAlive& keep) { return tensor_from_js(info[i], "argument " + std::to_string(i), keep); };
  auto num = [](const Napi::CallbackInfo& info, size_t i) {
    if (!info[i].IsNumber()) fail("E_VALUE", "argument " + std::to_string(i) + " must be a number");
    return info[i].As<Napi::Number>().DoubleValue();
  };
  fn("tokenLogprobs", [=](auto& info, auto& k) { return token_logprobs(T(info, 0, k), T(info, 1, k)).first; });
  fn("ceLoss", [=](auto& info, auto& k) { auto [lp, m] = token_logprobs(T(info, 0, k), T(info, 1, k)); return ce_loss(lp, m); });
  fn("scstLoss", [=](auto& info, auto& k) {
    auto [lp, m] = token_logprobs(T(info, 0, k), T(info, 1, k));
    return scst_loss(lp, m, T(info, 2, k), T(info, 3, k));
  });
  fn("klPenalty", [=](auto& info, auto& k) {
    at::Tensor ids = T(info, 2, k);
    return kl_penalty(T(info, 0, k), T(info, 1, k), (ids >= 0).to(at::kFloat));
  });
  fn("repeatedNgrams", [=](auto& info, auto& k) { return repeated_ngrams(T(info, 0, k), static_cast<int64_t>(num(info, 1))); });
  fn("clipSReward", [=](auto& info, auto& k) { return clip_s_reward(T(info, 0, k), T(info, 1, k), num(info, 2)); });
  fn("refTextReward", [=](auto& info, auto& k) {
    return ref_text_reward(T(info, 0, k), T(info, 1, k), T(info, 2, k), T(info, 3, k), info[4].ToBoolean().Value());
  });
  fn("refContrastiveReward", [=](auto& info, auto& k) {
    return ref_contrastive_reward(T(info, 0, k), T(info, 1, k), T(info, 2, k), T(info, 3, k), T(info, 4, k), num(info, 5));
  });
  return o;
}

}  // namespace semicap
