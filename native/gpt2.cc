#include "gpt2.h"

#include "errors.h"

namespace semicap {

void KvCache::reorder(const at::Tensor& rows) {
  for (auto& t : k) t = t.index_select(0, rows);
  for (auto& t : v) t = t.index_select(0, rows);
}

Gpt2Model::Gpt2Model(const Gpt2Config& cfg, ParamStore* store, const std::string& prefix, uint64_t seed) : cfg_(cfg) {
  check(cfg.n_embd > 0 && cfg.n_head > 0 && cfg.n_embd % cfg.n_head == 0, "E_CONFIG", "GPT-2 config: n_embd must be a positive multiple of n_head");
  check(cfg.n_layer >= 0 && cfg.n_positions > 0 && cfg.vocab_size > 0, "E_CONFIG", "GPT-2 config: n_layer, n_positions and vocab_size must be positive");
  if (!store) {
    own_ = std::make_unique<ParamStore>();
    own_->seed(seed);
    store = own_.get();
  }
  store_ = store;
  const int64_t C = cfg.n_embd, inner = cfg.n_inner > 0 ? cfg.n_inner : 4 * cfg.n_embd;
  const std::string& p = prefix;
  wte_ = store->normal(p + "wte.weight", {cfg.vocab_size, C});
  if (cfg.tie_word_embeddings) {
    head_ = wte_;
    logits_slot_ = store->slot(p + "wte.weight", false);  // the tied logits read wte as a [V, C] Linear weight
  } else {
    head_ = store->normal(p + "lm_head.weight", {cfg.vocab_size, C});
    logits_slot_ = store->slot(p + "lm_head.weight", false);
  }
  wpe_ = store->normal(p + "wpe.weight", {cfg.n_positions, C}, 0.01);
  auto ln = [&](const std::string& n) { return LayerNorm{store->ones(n + ".weight", {C}), store->zeros(n + ".bias", {C}), cfg.eps}; };
  auto conv = [&](const std::string& n, int64_t in, int64_t out) {
    return Conv1D{store->normal(n + ".weight", {in, out}), store->zeros(n + ".bias", {out}), store->slot(n + ".weight", true)};
  };
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    std::string b = p + "h." + std::to_string(i) + ".";
    Gpt2Block blk;
    blk.ln1 = ln(b + "ln_1");
    blk.c_attn = conv(b + "attn.c_attn", C, 3 * C);
    blk.c_proj = conv(b + "attn.c_proj", C, C);
    blk.ln2 = ln(b + "ln_2");
    blk.c_fc = conv(b + "mlp.c_fc", C, inner);
    blk.mlp_proj = conv(b + "mlp.c_proj", inner, C);
    blk.heads = cfg.n_head;
    blk.act = cfg.act;
    blocks_.push_back(blk);
  }
  ln_f_ = ln(p + "ln_f");
}

std::string Gpt2Model::checkpoint_key(const std::string& key) {
  std::string k = key.rfind("transformer.", 0) == 0 ? key.substr(12) : key;
  if (k == "lm_head.weight") return "";  // tied to wte (untied models: key())
  auto ends = [&](const char* s) { size_t n = strlen(s); return k.size() >= n && k.compare(k.size() - n, n, s) == 0; };
  if (ends(".attn.bias") || ends(".attn.masked_bias") || ends("position_ids")) return "";  // buffers, not weights
  return k;
}

std::string Gpt2Model::key(const std::string& file_key) const {
  if (!cfg_.tie_word_embeddings) {
    std::string k = file_key.rfind("transformer.", 0) == 0 ? file_key.substr(12) : file_key;
    if (k == "lm_head.weight") return k;
  }
  return checkpoint_key(file_key);
}

at::Tensor Gpt2Model::logits(const at::Tensor& hidden) const {
  auto blas = [&] {
    if (single_row_cpu(hidden)) {
      auto shape = hidden.sizes().vec();
      shape.back() = cfg_.vocab_size;
      return at::mv(head_, hidden.reshape({-1})).view(shape);
    }
    return at::matmul(hidden, head_.t());
  };
  if (packed_usable(hidden, head_, logits_slot_.get())) return packed_product(hidden, head_, at::Tensor(), *logits_slot_, blas);
  if (trained_usable(hidden, head_, logits_slot_.get())) return trained_product(hidden, head_, at::Tensor(), *logits_slot_);
  return blas();
}

at::Tensor Gpt2Model::embed_tokens(const at::Tensor& ids_in) const {
  check(ids_in.dim() == 2, "E_SHAPE", "token ids must have shape [B, T]");
  check(ids_in.scalar_type() == at::kLong || ids_in.scalar_type() == at::kInt, "E_DTYPE", "token ids must be int64 (or int32)");
  at::Tensor ids = ids_in.to(device(), at::kLong);
  if (ids.numel() > 0) {
    auto mm = at::aminmax(ids);
    int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
    check(lo >= 0 && hi < cfg_.vocab_size, "E_VALUE",
          "token ids must lie in [0, " + std::to_string(cfg_.vocab_size) + "); got values in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return at::embedding(wte_, ids);
}

namespace {
// Whether the fused decoding loop (decode_attention) can write c's buffers: every layer's keys and values CPU
// float32 [rows, H, capacity, D], contiguous.
bool fusable(const KvCache& c, int64_t rows) {
  if (c.capacity <= 0 || c.k.empty() || c.v.size() != c.k.size()) return false;
  for (size_t i = 0; i < c.k.size(); ++i) {
    const at::Tensor& k = c.k[i];
    const at::Tensor& v = c.v[i];
    if (!k.defined() || !v.defined() || !k.is_cpu() || k.scalar_type() != at::kFloat || !k.is_contiguous() ||
        !v.is_contiguous() || k.dim() != 4 || k.size(0) != rows || k.size(2) != c.capacity || !v.is_cpu() ||
        v.scalar_type() != at::kFloat || v.sizes() != k.sizes())
      return false;
  }
  return true;
}
}  // namespace

at::Tensor Gpt2Model::forward(const at::Tensor& embeds, KvCache* cache) const {
  check(embeds.dim() == 3 && embeds.size(2) == cfg_.n_embd, "E_SHAPE", "GPT-2 input embeddings must have shape [B, T, " + std::to_string(cfg_.n_embd) + "]");
  const int64_t past = cache ? cache->length() : 0, T = embeds.size(1);
  check(past + T <= cfg_.n_positions, "E_SHAPE",
        "sequence of " + std::to_string(past + T) + " positions exceeds GPT-2's n_positions " + std::to_string(cfg_.n_positions));
  at::Tensor x = embeds + wpe_.slice(0, past, past + T).unsqueeze(0);
  if (cache && cache->k.empty()) {
    cache->k.resize(blocks_.size());
    cache->v.resize(blocks_.size());
  }
  const int64_t C = cfg_.n_embd;
  // Decoding one token per row into capacity buffers on the CPU: the fused loop (the same one forward_rows runs).
  const bool fused = T == 1 && cache && decode_attention_usable(embeds) && fusable(*cache, embeds.size(0));
  if (fused) check(past < cache->capacity, "E_NATIVE", "KV cache capacity exceeded");
  const std::vector<int64_t> fused_pos(fused ? embeds.size(0) : 0, past);  // every row is at position `past`
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Gpt2Block& b = blocks_[i];
    at::Tensor qkv_all = b.c_attn(b.ln1(x)), att;
    if (fused) {
      const int64_t B = embeds.size(0), row_stride = cache->k[i].numel() / std::max<int64_t>(B, 1);
      std::vector<float*> kp(B), vp(B);
      for (int64_t r = 0; r < B; ++r) {
        kp[r] = cache->k[i].data_ptr<float>() + r * row_stride;
        vp[r] = cache->v[i].data_ptr<float>() + r * row_stride;
      }
      att = decode_attention(qkv_all.contiguous(), b.heads, kp, vp, cache->capacity, fused_pos);
    } else {
      auto qkv = qkv_all.split(C, -1);
      at::Tensor q = split_heads(qkv[0], b.heads), k = split_heads(qkv[1], b.heads), v = split_heads(qkv[2], b.heads);
      if (cache && cache->capacity > 0) {
        if (!cache->k[i].defined()) {
          check(cache->capacity >= past + T, "E_NATIVE", "KV cache capacity exceeded");
          cache->k[i] = at::empty({k.size(0), k.size(1), cache->capacity, k.size(3)}, k.options());
          cache->v[i] = at::empty_like(cache->k[i]);
        }
        check(cache->capacity >= past + T, "E_NATIVE", "KV cache capacity exceeded");
        cache->k[i].narrow(2, past, T).copy_(k);
        cache->v[i].narrow(2, past, T).copy_(v);
        k = cache->k[i].narrow(2, 0, past + T);
        v = cache->v[i].narrow(2, 0, past + T);
      } else if (cache) {
        if (cache->k[i].defined()) {
          k = at::cat({cache->k[i], k}, 2);
          v = at::cat({cache->v[i], v}, 2);
        }
        cache->k[i] = k;
        cache->v[i] = v;
      }
      att = merge_heads(attention(q, k, v, true));
    }
    x = add_into(b.c_proj(att), x);
    x = add_into(b.mlp_proj(b.c_fc(b.ln2(x), b.act)), x);
  }
  if (cache) cache->len = past + T;
  return ln_f_(x);
}

at::Tensor Gpt2Model::forward_rows(const at::Tensor& embeds, const std::vector<KvCache*>& caches) const {
  const int64_t B = static_cast<int64_t>(caches.size()), C = cfg_.n_embd;
  check(embeds.dim() == 3 && embeds.size(0) == B && embeds.size(1) == 1 && embeds.size(2) == C, "E_SHAPE",
        "forward_rows: embeddings must have shape [rows, 1, " + std::to_string(C) + "], one row per cache");
  std::vector<int64_t> pos(B);
  for (int64_t r = 0; r < B; ++r) {
    const KvCache* c = caches[r];
    check(c && c->capacity > 0 && c->k.size() == blocks_.size() && c->len > 0, "E_NATIVE", "forward_rows: every row needs a prefilled capacity cache");
    check(c->len + 1 <= c->capacity && c->len + 1 <= cfg_.n_positions, "E_NATIVE", "forward_rows: KV cache capacity exceeded");
    pos[r] = c->len;
  }
  at::Tensor p = at::tensor(pos, at::TensorOptions().dtype(at::kLong)).to(device());
  at::Tensor x = embeds + wpe_.index_select(0, p).unsqueeze(1);
  std::vector<at::Tensor> outs(B);
  // The fused loop needs every row's buffers as plain CPU float32 of one capacity (batch_decode makes them so).
  bool fused = decode_attention_usable(embeds);
  for (int64_t r = 0; r < B && fused; ++r) fused = caches[r]->capacity == caches[0]->capacity && fusable(*caches[r], 1);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Gpt2Block& b = blocks_[i];
    at::Tensor qkv_all = b.c_attn(b.ln1(x)), att;
    if (fused) {
      std::vector<float*> kp(B), vp(B);
      for (int64_t r = 0; r < B; ++r) {
        kp[r] = caches[r]->k[i].data_ptr<float>();
        vp[r] = caches[r]->v[i].data_ptr<float>();
      }
      att = decode_attention(qkv_all.contiguous(), b.heads, kp, vp, caches[0]->capacity, pos);
    } else {
      auto qkv = qkv_all.split(C, -1);
      at::Tensor q = split_heads(qkv[0], b.heads), k = split_heads(qkv[1], b.heads), v = split_heads(qkv[2], b.heads);
      for (int64_t r = 0; r < B; ++r) {
        KvCache& c = *caches[r];
        c.k[i].narrow(2, pos[r], 1).copy_(k.narrow(0, r, 1));
        c.v[i].narrow(2, pos[r], 1).copy_(v.narrow(0, r, 1));
        outs[r] = attention(q.narrow(0, r, 1), c.k[i].narrow(2, 0, pos[r] + 1), c.v[i].narrow(2, 0, pos[r] + 1), true);
      }
      att = merge_heads(B == 1 ? outs[0] : at::cat(outs, 0));
    }
    x = add_into(b.c_proj(att), x);
    x = add_into(b.mlp_proj(b.c_fc(b.ln2(x), b.act)), x);
  }
  for (KvCache* c : caches) c->len += 1;
  return ln_f_(x);
}

std::vector<int64_t> Gpt2Model::slab_rows(const KvSlab& slab, const std::vector<int64_t>& slots,
                                          const std::vector<int64_t>& pos) const {
  // Row r's new key goes to slab row (slots[r] * H + h) * capacity + pos[r] of the [slots * H * capacity, D] view.
  const int64_t B = static_cast<int64_t>(slots.size()), H = cfg_.n_head;
  std::vector<int64_t> where(static_cast<size_t>(B * H));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t h = 0; h < H; ++h) where[r * H + h] = (slots[r] * H + h) * slab.capacity + pos[r];
  return where;
}

at::Tensor Gpt2Model::forward_slots(const at::Tensor& embeds, KvSlab& slab, const at::Tensor& slot_t, const at::Tensor& pos_t,
                                    const at::Tensor& where_t, int64_t L) const {
  const int64_t B = embeds.size(0), C = cfg_.n_embd, H = cfg_.n_head, D = C / H;
  check(embeds.dim() == 3 && B > 0 && embeds.size(1) == 1 && embeds.size(2) == C && slot_t.numel() == B && pos_t.numel() == B &&
            where_t.numel() == B * H && L >= 1,
        "E_SHAPE", "forward_slots: embeddings must have shape [rows, 1, " + std::to_string(C) + "], one slot and position per row");
  check(slab.k.size() == blocks_.size() && slab.v.size() == blocks_.size() && L <= slab.capacity, "E_NATIVE",
        "forward_slots: the slab does not fit the model or the positions");
  // Keys a row may see: positions up to its own ([B, 1, 1, L], true = attend).
  const at::Tensor see = at::arange(L, pos_t.options()).unsqueeze(0).le(pos_t.unsqueeze(1)).view({B, 1, 1, L});
  at::Tensor x = embeds + wpe_.index_select(0, pos_t).unsqueeze(1);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Gpt2Block& b = blocks_[i];
    auto qkv = b.c_attn(b.ln1(x)).split(C, -1);
    at::Tensor q = split_heads(qkv[0], b.heads), k = split_heads(qkv[1], b.heads), v = split_heads(qkv[2], b.heads);
    slab.k[i].view({-1, D}).index_copy_(0, where_t, k.reshape({B * H, D}));
    slab.v[i].view({-1, D}).index_copy_(0, where_t, v.reshape({B * H, D}));
    const at::Tensor ks = slab.k[i].narrow(2, 0, L).index_select(0, slot_t), vs = slab.v[i].narrow(2, 0, L).index_select(0, slot_t);
    at::Tensor att = merge_heads(masked_attention(q, ks, vs, see));
    x = add_into(b.c_proj(att), x);
    x = add_into(b.mlp_proj(b.c_fc(b.ln2(x), b.act)), x);
  }
  return ln_f_(x);
}

}  // namespace semicap
