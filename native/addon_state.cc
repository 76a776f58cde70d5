#include "addon_state.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <new>

#include "errors.h"
#include "exit_guard.h"

namespace semicap {

AddonState& addon_state(Napi::Env env) { return *env.GetInstanceData<AddonState>(); }

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

namespace {
// Classifies any exception into (code, message).
void describe(std::exception_ptr p, std::string* code, std::string* msg) {
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    *code = e.code;
    *msg = e.what();
  } catch (const c10::Error& e) {
    *code = "E_NATIVE";
    *msg = std::string("libtorch: ") + e.what_without_backtrace();
  } catch (const std::bad_alloc&) {
    *code = "E_NATIVE";
    *msg = "out of memory";
  } catch (const std::exception& e) {
    *code = "E_NATIVE";
    *msg = e.what();
  } catch (...) {
    *code = "E_NATIVE";
    *msg = "unknown native error";
  }
}

class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, std::function<Finish()> work, KeepAlive keep)
      : Napi::AsyncWorker(env, "semicap"), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)), keep_(std::move(keep)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    NativeWorkScope in_flight;
    try {
      finish_ = work_();
    } catch (...) {
      describe(std::current_exception(), &code_, &msg_);
      SetError(msg_);
    }
  }
  // Both callbacks may run while the environment is being torn down (a worker_thread terminated mid-call), when
  // nothing can be thrown into JS any more: every failure is contained here instead of reaching std::terminate.
  void OnOK() override {
    try {
      Napi::Env env = Env();
      try {
        deferred_.Resolve(finish_(env));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      } catch (...) {
        std::string code, msg;
        describe(std::current_exception(), &code, &msg);
        deferred_.Reject(make_error(env, code, msg).Value());
      }
    } catch (...) {
    }
    finish_ = nullptr;  // release result tensors now, not when the worker is collected
  }
  void OnError(const Napi::Error&) override {
    try {
      deferred_.Reject(make_error(Env(), code_, msg_).Value());
    } catch (...) {
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<Finish()> work_;
  Finish finish_;
  KeepAlive keep_;
  std::string code_, msg_;
};
}  // namespace

Napi::Value guarded(Napi::Env env, const std::function<Napi::Value()>& f) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    std::string code, msg;
    describe(std::current_exception(), &code, &msg);
    throw make_error(env, code, msg);
  }
}

Napi::Promise run_async(Napi::Env env, std::function<Finish()> work, KeepAlive keep) {
  auto* w = new PromiseWorker(env, std::move(work), std::move(keep));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

int64_t get_int(const Napi::Object& o, const char* key, int64_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) fail("E_CONFIG", std::string(key) + " must be an integer");
  return static_cast<int64_t>(d);
}
double get_number(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue())) fail("E_CONFIG", std::string(key) + " must be a finite number");
  return v.As<Napi::Number>().DoubleValue();
}
std::string get_string(const Napi::Object& o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsString()) fail("E_CONFIG", std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}
bool get_bool(const Napi::Object& o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsBoolean()) fail("E_CONFIG", std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

}  // namespace semicap
