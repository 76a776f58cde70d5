// Tensors across the N-API boundary. In: a JS tensor ({dtype, shape, data: TypedArray} or a native handle) becomes
// an at::Tensor that borrows the TypedArray's memory; the caller keeps a reference so JS cannot collect it while a
// worker runs. Out: a CPU tensor becomes a TypedArray over an external ArrayBuffer that owns the tensor (freed by
// a finalizer), or one copy where the runtime forbids external buffers (Electron's V8 sandbox) or
// SEMICAP_NO_EXTERNAL_BUFFERS=1 asks for it. Device tensors stay on the device behind a handle.
#pragma once
#include <ATen/ATen.h>
#include <napi.h>

#include <vector>

namespace semicap {

// Pins JS objects for the lifetime of an async job.
using KeepAlive = std::vector<Napi::ObjectReference>;

at::Tensor tensor_from_js(const Napi::Value& value, const std::string& what, KeepAlive& keep);
Napi::Value tensor_to_js(Napi::Env env, at::Tensor t);

// A JS-visible owner of a tensor that lives on a device (or that JS asked to keep native).
class AddonTensor : public Napi::ObjectWrap<AddonTensor> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, at::Tensor t);
  explicit AddonTensor(const Napi::CallbackInfo& info);
  const at::Tensor& tensor() const;

 private:
  Napi::Value ToHost(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  at::Tensor tensor_;
};

// Counts of how outputs crossed, for tests that prove both paths.
struct BridgeStats { uint64_t external = 0, copied = 0; };
BridgeStats& bridge_stats();

}  // namespace semicap
