#include "training_binding.h"

#include "cpu_allocator.h"

#include <future>

#include <ATen/detail/CUDAHooksInterface.h>

#include "addon_state.h"
#include "errors.h"
#include "exit_guard.h"
#include "models_binding.h"

namespace semicap {

// One reward answer: settled exactly once, by the callback's return value, its promise's then/catch, an abort or
// the environment's teardown (later attempts are ignored).
struct AddonTrainer::ScoreAnswer {
  std::mutex mu;
  bool settled = false;
  std::promise<std::pair<at::Tensor, at::Tensor>> promise;
  void value(std::pair<at::Tensor, at::Tensor> v) {
    std::lock_guard<std::mutex> lock(mu);
    if (settled) return;
    settled = true;
    promise.set_value(std::move(v));
  }
  void error(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    if (settled) return;
    settled = true;
    promise.set_exception(e);
  }
};

struct AddonTrainer::Event {
  enum Kind { kProgress, kScore, kDone } kind;
  Progress progress;
  at::Tensor ids, images;
  std::shared_ptr<ScoreAnswer> answer;
  TrainSummary summary;
  bool failed = false;
  std::string code, message;
};

Napi::Function AddonTrainer::Init(Napi::Env env) {
  return DefineClass(env, "AddonTrainer", {InstanceMethod("start", &AddonTrainer::Start), InstanceMethod("abort", &AddonTrainer::Abort),
                                           StaticMethod("cudaDeviceCount", &AddonTrainer::CudaDeviceCount)});
}

// GPUs this process sees (0 without CUDA): how many local data-parallel ranks can each have their own.
Napi::Value AddonTrainer::CudaDeviceCount(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    int n = at::hasCUDA() ? static_cast<int>(at::detail::getCUDAHooks().getNumGPUs()) : 0;
    return Napi::Number::New(info.Env(), n);
  });
}

static at::Tensor opt_tensor(const Napi::Object& data, const char* key, KeepAlive& keep) {
  Napi::Value v = data.Get(key);
  if (v.IsUndefined() || v.IsNull()) return at::Tensor();
  // Copied: the run outlives this call and JS may reuse its buffers.
  return tensor_from_js(v, key, keep).clone();
}

// Steps, batch and the optimizer / schedule fields: the same JS names and member names in both configs.
template <class Config>
static void read_optimizer_fields(const Napi::Object& o, Config& c) {
  c.steps = get_int(o, "steps", c.steps);
  c.batch_size = get_int(o, "batchSize", c.batch_size);
  c.lr = get_number(o, "lr", c.lr);
  c.weight_decay = get_number(o, "weightDecay", c.weight_decay);
  c.beta1 = get_number(o, "beta1", c.beta1);
  c.beta2 = get_number(o, "beta2", c.beta2);
  c.adam_eps = get_number(o, "adamEps", c.adam_eps);
  c.grad_clip = get_number(o, "gradClip", c.grad_clip);
  c.warmup = get_int(o, "warmupSteps", c.warmup);
  c.schedule = get_string(o, "schedule", c.schedule);
}

static TrainConfig train_config_from_js(const Napi::Object& o) {
  TrainConfig c;
  c.stage = get_string(o, "stage", c.stage);
  c.objective = get_string(o, "objective", c.objective);
  read_optimizer_fields(o, c);
  c.grad_accum = get_int(o, "gradAccumulation", c.grad_accum);
  c.samples = get_int(o, "samples", c.samples);
  c.max_tokens = get_int(o, "maxTokens", c.max_tokens);
  c.ce_steps = get_int(o, "ceSteps", c.ce_steps);
  c.temperature = get_number(o, "temperature", c.temperature);
  c.reward = get_string(o, "reward", c.reward);
  c.ref_max = get_bool(o, "refMax", c.ref_max);
  c.clip_w = get_number(o, "clipW", c.clip_w);
  c.reward_scale = get_number(o, "rewardScale", c.reward_scale);
  c.contrastive_tau = get_number(o, "contrastiveTau", c.contrastive_tau);
  c.kl_coef = get_number(o, "klCoef", c.kl_coef);
  c.rep_coef = get_number(o, "repetitionPenalty", c.rep_coef);
  c.rep_ngram = get_int(o, "repetitionNgram", c.rep_ngram);
  c.ce_weight = get_number(o, "ceWeight", c.ce_weight);
  c.ce_mix_weight = get_number(o, "ceMixWeight", c.ce_mix_weight);
  c.seed = static_cast<uint64_t>(get_int(o, "seed", 0));
  c.train_lm = get_bool(o, "trainLm", c.train_lm);
  c.autocast_bf16 = get_bool(o, "bf16", c.autocast_bf16);
  c.eos_id = get_int(o, "eosId", c.eos_id);
  Napi::Value s = o.Get("stopIds");
  if (s.IsArray()) {
    Napi::Array a = s.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) c.stop_ids.push_back(a.Get(i).As<Napi::Number>().Int64Value());
  }
  c.ckpt_dir = get_string(o, "checkpointDir", "");
  c.ckpt_every = get_int(o, "checkpointEvery", 0);
  c.ckpt_keep = get_int(o, "checkpointKeep", c.ckpt_keep);
  c.ckpt_config_json = get_string(o, "checkpointConfigJson", "{}");
  c.ckpt_state_json = get_string(o, "checkpointStateJson", "{}");
  Napi::Value links = o.Get("checkpointLinks");
  if (links.IsArray()) {
    Napi::Array a = links.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Array pair = a.Get(i).As<Napi::Array>();
      c.ckpt_links.emplace_back(pair.Get(0u).As<Napi::String>().Utf8Value(), pair.Get(1u).As<Napi::String>().Utf8Value());
    }
  }
  Napi::Value dv = o.Get("distributed");
  if (dv.IsObject()) {
    Napi::Object d = dv.As<Napi::Object>();
    c.dist.rank = get_int(d, "rank", 0);
    c.dist.world = get_int(d, "worldSize", 1);
    c.dist.addr = get_string(d, "masterAddr", "127.0.0.1");
    c.dist.port = get_int(d, "masterPort", 29500);
    c.dist.backend = get_string(d, "backend", "gloo");
    c.dist.timeout_ms = get_int(d, "timeoutMs", 60000);
  }
  c.resume_dir = get_string(o, "resumeDir", "");
  c.start_step = get_int(o, "startStep", 0);
  static const char* stages[] = {"supervised", "clip-reward"};
  static const char* rewards[] = {"refText", "refContrastive", "clipS", "custom"};
  auto one_of = [](const std::string& v, auto& list) { for (auto* x : list) if (v == x) return true; return false; };
  check(one_of(c.stage, stages), "E_CONFIG", "stage must be 'supervised' or 'clip-reward'");
  check(one_of(c.reward, rewards), "E_CONFIG", "reward must be refText, refContrastive, clipS or custom");
  check(c.objective == "ce" || c.objective == "scst", "E_CONFIG", "objective must be 'ce' or 'scst'");
  return c;
}

static PretrainConfig pretrain_config_from_js(const Napi::Object& o) {
  PretrainConfig c;
  read_optimizer_fields(o, c);
  c.seed = static_cast<uint64_t>(get_int(o, "seed", 0));
  return c;
}

template <class M>
static std::shared_ptr<Locked<M>> live_handle(std::shared_ptr<Locked<M>> h) {
  if (!h || !h->model) fail("E_DISPOSED", "model was disposed");
  return h;
}

// new AddonTrainer(target: AddonCaptioner | AddonClip | AddonGpt2, config, data, onProgress, onScore)
AddonTrainer::AddonTrainer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonTrainer>(info) {
  guarded(info.Env(), [&] {
    if (info.Length() < 5 || !info[0].IsObject() || !info[1].IsObject() || !info[2].IsObject() || !info[3].IsFunction() || !info[4].IsFunction())
      fail("E_CONFIG", "AddonTrainer(model, config, data, onProgress, onScore)");
    Napi::Object target = info[0].As<Napi::Object>();
    Napi::Object d = info[2].As<Napi::Object>();
    KeepAlive keep;
    AddonState& st = addon_state(info.Env());
    if (target.InstanceOf(st.captioner_ctor.Value())) {
      auto cap = AddonCaptioner::Unwrap(target)->handle();
      auto cfg = std::make_shared<TrainConfig>(train_config_from_js(info[1].As<Napi::Object>()));
      auto data = std::make_shared<TrainData>();
      data->features = opt_tensor(d, "features", keep);
      data->cap_ids = opt_tensor(d, "captionIds", keep);
      data->cap_image = opt_tensor(d, "captionImages", keep);
      data->ref_features = opt_tensor(d, "referenceFeatures", keep);
      data->ref_image = opt_tensor(d, "referenceImages", keep);
      data->sup_images = opt_tensor(d, "labeledImages", keep);
      data->unl_images = opt_tensor(d, "unlabeledImages", keep);
      validate_train_data(*cfg, *data, cap->model->mapper->config().clip_dim);
      run_ = [cap, cfg, data](const TrainCallbacks& cb) {
        auto h = live_handle(cap);
        std::lock_guard<std::mutex> lock(h->mu);
        return train(*h->model, *cfg, *data, cb);
      };
    } else if (target.InstanceOf(st.clip_ctor.Value())) {
      auto clip = AddonClip::Unwrap(target)->handle();
      PretrainConfig cfg = pretrain_config_from_js(info[1].As<Napi::Object>());
      at::Tensor pixels = opt_tensor(d, "pixels", keep), ids = opt_tensor(d, "ids", keep);
      check(pixels.defined() && ids.defined(), "E_DATA", "CLIP pretraining needs pixels and ids");
      run_ = [clip, cfg, pixels, ids](const TrainCallbacks& cb) {
        auto h = live_handle(clip);
        std::lock_guard<std::mutex> lock(h->mu);
        return pretrain_clip(*h->model, cfg, pixels, ids, cb);
      };
    } else if (target.InstanceOf(st.gpt2_ctor.Value())) {
      auto gpt = AddonGpt2::Unwrap(target)->handle();
      PretrainConfig cfg = pretrain_config_from_js(info[1].As<Napi::Object>());
      at::Tensor ids = opt_tensor(d, "ids", keep);
      check(ids.defined(), "E_DATA", "language-model pretraining needs ids");
      run_ = [gpt, cfg, ids](const TrainCallbacks& cb) {
        auto h = live_handle(gpt);
        std::lock_guard<std::mutex> lock(h->mu);
        return pretrain_lm(*h->model, cfg, ids, cb);
      };
    } else {
      fail("E_CONFIG", "AddonTrainer: the model must be a captioner, a CLIP or a GPT-2");
    }
    on_progress_ = Napi::Persistent(info[3].As<Napi::Function>());
    on_score_ = Napi::Persistent(info[4].As<Napi::Function>());
    return info.Env().Undefined();
  });
}

AddonTrainer::~AddonTrainer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void AddonTrainer::settle_pending(const std::string& code, const std::string& message) {
  std::lock_guard<std::mutex> lock(pending_mu_);
  if (pending_) pending_->error(std::make_exception_ptr(Error(code, message)));
}

Napi::Value AddonTrainer::Abort(const Napi::CallbackInfo& info) {
  stop_ = true;
  settle_pending("E_ABORTED", "training aborted while waiting for the reward callback");
  return info.Env().Undefined();
}

// The reward callback's answer object -> (CLIP ids, rewards), copied (JS may reuse its buffers).
static std::pair<at::Tensor, at::Tensor> read_score_answer(const Napi::Value& r) {
  if (!r.IsObject()) fail("E_VALUE", "the reward callback must return an object");
  Napi::Object o = r.As<Napi::Object>();
  KeepAlive keep;
  at::Tensor clip_ids, rewards;
  if (o.Get("clipIds").IsObject()) clip_ids = tensor_from_js(o.Get("clipIds"), "clipIds", keep).clone();
  if (o.Get("rewards").IsObject()) rewards = tensor_from_js(o.Get("rewards"), "rewards", keep).clone();
  return {clip_ids, rewards};
}

static bool is_thenable(const Napi::Value& v) {
  return (v.IsObject() || v.IsFunction()) && v.As<Napi::Object>().Get("then").IsFunction();
}

// A rejection reason's message (an Error's .message, else its string form).
static std::string reason_message(const Napi::Value& v) {
  try {
    if (v.IsObject()) {
      Napi::Value m = v.As<Napi::Object>().Get("message");
      if (m.IsString()) return m.As<Napi::String>().Utf8Value();
    }
    return v.ToString().Utf8Value();
  } catch (...) {
    return "(a value that cannot be printed)";
  }
}

static Napi::Object progress_to_js(Napi::Env env, const Progress& p) {
  Napi::Object o = Napi::Object::New(env);
  auto num = [&](const char* k, double v) { o.Set(k, std::isnan(v) ? env.Undefined() : Napi::Number::New(env, v)); };
  o.Set("stage", p.stage);
  num("step", static_cast<double>(p.step));
  num("totalSteps", static_cast<double>(p.total));
  num("loss", p.loss);
  num("ce", p.ce);
  num("reward", p.reward);
  num("baselineReward", p.baseline);
  num("kl", p.kl);
  num("lr", p.lr);
  num("gradNorm", p.grad_norm);
  num("examplesPerSec", p.examples_per_sec);
  num("seconds", p.seconds);
  if (!p.checkpoint.empty()) o.Set("checkpoint", p.checkpoint);
  return o;
}

void AddonTrainer::CallJs(Napi::Env env, Napi::Function, AddonTrainer* self, Event* ev) {
  std::unique_ptr<Event> owned(ev);
  if (env == nullptr) {  // torn down (process exit): unblock a waiting training thread
    if (ev->kind == Event::kScore) ev->answer->error(std::make_exception_ptr(Error("E_ABORTED", "the JS environment is shutting down")));
    return;
  }
  Napi::HandleScope scope(env);
  switch (ev->kind) {
    case Event::kProgress:
      try {
        self->on_progress_.Call({progress_to_js(env, ev->progress)});
      } catch (const Napi::Error&) {
        // a throwing listener must not kill training; the JS side reports listener errors itself
      }
      return;
    case Event::kScore: {
      std::shared_ptr<ScoreAnswer> answer = ev->answer;
      // Settles `answer` from a value on the JS thread; nothing may escape into node-addon-api's callback wrapper.
      auto settle = [](const std::shared_ptr<ScoreAnswer>& a, const Napi::Value& v) {
        try {
          a->value(read_score_answer(v));
        } catch (const Napi::Error& e) {
          a->error(std::make_exception_ptr(Error("E_VALUE", "reward callback failed: " + e.Message())));
        } catch (...) {
          a->error(std::current_exception());
        }
      };
      try {
        Napi::Value r = self->on_score_.Call({tensor_to_js(env, ev->ids), tensor_to_js(env, ev->images)});
        if (is_thenable(r)) {
          // An asynchronous reward: the training thread keeps waiting; the promise's callbacks answer it later.
          Napi::Object thenable = r.As<Napi::Object>();
          Napi::Function on_ok = Napi::Function::New(env, [answer, settle](const Napi::CallbackInfo& info) -> Napi::Value {
            settle(answer, info[0]);
            return info.Env().Undefined();
          });
          Napi::Function on_fail = Napi::Function::New(env, [answer](const Napi::CallbackInfo& info) -> Napi::Value {
            answer->error(std::make_exception_ptr(Error("E_VALUE", "reward callback failed: " + reason_message(info[0]))));
            return info.Env().Undefined();
          });
          thenable.Get("then").As<Napi::Function>().Call(thenable, {on_ok, on_fail});
          return;
        }
        settle(answer, r);
      } catch (const Napi::Error& e) {
        answer->error(std::make_exception_ptr(Error("E_VALUE", "reward callback failed: " + e.Message())));
      } catch (...) {
        answer->error(std::current_exception());
      }
      return;
    }
    case Event::kDone: {
      if (ev->failed) self->deferred_->Reject(make_error(env, ev->code, ev->message).Value());
      else {
        Napi::Object s = Napi::Object::New(env);
        s.Set("steps", static_cast<double>(ev->summary.steps));
        s.Set("lastLoss", std::isnan(ev->summary.last_loss) ? env.Undefined() : Napi::Number::New(env, ev->summary.last_loss));
        s.Set("meanReward", std::isnan(ev->summary.mean_reward) ? env.Undefined() : Napi::Number::New(env, ev->summary.mean_reward));
        s.Set("seconds", ev->summary.seconds);
        if (!ev->summary.checkpoint.empty()) s.Set("checkpoint", ev->summary.checkpoint);
        self->deferred_->Resolve(s);
      }
      self->Unref();
      return;
    }
  }
}

Napi::Value AddonTrainer::Start(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (started_) fail("E_BUSY", "this trainer was already started");
    started_ = true;
    Napi::Env env = info.Env();
    deferred_ = std::make_unique<Napi::Promise::Deferred>(env);
    tsfn_ = Napi::TypedThreadSafeFunction<AddonTrainer, Event, CallJs>::New(
        env, "semicap-train", 0, 1, this, [](Napi::Env, void*, AddonTrainer* self) {
          self->stop_ = true;  // torn down early (worker terminated): the run stops at its next step
          // A reward promise will never settle now: release the step waiting for it.
          self->settle_pending("E_ABORTED", "the JS environment is shutting down");
          if (self->thread_.joinable()) self->thread_.join();
        });
    Ref();  // alive until the run ends
    thread_ = std::thread([this] {
      NativeWorkScope in_flight;
      auto* done = new Event{Event::kDone};
      try {
        TrainCallbacks cb;
        cb.should_stop = [this] { return stop_.load(); };
        cb.progress = [this](const Progress& p) {
          auto* ev = new Event{Event::kProgress};
          ev->progress = p;
          if (tsfn_.NonBlockingCall(ev) != napi_ok) {
            delete ev;
            stop_ = true;  // napi_closing: JS is gone, nobody is waiting for this run
          }
        };
        cb.score = [this](const at::Tensor& ids, const at::Tensor& images) {
          auto* ev = new Event{Event::kScore};
          ev->ids = ids.contiguous();
          ev->images = images.contiguous();
          ev->answer = std::make_shared<ScoreAnswer>();
          auto answer = ev->answer->promise.get_future();
          {
            std::lock_guard<std::mutex> lock(pending_mu_);
            pending_ = ev->answer;
          }
          struct Clear {
            AddonTrainer* t;
            ~Clear() {
              std::lock_guard<std::mutex> lock(t->pending_mu_);
              t->pending_.reset();
            }
          } clear{this};
          if (tsfn_.BlockingCall(ev) != napi_ok) {
            delete ev;
            fail("E_ABORTED", "the JS environment is shutting down");
          }
          return answer.get();
        };
        done->summary = run_(cb);
      } catch (const Error& e) {
        done->failed = true;
        done->code = e.code;
        done->message = e.what();
      } catch (const c10::Error& e) {
        done->failed = true;
        done->code = "E_NATIVE";
        done->message = std::string("libtorch: ") + e.what_without_backtrace();
      } catch (const std::exception& e) {
        done->failed = true;
        done->code = "E_NATIVE";
        done->message = e.what();
      }
      empty_cpu_cache();  // the run's reusable buffers are of no use to whatever the process does next
      if (tsfn_.BlockingCall(done) != napi_ok) delete done;
      tsfn_.Release();
    });
    return deferred_->Promise();
  });
}

}  // namespace semicap
