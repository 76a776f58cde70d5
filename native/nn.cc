#include "nn.h"

#include "cpu_allocator.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include "errors.h"
#include "safetensors.h"
#include "env.h"

namespace semicap {

Activation activation_from_name(const std::string& n) {
  if (n == "quick_gelu") return Activation::QuickGelu;
  if (n == "gelu_new" || n == "gelu_pytorch_tanh" || n == "gelu_fast") return Activation::GeluTanh;
  if (n == "gelu") return Activation::Gelu;
  if (n == "relu") return Activation::Relu;
  if (n == "tanh") return Activation::Tanh;
  fail("E_CONFIG", "unsupported activation '" + n + "' (supported: quick_gelu, gelu_new, gelu_pytorch_tanh, gelu, relu, tanh)");
}

at::Tensor activate(const at::Tensor& x, Activation a) {
  switch (a) {
    case Activation::QuickGelu: return x * at::sigmoid(x * 1.702);
    case Activation::GeluTanh: return at::gelu(x, "tanh");
    case Activation::Gelu: return at::gelu(x);
    case Activation::Relu: return at::relu(x);
    case Activation::Tanh: return at::tanh(x);
  }
  return x;
}

kernels::Act fused_act(Activation a) {
  switch (a) {
    case Activation::QuickGelu: return kernels::Act::QuickGelu;
    case Activation::GeluTanh: return kernels::Act::GeluTanh;
    default: return kernels::Act::None;
  }
}

ParamStore::ParamStore() : gen_(at::detail::createCPUGenerator(0)) {}

void ParamStore::seed(uint64_t s) { gen_ = at::detail::createCPUGenerator(s); }

at::Tensor ParamStore::add(const std::string& name, std::vector<int64_t> shape, const std::function<void(at::Tensor&)>& init) {
  check(!tensors_.count(name), "E_NATIVE", "parameter registered twice: " + name);
  at::Tensor t = at::empty(shape, at::kFloat);
  pending_[name] = init;
  names_.push_back(name);
  tensors_[name] = t;
  return t;
}
at::Tensor ParamStore::normal(const std::string& name, std::vector<int64_t> shape, double std) {
  return add(name, std::move(shape), [this, std](at::Tensor& t) { t.normal_(0, std, gen_); });
}
at::Tensor ParamStore::zeros(const std::string& name, std::vector<int64_t> shape) {
  return add(name, std::move(shape), [](at::Tensor& t) { t.zero_(); });
}
at::Tensor ParamStore::ones(const std::string& name, std::vector<int64_t> shape) {
  return add(name, std::move(shape), [](at::Tensor& t) { t.fill_(1); });
}

at::Tensor& ParamStore::get(const std::string& name) {
  auto it = tensors_.find(name);
  check(it != tensors_.end(), "E_NATIVE", "no parameter named " + name);
  return it->second;
}

std::vector<at::Tensor> ParamStore::all() const {
  std::vector<at::Tensor> out;
  for (auto& n : names_) out.push_back(tensors_.at(n));
  return out;
}

int64_t ParamStore::numel() const {
  int64_t n = 0;
  for (auto& [k, t] : tensors_) n += t.numel();
  return n;
}

static std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  return o.str() + "]";
}

at::Tensor view_as_tensor(const TensorView& v) {
  at::ScalarType st;
  switch (v.dtype) {
    case DType::F32: st = at::kFloat; break;
    case DType::F16: st = at::kHalf; break;
    case DType::BF16: st = at::kBFloat16; break;
    case DType::F64: st = at::kDouble; break;
    case DType::I64: st = at::kLong; break;
    case DType::I32: st = at::kInt; break;
    case DType::I16: st = at::kShort; break;
    case DType::I8: st = at::kChar; break;
    case DType::U8: st = at::kByte; break;
    case DType::BOOL: st = at::kBool; break;
    default: fail("E_CHECKPOINT", "unsupported dtype");
  }
  if (v.nbytes == 0) return at::empty(v.shape, at::TensorOptions().dtype(st));
  // The mapping is read-only and outlives this call; from_blob does not copy. Misaligned data (possible in
  // files written by other tools) is copied into an aligned buffer first.
  auto opts = at::TensorOptions().dtype(st);
  if (reinterpret_cast<uintptr_t>(v.data) % dtype_size(v.dtype) != 0) {
    at::Tensor t = at::empty(v.shape, opts);
    std::memcpy(t.data_ptr(), v.data, v.nbytes);
    return t;
  }
  return at::from_blob(const_cast<uint8_t*>(v.data), v.shape, opts);
}

// Reads one byte per page, so that the page-table work of a mapped tensor happens now, not in its first use.
static void touch_pages(const uint8_t* p, size_t n) {
  volatile uint8_t sink = 0;
  for (size_t off = 0; off < n; off += 4096) sink ^= p[off];
  (void)sink;
}

// The parameter's storage becomes the mapped bytes when they are float32, aligned, and the parameter is on the CPU.
// With `touch`, every page is read once here so that the page-table work happens in load(), not in the first forward
// pass. Weights with a packed slot are read by their packing instead (prepare_inference), one at a time, each paged
// out again once packed; read here, all of them were resident at once at the height of the load.
static bool adopt_mapping(at::Tensor& param, const TensorView& v, const std::shared_ptr<WeightsFile>& file, bool touch) {
  static const bool disabled = env_flag("SEMICAP_NO_MMAP");
  if (disabled || v.dtype != DType::F32 || !param.is_cpu() || param.scalar_type() != at::kFloat || v.nbytes == 0 ||
      reinterpret_cast<uintptr_t>(v.data) % alignof(float) != 0)
    return false;
  if (touch) touch_pages(v.data, v.nbytes);
  at::Tensor mapped = at::from_blob(const_cast<uint8_t*>(v.data), v.shape, [file](void*) {},
                                    at::TensorOptions().dtype(at::kFloat));
  param.set_data(mapped);  // same TensorImpl: every handle the model holds sees the new storage
  return true;
}

void ParamStore::load(const std::shared_ptr<WeightsFile>& file_ptr, const std::function<std::string(const std::string&)>& rename, const std::string& scope) {
  const WeightsFile& file = *file_ptr;
  CpuCacheBypass placeholders_to_the_system;  // (the storage a file mapping replaces was never written)
  std::vector<std::string> unexpected, misshaped;
  std::set<std::string> filled;
  c10::NoGradGuard no_grad;
  for (const auto& key : file.parsed().names) {
    std::string name = rename(key);
    if (name.empty()) continue;
    auto it = tensors_.find(name);
    if (it == tensors_.end() || name.compare(0, scope.size(), scope) != 0) {
      unexpected.push_back(key);
      continue;
    }
    const TensorView& v = file.parsed().tensors.at(key);
    if (it->second.sizes() != at::IntArrayRef(v.shape)) {
      misshaped.push_back(key + " (file " + shape_str(v.shape) + ", model " + shape_str(it->second.sizes()) + ")");
      continue;
    }
    if (v.dtype != DType::F32 && v.dtype != DType::F16 && v.dtype != DType::BF16 && v.dtype != DType::F64) {
      misshaped.push_back(key + " (dtype " + dtype_name(v.dtype) + ", expected a float type)");
      continue;
    }
    // bf16/f16 checkpoints compute in float32 by default: copy_ converts.
    if (adopt_mapping(it->second, v, file_ptr, slots_.count(name) == 0)) mapped_.insert(name);
    else it->second.copy_(view_as_tensor(v)), mapped_.erase(name);
    pending_.erase(name);
    filled.insert(name);
  }
  std::vector<std::string> missing;
  for (auto& n : names_)
    if (n.compare(0, scope.size(), scope) == 0 && !filled.count(n)) missing.push_back(n);
  if (unexpected.empty() && misshaped.empty() && missing.empty()) return;
  std::string msg = file.path() + ": checkpoint does not match the model.";
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 20; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 20) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  if (!missing.empty()) msg += " Missing: " + list(missing) + ".";
  if (!misshaped.empty()) msg += " Mis-shaped: " + list(misshaped) + ".";
  if (!unexpected.empty()) msg += " Unexpected: " + list(unexpected) + ".";
  fail("E_CHECKPOINT", msg);
}

void ParamStore::initialize_pending() {
  c10::NoGradGuard no_grad;
  for (const auto& n : names_) {  // registration order, so a seed gives the same weights whatever was loaded
    auto it = pending_.find(n);
    if (it == pending_.end()) continue;
    it->second(tensors_[n]);
    pending_.erase(it);
  }
}

void ParamStore::to(const at::Device& device) {
  initialize_pending();
  c10::NoGradGuard no_grad;
  CpuCacheBypass moved_to_the_system;  // (the CPU storage a device copy replaces is not needed again soon)
  for (auto& [name, t] : tensors_) {
    if (t.device() == device) continue;
    bool rg = t.requires_grad();
    // set_data keeps the TensorImpl (and every copy of the handle models hold) while moving its storage.
    t.set_data(t.to(device));
    mapped_.erase(name);
    t.requires_grad_(rg);
  }
}

std::shared_ptr<PackedSlot> ParamStore::slot(const std::string& weight_name, bool w_is_kn) {
  auto& s = slots_[weight_name];
  if (!s) {
    s = std::make_shared<PackedSlot>(w_is_kn);
    s->set_type(inference_type_);
  }
  return s;
}

size_t ParamStore::prepare_inference(kernels::WType type, const std::function<bool(const std::string&)>& now) {
  inference_type_ = type;
  c10::NoGradGuard no_grad;
  struct Job {
    PackedSlot* slot;
    at::Tensor weight;
  };
  std::vector<Job> jobs;
  // A parameter still in its file mapping is clean: the kernel can drop its pages and read them back if needed.
  auto clean = [&](const std::string& name, const at::Tensor& t) { return mapped_.count(name) > 0 && t._version() == 0; };
  for (auto& [name, s] : slots_) {
    s->set_type(type);
    auto it = tensors_.find(name);
    if (it == tensors_.end() || !it->second.is_cpu() || it->second.scalar_type() != at::kFloat || !packing_used(type)) {
      s->drop();
      // Read as it is (BLAS): the page-table work load() left to the packing happens now.
      if (it != tensors_.end() && it->second.is_cpu() && clean(name, it->second) && (!now || now(name)))
        touch_pages(static_cast<const uint8_t*>(it->second.data_ptr()), it->second.nbytes());
      continue;
    }
    // (a clean original is paged out by the slot once packed, now or at its first product)
    s->set_file_backed(clean(name, it->second));
    if (now && !now(name)) {
      s->drop();  // laid out by its first product
      continue;
    }
    jobs.push_back({s.get(), it->second});
  }
  // Parameters left for later (load() read the mapped pages of those without a slot, such as embedding tables): out
  // of memory until something reads them.
  if (now)
    for (auto& [name, t] : tensors_)
      if (!now(name) && t.is_cpu() && clean(name, t)) page_out(t);
  // Largest first: while a file-mapped weight is packed, its original is resident beside its copy until the page-out
  // after it; the largest first, that happens while little else is packed yet, and the load's peak RSS stays near
  // where it ends (the benchmark captioner's GPT-2 wte, 154 MB, packed last had put the peak 147 MB over).
  std::stable_sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) { return a.weight.nbytes() > b.weight.nbytes(); });
  // Weights are independent: threads take whole weights (packing reads each once and writes its copy).
  std::vector<size_t> bytes(jobs.size(), 0);
  at::parallel_for(0, static_cast<int64_t>(jobs.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) bytes[i] = jobs[i].slot->get(jobs[i].weight)->bytes();
  });
  size_t total = 0;
  for (size_t b : bytes) total += b;
  return total;
}

void ParamStore::set_requires_grad(bool on) {
  for (auto& [name, t] : tensors_) t.requires_grad_(on);
}

at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  auto B = x.size(0), T = x.size(1), C = x.size(2);
  return x.view({B, T, heads, C / heads}).transpose(1, 2);
}

at::Tensor merge_heads(const at::Tensor& x) {
  auto B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  return x.transpose(1, 2).reshape({B, T, H * D});
}

namespace {

// Whether t takes the CPU inference loops: float32 on the CPU without autograd.
bool cpu_inference(const at::Tensor& t) {
  return t.defined() && t.is_cpu() && t.scalar_type() == at::kFloat && !c10::GradMode::is_enabled();
}

// attention() for CPU inference: one kernels::attend_queries per (batch, head) over that head's keys gathered
// transposed into scratch and its values where they lie, (batch, head) pairs shared with cpu_pool's helpers. Instead of two batched
// products, a scale, a softmax and the copies around them (each an OpenMP region above a few thousand elements),
// one job; and the result is written in merged-heads order, so merge_heads() of it is a view. A query's result
// depends on its own row and the keys it sees only, whatever the batch.
at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  at::Tensor out = at::empty({B, Tq, H, D}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const kernels::Isa isa = kernels::active_isa();
  // (a size-1 dimension's stride may be anything: its one row is all that is read)
  const int64_t ldq = Tq > 1 ? q.stride(2) : D, ldv = Tk > 1 ? v.stride(2) : D;
  auto heads_of = [&](int64_t i0, int64_t i1) {
    const int64_t ldk = kernels::attend_keys_stride(Tk);
    std::vector<float> kt(static_cast<size_t>(D * ldk), 0.f), scores(static_cast<size_t>(ldk));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H;
      for (int64_t t = 0; t < Tk; ++t) {
        const float* kr = kp + b * k.stride(0) + h * k.stride(1) + t * k.stride(2);
        for (int64_t d = 0; d < D; ++d) kt[d * ldk + t] = kr[d];
      }
      // causal: the mask's convention, query t sees keys up to t + Tk - Tq (aligned to the last key)
      kernels::attend_queries(qp + b * q.stride(0) + h * q.stride(1), ldq, Tq, kt.data(), ldk,
                              vp + b * v.stride(0) + h * v.stride(1), ldv, D, Tk, causal, scores.data(),
                              op + (b * Tq * H + h) * D, H * D, isa);
    }
  };
  share_work(B * H, B * H * Tq * Tk * D, heads_of);
  return out.transpose(1, 2);  // [B, H, Tq, D]
}

}  // namespace

at::Tensor add_into(at::Tensor fresh, const at::Tensor& x) {
  if (!cpu_inference(fresh) || !cpu_inference(x) || fresh.sizes() != x.sizes() || !fresh.is_contiguous() ||
      !x.is_contiguous() || fresh.is_same(x))
    return fresh + x;
  float* fp = fresh.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const int64_t n = fresh.numel();
  share_work(n, n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fp[i] += xp[i];
  });
  return fresh;
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  const int64_t Tq = q.size(2), Tk = k.size(2);
  if (cpu_inference(q) && cpu_inference(k) && cpu_inference(v) && q.dim() == 4 && k.dim() == 4 && v.dim() == 4 &&
      Tq > 0 && Tk > 0 && q.size(3) > 0 && (!causal || Tk >= Tq) && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
      q.size(1) == k.size(1) && q.size(3) == k.size(3) && q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 &&
      (Tq == 1 || q.stride(2) >= q.size(3)) && (Tk == 1 || v.stride(2) >= v.size(3)))  // rows that do not overlap
    return attention_cpu(q, k, v, causal);
#if TORCH_VERSION_MAJOR >= 2
  // The fused kernel (flash / memory-efficient on CUDA, a blocked kernel on CPU) when its causal convention
  // (top-left aligned) agrees with ours: square, or a single query that may see every key.
  if (!causal || Tq == Tk || Tq == 1) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal && Tq == Tk && Tq > 1);
#endif
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  if (causal && Tq > 1) {
    at::Tensor mask = at::ones({Tq, Tk}, q.options().dtype(at::kBool)).triu(Tk - Tq + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  return at::matmul(at::softmax(scores, -1), v);
}

at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& see) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, see, 0.0, false);
#else
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  scores = scores.masked_fill(see.logical_not(), -std::numeric_limits<float>::infinity());
  return at::matmul(at::softmax(scores, -1), v);
#endif
}

at::Tensor LayerNorm::operator()(const at::Tensor& x) const {
  const int64_t C = weight.size(0);
  const bool ours = cpu_inference(x) && cpu_inference(weight) && cpu_inference(bias) && x.dim() >= 1 &&
                    x.size(-1) == C && weight.dim() == 1 && bias.sizes() == weight.sizes();
  if (!ours) return at::layer_norm(x, {C}, weight, bias, eps);
  const at::Tensor xc = x.contiguous(), w = weight.contiguous(), b = bias.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t rows = C > 0 ? xc.numel() / C : 0;
  if (rows == 0) return y;
  const float *xp = xc.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const kernels::Isa isa = kernels::active_isa();
  const float e = static_cast<float>(eps);
  // A decoding step's few rows take microseconds: the calling thread does them. CLIP's hundreds are shared.
  share_work(rows, rows * C, [&](int64_t r0, int64_t r1) {
    kernels::layer_norm(xp + r0 * C, r1 - r0, C, wp, bp, e, yp + r0 * C, isa);
  });
  return y;
}

bool decode_attention_usable(const at::Tensor& x) { return cpu_inference(x) && x.dim() == 3 && x.size(1) == 1; }

at::Tensor decode_attention(const at::Tensor& qkv, int64_t heads, const std::vector<float*>& k_cache,
                            const std::vector<float*>& v_cache, int64_t capacity, const std::vector<int64_t>& pos) {
  const int64_t rows = qkv.size(0), C3 = qkv.size(2), C = C3 / 3, D = C / heads;
  check(D >= 1 && C3 == 3 * C && C == heads * D && static_cast<int64_t>(k_cache.size()) == rows &&
            static_cast<int64_t>(v_cache.size()) == rows && static_cast<int64_t>(pos.size()) == rows,
        "E_NATIVE", "decode_attention: inconsistent sizes");
  for (int64_t r = 0; r < rows; ++r)
    check(k_cache[r] && v_cache[r] && pos[r] >= 0 && pos[r] < capacity, "E_NATIVE", "decode_attention: KV cache capacity exceeded");
  at::Tensor out = at::empty({rows, 1, C}, qkv.options());
  const float* src = qkv.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const kernels::Isa isa = kernels::active_isa();
  int64_t keys = 0;  // multiply-adds of the scores, over every row and head
  for (int64_t r = 0; r < rows; ++r) keys += (pos[r] + 1) * C;
  auto heads_of = [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(capacity));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / heads, h = i % heads;
      const float* row = src + r * C3;
      float* kh = k_cache[r] + h * capacity * D;
      float* vh = v_cache[r] + h * capacity * D;
      std::memcpy(kh + pos[r] * D, row + C + h * D, sizeof(float) * D);
      std::memcpy(vh + pos[r] * D, row + 2 * C + h * D, sizeof(float) * D);
      kernels::attend(row + h * D, kh, vh, D, pos[r] + 1, scores.data(), dst + r * C + h * D, isa);
    }
  };
  share_work(rows * heads, keys, heads_of);
  return out;
}

}  // namespace semicap
