// AddonTrainer: one training run of a Captioner on its own std::thread (not the libuv pool). Progress goes to JS
// through a thread-safe function; sampled captions are scored through a blocking call into JS once per step;
// abort() sets a flag checked between steps.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
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
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  static void CallJs(Napi::Env env, Napi::Function, AddonTrainer* self, Event* ev);

  // The run, bound to its model in the constructor: a captioner stage, or CLIP / GPT-2 pretraining.
  std::function<TrainSummary(const TrainCallbacks&)> run_;
  Napi::FunctionReference on_progress_, on_score_;
  std::unique_ptr<Napi::Promise::Deferred> deferred_;
  Napi::TypedThreadSafeFunction<AddonTrainer, Event, CallJs> tsfn_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  bool started_ = false;
};

}  // namespace semicap
