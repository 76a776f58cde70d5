#include "bridge.h"

#include <cstring>

#include "addon_state.h"
#include "env.h"
#include "errors.h"

namespace semicap {

BridgeStats& bridge_stats() {
  static BridgeStats s;
  return s;
}

namespace {

struct DtypeInfo { const char* name; at::ScalarType st; napi_typedarray_type ta; };
const DtypeInfo kDtypes[] = {
    {"float32", at::kFloat, napi_float32_array},   {"float16", at::kHalf, napi_uint16_array},
    {"bfloat16", at::kBFloat16, napi_uint16_array}, {"int64", at::kLong, napi_bigint64_array},
    {"int32", at::kInt, napi_int32_array},          {"uint8", at::kByte, napi_uint8_array},
    {"bool", at::kBool, napi_uint8_array},          {"float64", at::kDouble, napi_float64_array},
};

const DtypeInfo* by_name(const std::string& n) {
  for (const auto& d : kDtypes) if (n == d.name) return &d;
  return nullptr;
}
const DtypeInfo* by_scalar(at::ScalarType st) {
  for (const auto& d : kDtypes) if (st == d.st) return &d;
  return nullptr;
}

bool force_copy() {
  static const bool on = env_flag("SEMICAP_NO_EXTERNAL_BUFFERS");
  return on;
}

Napi::Value make_typed_array(Napi::Env env, napi_typedarray_type type, Napi::ArrayBuffer buf, size_t length) {
  napi_value out;
  napi_status s = napi_create_typedarray(env, type, length, buf, 0, &out);
  if (s != napi_ok) NAPI_THROW(Napi::Error::New(env, "cannot create a typed array"), Napi::Value());
  return Napi::Value(env, out);
}

}  // namespace

at::Tensor tensor_from_js(const Napi::Value& value, const std::string& what, KeepAlive& keep) {
  if (!value.IsObject()) fail("E_VALUE", what + " must be a Tensor");
  Napi::Object obj = value.As<Napi::Object>();
  Napi::Value handle = obj.Get("native");
  if (handle.IsObject()) {
    Napi::Object h = handle.As<Napi::Object>();
    if (!h.InstanceOf(addon_state(value.Env()).tensor_ctor.Value())) fail("E_VALUE", what + ": 'native' is not a tensor handle");
    keep.emplace_back(Napi::Persistent(h));
    return AddonTensor::Unwrap(h)->tensor();
  }
  Napi::Value dt = obj.Get("dtype"), sh = obj.Get("shape"), data = obj.Get("data");
  if (!dt.IsString()) fail("E_DTYPE", what + ": dtype must be a string");
  const DtypeInfo* info = by_name(dt.As<Napi::String>().Utf8Value());
  if (!info) fail("E_DTYPE", what + ": unsupported dtype '" + dt.As<Napi::String>().Utf8Value() + "'");
  if (!sh.IsArray()) fail("E_SHAPE", what + ": shape must be an array");
  Napi::Array arr = sh.As<Napi::Array>();
  if (arr.Length() > 16) fail("E_SHAPE", what + ": too many dimensions");
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value d = arr.Get(i);
    double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 0) || x != static_cast<double>(static_cast<int64_t>(x)) || x > 9.0e15) fail("E_SHAPE", what + ": shape entries must be non-negative integers");
    shape.push_back(static_cast<int64_t>(x));
    if (x > 0 && numel > (UINT64_MAX >> 4) / static_cast<uint64_t>(x)) fail("E_SHAPE", what + ": shape is too large");
    numel *= static_cast<uint64_t>(x);
  }
  if (!data.IsTypedArray()) fail("E_VALUE", what + ": data must be a TypedArray");
  Napi::TypedArray ta = data.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != info->ta) fail("E_DTYPE", what + ": a " + info->name + " tensor needs the matching TypedArray type");
  if (ta.ElementLength() != numel)
    fail("E_SHAPE", what + ": shape holds " + std::to_string(numel) + " elements but data has " + std::to_string(ta.ElementLength()));
  uint8_t* ptr = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  keep.emplace_back(Napi::Persistent(ta.As<Napi::Object>()));
  const size_t esize = at::elementSize(info->st);
  if (numel == 0) return at::empty(shape, at::TensorOptions().dtype(info->st));
  if (reinterpret_cast<uintptr_t>(ptr) % esize != 0) {  // a view at an odd offset: copy rather than misalign
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(info->st));
    std::memcpy(t.data_ptr(), ptr, numel * esize);
    return t;
  }
  return at::from_blob(ptr, shape, at::TensorOptions().dtype(info->st));
}

Napi::Value tensor_to_js(Napi::Env env, at::Tensor t) {
  Napi::Object out = Napi::Object::New(env);
  const DtypeInfo* info = by_scalar(t.scalar_type());
  if (!info) {
    t = t.to(at::kFloat);
    info = by_scalar(at::kFloat);
  }
  out.Set("dtype", info->name);
  Napi::Array shape = Napi::Array::New(env, t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) shape.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(t.size(i))));
  out.Set("shape", shape);
  if (!t.device().is_cpu()) {
    out.Set("device", t.device().str());
    out.Set("native", AddonTensor::Wrap(env, t));
    return out;
  }
  out.Set("device", "cpu");
  t = t.contiguous();
  // The external buffer must own its memory alone: a view, or storage shared with another live tensor (an input
  // JS already holds, say), would register the same address twice with V8. Copy those.
  if (t.storage_offset() != 0 || t.storage().nbytes() != t.nbytes() || t.storage().use_count() > 1) t = t.clone();
  const size_t nbytes = t.nbytes();
  const size_t length = static_cast<size_t>(t.numel());
  napi_value ab = nullptr;
  napi_status status = napi_generic_failure;
  if (nbytes > 0 && !force_copy()) {
    auto* owner = new at::Tensor(t);
    status = napi_create_external_arraybuffer(
        env, t.data_ptr(), nbytes, [](napi_env, void*, void* hint) { delete static_cast<at::Tensor*>(hint); }, owner, &ab);
    if (status != napi_ok) delete owner;  // napi_no_external_buffers_allowed under Electron's sandbox
  }
  if (status == napi_ok) {
    ++bridge_stats().external;
    out.Set("data", make_typed_array(env, info->ta, Napi::ArrayBuffer(env, ab), length));
  } else {
    if (nbytes > 0) ++bridge_stats().copied;
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, nbytes);
    if (nbytes) std::memcpy(buf.Data(), t.data_ptr(), nbytes);
    out.Set("data", make_typed_array(env, info->ta, buf, length));
  }
  return out;
}

Napi::Function AddonTensor::Init(Napi::Env env) {
  return DefineClass(env, "AddonTensor", {InstanceMethod("toHost", &AddonTensor::ToHost), InstanceMethod("dispose", &AddonTensor::Dispose)});
}

Napi::Object AddonTensor::Wrap(Napi::Env env, at::Tensor t) {
  Napi::Object obj = addon_state(env).tensor_ctor.New({});
  Unwrap(obj)->tensor_ = std::move(t);
  return obj;
}

AddonTensor::AddonTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonTensor>(info) {}

const at::Tensor& AddonTensor::tensor() const {
  if (!tensor_.defined()) fail("E_DISPOSED", "tensor was disposed");
  return tensor_;
}

Napi::Value AddonTensor::ToHost(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&] { return tensor_to_js(info.Env(), tensor().to(at::kCPU)); });
}

Napi::Value AddonTensor::Dispose(const Napi::CallbackInfo& info) {
  tensor_ = at::Tensor();
  return info.Env().Undefined();
}

}  // namespace semicap
