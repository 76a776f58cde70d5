// Small building blocks over ATen (not torch::nn: ATen headers compile several times faster, and the models here
// need only a handful of layers). Parameters live in a ParamStore under their checkpoint key, so loading a
// Hugging Face file is one loop over names, as with register_module in pytorch/examples.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "packed.h"

namespace semicap {

class WeightsFile;

enum class Activation { QuickGelu, GeluTanh, Gelu, Relu, Tanh };
Activation activation_from_name(const std::string& name);  // HF hidden_act / activation_function names
at::Tensor activate(const at::Tensor& x, Activation a);

// Named parameters in registration order. `add` creates a tensor with the given init; `load` fills them from a
// checkpoint, checking every key and shape.
class ParamStore {
 public:
  ParamStore();
  at::Tensor add(const std::string& name, std::vector<int64_t> shape, const std::function<void(at::Tensor&)>& init);
  at::Tensor normal(const std::string& name, std::vector<int64_t> shape, double std = 0.02);
  at::Tensor zeros(const std::string& name, std::vector<int64_t> shape);
  at::Tensor ones(const std::string& name, std::vector<int64_t> shape);

  const std::vector<std::string>& names() const { return names_; }
  at::Tensor& get(const std::string& name);
  bool has(const std::string& name) const { return tensors_.count(name) > 0; }
  std::vector<at::Tensor> all() const;
  int64_t numel() const;

  // Fills parameters from `file`. Keys are mapped through `rename` (return "" to ignore a key, e.g. buffers);
  // only parameters whose names start with `scope` are expected (pass "" for all). Throws E_CHECKPOINT naming
  // missing, unexpected and mis-shaped keys. Aligned float32 tensors of CPU parameters are not copied: the
  // parameter's storage becomes the file's (private, copy-on-write) mapping, which it keeps alive
  // (SEMICAP_NO_MMAP=1 copies instead).
  void load(const std::shared_ptr<WeightsFile>& file, const std::function<std::string(const std::string&)>& rename,
            const std::string& scope = "");

  // Moves every parameter (in place, keeping references valid). Parameters that no checkpoint filled are
  // initialised first: random init is deferred so that loading a checkpoint never pays for it.
  void to(const at::Device& device);
  void initialize_pending();
  // Random init draws from this generator, so a new model is a pure function of its config and seed.
  at::Generator& generator() { return gen_; }
  void seed(uint64_t s);
  void set_requires_grad(bool on);

  // The packed-weight slot of a matrix parameter (created on first request). w_is_kn: stored [in, out].
  std::shared_ptr<PackedSlot> slot(const std::string& weight_name, bool w_is_kn);
  // CPU inference in `type` from now on: every slot's weight is laid out now (so the first call is fast), and the
  // float32 originals that came from a file mapping are paged out (the packed copies stand for them; they read
  // back in only if BLAS or training needs them). Returns the packed bytes. With `now`, only the parameters it
  // accepts are laid out now; the others are laid out by their first product, and those still in the file mapping
  // (embedding tables too) are paged out until something reads them (a captioner never runs CLIP's text tower).
  size_t prepare_inference(kernels::WType type, const std::function<bool(const std::string&)>& now = nullptr);
  kernels::WType inference_type() const { return inference_type_; }

 private:
  std::vector<std::string> names_;
  std::map<std::string, at::Tensor> tensors_;
  std::map<std::string, std::function<void(at::Tensor&)>> pending_;  // init not yet run
  at::Generator gen_;
  std::map<std::string, std::shared_ptr<PackedSlot>> slots_;
  std::set<std::string> mapped_;  // parameters whose storage is the checkpoint file's mapping
  kernels::WType inference_type_ = kernels::WType::F32;
};

// One input row on the CPU without autograd (batch-1 decoding): BLAS gemv is 3-4x faster than a one-row gemm.
inline bool single_row_cpu(const at::Tensor& x) {
  return x.is_cpu() && x.numel() == x.size(-1) && x.scalar_type() == at::kFloat && !c10::GradMode::is_enabled();
}

// The activation the product kernels can apply in their epilogue (None: apply it after).
kernels::Act fused_act(Activation a);

// activate(layer(x), a) for a Linear or Conv1D, fused into the product where the kernels run it.
template <class Layer>
at::Tensor product_activated(const Layer& l, const at::Tensor& x, Activation a) {
  const kernels::Act k = fused_act(a);
  if (k != kernels::Act::None && packed_usable(x, l.weight, l.packed.get()))
    return packed_product(x, l.weight, l.bias, *l.packed, [&] { return activate(l.blas(x), a); }, k);
  return activate(l(x), a);
}

struct Linear {
  at::Tensor weight, bias;  // weight [out, in] (PyTorch layout), bias optional
  std::shared_ptr<PackedSlot> packed;  // CPU inference through cpu_kernels.h (null: BLAS only)
  at::Tensor operator()(const at::Tensor& x) const {
    if (packed_usable(x, weight, packed.get())) return packed_product(x, weight, bias, *packed, [&] { return blas(x); });
    if (trained_usable(x, weight, packed.get())) return trained_product(x, weight, bias, *packed);
    return blas(x);
  }
  at::Tensor operator()(const at::Tensor& x, Activation a) const { return product_activated(*this, x, a); }
  at::Tensor blas(const at::Tensor& x) const {
    if (single_row_cpu(x)) {
      auto s = x.sizes().vec();
      s.back() = weight.size(0);
      at::Tensor v = x.reshape({-1});
      return (bias.defined() ? at::addmv(bias, weight, v) : at::mv(weight, v)).view(s);
    }
    return at::linear(x, weight, bias);
  }
};

// GPT-2's Conv1D: weight stored [in, out].
struct Conv1D {
  at::Tensor weight, bias;
  std::shared_ptr<PackedSlot> packed;
  at::Tensor operator()(const at::Tensor& x) const {
    if (packed_usable(x, weight, packed.get())) return packed_product(x, weight, bias, *packed, [&] { return blas(x); });
    if (trained_usable(x, weight, packed.get())) return trained_product(x, weight, bias, *packed);
    return blas(x);
  }
  at::Tensor operator()(const at::Tensor& x, Activation a) const { return product_activated(*this, x, a); }
  at::Tensor blas(const at::Tensor& x) const {
    if (single_row_cpu(x)) return at::addmv(bias, weight.t(), x.reshape({-1})).view(out_shape(x));
    return at::addmm(bias, x.reshape({-1, x.size(-1)}), weight).view(out_shape(x));
  }
  std::vector<int64_t> out_shape(const at::Tensor& x) const {
    auto s = x.sizes().vec();
    s.back() = weight.size(1);
    return s;
  }
};

// Without autograd, float32 CPU rows go through kernels::layer_norm (rows shared with cpu_pool's helpers when there
// are many): libtorch's layer_norm opens an OpenMP region for as few as two rows, and waking its passive worker
// cost more than a decoding step's 8 rows of work (25 of them per GPT-2 step). Otherwise at::layer_norm.
struct LayerNorm {
  at::Tensor weight, bias;
  double eps = 1e-5;
  at::Tensor operator()(const at::Tensor& x) const;
};

// Decoding on the CPU in float32 without autograd: one new token per row attends to that row's own cache. qkv is
// c_attn's output [rows, 1, 3C]; row r's key and value go into k_cache[r] / v_cache[r] (its [H, capacity, D] buffers)
// at position pos[r], and its attention over positions [0, pos[r]] comes back as [rows, 1, C] (heads merged). One
// plain loop per (row, head) instead of ~15 ATen calls per row and layer; the arithmetic of a row does not depend on
// the other rows or the thread count, so a row decoded in any batch gets the bits it gets alone.
// Whether x ([rows, 1, C] activations of a decoding step) can take that path.
bool decode_attention_usable(const at::Tensor& x);
at::Tensor decode_attention(const at::Tensor& qkv, int64_t heads, const std::vector<float*>& k_cache,
                            const std::vector<float*>& v_cache, int64_t capacity, const std::vector<int64_t>& pos);

// Scaled dot-product attention over [B, H, Tq, D] x [B, H, Tk, D]. `causal` masks keys after each query, aligned
// so the last query sees every key (what a KV-cached decoding step needs).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal);
// Attention where `see` (bool, broadcastable to [B, H, Tq, Tk]) is true for the keys each query may see; every query
// must see at least one key.
at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& see);

// fresh + x for a residual connection. fresh must be a temporary the caller owns (a layer's output): for CPU
// inference with both contiguous it is added into in place (shared with cpu_pool's helpers when large) and returned,
// instead of libtorch's add opening an OpenMP region; otherwise fresh + x.
at::Tensor add_into(at::Tensor fresh, const at::Tensor& x);

// [B, T, C] -> [B, H, T, C/H] and back.
at::Tensor split_heads(const at::Tensor& x, int64_t heads);
at::Tensor merge_heads(const at::Tensor& x);

// Converts a checkpoint view to a float32 (or the view's integer type) CPU tensor without copying when possible.
at::Tensor view_as_tensor(const struct TensorView& v);

}  // namespace semicap
