// CLIP (Hugging Face CLIPModel semantics): vision tower, text tower, projections, logit_scale.
#pragma once
#include "nn.h"

namespace semicap {

struct ClipTowerConfig {
  int64_t hidden = 0, intermediate = 0, heads = 0, layers = 0;
  Activation act = Activation::QuickGelu;
  double eps = 1e-5;
};

struct ClipConfig {
  ClipTowerConfig vision, text;
  int64_t image_size = 224, patch_size = 32, num_channels = 3;
  int64_t vocab_size = 49408, max_positions = 77, eos_token_id = 2;
  int64_t projection_dim = 512;
};

// One pre-LayerNorm transformer layer as CLIPEncoderLayer.
struct ClipEncoderLayer {
  LayerNorm ln1, ln2;
  Linear q, k, v, out, fc1, fc2;
  int64_t heads;
  Activation act;
  at::Tensor operator()(const at::Tensor& x, bool causal) const { return forward(x, causal, false); }
  // The layer's output for token 0 only ([B, 1, D]; non-causal): what the class token's features need.
  at::Tensor first_token(const at::Tensor& x) const { return forward(x, false, true); }
  // The layer's output for row pos[b] of each sequence b alone ([B, 1, D]; causal: that row sees positions up to
  // pos[b]): what the text tower's pooled features need.
  at::Tensor row_at(const at::Tensor& x, const at::Tensor& pos) const;

 private:
  at::Tensor forward(const at::Tensor& x, bool causal, bool first_only) const;
};

// What each tower returns: the last hidden state, the pooled output, and its projection (the features).
struct ClipTowerOutput { at::Tensor last_hidden, pooled, features; };

class ClipModel {
 public:
  explicit ClipModel(const ClipConfig& cfg, uint64_t seed = 0);
  const ClipConfig& config() const { return cfg_; }
  ParamStore& params() { return params_; }

  // pixels [B, C, S, S] float32 -> outputs; validates shapes and values.
  ClipTowerOutput vision(const at::Tensor& pixels) const;
  // The projected image features alone (Hugging Face get_image_features), without the last hidden state of the
  // tokens other than the class token; equal to vision(pixels).features up to float rounding.
  at::Tensor image_features(const at::Tensor& pixels) const;
  // ids [B, T] int64 -> outputs; validates ids and lengths.
  ClipTowerOutput text(const at::Tensor& ids) const;
  // The projected text features alone (get_text_features): the last layer computes each row's pooled position only
  // (the other positions serve as keys and values); equal to text(ids).features up to float rounding.
  at::Tensor text_features(const at::Tensor& ids) const;
  // Where text() pools each row of ids [B, T] (int64, on this model's device): HF's rule, the first end token (or
  // argmax(ids) for legacy configs). The tower is causal, so a row's pooled output ignores positions after it.
  at::Tensor pool_positions(const at::Tensor& ids) const;
  // Which tower a parameter name belongs to (Hugging Face's names, as the constructor registers them); logit_scale:
  // neither.
  static bool text_param(const std::string& name);
  static bool vision_param(const std::string& name);
  at::Tensor logit_scale() const { return logit_scale_; }
  at::Device device() const { return logit_scale_.device(); }

 private:
  std::shared_ptr<PackedSlot> slot(const std::string& weight_name);  // a product's packed slot ([out, in] weight)
  std::vector<ClipEncoderLayer> make_layers(const std::string& prefix, const ClipTowerConfig& c);
  at::Tensor encode(const std::vector<ClipEncoderLayer>& layers, at::Tensor x, bool causal) const;
  at::Tensor vision_embeddings(const at::Tensor& pixels) const;  // validated pixels -> pre-LayerNormed tokens
  std::pair<at::Tensor, at::Tensor> text_embeddings(const at::Tensor& ids) const;  // validated -> {ids, embeddings}

  ClipConfig cfg_;
  ParamStore params_;
  std::shared_ptr<PackedSlot> patch_slot_;  // the patch embedding as a product (CPU inference)
  at::Tensor patch_w_, class_emb_, vis_pos_, tok_emb_, txt_pos_, visual_proj_, text_proj_, logit_scale_;
  LayerNorm pre_ln_, post_ln_, final_ln_;
  std::vector<ClipEncoderLayer> vis_layers_, txt_layers_;
};

}  // namespace semicap
