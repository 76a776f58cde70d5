// GPT-2 (Hugging Face GPT2LMHeadModel semantics) with a KV cache and an optional prefix of embeddings.
#pragma once
#include "nn.h"

namespace semicap {

struct Gpt2Config {
  int64_t n_embd = 768, n_head = 12, n_layer = 12, n_positions = 1024, vocab_size = 50257, n_inner = 0;
  double eps = 1e-5;
  Activation act = Activation::GeluTanh;
  int64_t eos_token_id = 50256;
  bool tie_word_embeddings = true;  // false: a separate lm_head.weight [V, C] produces the logits
};

struct Gpt2Block {
  LayerNorm ln1, ln2;
  Conv1D c_attn, c_proj, c_fc, mlp_proj;
  int64_t heads;
  Activation act;
};

// Keys and values of many rows in shared slabs, one [slots, H, capacity, D] pair per layer, a row owning one slot
// (continuous batching on devices the fused CPU loop does not serve, see forward_slots).
struct KvSlab {
  std::vector<at::Tensor> k, v;
  int64_t slots = 0, capacity = 0;
};

// Keys and values of every layer for the positions seen so far. With a capacity, each layer's buffer is
// allocated once ([B, H, capacity, D]) and steps write into it, instead of concatenating a growing copy per step.
struct KvCache {
  std::vector<at::Tensor> k, v;  // buffers (capacity > 0) or exact-length tensors
  int64_t capacity = 0, len = 0;
  explicit KvCache(int64_t cap = 0) : capacity(cap) {}
  int64_t length() const { return len; }
  void reorder(const at::Tensor& rows);  // keeps rows (beam search / dropping finished sequences)
};

class Gpt2Model {
 public:
  // `prefix` names the checkpoint scope: "" for a plain GPT-2 folder, "gpt." inside a Captioner checkpoint.
  explicit Gpt2Model(const Gpt2Config& cfg, ParamStore* store = nullptr, const std::string& prefix = "", uint64_t seed = 0);
  const Gpt2Config& config() const { return cfg_; }
  ParamStore& params() { return *store_; }
  at::Device device() const { return wte_.device(); }

  at::Tensor embed_tokens(const at::Tensor& ids) const;  // validates ids; [B,T] -> [B,T,C]
  // Runs the transformer over `embeds` [B,T,C] at positions cache.length().., appends to `cache` when given.
  // Returns final hidden states after ln_f.
  at::Tensor forward(const at::Tensor& embeds, KvCache* cache) const;
  // One new token for each of B independent sequences (continuous batching, batch_decode.h): embeds [B,1,C], row r at
  // position caches[r]->length() in its own capacity-allocated cache ([1,H,capacity,D] per layer, filled by a
  // prefill). Layer norms and products run once over all rows; attention runs per row against its own cache, the
  // same math as forward() on that row alone. Advances every cache by one; returns hidden states after ln_f [B,1,C].
  at::Tensor forward_rows(const at::Tensor& embeds, const std::vector<KvCache*>& caches) const;
  // The same step for rows whose keys and values live in `slab`, for devices such as CUDA where one kernel per row
  // per layer would cost more than the step itself: every row's new key and value is written with one kernel per
  // layer, and attention runs over all rows at once, each row's keys past its own position masked. On the model's
  // device, from slots and positions the caller checked against the slab: slot_t, pos_t [B] (row r in slot
  // slot_t[r] at position pos_t[r]), where_t [B * H] (slab_rows), L = max(pos) + 1. Returns hidden states after
  // ln_f [B,1,C]; the caller advances the positions.
  at::Tensor forward_slots(const at::Tensor& embeds, KvSlab& slab, const at::Tensor& slot_t, const at::Tensor& pos_t,
                           const at::Tensor& where_t, int64_t L) const;
  // The rows of the slab's [slots * H * capacity, D] view that rows at (slots[r], pos[r]) write: B * H of them.
  std::vector<int64_t> slab_rows(const KvSlab& slab, const std::vector<int64_t>& slots, const std::vector<int64_t>& pos) const;
  // hidden [..., C] -> [..., V] against the tied embedding or lm_head.weight when untied (CPU inference: through
  // that weight's packed slot).
  at::Tensor logits(const at::Tensor& hidden) const;
  const at::Tensor& wte() const { return wte_; }
  // Drops "transformer.", ignores buffers, and lm_head.weight (tied models: it is wte).
  static std::string checkpoint_key(const std::string& file_key);
  // checkpoint_key for this model: keeps lm_head.weight when the head is untied.
  std::string key(const std::string& file_key) const;

 private:
  Gpt2Config cfg_;
  std::unique_ptr<ParamStore> own_;
  ParamStore* store_;
  at::Tensor wte_, wpe_, head_;  // head_: wte_ (tied) or lm_head.weight
  std::shared_ptr<PackedSlot> logits_slot_;
  std::vector<Gpt2Block> blocks_;
  LayerNorm ln_f_;
};

}  // namespace semicap
