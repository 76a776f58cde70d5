// Synchronous access to the optimizer on small tensors, so tests can check AdamW and gradient clipping against a
// hand computation (the trainers call the same AdamW::clip_and_step).
#include <napi.h>

#include "addon_state.h"
#include "bridge.h"
#include "errors.h"
#include "optim.h"

namespace semicap {

Napi::Object optim_exports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  // adamwSteps(params, gradsPerStep, { lr, maxNorm, weightDecay }): AdamW over copies of params, one step per entry
  // of gradsPerStep (that step's gradients, one per parameter); returns { params, norms } (norms before clipping).
  o.Set("adamwSteps", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      Napi::Env env = info.Env();
      check(info.Length() >= 3 && info[0].IsArray() && info[1].IsArray() && info[2].IsObject(), "E_VALUE",
            "adamwSteps(params[], gradsPerStep[][], { lr, maxNorm, weightDecay })");
      KeepAlive keep;
      c10::NoGradGuard no_grad;
      Napi::Array ps = info[0].As<Napi::Array>(), steps = info[1].As<Napi::Array>();
      Napi::Object opts = info[2].As<Napi::Object>();
      std::vector<at::Tensor> params;
      std::vector<std::string> names;
      for (uint32_t i = 0; i < ps.Length(); ++i) {
        at::Tensor p = tensor_from_js(ps.Get(i), "params[" + std::to_string(i) + "]", keep);
        check(p.scalar_type() == at::kFloat, "E_DTYPE", "params must be float32");
        params.push_back(p.clone().set_requires_grad(true));
        names.push_back("p" + std::to_string(i));
      }
      AdamWConfig cfg;
      cfg.weight_decay = get_number(opts, "weightDecay", cfg.weight_decay);
      const double lr = get_number(opts, "lr", 1e-3), max_norm = get_number(opts, "maxNorm", 0);
      AdamW opt(params, names, cfg);
      Napi::Array norms = Napi::Array::New(env);
      for (uint32_t t = 0; t < steps.Length(); ++t) {
        check(steps.Get(t).IsArray() && steps.Get(t).As<Napi::Array>().Length() == params.size(), "E_VALUE",
              "gradsPerStep[" + std::to_string(t) + "] must hold one gradient per parameter");
        Napi::Array gs = steps.Get(t).As<Napi::Array>();
        opt.zero_grad();
        for (uint32_t i = 0; i < gs.Length(); ++i) {
          at::Tensor g = tensor_from_js(gs.Get(i), "gradsPerStep[" + std::to_string(t) + "][" + std::to_string(i) + "]", keep);
          check(g.sizes() == params[i].sizes() && g.scalar_type() == at::kFloat, "E_SHAPE", "a gradient must match its parameter");
          params[i].mutable_grad() = g.clone();
        }
        norms.Set(t, opt.clip_and_step(lr, max_norm));
      }
      Napi::Array out = Napi::Array::New(env);
      for (uint32_t i = 0; i < params.size(); ++i) out.Set(i, tensor_to_js(env, params[i].detach()));
      Napi::Object r = Napi::Object::New(env);
      r.Set("params", out);
      r.Set("norms", norms);
      return r;
    });
  }));
  return o;
}

}  // namespace semicap
