// ClipCap mapping networks (Mokady et al. 2021), with ClipCap's own parameter names under "clip_project.":
// MLP (clip_dim -> C*K/2 -> C*K, tanh) and the transformer mapper (linear to clip_length tokens + K learned
// constants, pre-LN layers, output = the constants' positions).
#pragma once
#include "nn.h"

namespace semicap {

struct MapperConfig {
  std::string type = "mlp";  // "mlp" | "transformer"
  int64_t clip_dim = 512, n_embd = 768, prefix_length = 10;
  int64_t clip_length = 10, layers = 8, heads = 8;  // transformer only
  double mlp_ratio = 2.0;
};

struct MapperLayer {
  LayerNorm norm1, norm2;
  Linear to_queries, to_keys_values, project, fc1, fc2;
  int64_t heads;
};

class Mapper {
 public:
  Mapper(const MapperConfig& cfg, ParamStore* store);
  const MapperConfig& config() const { return cfg_; }
  // features [B, clip_dim] -> prefix [B, K, n_embd]
  at::Tensor operator()(const at::Tensor& features) const;

 private:
  MapperConfig cfg_;
  Linear l0_, l2_;  // mlp
  Linear linear_;   // transformer
  at::Tensor prefix_const_;
  std::vector<MapperLayer> layers_;
};

}  // namespace semicap
