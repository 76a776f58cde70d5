#include "mapper.h"

#include "errors.h"

namespace semicap {

Mapper::Mapper(const MapperConfig& cfg, ParamStore* s) : cfg_(cfg) {
  check(cfg.clip_dim > 0 && cfg.n_embd > 0 && cfg.prefix_length > 0, "E_CONFIG", "mapper: clip_dim, n_embd and prefix_length must be positive");
  const int64_t C = cfg.n_embd, K = cfg.prefix_length;
  // PyTorch's default Linear init scale (uniform +-1/sqrt(in)) matters for a freshly created mapper: the tanh
  // must not saturate.
  auto linear = [&](const std::string& n, int64_t out, int64_t in, bool bias = true) {
    double bound = 1.0 / std::sqrt(static_cast<double>(in));
    Linear l;
    l.weight = s->add(n + ".weight", {out, in}, [s, bound](at::Tensor& t) { t.uniform_(-bound, bound, s->generator()); });
    if (bias) l.bias = s->add(n + ".bias", {out}, [s, bound](at::Tensor& t) { t.uniform_(-bound, bound, s->generator()); });
    l.packed = s->slot(n + ".weight", false);
    return l;
  };
  if (cfg.type == "mlp") {
    l0_ = linear("clip_project.model.0", C * K / 2, cfg.clip_dim);
    l2_ = linear("clip_project.model.2", C * K, C * K / 2);
  } else if (cfg.type == "transformer") {
    check(cfg.clip_length > 0 && cfg.layers > 0 && cfg.heads > 0 && C % cfg.heads == 0, "E_CONFIG",
          "transformer mapper: clip_length, layers and heads must be positive and n_embd a multiple of heads");
    linear_ = linear("clip_project.linear", cfg.clip_length * C, cfg.clip_dim);
    prefix_const_ = s->add("clip_project.prefix_const", {K, C}, [s](at::Tensor& t) { t.normal_(0, 1, s->generator()); });
    const int64_t hidden = static_cast<int64_t>(C * cfg.mlp_ratio);
    for (int64_t i = 0; i < cfg.layers; ++i) {
      std::string p = "clip_project.transformer.layers." + std::to_string(i) + ".";
      MapperLayer l;
      l.norm1 = {s->ones(p + "norm1.weight", {C}), s->zeros(p + "norm1.bias", {C})};
      l.to_queries = linear(p + "attn.to_queries", C, C, false);
      l.to_keys_values = linear(p + "attn.to_keys_values", 2 * C, C, false);
      l.project = linear(p + "attn.project", C, C);
      l.norm2 = {s->ones(p + "norm2.weight", {C}), s->zeros(p + "norm2.bias", {C})};
      l.fc1 = linear(p + "mlp.fc1", hidden, C);
      l.fc2 = linear(p + "mlp.fc2", C, hidden);
      l.heads = cfg.heads;
      layers_.push_back(l);
    }
  } else {
    fail("E_CONFIG", "mapper type must be 'mlp' or 'transformer', got '" + cfg.type + "'");
  }
}

at::Tensor Mapper::operator()(const at::Tensor& f) const {
  check(f.dim() == 2 && f.size(1) == cfg_.clip_dim, "E_SHAPE", "mapper input must have shape [B, " + std::to_string(cfg_.clip_dim) + "]");
  const int64_t B = f.size(0), C = cfg_.n_embd, K = cfg_.prefix_length;
  if (cfg_.type == "mlp") return l2_(at::tanh(l0_(f))).view({B, K, C});
  at::Tensor x = linear_(f).view({B, cfg_.clip_length, C});
  x = at::cat({x, prefix_const_.unsqueeze(0).expand({B, K, C})}, 1);
  for (const auto& l : layers_) {
    at::Tensor h = l.norm1(x);
    at::Tensor q = split_heads(l.to_queries(h), l.heads);
    // ClipCap lays keys and values out as [.., 2, heads, head_dim] in the last dimension.
    at::Tensor kv = l.to_keys_values(h).view({B, x.size(1), 2, l.heads, C / l.heads});
    at::Tensor k = kv.select(2, 0).transpose(1, 2), v = kv.select(2, 1).transpose(1, 2);
    x = add_into(l.project(merge_heads(attention(q, k, v, false))), x);
    x = add_into(l.fc2(at::relu(l.fc1(l.norm2(x)))), x);
  }
  return x.slice(1, cfg_.clip_length);
}

}  // namespace semicap
