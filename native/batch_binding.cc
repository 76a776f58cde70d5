// AddonDecodeBatch: the JS face of a DecodeBatch (batch_decode.h) over an AddonCaptioner's model. Coarse async ops,
// each a worker that converts its inputs up front, never touches JS while it runs, and holds the model's lock for
// that one op only, so other work on the model (a beam caption, a save) interleaves at token boundaries:
//   new AddonDecodeBatch(captioner)
//   add(input [n,3,S,S] pixels | [n,clipDim] features, rows: RowOptions[n]) -> Promise<RowToken[]>  (CLIP-encodes
//       pixels, maps, prefills the newcomers together and chooses their first tokens)
//   step() -> Promise<RowToken[]>   one token for every active row; finished rows leave
//   remove(rowIds) -> Promise<number>   drops rows (abort, deadline); unknown ids are ignored
//   size (rows active), dispose() (frees every row's cache; later ops fail with E_DISPOSED)
// RowToken: { rowId, token, finished, logp, score? (when finished) }. RowOptions: the decode options wire (method
// 'greedy' | 'sample', maxTokens, minTokens, topK, temperature, topP, seed, stopIds, eosId) plus `row`: the row's
// index within its request, which with `seed` gives the row's sampling seed (row_seed in decode.h).
#include <c10/core/InferenceMode.h>
#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "addon_state.h"
#include "batch_decode.h"
#include "errors.h"
#include "models_binding.h"

namespace semicap {
namespace {

struct BatchState {
  std::mutex mu;  // taken after the model's lock, for one op
  DecodeBatch batch;
  std::atomic<int64_t> size{0};
  std::atomic<int64_t> slots{0};  // KV slab slots held (the slab path)
  std::atomic<bool> disposed{false};
  // After an op (under mu): frees the rows when dispose() came while the op ran.
  void settle() {
    if (disposed) batch.clear();
    size = batch.size();
    slots = batch.slab_slots();
  }
  // Runs `op` (on a worker thread) holding the model's lock, then the batch's, in inference mode; settles after it,
  // whether it returned or threw.
  template <class F>
  std::vector<RowToken> locked(Locked<CaptionerModel>& h, F&& op) {
    std::lock_guard<std::mutex> lock(h.mu);
    if (!h.model) fail("E_DISPOSED", "model was disposed");
    std::lock_guard<std::mutex> batch_lock(mu);
    if (disposed) fail("E_DISPOSED", "the decode batch was disposed");
    std::vector<RowToken> out;
    try {
      c10::InferenceMode guard;
      out = op(*h.model);
    } catch (...) {
      settle();
      throw;
    }
    settle();
    return out;
  }
};

using Model = std::shared_ptr<Locked<CaptionerModel>>;

Napi::Value row_tokens_to_js(Napi::Env env, const std::vector<RowToken>& out) {
  Napi::Array a = Napi::Array::New(env, out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("rowId", static_cast<double>(out[i].row));
    o.Set("token", static_cast<double>(out[i].token));
    o.Set("finished", out[i].finished);
    o.Set("logp", out[i].logp);
    if (out[i].finished) o.Set("score", out[i].score);
    a.Set(static_cast<uint32_t>(i), o);
  }
  return a;
}

// One row's options, checked against the model (types: E_CONFIG; ranges: E_VALUE).
DecodeOptions row_options_from_js(const Napi::Value& v, size_t i, const CaptionerModel& m) {
  const std::string where = "rows[" + std::to_string(i) + "]";
  if (!v.IsObject() || v.IsArray()) fail("E_CONFIG", where + " must be an object");
  Napi::Object o = v.As<Napi::Object>();
  DecodeOptions d;
  try {
    d = decode_options_from_js(o);
  } catch (const Error& e) {
    fail(e.code.c_str(), where + ": " + e.what());
  }
  int64_t row = get_int(o, "row", 0);
  int64_t seed = get_int(o, "seed", 0);
  check(row >= 0 && seed >= 0, "E_VALUE", where + ": seed and row must be non-negative integers");
  if (d.method == "sample") d.row_seeds = {row_seed(static_cast<uint64_t>(seed), row)};
  try {
    DecodeBatch::validate(*m.gpt, m.mapper->config().prefix_length, d);
  } catch (const Error& e) {
    fail(e.code.c_str(), where + ": " + e.what());
  }
  return d;
}

std::vector<int64_t> ids_from_js(const Napi::Value& v) {
  if (!v.IsArray()) fail("E_CONFIG", "rowIds must be an array of row ids");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> ids;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value x = a.Get(i);
    double d = x.IsNumber() ? x.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 1) || d != std::floor(d) || d > 9.0e15) fail("E_VALUE", "rowIds[" + std::to_string(i) + "] is not a row id (a positive integer)");
    ids.push_back(static_cast<int64_t>(d));
  }
  return ids;
}

}  // namespace

class AddonDecodeBatch : public Napi::ObjectWrap<AddonDecodeBatch> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "AddonDecodeBatch",
                       {InstanceMethod("add", &AddonDecodeBatch::Add), InstanceMethod("step", &AddonDecodeBatch::Step),
                        InstanceMethod("remove", &AddonDecodeBatch::Remove), InstanceMethod("dispose", &AddonDecodeBatch::Dispose),
                        InstanceAccessor("size", &AddonDecodeBatch::Size, nullptr),
                        InstanceAccessor("slots", &AddonDecodeBatch::Slots, nullptr)});
  }

  // new AddonDecodeBatch(captioner: AddonCaptioner)
  explicit AddonDecodeBatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonDecodeBatch>(info) {
    guarded(info.Env(), [&] {
      if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(addon_state(info.Env()).captioner_ctor.Value()))
        fail("E_CONFIG", "AddonDecodeBatch: the argument must be a captioner (AddonCaptioner)");
      model_ = AddonCaptioner::Unwrap(info[0].As<Napi::Object>())->handle();
      state_ = std::make_shared<BatchState>();
      return info.Env().Undefined();
    });
  }

 private:
  // The model, alive (E_DISPOSED otherwise), and this batch, not disposed.
  Model live() const {
    if (state_->disposed) fail("E_DISPOSED", "the decode batch was disposed");
    if (!model_ || !model_->model) fail("E_DISPOSED", "model was disposed");
    return model_;
  }

  Napi::Value Add(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      Model h = live();
      const CaptionerModel& m = *h->model;
      KeepAlive keep;
      if (info.Length() < 2) fail("E_CONFIG", "add(input, rows): input and rows are required");
      at::Tensor input = tensor_from_js(info[0], "input", keep);
      if (!info[1].IsArray()) fail("E_CONFIG", "add: rows must be an array with one options object per input row");
      Napi::Array rows = info[1].As<Napi::Array>();
      check(input.is_floating_point(), "E_DTYPE", "add: input must be float32 (pixels or CLIP features)");
      const bool pixels = input.dim() == 4;
      const int64_t D = m.mapper->config().clip_dim;
      check(pixels || (input.dim() == 2 && input.size(1) == D), "E_SHAPE",
            "add: input must be pixels [n, channels, size, size] or CLIP features [n, " + std::to_string(D) + "]");
      check(input.size(0) >= 1 && input.size(0) == static_cast<int64_t>(rows.Length()), "E_SHAPE",
            "add: input has " + std::to_string(input.size(0)) + " rows but rows has " + std::to_string(rows.Length()) + " options objects (need one per row, at least one)");
      std::vector<DecodeOptions> opts;
      for (uint32_t i = 0; i < rows.Length(); ++i) opts.push_back(row_options_from_js(rows.Get(i), i, m));
      auto st = state_;
      return run_async(info.Env(), [h, st, input, pixels, opts]() -> Finish {
        std::vector<RowToken> out = st->locked(*h, [&](CaptionerModel& m) {
          at::Tensor features = input;
          if (pixels) {
            auto clip = m.clip;
            if (!clip || !clip->model) fail("E_DISPOSED", "the captioner's CLIP was disposed");
            std::lock_guard<std::mutex> clip_lock(clip->mu);
            at::Tensor px = input;
            if (clip->model->device().is_cuda() && px.is_cpu()) px = px.to(at::kFloat).pin_memory().to(clip->model->device(), /*non_blocking=*/true);
            features = clip->model->image_features(px).to(at::kFloat);
          }
          at::Tensor prefix = m.prefix_from_features(features);
          check(at::isfinite(prefix).all().item<bool>(), "E_VALUE", "add: the prefix (or the features it was mapped from) contains NaN or infinite values");
          return st->batch.add(*m.gpt, prefix, opts);
        });
        return [out](Napi::Env env) { return row_tokens_to_js(env, out); };
      }, std::move(keep));
    });
  }

  // step(burst = 1): see DecodeBatch::step.
  Napi::Value Step(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      Model h = live();
      int64_t burst = 1;
      if (info.Length() > 0 && !info[0].IsUndefined()) {
        const double d = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
        if (!(d >= 1 && d <= 256) || d != std::floor(d)) fail("E_VALUE", "step: burst must be an integer in [1, 256]");
        burst = static_cast<int64_t>(d);
      }
      auto st = state_;
      return run_async(info.Env(), [h, st, burst]() -> Finish {
        std::vector<RowToken> out = st->locked(*h, [&](CaptionerModel& m) { return st->batch.step(*m.gpt, burst); });
        return [out](Napi::Env env) { return row_tokens_to_js(env, out); };
      });
    });
  }

  Napi::Value Remove(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      if (state_->disposed) fail("E_DISPOSED", "the decode batch was disposed");
      std::vector<int64_t> ids = ids_from_js(info.Length() > 0 ? info[0] : info.Env().Undefined());
      auto st = state_;
      // Only the batch's own lock: dropping rows needs no model (and works after the model was disposed).
      return run_async(info.Env(), [st, ids]() -> Finish {
        std::lock_guard<std::mutex> batch_lock(st->mu);
        int64_t n = st->batch.remove(ids);
        st->settle();
        return [n](Napi::Env env) { return Napi::Number::New(env, static_cast<double>(n)); };
      });
    });
  }

  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(state_->size.load())); }
  Napi::Value Slots(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(state_->slots.load())); }

  // Never waits for a running op: when one holds the batch, it frees the rows as it ends.
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    state_->disposed = true;
    std::unique_lock<std::mutex> lock(state_->mu, std::try_to_lock);
    if (lock.owns_lock()) state_->settle();
    return info.Env().Undefined();
  }

  Model model_;
  std::shared_ptr<BatchState> state_;
};

// Registered by addon.cc.
Napi::Function batch_init(Napi::Env env) { return AddonDecodeBatch::Init(env); }

}  // namespace semicap
