// Module init: registers the native classes and a few free functions. Context-aware: each environment (main
// thread, worker_threads) gets its own constructors; libtorch itself is process-wide.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <napi.h>
#include <torch/version.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <mutex>
#include <cstdlib>

#include "addon_state.h"
#include "bridge.h"
#include "cpu_allocator.h"
#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "packed.h"
#include <dlfcn.h>
#include "errors.h"
#include "exit_guard.h"
#include "models_binding.h"
#include "safetensors.h"
#include "torch_checkpoint.h"
#include "nn.h"
#include "training_binding.h"

namespace semicap {
Napi::Object losses_exports(Napi::Env env);
Napi::Object optim_exports(Napi::Env env);
namespace {

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsNumber()) fail("E_CONFIG", "threads must be a number");
    int n = info[0].As<Napi::Number>().Int32Value();
    if (n < 1 || n > 1024) fail("E_CONFIG", "threads must lie in [1, 1024]");
    at::set_num_threads(n);
    return info.Env().Undefined();
  });
}

// Default cap on free CPU memory kept for reuse: SEMICAP_CPU_CACHE_MB, else a quarter of RAM, at most 4 GiB.
size_t default_cpu_cache_limit() {
  if (const char* e = std::getenv("SEMICAP_CPU_CACHE_MB")) {
    char* end = nullptr;
    unsigned long long mb = std::strtoull(e, &end, 10);
    if (end != e && *end == '\0') return static_cast<size_t>(mb) << 20;
  }
  const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
  return static_cast<size_t>(std::min(ram / 4, 4.0 * (1 << 30)));
}

Napi::Object cpu_cache_object(Napi::Env env) {
  CpuCacheStats s = cpu_cache_stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("installed", s.installed);
  o.Set("hits", static_cast<double>(s.hits));
  o.Set("misses", static_cast<double>(s.misses));
  o.Set("cachedBytes", static_cast<double>(s.cached_bytes));
  o.Set("inUseBytes", static_cast<double>(s.in_use_bytes));
  o.Set("limitBytes", static_cast<double>(s.limit_bytes));
  return o;
}

// setCpuCacheLimit(bytes): 0 turns caching off and frees what is cached.
Napi::Value SetCpuCacheLimit(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsNumber()) fail("E_CONFIG", "limit must be a number of bytes");
    double bytes = info[0].As<Napi::Number>().DoubleValue();
    if (!(bytes >= 0) || bytes > 9.0e15) fail("E_CONFIG", "limit must lie in [0, 9e15] bytes");
    set_cpu_cache_limit(static_cast<size_t>(bytes));
    return cpu_cache_object(info.Env());
  });
}

Napi::Value EmptyCpuCache(const Napi::CallbackInfo& info) {
  empty_cpu_cache();
  return cpu_cache_object(info.Env());
}

// The BLAS libtorch calls, as it describes itself: OpenBLAS exports its config and the core it picked.
static Napi::Object blas_object(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  using Str = char* (*)();
  auto config = reinterpret_cast<Str>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  auto core = reinterpret_cast<Str>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  o.Set("library", config ? std::string(config()) : std::string("unknown (not OpenBLAS)"));
  o.Set("core", core ? std::string(core()) : std::string(""));
  return o;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("torchVersion", TORCH_VERSION);
  o.Set("cuda", at::hasCUDA());
  o.Set("threads", at::get_num_threads());
  o.Set("interopThreads", at::get_num_interop_threads());
  o.Set("parallelInfo", at::get_parallel_info());
  Napi::Object b = Napi::Object::New(env);
  b.Set("external", static_cast<double>(bridge_stats().external));
  b.Set("copied", static_cast<double>(bridge_stats().copied));
  o.Set("bridge", b);
  o.Set("cpuCache", cpu_cache_object(env));
  o.Set("cpuGemm", packing_used(kernels::WType::F32));  // false under SEMICAP_CPU_GEMM=blas / SEMICAP_NO_CPU_GEMM=1
  o.Set("blas", blas_object(env));
  Napi::Object c = Napi::Object::New(env);
  c.Set("isa", kernels::isa_name(kernels::active_isa()));
  const kernels::CpuFeatures f = kernels::cpu_features();
  Napi::Array feats = Napi::Array::New(env);
  uint32_t n = 0;
  auto add = [&](bool on, const char* name) { if (on) feats.Set(n++, name); };
  add(f.avx2, "avx2"), add(f.fma, "fma"), add(f.f16c, "f16c"), add(f.avx512f, "avx512f"), add(f.avx512bw, "avx512bw");
  add(f.avx512vl, "avx512vl"), add(f.avx512dq, "avx512dq"), add(f.avx512_bf16, "avx512_bf16"), add(f.avx512_vnni, "avx512_vnni");
  add(f.avx_vnni, "avx_vnni"), add(f.amx_tile, "amx_tile"), add(f.amx_bf16, "amx_bf16"), add(f.amx_int8, "amx_int8");
  c.Set("features", feats);
  o.Set("cpu", c);
  Napi::Array choices = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& k : kernel_choices()) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("type", k.type);
    e.Set("rows", k.rows);
    e.Set("K", static_cast<double>(k.K));
    e.Set("N", static_cast<double>(k.N));
    e.Set("threads", k.threads);
    e.Set("choice", path_name(k.path));
    auto us = [&](double v) { return std::isnan(v) ? env.Null() : Napi::Number::New(env, v); };
    e.Set("kernelUs", us(k.kernel_us));
    e.Set("kernel1Us", us(k.kernel1_us));
    e.Set("blasUs", us(k.blas_us));
    e.Set("checks", k.checks);
    choices.Set(i++, e);
  }
  o.Set("kernelChoices", choices);
  const PoolStats ps = pool_stats();
  Napi::Object pool = Napi::Object::New(env);
  pool.Set("helpers", ps.helpers);
  pool.Set("jobs", static_cast<double>(ps.jobs));
  pool.Set("alone", static_cast<double>(ps.alone));
  pool.Set("wakes", static_cast<double>(ps.wakes));
  pool.Set("rests", static_cast<double>(ps.rests));
  pool.Set("spinUs", ps.spin_us);
  o.Set("pool", pool);
  o.Set("replayedProducts", static_cast<double>(ProductTape::total_replayed()));
  return o;
}

// readSafetensors(path) -> { names, metadata, tensors: {name: {dtype, shape}} } without reading data.
Napi::Value ReadSafetensorsHeader(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsString()) fail("E_CONFIG", "path must be a string");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    return run_async(info.Env(), [path]() -> Finish {
      auto file = WeightsFile::open(path);
      return [file](Napi::Env env) {
        Napi::Object o = Napi::Object::New(env), meta = Napi::Object::New(env), ts = Napi::Object::New(env);
        Napi::Array names = Napi::Array::New(env);
        const auto& p = file->parsed();
        for (size_t i = 0; i < p.names.size(); ++i) {
          names.Set(static_cast<uint32_t>(i), p.names[i]);
          const auto& v = p.tensors.at(p.names[i]);
          Napi::Object t = Napi::Object::New(env);
          t.Set("dtype", dtype_name(v.dtype));
          Napi::Array shape = Napi::Array::New(env, v.shape.size());
          for (size_t j = 0; j < v.shape.size(); ++j) shape.Set(static_cast<uint32_t>(j), static_cast<double>(v.shape[j]));
          t.Set("shape", shape);
          ts.Set(Napi::String::New(env, p.names[i]), t);  // names may hold NUL: never via a C string
        }
        for (auto& [k, v] : p.metadata) meta.Set(Napi::String::New(env, k), Napi::String::New(env, v));
        o.Set("names", names);
        o.Set("metadata", meta);
        o.Set("tensors", ts);
        return o;
      };
    });
  });
}

// loadSafetensors(path, names?) -> { name: Tensor } (float types as stored, converted copies owned by JS).
Napi::Value LoadSafetensors(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsString()) fail("E_CONFIG", "path must be a string");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    return run_async(info.Env(), [path]() -> Finish {
      auto file = WeightsFile::open(path);
      std::vector<std::pair<std::string, at::Tensor>> out;
      for (const auto& n : file->parsed().names) {
        const TensorView& v = file->parsed().tensors.at(n);
        at::Tensor t = view_as_tensor(v);
        if (v.dtype == DType::I16 || v.dtype == DType::I8) t = t.to(at::kInt);
        out.emplace_back(n, t.clone());  // own the memory: the mapping closes with `file`
      }
      return [out](Napi::Env env) {
        Napi::Object o = Napi::Object::New(env);
        for (auto& [n, t] : out) o.Set(Napi::String::New(env, n), tensor_to_js(env, t));
        return o;
      };
    });
  });
}

// The file dtype of a JS tensor (writeSafetensors / writeTorchCheckpoint).
static DType file_dtype(const at::Tensor& t, const std::string& n) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32; case at::kHalf: return DType::F16; case at::kBFloat16: return DType::BF16;
    case at::kDouble: return DType::F64; case at::kLong: return DType::I64; case at::kInt: return DType::I32;
    case at::kShort: return DType::I16; case at::kChar: return DType::I8; case at::kByte: return DType::U8;
    case at::kBool: return DType::BOOL;
    default: fail("E_DTYPE", "tensor '" + n + "': unsupported dtype");
  }
}

// The `{ name: Tensor }` argument of writeSafetensors / writeTorchCheckpoint, in property order; `keep` holds the
// JS buffers the tensors view until the write is done.
static std::vector<std::pair<std::string, at::Tensor>> tensors_from_js(const Napi::Object& obj, KeepAlive& keep) {
  Napi::Array keys = obj.GetPropertyNames();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    tensors.emplace_back(k, tensor_from_js(obj.Get(k), "tensor '" + k + "'", keep));
  }
  return tensors;
}

// Calls `each(key, value)` for the properties of an object of strings, in order; a value that is not a string is
// E_CONFIG `not_string`.
template <typename Each>
static void for_each_string(const Napi::Object& obj, const char* not_string, Each&& each) {
  Napi::Array keys = obj.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    if (!obj.Get(k).IsString()) fail("E_CONFIG", not_string);
    each(k, obj.Get(k).As<Napi::String>().Utf8Value());
  }
}

// The metadata argument of writeSafetensors / convertWeights: `{ key: string }`.
static std::map<std::string, std::string> metadata_from_js(const Napi::Object& m) {
  std::map<std::string, std::string> meta;
  for_each_string(m, "metadata values must be strings", [&](const std::string& k, std::string v) { meta[k] = std::move(v); });
  return meta;
}

// writeSafetensors(path, { name: Tensor }, metadata?): atomic write.
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsString() || !info[1].IsObject()) fail("E_CONFIG", "writeSafetensors(path, tensors, metadata?)");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    KeepAlive keep;
    std::vector<std::pair<std::string, at::Tensor>> tensors = tensors_from_js(info[1].As<Napi::Object>(), keep);
    std::map<std::string, std::string> meta;
    if (info.Length() > 2 && info[2].IsObject()) meta = metadata_from_js(info[2].As<Napi::Object>());
    return run_async(info.Env(), [path, tensors, meta]() -> Finish {
      std::vector<at::Tensor> host;
      std::vector<TensorToWrite> items;
      for (auto& [n, t0] : tensors) {
        at::Tensor t = t0.cpu().contiguous();
        host.push_back(t);
        items.push_back({n, file_dtype(t, n), std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(), t.nbytes()});
      }
      write_safetensors(path, items, meta);
      return [](Napi::Env env) { return env.Undefined(); };
    }, std::move(keep));
  });
}

// convertWeights(inPath, outPath, metadata?, onProgress?(bytesWritten, totalBytes)) -> { tensors, bytes }: reads
// any weights format (WeightsFile) and writes a safetensors file atomically, tensor by tensor straight from the
// mapping. Metadata: the source's, overridden by `metadata`'s entries. Progress events arrive in order, the last
// one (total, total) before the promise resolves.
Napi::Value ConvertWeights(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsString() || !info[1].IsString()) fail("E_CONFIG", "convertWeights(inPath, outPath, metadata?, onProgress?)");
    std::string in = info[0].As<Napi::String>().Utf8Value(), out = info[1].As<Napi::String>().Utf8Value();
    std::map<std::string, std::string> meta;
    if (info.Length() > 2 && info[2].IsObject()) {
      meta = metadata_from_js(info[2].As<Napi::Object>());
    } else if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      fail("E_CONFIG", "metadata must be an object of strings");
    }
    // Progress events queue here (not in the thread-safe function's payloads) so that the finisher can deliver the
    // ones still waiting, in order, before the promise settles: none is dropped, none arrives after it.
    struct State {
      std::atomic<bool> finished{false};
      std::atomic<uint64_t> total{0};
      std::mutex mu;
      std::vector<std::pair<uint64_t, uint64_t>> pending;
      std::shared_ptr<Napi::FunctionReference> callback;  // touched on the JS thread only
      void drain(Napi::Env env) {
        std::vector<std::pair<uint64_t, uint64_t>> now;
        {
          std::lock_guard<std::mutex> lock(mu);
          now.swap(pending);
        }
        for (auto& [done, all] : now) {
          try {
            callback->Call({Napi::Number::New(env, static_cast<double>(done)), Napi::Number::New(env, static_cast<double>(all))});
          } catch (const Napi::Error&) {
            // a throwing listener does not stop the conversion
          }
        }
      }
    };
    auto state = std::make_shared<State>();
    std::shared_ptr<Napi::ThreadSafeFunction> tsfn;
    if (info.Length() > 3 && info[3].IsFunction()) {
      state->callback = std::make_shared<Napi::FunctionReference>(Napi::Persistent(info[3].As<Napi::Function>()));
      tsfn = std::make_shared<Napi::ThreadSafeFunction>(Napi::ThreadSafeFunction::New(info.Env(), info[3].As<Napi::Function>(), "semicap-convert", 0, 1));
    } else if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      fail("E_CONFIG", "onProgress must be a function");
    }
    return run_async(info.Env(), [in, out, meta, state, tsfn]() -> Finish {
      struct Release {
        std::shared_ptr<Napi::ThreadSafeFunction> t;
        ~Release() { if (t) t->Release(); }
      } release{tsfn};
      auto file = WeightsFile::open(in);
      const auto& p = file->parsed();
      std::map<std::string, std::string> m = p.metadata;
      for (auto& [k, v] : meta) m[k] = v;
      std::vector<TensorToWrite> items;
      for (const auto& n : p.names) {
        const TensorView& v = p.tensors.at(n);
        items.push_back({n, v.dtype, v.shape, v.data, v.nbytes});
      }
      std::function<void(uint64_t, uint64_t)> progress;
      if (tsfn) {
        progress = [state, tsfn](uint64_t done, uint64_t total) {
          state->total = total;
          {
            std::lock_guard<std::mutex> lock(state->mu);
            state->pending.emplace_back(done, total);
          }
          tsfn->NonBlockingCall([state](Napi::Env env, Napi::Function) {
            if (state->finished || env == nullptr) return;
            state->drain(env);
          });
        };
      }
      write_safetensors(out, items, m, progress);
      const double count = static_cast<double>(items.size());
      uint64_t bytes = 0;
      {
        struct stat st;
        if (::stat(out.c_str(), &st) == 0) bytes = static_cast<uint64_t>(st.st_size);
      }
      return [state, count, bytes](Napi::Env env) -> Napi::Value {
        // Events not delivered yet go now, in order, then the final one, all before the promise settles.
        state->finished = true;
        if (state->callback) {
          state->drain(env);
          try {
            state->callback->Call({Napi::Number::New(env, static_cast<double>(bytes)), Napi::Number::New(env, static_cast<double>(bytes))});
          } catch (const Napi::Error&) {
          }
        }
        Napi::Object o = Napi::Object::New(env);
        o.Set("tensors", count);
        o.Set("bytes", static_cast<double>(bytes));
        return o;
      };
    });
  });
}

// writeTorchCheckpoint(path, { name: Tensor }, aliases?: { name: target }): a torch.save-compatible zip, atomic.
// An alias names a tensor that shares the storage of `target` (an entry of `tensors`), as a tied lm_head does.
Napi::Value WriteTorchCheckpoint(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsString() || !info[1].IsObject()) fail("E_CONFIG", "writeTorchCheckpoint(path, tensors, aliases?)");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object obj = info[1].As<Napi::Object>();
    KeepAlive keep;
    std::vector<std::pair<std::string, at::Tensor>> tensors = tensors_from_js(obj, keep);
    std::vector<std::pair<std::string, std::string>> aliases;
    if (info.Length() > 2 && info[2].IsObject()) {
      for_each_string(info[2].As<Napi::Object>(), "aliases must map names to names", [&](const std::string& k, std::string target) {
        if (obj.Has(k)) fail("E_CONFIG", "alias '" + k + "' is also a tensor of its own");
        if (!obj.Has(target)) fail("E_CONFIG", "alias '" + k + "' names '" + target + "', which is not one of the tensors");
        aliases.emplace_back(k, std::move(target));
      });
    } else if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      fail("E_CONFIG", "aliases must be an object");
    }
    return run_async(info.Env(), [path, tensors, aliases]() -> Finish {
      std::vector<at::Tensor> host;
      std::vector<TorchTensorToWrite> items;
      std::map<std::string, size_t> index;
      for (auto& [n, t0] : tensors) {
        at::Tensor t = t0.cpu().contiguous();
        host.push_back(t);
        index[n] = items.size();
        items.push_back({n, file_dtype(t, n), std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(), t.nbytes(), ""});
      }
      for (auto& [n, target] : aliases) {
        const TorchTensorToWrite& e = items[index.at(target)];
        items.push_back({n, e.dtype, e.shape, nullptr, 0, target});
      }
      write_torch_checkpoint(path, items);
      return [](Napi::Env env) { return env.Undefined(); };
    }, std::move(keep));
  });
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // float32 means float32: no TF32 in cuDNN convolutions (on by default in PyTorch) or cuBLAS matmuls, so CUDA
  // results match the CPU's to float32 precision. bf16 autocast is the opt-in fast path.
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  install_cpu_cache(default_cpu_cache_limit());
  install_exit_guard();
  auto* state = new AddonState();
  env.SetInstanceData<AddonState>(state);  // deleted with the environment
  Napi::Function tensor = AddonTensor::Init(env);
  state->tensor_ctor = Napi::Persistent(tensor);
  Napi::Function clip = AddonClip::Init(env);
  state->clip_ctor = Napi::Persistent(clip);
  exports.Set("AddonTensor", tensor);
  exports.Set("AddonClip", clip);
  Napi::Function gpt2 = AddonGpt2::Init(env);
  state->gpt2_ctor = Napi::Persistent(gpt2);
  Napi::Function captioner = AddonCaptioner::Init(env);
  state->captioner_ctor = Napi::Persistent(captioner);
  exports.Set("AddonGpt2", gpt2);
  exports.Set("AddonCaptioner", captioner);
  exports.Set("AddonTrainer", AddonTrainer::Init(env));
  { Napi::Function batch_init(Napi::Env); exports.Set("AddonDecodeBatch", batch_init(env)); }  // batch_binding.cc
  exports.Set("losses", losses_exports(env));
  exports.Set("optim", optim_exports(env));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("setCpuCacheLimit", Napi::Function::New(env, SetCpuCacheLimit));
  exports.Set("emptyCpuCache", Napi::Function::New(env, EmptyCpuCache));
  exports.Set("readSafetensorsHeader", Napi::Function::New(env, ReadSafetensorsHeader));
  exports.Set("loadSafetensors", Napi::Function::New(env, LoadSafetensors));
  exports.Set("writeSafetensors", Napi::Function::New(env, WriteSafetensors));
  exports.Set("convertWeights", Napi::Function::New(env, ConvertWeights));
  exports.Set("writeTorchCheckpoint", Napi::Function::New(env, WriteTorchCheckpoint));
  return exports;
}

}  // namespace semicap

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return semicap::Init(env, exports); }
NODE_API_MODULE(semicap, InitAddon)
