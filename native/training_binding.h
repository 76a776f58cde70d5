// AddonTrainer: one training run of a Captioner on its own std::thread (not the libuv pool). Progress goes to JS
// through a thread-safe function; sampled captions are scored through a blocking call into JS once per step, whose
// answer may come later (the reward callback may return a Promise); abort() sets a flag checked between steps and
// releases a step waiting for a reward.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>

#include "captioner_model.h"
#include "pretrain.h"
#include "trainer.h"

namespace semicap {

class AddonTrainer : public Napi::ObjectWrap<AddonTrainer> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonTrainer(const Napi::CallbackInfo& info);
  ~AddonTrainer() override;

 private:
  struct Event;
  struct ScoreAnswer;
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  static Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info);
  static void CallJs(Napi::Env env, Napi::Function, AddonTrainer* self, Event* ev);

  // The run, bound to its model in the constructor: a captioner stage, or CLIP / GPT-2 pretraining.
  std::function<TrainSummary(const TrainCallbacks&)> run_;
  Napi::FunctionReference on_progress_, on_score_;
  std::unique_ptr<Napi::Promise::Deferred> deferred_;
  Napi::TypedThreadSafeFunction<AddonTrainer, Event, CallJs> tsfn_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  // The reward answer the training thread waits for, if any (settled by abort or teardown, so neither hangs).
  std::mutex pending_mu_;
  std::shared_ptr<ScoreAnswer> pending_;
  void settle_pending(const std::string& code, const std::string& message);
  bool started_ = false;
};

}  // namespace semicap
