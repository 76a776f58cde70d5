// JS classes over the models: AddonClip, AddonGpt2, AddonCaptioner. One native class per JS-visible object;
// every heavy method returns a Promise and runs on a worker that converted its inputs up front.
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>

#include "captioner_model.h"
#include "decode.h"

namespace semicap {

at::Device parse_device(const std::string& s);
ClipConfig clip_config_from_js(const Napi::Object& o);
Gpt2Config gpt2_config_from_js(const Napi::Object& o);
MapperConfig mapper_config_from_js(const Napi::Object& o);
DecodeOptions decode_options_from_js(const Napi::Object& o);

class AddonClip : public Napi::ObjectWrap<AddonClip> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonClip(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<ClipModel>> handle() const;

 private:
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Vision(const Napi::CallbackInfo& info);
  Napi::Value ImageFeatures(const Napi::CallbackInfo& info);
  Napi::Value Text(const Napi::CallbackInfo& info);
  Napi::Value LogitScale(const Napi::CallbackInfo& info);
  Napi::Value Save(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<ClipModel>> clip_;
};

class AddonGpt2 : public Napi::ObjectWrap<AddonGpt2> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonGpt2(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<Gpt2Model>> handle() const;

 private:
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Save(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::shared_ptr<Locked<Gpt2Model>> gpt_;
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
