// JS classes over the models: AddonClip, AddonGpt2, AddonCaptioner. One native class per JS-visible object;
// every heavy method returns a Promise and runs on a worker that converted its inputs up front.
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>

#include "clip.h"
#include "decode.h"
#include "gpt2.h"
#include "mapper.h"

namespace semicap {

at::Device parse_device(const std::string& s);
ClipConfig clip_config_from_js(const Napi::Object& o);
Gpt2Config gpt2_config_from_js(const Napi::Object& o);
MapperConfig mapper_config_from_js(const Napi::Object& o);
DecodeOptions decode_options_from_js(const Napi::Object& o);

// A model plus the lock that serialises work on it (grad mode and the KV cache are per call, weights are shared).
template <class M>
struct Locked {
  std::unique_ptr<M> model;
  std::mutex mu;
};

class AddonClip : public Napi::ObjectWrap<AddonClip> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonClip(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<ClipModel>> handle() const;

 private:
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Vision(const Napi::CallbackInfo& info);
  Napi::Value Text(const Napi::CallbackInfo& info);
  Napi::Value LogitScale(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<ClipModel>> clip_;
};

class AddonGpt2 : public Napi::ObjectWrap<AddonGpt2> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonGpt2(const Napi::CallbackInfo& info);

 private:
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<Gpt2Model>> gpt_;
};

// Mapper + GPT-2 in one parameter store (keys "clip_project.*" and "gpt.*", ClipCap's names), with the CLIP it
// captions from.
struct CaptionerModel {
  ParamStore params;
  std::unique_ptr<Mapper> mapper;
  std::unique_ptr<Gpt2Model> gpt;
  std::shared_ptr<Locked<ClipModel>> clip;
  bool normalize_prefix = false;
  at::Tensor prefix_from_features(const at::Tensor& features) const;
};

class AddonCaptioner : public Napi::ObjectWrap<AddonCaptioner> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonCaptioner(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<CaptionerModel>> handle() const;

 private:
  Napi::Value LoadGpt2(const Napi::CallbackInfo& info);
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Save(const Napi::CallbackInfo& info);
  Napi::Value Caption(const Napi::CallbackInfo& info);
  Napi::Value CaptionFeatures(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  Napi::Value NumParams(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<CaptionerModel>> cap_;
};

}  // namespace semicap
