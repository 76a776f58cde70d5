#include "clip.h"

#include "errors.h"

namespace semicap {

namespace {
// Row pos[b] of each sequence b of x [B, T, D]: [B, 1, D].
at::Tensor rows_at(const at::Tensor& x, const at::Tensor& pos) {
  return x.gather(1, pos.view({-1, 1, 1}).expand({x.size(0), 1, x.size(2)}));
}
}  // namespace

at::Tensor ClipEncoderLayer::forward(const at::Tensor& x, bool causal, bool first_only) const {
  at::Tensor h = ln1(x);
  // first_only: only token 0 asks; every token still answers (keys and values).
  at::Tensor hq = first_only ? h.narrow(1, 0, 1) : h;
  at::Tensor a = attention(split_heads(q(hq), heads), split_heads(k(h), heads), split_heads(v(h), heads), causal);
  at::Tensor y = add_into(out(merge_heads(a)), first_only ? x.narrow(1, 0, 1) : x);
  return add_into(fc2(fc1(ln2(y), act)), y);
}

at::Tensor ClipEncoderLayer::row_at(const at::Tensor& x, const at::Tensor& pos) const {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor h = ln1(x);
  const at::Tensor see = at::arange(T, pos.options()).unsqueeze(0).le(pos.unsqueeze(1)).view({B, 1, 1, T});
  at::Tensor a = masked_attention(split_heads(q(rows_at(h, pos)), heads), split_heads(k(h), heads), split_heads(v(h), heads), see);
  at::Tensor y = add_into(out(merge_heads(a)), rows_at(x, pos));
  return add_into(fc2(fc1(ln2(y), act)), y);
}

bool ClipModel::text_param(const std::string& name) {
  return name.rfind("text_model.", 0) == 0 || name.rfind("text_projection", 0) == 0;
}
bool ClipModel::vision_param(const std::string& name) {
  return name.rfind("vision_model.", 0) == 0 || name.rfind("visual_projection", 0) == 0;
}

std::shared_ptr<PackedSlot> ClipModel::slot(const std::string& weight_name) {
  // Every CLIP product has a row per token (50 per image for ViT-B/32; 49 patches in the embedding) but the last
  // layer's class token: int8 goes through bf16 pairs where the CPU has AVX512-BF16, the same way whatever the batch.
  auto s = params_.slot(weight_name, false);
  s->set_i8_dot(true);
  return s;
}

std::vector<ClipEncoderLayer> ClipModel::make_layers(const std::string& prefix, const ClipTowerConfig& c) {
  check(c.hidden > 0 && c.heads > 0 && c.hidden % c.heads == 0 && c.layers >= 0 && c.intermediate > 0, "E_CONFIG",
        prefix + ": hidden_size must be a positive multiple of num_attention_heads");
  std::vector<ClipEncoderLayer> layers;
  for (int64_t i = 0; i < c.layers; ++i) {
    std::string p = prefix + ".encoder.layers." + std::to_string(i) + ".";
    auto lin = [&](const std::string& n, int64_t out, int64_t in) {
      return Linear{params_.normal(p + n + ".weight", {out, in}), params_.zeros(p + n + ".bias", {out}), slot(p + n + ".weight")};
    };
    ClipEncoderLayer l;
    l.ln1 = {params_.ones(p + "layer_norm1.weight", {c.hidden}), params_.zeros(p + "layer_norm1.bias", {c.hidden}), c.eps};
    l.q = lin("self_attn.q_proj", c.hidden, c.hidden);
    l.k = lin("self_attn.k_proj", c.hidden, c.hidden);
    l.v = lin("self_attn.v_proj", c.hidden, c.hidden);
    l.out = lin("self_attn.out_proj", c.hidden, c.hidden);
    l.ln2 = {params_.ones(p + "layer_norm2.weight", {c.hidden}), params_.zeros(p + "layer_norm2.bias", {c.hidden}), c.eps};
    l.fc1 = lin("mlp.fc1", c.intermediate, c.hidden);
    l.fc2 = lin("mlp.fc2", c.hidden, c.intermediate);
    l.heads = c.heads;
    l.act = c.act;
    layers.push_back(l);
  }
  return layers;
}

ClipModel::ClipModel(const ClipConfig& cfg, uint64_t seed) : cfg_(cfg) {
  params_.seed(seed);
  check(cfg.patch_size > 0 && cfg.image_size > 0 && cfg.image_size % cfg.patch_size == 0, "E_CONFIG",
        "vision_config: image_size must be a positive multiple of patch_size");
  check(cfg.num_channels > 0 && cfg.vocab_size > 0 && cfg.max_positions > 0 && cfg.projection_dim > 0, "E_CONFIG",
        "CLIP config: num_channels, vocab_size, max_position_embeddings and projection_dim must be positive");
  const auto& v = cfg.vision;
  const auto& t = cfg.text;
  int64_t grid = cfg.image_size / cfg.patch_size;
  patch_w_ = params_.normal("vision_model.embeddings.patch_embedding.weight", {v.hidden, cfg.num_channels, cfg.patch_size, cfg.patch_size});
  patch_slot_ = slot("vision_model.embeddings.patch_embedding.weight");
  class_emb_ = params_.normal("vision_model.embeddings.class_embedding", {v.hidden});
  vis_pos_ = params_.normal("vision_model.embeddings.position_embedding.weight", {grid * grid + 1, v.hidden});
  pre_ln_ = {params_.ones("vision_model.pre_layrnorm.weight", {v.hidden}), params_.zeros("vision_model.pre_layrnorm.bias", {v.hidden}), v.eps};
  vis_layers_ = make_layers("vision_model", v);
  post_ln_ = {params_.ones("vision_model.post_layernorm.weight", {v.hidden}), params_.zeros("vision_model.post_layernorm.bias", {v.hidden}), v.eps};
  visual_proj_ = params_.normal("visual_projection.weight", {cfg.projection_dim, v.hidden});

  tok_emb_ = params_.normal("text_model.embeddings.token_embedding.weight", {cfg.vocab_size, t.hidden});
  txt_pos_ = params_.normal("text_model.embeddings.position_embedding.weight", {cfg.max_positions, t.hidden}, 0.01);
  txt_layers_ = make_layers("text_model", t);
  final_ln_ = {params_.ones("text_model.final_layer_norm.weight", {t.hidden}), params_.zeros("text_model.final_layer_norm.bias", {t.hidden}), t.eps};
  text_proj_ = params_.normal("text_projection.weight", {cfg.projection_dim, t.hidden});
  logit_scale_ = params_.add("logit_scale", {}, [](at::Tensor& x) { x.fill_(2.6592); });
}

at::Tensor ClipModel::encode(const std::vector<ClipEncoderLayer>& layers, at::Tensor x, bool causal) const {
  for (const auto& l : layers) x = l(x, causal);
  return x;
}

at::Tensor ClipModel::vision_embeddings(const at::Tensor& pixels_in) const {
  check(pixels_in.dim() == 4 && pixels_in.size(1) == cfg_.num_channels && pixels_in.size(2) == cfg_.image_size &&
            pixels_in.size(3) == cfg_.image_size && pixels_in.size(0) > 0,
        "E_SHAPE", "pixels must have shape [B, " + std::to_string(cfg_.num_channels) + ", " + std::to_string(cfg_.image_size) + ", " +
                       std::to_string(cfg_.image_size) + "] with B >= 1");
  check(pixels_in.is_floating_point(), "E_DTYPE", "pixels must be float32 (or another float type)");
  at::Tensor pixels = pixels_in.to(device(), at::kFloat);
  check(at::isfinite(pixels).all().item<bool>(), "E_VALUE", "pixels contain NaN or infinite values");
  const int64_t B = pixels.size(0), C = cfg_.num_channels, p = cfg_.patch_size, g = cfg_.image_size / p;
  at::Tensor x;
  // The convolution (stride = kernel = patch) is a product of the patches [g * g, C * p * p] with the weight as a
  // [D, C * p * p] matrix: for CPU inference, through the packed kernels in the model's dtype, one image at a time.
  // (One product over the whole batch was as fast, but how its rows fall into the kernels' row tiles, and so the
  // rounding of an image's features, then depended on the image's place in the batch.)
  // Image b's patches, [g * g, C * p * p]: a copy, made only where the product runs (image 0's decides whether it can).
  const at::Tensor grid = pixels.reshape({B, C, g, p, g, p}).permute({0, 2, 4, 1, 3, 5});
  auto patches = [&](int64_t b) { return grid[b].reshape({g * g, C * p * p}); };
  const at::Tensor w = patch_w_.view({patch_w_.size(0), -1});
  at::Tensor first = patches(0);
  if (packed_usable(first, w, patch_slot_.get())) {
    const Linear patch{w, {}, patch_slot_};
    std::vector<at::Tensor> per_image{patch(first)};
    for (int64_t b = 1; b < B; ++b) per_image.push_back(patch(patches(b)));
    x = at::stack(per_image);
  } else {
    x = at::conv2d(pixels, patch_w_, {}, p).flatten(2).transpose(1, 2);  // [B, D, g, g] -> [B, g*g, D]
  }
  at::Tensor cls = class_emb_.view({1, 1, -1}).expand({x.size(0), 1, x.size(2)});
  x = at::cat({cls, x}, 1) + vis_pos_.unsqueeze(0);
  return pre_ln_(x);
}

ClipTowerOutput ClipModel::vision(const at::Tensor& pixels) const {
  ClipTowerOutput out;
  out.last_hidden = encode(vis_layers_, vision_embeddings(pixels), false);
  out.pooled = post_ln_(out.last_hidden.select(1, 0));
  out.features = at::linear(out.pooled, visual_proj_);
  return out;
}

at::Tensor ClipModel::image_features(const at::Tensor& pixels) const {
  at::Tensor x = vision_embeddings(pixels);
  if (vis_layers_.empty()) return at::linear(post_ln_(x.select(1, 0)), visual_proj_);
  for (size_t i = 0; i + 1 < vis_layers_.size(); ++i) x = vis_layers_[i](x, false);
  // The features read only the class token's last hidden state: the last layer computes that row alone (1/50 of
  // its products on ViT-B/32, ~7% of the tower), the other tokens only as keys and values.
  x = vis_layers_.back().first_token(x);
  return at::linear(post_ln_(x.select(1, 0)), visual_proj_);
}

at::Tensor ClipModel::pool_positions(const at::Tensor& ids) const {
  // HF pooling: legacy configs (eos_token_id == 2) pool at argmax(ids), others at the first eos.
  if (cfg_.eos_token_id == 2) return ids.argmax(1);
  return (ids == cfg_.eos_token_id).to(at::kInt).argmax(1);  // first maximum = first eos; 0 when there is none (as HF)
}

std::pair<at::Tensor, at::Tensor> ClipModel::text_embeddings(const at::Tensor& ids_in) const {
  check(ids_in.dim() == 2 && ids_in.size(0) > 0 && ids_in.size(1) > 0, "E_SHAPE", "text ids must have shape [B, T] with B, T >= 1");
  check(ids_in.size(1) <= cfg_.max_positions, "E_SHAPE",
        "text ids have " + std::to_string(ids_in.size(1)) + " positions but the model has max_position_embeddings " + std::to_string(cfg_.max_positions));
  check(ids_in.scalar_type() == at::kLong || ids_in.scalar_type() == at::kInt, "E_DTYPE", "text ids must be int64 (or int32)");
  at::Tensor ids = ids_in.to(device(), at::kLong);
  auto mm = at::aminmax(ids);
  int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
  check(lo >= 0 && hi < cfg_.vocab_size, "E_VALUE",
        "text ids must lie in [0, " + std::to_string(cfg_.vocab_size) + "); got values in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  const int64_t T = ids.size(1);
  return {ids, at::embedding(tok_emb_, ids) + txt_pos_.slice(0, 0, T).unsqueeze(0)};
}

at::Tensor ClipModel::text_features(const at::Tensor& ids_in) const {
  auto [ids, x] = text_embeddings(ids_in);
  const at::Tensor pos = pool_positions(ids);
  for (size_t i = 0; i + 1 < txt_layers_.size(); ++i) x = txt_layers_[i](x, true);
  // The pooled rows read only their own position's last hidden state: the last layer computes those rows alone.
  x = txt_layers_.empty() ? rows_at(x, pos) : txt_layers_.back().row_at(x, pos);
  return at::linear(final_ln_(x.squeeze(1)), text_proj_);
}

ClipTowerOutput ClipModel::text(const at::Tensor& ids_in) const {
  auto [ids, x] = text_embeddings(ids_in);
  ClipTowerOutput out;
  out.last_hidden = final_ln_(encode(txt_layers_, x, true));
  at::Tensor pos = pool_positions(ids);
  out.pooled = rows_at(out.last_hidden, pos).squeeze(1);
  out.features = at::linear(out.pooled, text_proj_);
  return out;
}

}  // namespace semicap
