// Per-environment state (the addon is context-aware: each worker_thread gets its own), the exception-to-JS
// translation every entry point uses, and the Promise-returning worker every heavy call runs on.
#pragma once
#include <napi.h>

#include <functional>
#include <string>

#include "bridge.h"

namespace semicap {

struct AddonState {
  Napi::FunctionReference tensor_ctor;
  Napi::FunctionReference clip_ctor;
  Napi::FunctionReference gpt2_ctor;
  Napi::FunctionReference captioner_ctor;
};
AddonState& addon_state(Napi::Env env);

// A JS Error with `.code` set.
Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message);

// Runs `f`, turning semicap::Error / c10::Error / std::exception into a thrown JS error with a code.
Napi::Value guarded(Napi::Env env, const std::function<Napi::Value()>& f);

// Runs `work` on the libuv pool; `work` returns the function that builds the JS result on the JS thread.
// Inputs must be converted (and pinned in `keep`) before; nothing in `work` may touch JS.
using Finish = std::function<Napi::Value(Napi::Env)>;
Napi::Promise run_async(Napi::Env env, std::function<Finish()> work, KeepAlive keep = {});

// Reads common option types from a JS object, with errors naming the option.
int64_t get_int(const Napi::Object& o, const char* key, int64_t fallback);
double get_number(const Napi::Object& o, const char* key, double fallback);
std::string get_string(const Napi::Object& o, const char* key, const std::string& fallback);
bool get_bool(const Napi::Object& o, const char* key, bool fallback);

}  // namespace semicap
