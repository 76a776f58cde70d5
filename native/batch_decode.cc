#include "batch_decode.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/Parallel.h>

#include "cpu_kernels.h"
#include "env.h"
#include "errors.h"
#include "nn.h"

namespace semicap {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool is_end(const DecodeOptions& o, int64_t token) {
  return token == o.eos_id || std::find(o.stop_ids.begin(), o.stop_ids.end(), token) != o.stop_ids.end();
}

// log p(next) under logits [R, V], per row.
at::Tensor chosen_logp(const at::Tensor& logits, const at::Tensor& next) {
  return at::log_softmax(logits, -1).gather(-1, next.unsqueeze(-1)).squeeze(-1);
}

}  // namespace

DecodeBatch::EndMasks DecodeBatch::end_masks(const std::vector<Row*>& rows, int64_t n, const at::Device& device) {
  EndMasks m;
  // Most steps have no short row: nothing is built then (this runs at every token boundary).
  if (std::none_of(rows.begin(), rows.end(), [](const Row* r) { return r->t < r->opts.min_tokens; })) return m;
  const int64_t R = static_cast<int64_t>(rows.size());
  at::Tensor short_h = at::empty({n, R, 1}, at::TensorOptions().dtype(at::kBool));
  bool* sh = short_h.data_ptr<bool>();
  std::vector<at::Tensor> ends(R);
  for (int64_t r = 0; r < R; ++r) {
    ends[r] = rows[r]->ends;
    for (int64_t j = 0; j < n; ++j) sh[j * R + r] = rows[r]->t + j < rows[r]->opts.min_tokens;
  }
  m.ends = at::stack(ends);
  m.shorts = short_h.to(device);
  return m;
}

at::Tensor DecodeBatch::EndMasks::apply(const at::Tensor& logits, int64_t j) const {
  return ends.defined() ? logits.masked_fill(ends.logical_and(shorts[j]), kNegInf) : logits;
}

void DecodeBatch::validate(const Gpt2Model& gpt, int64_t prefix_length, const DecodeOptions& o) {
  const Gpt2Config& c = gpt.config();
  check(o.method == "greedy" || o.method == "sample", "E_VALUE",
        o.method == "beam" ? "beam search is not batched across requests: decode it with decode() (caption() does)"
                           : "decoding must be 'greedy' or 'sample', got '" + o.method + "'");
  check(!o.bf16, "E_VALUE", "bf16 autocast is not batched: decode bf16 requests with decode()");
  check(o.max_tokens >= 1, "E_VALUE", "maxTokens must be at least 1");
  check(o.min_tokens >= 0 && o.min_tokens <= o.max_tokens, "E_VALUE", "minTokens must lie in [0, maxTokens]");
  check(prefix_length + o.max_tokens <= c.n_positions, "E_VALUE",
        "prefix length + maxTokens exceeds GPT-2's n_positions (" + std::to_string(c.n_positions) + ")");
  for (int64_t id : o.stop_ids) check(id >= 0 && id < c.vocab_size, "E_VALUE", "stop token id " + std::to_string(id) + " out of range [0, " + std::to_string(c.vocab_size) + ")");
  check(o.eos_id >= -1 && o.eos_id < c.vocab_size, "E_VALUE", "eos token id out of range");
  check(std::isfinite(o.temperature) && o.temperature > 0 && o.top_p > 0 && o.top_p <= 1 && o.top_k >= 0 && o.top_k <= c.vocab_size, "E_VALUE",
        "temperature must be > 0, topP in (0, 1], topK in [0, vocabulary size]");
  check(o.method != "sample" || o.row_seeds.size() == 1, "E_NATIVE", "a sampled row needs exactly one row seed");
}

// Greedy rows on the CPU: argmax and log p(argmax) per row in two passes over the logits, without the masked copy,
// the log-softmax tensor and the gather of the general path (a twentieth of a batch-8 decoding step at two threads).
// A row still short of min_tokens is picked from a copy with its end tokens at -inf (what the general path's
// masked_fill gives). False when a row has a NaN or no finite logit: the general path decides those.
bool DecodeBatch::greedy_cpu(const std::vector<Row*>& rows, const at::Tensor& logits, std::vector<int64_t>& next,
                             std::vector<float>& logp) {
  const int64_t R = static_cast<int64_t>(rows.size());
  if (!logits.is_cpu() || logits.scalar_type() != at::kFloat || logits.dim() != 2 || logits.size(0) != R) return false;
  const at::Tensor x = logits.contiguous();
  const int64_t V = x.size(1);
  const float* xp = x.data_ptr<float>();
  next.assign(R, -1);
  logp.assign(R, 0.f);
  std::vector<char> ok(R, 0);
  const kernels::Isa isa = kernels::active_isa();
  pool_for(R, R >= 4 ? R : 1, inference_threads(), [&](int64_t r0, int64_t r1) {
    std::vector<float> masked;
    for (int64_t r = r0; r < r1; ++r) {
      const DecodeOptions& o = rows[r]->opts;
      const float* row = xp + r * V;
      if (rows[r]->t < o.min_tokens && (o.eos_id >= 0 || !o.stop_ids.empty())) {
        masked.assign(row, row + V);
        if (o.eos_id >= 0 && o.eos_id < V) masked[o.eos_id] = kNegInf;
        for (int64_t id : o.stop_ids)
          if (id >= 0 && id < V) masked[id] = kNegInf;
        row = masked.data();
      }
      ok[r] = kernels::greedy_pick(row, V, &next[r], &logp[r], isa);
    }
  });
  return std::all_of(ok.begin(), ok.end(), [](char c) { return c != 0; });
}

std::vector<RowToken> DecodeBatch::choose(const Gpt2Model& gpt, const at::Tensor& logits_in, const std::vector<int64_t>& ids) {
  const int64_t R = static_cast<int64_t>(ids.size());
  std::vector<Row*> rows(R);
  bool any_sample = false;
  for (int64_t r = 0; r < R; ++r) {
    rows[r] = &rows_.at(ids[r]);
    any_sample = any_sample || rows[r]->opts.method == "sample";
  }
  std::vector<int64_t> picked;
  std::vector<float> picked_logp;
  if (!any_sample && greedy_cpu(rows, logits_in, picked, picked_logp)) {
    std::vector<RowToken> out(R);
    for (int64_t r = 0; r < R; ++r) out[r] = advance(ids[r], *rows[r], picked[r], picked_logp[r]);
    return out;
  }
  const at::Tensor logits = end_masks(rows, 1, logits_in.device()).apply(logits_in, 0);
  at::Tensor next = logits.argmax(-1);
  if (any_sample) {
    next = next.clone();
    for (int64_t r = 0; r < R; ++r)
      if (rows[r]->opts.method == "sample") next.narrow(0, r, 1).copy_(sample_tokens(logits.narrow(0, r, 1), rows[r]->opts, rows[r]->t));
  }
  at::Tensor logp = chosen_logp(logits, next);
  // The one host sync of a boundary.
  at::Tensor next_h = next.to(at::kCPU, at::kLong).contiguous(), logp_h = logp.to(at::kCPU, at::kFloat).contiguous();
  const int64_t* nx = next_h.data_ptr<int64_t>();
  const float* lp = logp_h.data_ptr<float>();
  std::vector<RowToken> out(R);
  for (int64_t r = 0; r < R; ++r) out[r] = advance(ids[r], *rows[r], nx[r], lp[r]);
  return out;
}

RowToken DecodeBatch::advance(int64_t id, Row& row, int64_t token, float logp) {
  row.logp_sum += logp;
  row.count += 1;
  row.t += 1;
  row.last = token;
  RowToken o;
  o.row = id;
  o.token = token;
  o.logp = logp;
  o.finished = is_end(row.opts, token) || row.t >= row.opts.max_tokens;
  if (o.finished) o.score = row.logp_sum / std::max(row.count, 1.0f);
  return o;
}

void DecodeBatch::leave(const std::vector<bool>& ended) {
  std::vector<int64_t> keep;
  keep.reserve(order_.size());
  for (size_t r = 0; r < order_.size(); ++r) {
    if (ended[r]) drop(order_[r]);
    else keep.push_back(order_[r]);
  }
  order_ = std::move(keep);
}

DecodeBatch::SlotSteps DecodeBatch::slot_steps(const Gpt2Model& gpt, int64_t n) const {
  const int64_t B = size();
  std::vector<const Row*> rows(B);
  std::vector<int64_t> slots(B), where, pos;
  for (int64_t r = 0; r < B; ++r) {
    rows[r] = &rows_.at(order_[r]);
    slots[r] = rows[r]->slot;
    check(slots[r] >= 0 && slots[r] < slab_.slots, "E_NATIVE", "step: slot out of range");
  }
  SlotSteps s;
  s.L.assign(n, 0);
  for (int64_t j = 0; j < n; ++j) {
    std::vector<int64_t> pj(B);
    for (int64_t r = 0; r < B; ++r) {
      pj[r] = rows[r]->prefix + rows[r]->t - 1 + j;
      check(pj[r] >= 0 && pj[r] < slab_.capacity && pj[r] < gpt.config().n_positions, "E_NATIVE", "step: position out of range");
      s.L[j] = std::max(s.L[j], pj[r] + 1);
    }
    const std::vector<int64_t> wj = gpt.slab_rows(slab_, slots, pj);
    where.insert(where.end(), wj.begin(), wj.end());
    pos.insert(pos.end(), pj.begin(), pj.end());
  }
  const auto lopts = at::TensorOptions().dtype(at::kLong);
  const at::Device dev = gpt.device();
  s.slot = at::tensor(slots, lopts).to(dev);
  s.pos = at::tensor(pos, lopts).view({n, B}).to(dev);
  s.where = at::tensor(where, lopts).view({n, -1}).to(dev);
  return s;
}

std::vector<RowToken> DecodeBatch::add(const Gpt2Model& gpt, const at::Tensor& prefix, const std::vector<DecodeOptions>& opts) {
  const int64_t n = static_cast<int64_t>(opts.size());
  check(n >= 1 && prefix.dim() == 3 && prefix.size(0) == n && prefix.size(1) >= 1 && prefix.size(2) == gpt.config().n_embd, "E_SHAPE",
        "batch add: prefix must have shape [rows, K, " + std::to_string(gpt.config().n_embd) + "] with one option set per row");
  const int64_t K = prefix.size(1);
  for (const auto& o : opts) validate(gpt, K, o);
  if (rows_.empty()) use_slots_ = env_flag("SEMICAP_BATCH_SLOTS") || !decode_attention_usable(prefix.narrow(1, 0, 1));
  KvCache tmp(K);
  at::Tensor logits = gpt.logits(gpt.forward(prefix, &tmp).select(1, -1)).to(at::kFloat);
  std::vector<int64_t> ids(n);
  for (int64_t r = 0; r < n; ++r) {
    Row row;
    row.opts = opts[r];
    row.ends = end_token_mask(gpt, opts[r]);
    ids[r] = next_id_++;
    rows_.emplace(ids[r], std::move(row));
  }
  std::vector<RowToken> out;
  try {
    out = choose(gpt, logits, ids);
    if (use_slots_) {
      std::vector<int64_t> keep, slots;
      int64_t capacity = 0;
      for (int64_t r = 0; r < n; ++r)
        if (!out[r].finished) {
          keep.push_back(r);
          capacity = std::max(capacity, K + opts[r].max_tokens);
        }
      if (!keep.empty()) {
        reserve_slab(tmp, size() + static_cast<int64_t>(keep.size()), capacity);
        for (int64_t r : keep) {
          Row& row = rows_.at(ids[r]);
          row.slot = free_slots_.back();
          free_slots_.pop_back();
          row.prefix = K;
          slots.push_back(row.slot);
        }
        const auto lopts = at::TensorOptions().dtype(at::kLong);
        const at::Tensor keep_t = at::tensor(keep, lopts).to(gpt.device()), slot_t = at::tensor(slots, lopts).to(gpt.device());
        for (size_t i = 0; i < tmp.k.size(); ++i) {
          slab_.k[i].narrow(2, 0, K).index_copy_(0, slot_t, tmp.k[i].index_select(0, keep_t));
          slab_.v[i].narrow(2, 0, K).index_copy_(0, slot_t, tmp.v[i].index_select(0, keep_t));
        }
      }
    } else {
      for (int64_t r = 0; r < n; ++r) {
        if (out[r].finished) continue;
        Row& row = rows_.at(ids[r]);
        row.cache = KvCache(K + row.opts.max_tokens);
        const size_t L = tmp.k.size();
        row.cache.k.resize(L);
        row.cache.v.resize(L);
        // Every layer's keys and values in one block: large enough for the CPU cache of freed memory (cpu_allocator),
        // so the next caption's rows reuse pages already mapped. A buffer per layer (150 KB for GPT-2 at 50
        // positions) went to malloc, and each decoding step wrote its new position into pages it had never touched:
        // ~145 page faults per step at batch 8, 12 us each on a VM measured (a sixth of a step).
        auto shape = tmp.k[0].sizes().vec();
        shape[0] = 1;
        shape[2] = row.cache.capacity;
        shape.insert(shape.begin(), static_cast<int64_t>(2 * L));
        const at::Tensor block = at::empty(shape, tmp.k[0].options());
        for (size_t i = 0; i < L; ++i) {
          row.cache.k[i] = block[static_cast<int64_t>(2 * i)];
          row.cache.v[i] = block[static_cast<int64_t>(2 * i + 1)];
          row.cache.k[i].narrow(2, 0, K).copy_(tmp.k[i].narrow(0, r, 1));
          row.cache.v[i].narrow(2, 0, K).copy_(tmp.v[i].narrow(0, r, 1));
        }
        row.cache.len = K;
      }
    }
  } catch (...) {
    for (int64_t id : ids) drop(id);
    throw;
  }
  for (int64_t r = 0; r < n; ++r) {
    if (out[r].finished) drop(ids[r]);
    else order_.push_back(ids[r]);
  }
  return out;
}

void DecodeBatch::drop(int64_t id) {
  auto it = rows_.find(id);
  if (it == rows_.end()) return;
  if (it->second.slot >= 0) free_slots_.push_back(it->second.slot);
  rows_.erase(it);
  if (rows_.empty()) release_slab();
}

void DecodeBatch::reserve_slab(const KvCache& like, int64_t slots, int64_t capacity) {
  if (slots <= slab_.slots && capacity <= slab_.capacity) return;
  KvSlab grown;
  grown.slots = std::max({slots, slab_.slots, std::min<int64_t>(2 * slab_.slots, slots + 64)});
  grown.capacity = std::max(capacity, slab_.capacity);
  for (size_t i = 0; i < like.k.size(); ++i) {
    // Zeros, not garbage: masked keys still enter the score products, and NaN * 0 would poison a row.
    auto shape = like.k[i].sizes().vec();
    shape[0] = grown.slots;
    shape[2] = grown.capacity;
    grown.k.push_back(at::zeros(shape, like.k[i].options()));
    grown.v.push_back(at::zeros(shape, like.v[i].options()));
    if (slab_.slots > 0) {
      grown.k[i].narrow(0, 0, slab_.slots).narrow(2, 0, slab_.capacity).copy_(slab_.k[i]);
      grown.v[i].narrow(0, 0, slab_.slots).narrow(2, 0, slab_.capacity).copy_(slab_.v[i]);
    }
  }
  for (int64_t s = grown.slots - 1; s >= slab_.slots; --s) free_slots_.push_back(s);
  slab_ = std::move(grown);
}

std::vector<RowToken> DecodeBatch::step(const Gpt2Model& gpt, int64_t burst_steps) {
  if (order_.empty()) return {};
  const int64_t B = static_cast<int64_t>(order_.size());
  check(burst_steps >= 1, "E_VALUE", "step: burst must be at least 1");
  if (burst_steps > 1 && use_slots_) {
    int64_t n = burst_steps;
    bool greedy = true;
    for (int64_t id : order_) {
      const Row& row = rows_.at(id);
      n = std::min(n, row.opts.max_tokens - row.t);
      greedy = greedy && row.opts.method == "greedy";
    }
    if (n > 1 && greedy) return burst(gpt, n);
  }
  std::vector<int64_t> last(B);
  std::vector<KvCache*> caches(B);
  for (int64_t r = 0; r < B; ++r) {
    Row& row = rows_.at(order_[r]);
    last[r] = row.last;
    caches[r] = &row.cache;
  }
  // Tokens come from argmax / sampling over the vocabulary: no range check needed.
  at::Tensor tokens = at::tensor(last, at::TensorOptions().dtype(at::kLong)).to(gpt.device());
  const at::Tensor embeds = at::embedding(gpt.wte(), tokens.unsqueeze(1));
  at::Tensor hidden;
  if (use_slots_) {
    const SlotSteps s = slot_steps(gpt, 1);
    hidden = gpt.forward_slots(embeds, slab_, s.slot, s.pos[0], s.where[0], s.L[0]);
  } else {
    hidden = gpt.forward_rows(embeds, caches);
  }
  at::Tensor logits = gpt.logits(hidden.select(1, 0)).to(at::kFloat);
  std::vector<RowToken> out = choose(gpt, logits, order_);
  std::vector<bool> ended(B);
  for (int64_t r = 0; r < B; ++r) ended[r] = out[r].finished;
  leave(ended);
  return out;
}

std::vector<RowToken> DecodeBatch::burst(const Gpt2Model& gpt, int64_t n) {
  const int64_t B = size();
  std::vector<Row*> rows(B);
  std::vector<int64_t> last(B);
  for (int64_t r = 0; r < B; ++r) {
    rows[r] = &rows_.at(order_[r]);
    last[r] = rows[r]->last;
  }
  // Every step's positions, slab rows and min-token masks go to the device once: a copy from the host in the middle
  // of the burst would wait for the device.
  const SlotSteps steps = slot_steps(gpt, n);
  const at::Device dev = gpt.device();
  const EndMasks masks = end_masks(rows, n, dev);
  at::Tensor tokens = at::tensor(last, at::TensorOptions().dtype(at::kLong)).to(dev);
  std::vector<at::Tensor> nexts, logps;
  for (int64_t j = 0; j < n; ++j) {
    at::Tensor hidden = gpt.forward_slots(at::embedding(gpt.wte(), tokens.unsqueeze(1)), slab_, steps.slot, steps.pos[j], steps.where[j], steps.L[j]);
    at::Tensor logits = gpt.logits(hidden.select(1, 0)).to(at::kFloat);
    logits = masks.apply(logits, j);
    tokens = logits.argmax(-1);
    nexts.push_back(tokens);
    logps.push_back(chosen_logp(logits, tokens));
  }
  // The one host sync of the burst.
  const at::Tensor next_h = at::stack(nexts).to(at::kCPU, at::kLong).contiguous(), logp_h = at::stack(logps).to(at::kCPU, at::kFloat).contiguous();
  const int64_t* nx = next_h.data_ptr<int64_t>();
  const float* lp = logp_h.data_ptr<float>();
  std::vector<RowToken> out;
  std::vector<bool> ended(B, false);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < B; ++r) {
      if (ended[r]) continue;
      out.push_back(advance(order_[r], *rows[r], nx[j * B + r], lp[j * B + r]));
      ended[r] = out.back().finished;
    }
  leave(ended);
  return out;
}

int64_t DecodeBatch::remove(const std::vector<int64_t>& ids) {
  int64_t n = 0;
  for (int64_t id : ids) {
    if (rows_.count(id) == 0) continue;
    drop(id);
    ++n;
    order_.erase(std::find(order_.begin(), order_.end(), id));
  }
  return n;
}

}  // namespace semicap
