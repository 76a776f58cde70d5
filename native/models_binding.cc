#include "models_binding.h"

#include "cpu_allocator.h"

#include <ATen/Context.h>
#include <c10/core/InferenceMode.h>

#include "addon_state.h"
#include "autocast.h"
#include "errors.h"
#include "safetensors.h"

namespace semicap {

at::Device parse_device(const std::string& s) {
  if (s == "cpu") return at::Device(at::kCPU);
  if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
    check(at::hasCUDA(), "E_DEVICE", "device '" + s + "' requested but this libtorch has no CUDA (or no GPU is visible)");
    int idx = 0;
    if (s.size() > 5) {
      try { idx = std::stoi(s.substr(5)); } catch (...) { fail("E_DEVICE", "bad device '" + s + "'"); }
    }
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(idx));
  }
  fail("E_DEVICE", "device must be 'cpu', 'cuda' or 'cuda:N', got '" + s + "'");
}

static Napi::Object obj_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsObject()) fail("E_CONFIG", std::string(what) + " must be an object");
  return info[i].As<Napi::Object>();
}
static std::string str_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) fail("E_CONFIG", std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

static ClipTowerConfig tower_from_js(const Napi::Object& o) {
  ClipTowerConfig c;
  c.hidden = get_int(o, "hidden", 0);
  c.intermediate = get_int(o, "intermediate", 0);
  c.heads = get_int(o, "heads", 0);
  c.layers = get_int(o, "layers", 0);
  c.act = activation_from_name(get_string(o, "act", "quick_gelu"));
  c.eps = get_number(o, "eps", 1e-5);
  return c;
}

ClipConfig clip_config_from_js(const Napi::Object& o) {
  ClipConfig c;
  Napi::Value v = o.Get("vision"), t = o.Get("text");
  if (!v.IsObject() || !t.IsObject()) fail("E_CONFIG", "CLIP config needs vision and text sections");
  c.vision = tower_from_js(v.As<Napi::Object>());
  c.text = tower_from_js(t.As<Napi::Object>());
  c.image_size = get_int(o, "imageSize", 224);
  c.patch_size = get_int(o, "patchSize", 32);
  c.num_channels = get_int(o, "numChannels", 3);
  c.vocab_size = get_int(o, "vocabSize", 49408);
  c.max_positions = get_int(o, "maxPositions", 77);
  c.eos_token_id = get_int(o, "eosTokenId", 2);
  c.projection_dim = get_int(o, "projectionDim", 512);
  return c;
}

Gpt2Config gpt2_config_from_js(const Napi::Object& o) {
  Gpt2Config c;
  c.n_embd = get_int(o, "nEmbd", 768);
  c.n_head = get_int(o, "nHead", 12);
  c.n_layer = get_int(o, "nLayer", 12);
  c.n_positions = get_int(o, "nPositions", 1024);
  c.vocab_size = get_int(o, "vocabSize", 50257);
  c.n_inner = get_int(o, "nInner", 0);
  c.eps = get_number(o, "eps", 1e-5);
  c.act = activation_from_name(get_string(o, "act", "gelu_new"));
  c.eos_token_id = get_int(o, "eosTokenId", 50256);
  c.tie_word_embeddings = get_bool(o, "tieWordEmbeddings", true);
  return c;
}

MapperConfig mapper_config_from_js(const Napi::Object& o) {
  MapperConfig c;
  c.type = get_string(o, "type", "mlp");
  c.clip_dim = get_int(o, "clipDim", 512);
  c.n_embd = get_int(o, "nEmbd", 768);
  c.prefix_length = get_int(o, "prefixLength", 10);
  c.clip_length = get_int(o, "clipLength", 10);
  c.layers = get_int(o, "layers", 8);
  c.heads = get_int(o, "heads", 8);
  c.mlp_ratio = get_number(o, "mlpRatio", 2.0);
  return c;
}

DecodeOptions decode_options_from_js(const Napi::Object& o) {
  DecodeOptions d;
  d.method = get_string(o, "method", "greedy");
  d.max_tokens = get_int(o, "maxTokens", 30);
  d.min_tokens = get_int(o, "minTokens", 0);
  d.beams = get_int(o, "beams", 5);
  d.top_k = get_int(o, "topK", 0);
  d.temperature = get_number(o, "temperature", 1.0);
  d.top_p = get_number(o, "topP", 1.0);
  d.seed = static_cast<uint64_t>(get_int(o, "seed", 0));
  d.eos_id = get_int(o, "eosId", -1);
  d.bf16 = get_bool(o, "bf16", false);
  Napi::Value s = o.Get("stopIds");
  if (s.IsArray()) {
    Napi::Array a = s.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value x = a.Get(i);
      if (!x.IsNumber()) fail("E_CONFIG", "stopIds must be numbers");
      d.stop_ids.push_back(x.As<Napi::Number>().Int64Value());
    }
  } else if (!s.IsUndefined() && !s.IsNull()) {
    fail("E_CONFIG", "stopIds must be an array");
  }
  return d;
}

template <class M>
static std::shared_ptr<Locked<M>> live(const std::shared_ptr<Locked<M>>& h) {
  if (!h || !h->model) fail("E_DISPOSED", "model was disposed");
  return h;
}

// save(path, metadata?) for any model: a float32 snapshot taken under the model's lock, written atomically outside it
// (so work on the model goes on while the file is written).
static std::map<std::string, std::string> metadata_arg(const Napi::CallbackInfo& info, size_t i) {
  std::map<std::string, std::string> meta;
  if (info.Length() > i && info[i].IsObject()) {
    Napi::Object m = info[i].As<Napi::Object>();
    Napi::Array keys = m.GetPropertyNames();
    for (uint32_t k = 0; k < keys.Length(); ++k) {
      std::string key = keys.Get(k).As<Napi::String>().Utf8Value();
      Napi::Value v = m.Get(key);
      if (!v.IsString()) fail("E_CONFIG", "metadata values must be strings");
      meta[key] = v.As<Napi::String>().Utf8Value();
    }
  }
  return meta;
}

template <class M>
static Napi::Value save_params(Napi::Env env, std::shared_ptr<Locked<M>> h, std::function<ParamStore&(M&)> store, std::string path,
                               std::map<std::string, std::string> meta) {
  return run_async(env, [h, store, path, meta]() -> Finish {
    std::vector<at::Tensor> host;
    std::vector<TensorToWrite> items;
    {
      std::lock_guard<std::mutex> lock(h->mu);
      if (!h->model) fail("E_DISPOSED", "model was disposed");
      c10::NoGradGuard no_grad;
      ParamStore& ps = store(*h->model);
      for (const auto& name : ps.names()) {
        at::Tensor t = ps.get(name).detach().to(at::kCPU, at::kFloat).contiguous().clone();
        host.push_back(t);
        items.push_back({name, DType::F32, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(), t.nbytes()});
      }
    }
    write_safetensors(path, items, meta);
    return [](Napi::Env env) { return env.Undefined(); };
  });
}

// ---------------------------------------------------------------- AddonClip

Napi::Function AddonClip::Init(Napi::Env env) {
  return DefineClass(env, "AddonClip",
                     {InstanceMethod("load", &AddonClip::Load), InstanceMethod("vision", &AddonClip::Vision),
                      InstanceMethod("imageFeatures", &AddonClip::ImageFeatures),
                      InstanceMethod("text", &AddonClip::Text), InstanceMethod("logitScale", &AddonClip::LogitScale),
                      InstanceMethod("save", &AddonClip::Save),
                      InstanceMethod("dispose", &AddonClip::Dispose)});
}

AddonClip::AddonClip(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonClip>(info) {
  guarded(info.Env(), [&] {
    clip_ = std::make_shared<Locked<ClipModel>>();
    Napi::Object cfg = obj_arg(info, 0, "config");
    clip_->model = std::make_unique<ClipModel>(clip_config_from_js(cfg), static_cast<uint64_t>(get_int(cfg, "seed", 0)));
    return info.Env().Undefined();
  });
}

std::shared_ptr<Locked<ClipModel>> AddonClip::handle() const { return live(clip_); }

// The optional dtype argument of the load methods: CPU inference weights in float32, bfloat16 or int8.
static kernels::WType dtype_arg(const Napi::CallbackInfo& info, size_t i, const at::Device& device) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return kernels::WType::F32;
  if (!info[i].IsString()) fail("E_CONFIG", "dtype must be a string");
  kernels::WType t = parse_wtype(info[i].As<Napi::String>().Utf8Value());
  check(t == kernels::WType::F32 || device.is_cpu(), "E_CONFIG",
        "dtype 'bfloat16' / 'int8' converts weights for CPU inference; on CUDA load float32 (and decode with bf16 autocast)");
  return t;
}

// After a load: lays the CPU weights out for the kernels in the asked type. Without AVX2 the reduced types have
// no fast kernels, so float32 is used instead and the result says so.
static Finish prepared(ParamStore& params, const at::Device& device, kernels::WType want,
                       const std::function<bool(const std::string&)>& now = nullptr) {
  std::string dtype = kernels::wtype_name(want), note;
  size_t bytes = 0;
  if (device.is_cpu()) {
    kernels::WType use = want;
    if (want != kernels::WType::F32 && kernels::active_isa() == kernels::Isa::Portable) {
      use = kernels::WType::F32;
      note = std::string("the kernels run the portable instruction set (this CPU has no AVX2 + FMA, or SEMICAP_CPU_ISA=portable): ") +
             kernels::wtype_name(want) + " weights would run slower than float32, so float32 is used";
    }
    dtype = kernels::wtype_name(use);
    bytes = params.prepare_inference(use, now);
  }
  return [dtype, note, bytes](Napi::Env env) -> Napi::Value {
    Napi::Object o = Napi::Object::New(env);
    o.Set("dtype", dtype);
    o.Set("isa", kernels::isa_name(kernels::active_isa()));
    o.Set("packedBytes", static_cast<double>(bytes));
    if (!note.empty()) o.Set("note", note);
    return o;
  };
}

// load(path | null, device, dtype?, prepare?): fills the weights from a safetensors file (or keeps the random init)
// and moves them. prepare: the towers laid out for the CPU kernels now, 'all' (default), 'vision' or 'text'; the
// other tower's weights are laid out by its first call and stay out of memory until then.
Napi::Value AddonClip::Load(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    std::string path = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    at::Device device = parse_device(str_arg(info, 1, "device"));
    kernels::WType dtype = dtype_arg(info, 2, device);
    std::string prepare = "all";
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      check(info[3].IsString(), "E_CONFIG", "prepare must be a string");
      prepare = info[3].As<Napi::String>().Utf8Value();
    }
    check(prepare == "all" || prepare == "vision" || prepare == "text", "E_CONFIG",
          "prepare must be 'all', 'vision' or 'text', got '" + prepare + "'");
    std::function<bool(const std::string&)> now;  // (logit_scale belongs to neither tower: laid out now)
    if (prepare == "vision") now = [](const std::string& name) { return !ClipModel::text_param(name); };
    if (prepare == "text") now = [](const std::string& name) { return !ClipModel::vision_param(name); };
    return run_async(info.Env(), [h, path, device, dtype, now]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      if (!path.empty()) {
        auto file = WeightsFile::open(path);
        h->model->params().load(file, [](const std::string& k) {
          auto ends = [&](const char* s) { size_t n = strlen(s); return k.size() >= n && k.compare(k.size() - n, n, s) == 0; };
          return ends("position_ids") ? std::string() : k;
        });
      }
      h->model->params().to(device);
      return prepared(h->model->params(), device, dtype, now);
    });
  });
}

// Runs `f(model, input)` on a tensor argument off the JS thread (under the model's lock, inference mode); f returns
// the tensors and the conversion of them to JS.
template <class F>
static Napi::Value run_clip(const Napi::CallbackInfo& info, std::shared_ptr<Locked<ClipModel>> h, const char* what, F f) {
  KeepAlive keep;
  at::Tensor input = tensor_from_js(info[0], what, keep);
  return run_async(info.Env(), [h, input, f]() -> Finish {
    std::lock_guard<std::mutex> lock(h->mu);
    c10::InferenceMode guard;
    return f(*h->model, input);
  }, std::move(keep));
}

// One tower: {lastHidden, pooled, features}.
static Napi::Value run_tower(const Napi::CallbackInfo& info, std::shared_ptr<Locked<ClipModel>> h, const char* what,
                             ClipTowerOutput (ClipModel::*tower)(const at::Tensor&) const) {
  return run_clip(info, std::move(h), what, [tower](const ClipModel& m, const at::Tensor& input) -> Finish {
    ClipTowerOutput o = (m.*tower)(input);
    return [o](Napi::Env env) {
      Napi::Object r = Napi::Object::New(env);
      r.Set("lastHidden", tensor_to_js(env, o.last_hidden));
      r.Set("pooled", tensor_to_js(env, o.pooled));
      r.Set("features", tensor_to_js(env, o.features));
      return r;
    };
  });
}

Napi::Value AddonClip::Vision(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return run_tower(info, handle(), "pixels", &ClipModel::vision); });
}

Napi::Value AddonClip::ImageFeatures(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return run_clip(info, handle(), "pixels", [](const ClipModel& m, const at::Tensor& input) -> Finish {
      at::Tensor f = m.image_features(input);
      return [f](Napi::Env env) { return tensor_to_js(env, f); };
    });
  });
}

Napi::Value AddonClip::Text(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return run_tower(info, handle(), "ids", &ClipModel::text); });
}

Napi::Value AddonClip::LogitScale(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    std::lock_guard<std::mutex> lock(h->mu);
    return Napi::Number::New(info.Env(), h->model->logit_scale().item<double>());
  });
}

Napi::Value AddonClip::Save(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return save_params<ClipModel>(info.Env(), handle(), [](ClipModel& m) -> ParamStore& { return m.params(); }, str_arg(info, 0, "path"),
                                  metadata_arg(info, 1));
  });
}

Napi::Value AddonClip::Dispose(const Napi::CallbackInfo& info) {
  if (clip_) {
    std::lock_guard<std::mutex> lock(clip_->mu);  // waits for a running job; queued ones then fail with E_DISPOSED
    clip_->model.reset();
    empty_cpu_cache();  // dispose() gives the memory back now, cached blocks included
  }
  return info.Env().Undefined();
}

// ---------------------------------------------------------------- AddonGpt2

Napi::Function AddonGpt2::Init(Napi::Env env) {
  return DefineClass(env, "AddonGpt2",
                     {InstanceMethod("load", &AddonGpt2::Load), InstanceMethod("logits", &AddonGpt2::Logits),
                      InstanceMethod("generate", &AddonGpt2::Generate), InstanceMethod("save", &AddonGpt2::Save),
                      InstanceMethod("dispose", &AddonGpt2::Dispose)});
}

AddonGpt2::AddonGpt2(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonGpt2>(info) {
  guarded(info.Env(), [&] {
    gpt_ = std::make_shared<Locked<Gpt2Model>>();
    Napi::Object cfg = obj_arg(info, 0, "config");
    gpt_->model = std::make_unique<Gpt2Model>(gpt2_config_from_js(cfg), nullptr, "", static_cast<uint64_t>(get_int(cfg, "seed", 0)));
    return info.Env().Undefined();
  });
}

Napi::Value AddonGpt2::Load(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = live(gpt_);
    std::string path = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    at::Device device = parse_device(str_arg(info, 1, "device"));
    kernels::WType dtype = dtype_arg(info, 2, device);
    return run_async(info.Env(), [h, path, device, dtype]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      // The model's own key map: an untied head keeps lm_head.weight.
      if (!path.empty()) h->model->params().load(WeightsFile::open(path), [m = h->model.get()](const std::string& k) { return m->key(k); });
      h->model->params().to(device);
      return prepared(h->model->params(), device, dtype);
    });
  });
}

// Embeds ids and places an optional prefix [B,P,C] before them; returns logits [B,P+T,V].
static at::Tensor logits_with_prefix(const Gpt2Model& g, const at::Tensor& ids, const at::Tensor& prefix) {
  at::Tensor x = g.embed_tokens(ids);
  if (prefix.defined()) {
    check(prefix.dim() == 3 && prefix.size(0) == ids.size(0) && prefix.size(2) == g.config().n_embd, "E_SHAPE",
          "prefix must have shape [B, P, " + std::to_string(g.config().n_embd) + "] with the same B as ids");
    check(prefix.is_floating_point(), "E_DTYPE", "prefix must be float32");
    at::Tensor p = prefix.to(g.device(), at::kFloat);
    check(at::isfinite(p).all().item<bool>(), "E_VALUE", "prefix contains NaN or infinite values");
    x = at::cat({p, x}, 1);
  }
  check(x.size(1) > 0, "E_SHAPE", "nothing to run: no ids and no prefix");
  return g.logits(g.forward(x, nullptr));
}

Napi::Value AddonGpt2::Logits(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = live(gpt_);
    KeepAlive keep;
    at::Tensor ids = tensor_from_js(info[0], "ids", keep);
    at::Tensor prefix = info.Length() > 1 && info[1].IsObject() ? tensor_from_js(info[1], "prefix", keep) : at::Tensor();
    return run_async(info.Env(), [h, ids, prefix]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      c10::InferenceMode guard;
      at::Tensor out = logits_with_prefix(*h->model, ids, prefix);
      return [out](Napi::Env env) { return tensor_to_js(env, out); };
    }, std::move(keep));
  });
}

static Finish decode_result_to_js(const DecodeResult& r) {
  return [r](Napi::Env env) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("ids", tensor_to_js(env, r.ids.cpu()));
    o.Set("scores", tensor_to_js(env, r.scores.cpu()));
    return o;
  };
}

Napi::Value AddonGpt2::Generate(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = live(gpt_);
    KeepAlive keep;
    at::Tensor prefix = tensor_from_js(info[0], "prefix", keep);
    DecodeOptions opts = decode_options_from_js(obj_arg(info, 1, "options"));
    return run_async(info.Env(), [h, prefix, opts]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      c10::InferenceMode guard;
      return decode_result_to_js(decode(*h->model, prefix, opts));
    }, std::move(keep));
  });
}

std::shared_ptr<Locked<Gpt2Model>> AddonGpt2::handle() const { return live(gpt_); }

Napi::Value AddonGpt2::Save(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return save_params<Gpt2Model>(info.Env(), handle(), [](Gpt2Model& m) -> ParamStore& { return m.params(); }, str_arg(info, 0, "path"),
                                  metadata_arg(info, 1));
  });
}

Napi::Value AddonGpt2::Dispose(const Napi::CallbackInfo& info) {
  if (gpt_) {
    std::lock_guard<std::mutex> lock(gpt_->mu);
    gpt_->model.reset();
    empty_cpu_cache();  // dispose() gives the memory back now, cached blocks included
  }
  return info.Env().Undefined();
}

// ---------------------------------------------------------------- AddonCaptioner

Napi::Function AddonCaptioner::Init(Napi::Env env) {
  return DefineClass(env, "AddonCaptioner",
                     {InstanceMethod("loadGpt2", &AddonCaptioner::LoadGpt2), InstanceMethod("load", &AddonCaptioner::Load),
                      InstanceMethod("save", &AddonCaptioner::Save), InstanceMethod("caption", &AddonCaptioner::Caption),
                      InstanceMethod("captionFeatures", &AddonCaptioner::CaptionFeatures),
                      InstanceMethod("logits", &AddonCaptioner::Logits), InstanceMethod("numParams", &AddonCaptioner::NumParams),
                      InstanceMethod("dispose", &AddonCaptioner::Dispose)});
}

// new AddonCaptioner(clip: AddonClip, { gpt2, mapper, normalizePrefix })
AddonCaptioner::AddonCaptioner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonCaptioner>(info) {
  guarded(info.Env(), [&] {
    if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(addon_state(info.Env()).clip_ctor.Value()))
      fail("E_CONFIG", "first argument must be a CLIP model");
    Napi::Object cfg = obj_arg(info, 1, "config");
    Napi::Value g = cfg.Get("gpt2"), m = cfg.Get("mapper");
    if (!g.IsObject() || !m.IsObject()) fail("E_CONFIG", "captioner config needs gpt2 and mapper sections");
    cap_ = std::make_shared<Locked<CaptionerModel>>();
    auto clip = AddonClip::Unwrap(info[0].As<Napi::Object>())->handle();
    MapperConfig mc = mapper_config_from_js(m.As<Napi::Object>());
    check(mc.clip_dim == clip->model->config().projection_dim, "E_CONFIG", "mapper clipDim must equal CLIP's projection_dim");
    auto model = std::make_unique<CaptionerModel>(mc, gpt2_config_from_js(g.As<Napi::Object>()), get_bool(cfg, "normalizePrefix", false),
                                                    static_cast<uint64_t>(get_int(cfg, "seed", 0)));
    model->clip = clip;
    cap_->model = std::move(model);
    return info.Env().Undefined();
  });
}

std::shared_ptr<Locked<CaptionerModel>> AddonCaptioner::handle() const { return live(cap_); }

// loadGpt2(path | null, device): GPT-2 weights from a plain Hugging Face GPT-2 file; null moves only.
Napi::Value AddonCaptioner::LoadGpt2(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    std::string path = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    at::Device device = parse_device(str_arg(info, 1, "device"));
    kernels::WType dtype = dtype_arg(info, 2, device);
    return run_async(info.Env(), [h, path, device, dtype]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      if (!path.empty())
        h->model->params.load(WeightsFile::open(path), [g = h->model->gpt.get()](const std::string& k) {
          std::string n = g->key(k);
          return n.empty() ? n : "gpt." + n;
        }, "gpt.");
      h->model->params.to(device);
      return prepared(h->model->params, device, dtype);
    });
  });
}

// load(path, device): a Captioner checkpoint (clip_project.* + gpt.*).
Napi::Value AddonCaptioner::Load(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    std::string path = str_arg(info, 0, "path");
    at::Device device = parse_device(str_arg(info, 1, "device"));
    kernels::WType dtype = dtype_arg(info, 2, device);
    return run_async(info.Env(), [h, path, device, dtype]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      h->model->params.load(WeightsFile::open(path), [m = h->model.get()](const std::string& k) { return m->key(k); });
      h->model->params.to(device);
      return prepared(h->model->params, device, dtype);
    });
  });
}

// save(path, metadata): float32 safetensors of every parameter, written atomically.
Napi::Value AddonCaptioner::Save(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return save_params<CaptionerModel>(info.Env(), handle(), [](CaptionerModel& m) -> ParamStore& { return m.params; },
                                       str_arg(info, 0, "path"), metadata_arg(info, 1));
  });
}

// caption(pixels [B,3,S,S], decodeOptions) -> { ids, scores, features }
Napi::Value AddonCaptioner::Caption(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    KeepAlive keep;
    at::Tensor pixels = tensor_from_js(info[0], "pixels", keep);
    DecodeOptions opts = decode_options_from_js(obj_arg(info, 1, "options"));
    return run_async(info.Env(), [h, pixels, opts]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      c10::InferenceMode guard;
      at::Tensor features;
      {
        auto clip = live(h->model->clip);
        std::lock_guard<std::mutex> clip_lock(clip->mu);
        at::Tensor px = pixels;
        // Pinned staging makes the host-to-device copy asynchronous and faster than from pageable memory.
        if (clip->model->device().is_cuda() && px.is_cpu()) px = px.to(at::kFloat).pin_memory().to(clip->model->device(), /*non_blocking=*/true);
        Bf16Autocast autocast(opts.bf16 && clip->model->device().is_cuda());
        features = clip->model->image_features(px).to(at::kFloat);
      }
      DecodeResult r = decode(*h->model->gpt, h->model->prefix_from_features(features), opts);
      Finish base = decode_result_to_js(r);
      return [base, features](Napi::Env env) {
        Napi::Object o = base(env).As<Napi::Object>();
        o.Set("features", tensor_to_js(env, features.cpu()));
        return o;
      };
    }, std::move(keep));
  });
}

// captionFeatures(features [B,clip_dim], decodeOptions): decoding from precomputed CLIP features.
Napi::Value AddonCaptioner::CaptionFeatures(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    KeepAlive keep;
    at::Tensor features = tensor_from_js(info[0], "features", keep);
    DecodeOptions opts = decode_options_from_js(obj_arg(info, 1, "options"));
    return run_async(info.Env(), [h, features, opts]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      c10::InferenceMode guard;
      check(features.is_floating_point(), "E_DTYPE", "features must be float32");
      return decode_result_to_js(decode(*h->model->gpt, h->model->prefix_from_features(features), opts));
    }, std::move(keep));
  });
}

// logits(ids [B,T], features [B,clip_dim]) -> [B, K+T, V]: teacher-forced logits after the mapped prefix.
Napi::Value AddonCaptioner::Logits(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    KeepAlive keep;
    at::Tensor ids = tensor_from_js(info[0], "ids", keep);
    at::Tensor features = tensor_from_js(info[1], "features", keep);
    return run_async(info.Env(), [h, ids, features]() -> Finish {
      std::lock_guard<std::mutex> lock(h->mu);
      c10::InferenceMode guard;
      at::Tensor out = logits_with_prefix(*h->model->gpt, ids, h->model->prefix_from_features(features));
      return [out](Napi::Env env) { return tensor_to_js(env, out); };
    }, std::move(keep));
  });
}

Napi::Value AddonCaptioner::NumParams(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto h = handle();
    return Napi::Number::New(info.Env(), static_cast<double>(h->model->params.numel()));
  });
}

Napi::Value AddonCaptioner::Dispose(const Napi::CallbackInfo& info) {
  if (cap_) {
    std::lock_guard<std::mutex> lock(cap_->mu);
    cap_->model.reset();
    empty_cpu_cache();  // dispose() gives the memory back now, cached blocks included
  }
  return info.Env().Undefined();
}

}  // namespace semicap
