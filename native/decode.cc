#include "decode.h"

#include <cstring>
#include <limits>

#include "autocast.h"
#include "errors.h"
#include "packed.h"

namespace semicap {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

at::Tensor end_token_mask(const Gpt2Model& gpt, const DecodeOptions& o) {
  at::Tensor m = at::zeros({gpt.config().vocab_size}, at::TensorOptions().dtype(at::kBool));
  for (int64_t id : o.stop_ids) m[id] = true;
  if (o.eos_id >= 0) m[o.eos_id] = true;
  return m.to(gpt.device());
}

namespace {

// Token ids here come from argmax / sampling / topk over the vocabulary, so they need no range check (which
// would cost a device sync per step).
at::Tensor step_logits(const Gpt2Model& gpt, const at::Tensor& tokens, KvCache& cache) {
  return gpt.logits(gpt.forward(at::embedding(gpt.wte(), tokens.unsqueeze(1)), &cache).select(1, 0)).to(at::kFloat);
}

uint64_t splitmix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One uniform in [0, 1) per row, from each row's seed and the step.
at::Tensor uniforms(int64_t rows, const DecodeOptions& o, int64_t t) {
  check(static_cast<int64_t>(o.row_seeds.size()) == rows, "E_NATIVE", "decode: one row seed per row");
  at::Tensor r = at::empty({rows, 1}, at::TensorOptions().dtype(at::kFloat));
  float* d = r.data_ptr<float>();
  for (int64_t i = 0; i < rows; ++i) d[i] = static_cast<float>(splitmix(o.row_seeds[i], static_cast<uint64_t>(t)) >> 40) * (1.0f / 16777216.0f);
  return r;
}

}  // namespace

// Samples one token per row from softmax(logits / T) restricted to the top-k and the top-p nucleus. Uniform draws
// come from per-row seeds on the host, so results are reproducible on every device.
at::Tensor sample_tokens(const at::Tensor& logits, const DecodeOptions& o, int64_t t) {
  at::Tensor l = logits / std::max(o.temperature, 1e-6);
  if (o.top_k > 0 && o.top_k < l.size(-1)) {
    at::Tensor kth = std::get<0>(l.topk(o.top_k, -1)).select(-1, o.top_k - 1).unsqueeze(-1);
    l = l.masked_fill(l < kth, kNegInf);
  }
  at::Tensor probs = at::softmax(l, -1);
  at::Tensor r = uniforms(l.size(0), o, t).to(l.device());
  if (o.top_p >= 1.0) {
    // No nucleus: invert the CDF in vocabulary order. Sorting 50k probabilities per row cost 30x more than the rest
    // of the step. The first position whose cumulative mass exceeds u has non-zero probability; u stays below the
    // total, so a draw never lands past the last token that can be sampled.
    at::Tensor cdf = probs.cumsum(-1);
    at::Tensor total = cdf.select(-1, -1).unsqueeze(-1);
    at::Tensor u = at::minimum(r * total, total * (1 - 1.2e-7));
    return (cdf <= u).sum(-1).clamp_max(l.size(-1) - 1);
  }
  auto sorted = probs.sort(-1, /*descending=*/true);
  at::Tensor sp = std::get<0>(sorted), si = std::get<1>(sorted);
  {
    // Drop tokens once the mass before them already reaches top_p (the first token always stays).
    at::Tensor before = sp.cumsum(-1) - sp;
    sp = sp.masked_fill(before >= o.top_p, 0);
  }
  at::Tensor cdf = sp.cumsum(-1);
  at::Tensor u = r * cdf.select(-1, -1).unsqueeze(-1);
  at::Tensor pos = (cdf < u).sum(-1, true).clamp_max(l.size(-1) - 1);
  return si.gather(-1, pos).squeeze(-1);
}

namespace {

// For a CPU prefix with rows equal byte for byte (SCST samples K captions of each image from K copies of its prefix):
// the rows to prefill, one per distinct prefix, and for every row the index of its own among them. Undefined
// tensors when the rows all differ (or the prefix is not on the CPU, where comparing would cost a copy and a sync).
std::pair<at::Tensor, at::Tensor> distinct_rows(const at::Tensor& prefix) {
  const int64_t B = prefix.size(0);
  if (B < 2 || !prefix.is_cpu()) return {};
  const at::Tensor p = prefix.contiguous();
  const size_t row_bytes = static_cast<size_t>(p.numel() / B) * p.element_size();
  const auto* base = static_cast<const unsigned char*>(p.data_ptr());
  std::vector<int64_t> keep, own(static_cast<size_t>(B));
  for (int64_t r = 0; r < B; ++r) {
    const unsigned char* row = base + static_cast<size_t>(r) * row_bytes;
    int64_t u = 0;
    while (u < static_cast<int64_t>(keep.size()) && std::memcmp(base + static_cast<size_t>(keep[u]) * row_bytes, row, row_bytes) != 0) ++u;
    if (u == static_cast<int64_t>(keep.size())) keep.push_back(r);
    own[static_cast<size_t>(r)] = u;
  }
  if (static_cast<int64_t>(keep.size()) == B) return {};
  auto as_tensor = [](const std::vector<int64_t>& v) { return at::tensor(at::ArrayRef<int64_t>(v), at::kLong); };
  return {as_tensor(keep), as_tensor(own)};
}

// The next token of every row: the most likely one, or sampled (but in the first o.greedy_rows rows).
at::Tensor next_tokens(const at::Tensor& logits, const DecodeOptions& o, int64_t t) {
  if (o.method != "sample") return logits.argmax(-1);
  const int64_t G = o.greedy_rows;
  if (G == 0) return sample_tokens(logits, o, t);
  if (G == logits.size(0)) return logits.argmax(-1);
  return at::cat({logits.slice(0, 0, G).argmax(-1), sample_tokens(logits.slice(0, G), o, t)});
}

DecodeResult greedy_or_sample(const Gpt2Model& gpt, const at::Tensor& prefix, const DecodeOptions& opts) {
  const int64_t B = prefix.size(0);
  DecodeOptions o = opts;
  if (o.method != "sample") o.greedy_rows = 0;
  check(o.greedy_rows >= 0 && o.greedy_rows <= B, "E_NATIVE", "decode: greedy rows must lie in [0, B]");
  if (o.method == "sample" && o.row_seeds.empty())
    for (int64_t i = 0; i < B - o.greedy_rows; ++i) o.row_seeds.push_back(row_seed(o.seed, i));
  at::Tensor ends = end_token_mask(gpt, o);
  const bool can_end = !o.stop_ids.empty() || o.eos_id >= 0;
  KvCache cache(prefix.size(1) + o.max_tokens);
  // Equal prefixes are prefilled once (a row's keys, values and logits do not depend on the other rows), then
  // every row takes its own copy of the cache.
  auto [distinct, own] = distinct_rows(prefix);
  at::Tensor logits = gpt.logits(gpt.forward(distinct.defined() ? prefix.index_select(0, distinct) : prefix, &cache).select(1, -1)).to(at::kFloat);
  if (distinct.defined()) {
    cache.reorder(own);
    logits = logits.index_select(0, own);
  }
  auto long_opts = at::TensorOptions().dtype(at::kLong).device(gpt.device());
  at::Tensor out = at::full({B, o.max_tokens}, -1, long_opts);
  at::Tensor finished = at::zeros({B}, long_opts.dtype(at::kBool));
  at::Tensor logp_sum = at::zeros({B}, prefix.options());
  at::Tensor count = at::zeros({B}, prefix.options());
  int64_t t = 0;
  for (; t < o.max_tokens; ++t) {
    if (t < o.min_tokens) logits = logits.masked_fill(ends, kNegInf);
    at::Tensor next = next_tokens(logits, o, t);
    at::Tensor alive = finished.logical_not();
    logp_sum += at::log_softmax(logits, -1).gather(-1, next.unsqueeze(-1)).squeeze(-1) * alive;
    count += alive;
    out.select(1, t).copy_(next.masked_fill(finished, -1));
    finished = finished.logical_or(ends.index_select(0, next));
    // The one host sync per step, and only when a caption can have ended.
    if (t + 1 == o.max_tokens || (can_end && t + 1 >= o.min_tokens && finished.all().item<bool>())) break;
    ProductTape::Record record(o.tape);
    logits = step_logits(gpt, next.masked_fill(finished, 0), cache);
  }
  return {out.slice(1, 0, std::min(t + 1, o.max_tokens)), logp_sum / count.clamp_min(1)};
}

DecodeResult beam(const Gpt2Model& gpt, const at::Tensor& prefix, const DecodeOptions& o) {
  const int64_t B = prefix.size(0), K = o.beams, V = gpt.config().vocab_size;
  check(K >= 1 && K <= V, "E_VALUE", "beams must be between 1 and the vocabulary size");
  at::Tensor ends = end_token_mask(gpt, o);
  KvCache cache(prefix.size(1) + o.max_tokens);
  // As ClipCap's generate_beam: log-softmax of logits / temperature.
  at::Tensor logp = at::log_softmax(gpt.logits(gpt.forward(prefix, &cache).select(1, -1)).to(at::kFloat) / o.temperature, -1);
  if (o.min_tokens > 0) logp = logp.masked_fill(ends, kNegInf);
  auto top = logp.topk(K, -1);
  at::Tensor scores = std::get<0>(top).reshape({B * K});
  at::Tensor tokens = std::get<1>(top).reshape({B * K});
  auto long_opts = at::TensorOptions().dtype(at::kLong).device(gpt.device());
  cache.reorder(at::arange(B, long_opts).repeat_interleave(K));
  at::Tensor seqs = at::full({B * K, o.max_tokens}, -1, long_opts);
  seqs.select(1, 0).copy_(tokens);
  at::Tensor lengths = at::ones({B * K}, prefix.options());
  at::Tensor finished = ends.index_select(0, tokens);
  // A finished beam may only "emit" token 0 at no cost, so its score and length stay as they were.
  at::Tensor frozen = at::full({V}, kNegInf, prefix.options());
  frozen[0] = 0;
  at::Tensor base = (at::arange(B, long_opts) * K).unsqueeze(1);
  int64_t t = 1;
  for (; t < o.max_tokens; ++t) {
    if (t >= o.min_tokens && finished.all().item<bool>()) break;
    logp = at::log_softmax(step_logits(gpt, tokens.masked_fill(finished, 0), cache) / o.temperature, -1);
    if (t < o.min_tokens) logp = logp.masked_fill(ends, kNegInf);
    logp = at::where(finished.unsqueeze(1), frozen.unsqueeze(0), logp);
    at::Tensor cand = scores.unsqueeze(1) + logp;                    // [B*K, V]
    at::Tensor new_len = lengths + finished.logical_not();           // [B*K]
    at::Tensor norm = (cand / new_len.unsqueeze(1)).view({B, K * V});
    at::Tensor idx = std::get<1>(norm.topk(K, -1));                  // [B, K]
    at::Tensor src = (base + idx.div(V, "floor")).reshape({B * K});
    tokens = idx.remainder(V).reshape({B * K});
    scores = cand.view({B, K * V}).gather(1, idx).reshape({B * K});
    lengths = new_len.index_select(0, src);
    at::Tensor was_finished = finished.index_select(0, src);
    seqs = seqs.index_select(0, src);
    seqs.select(1, t).copy_(tokens.masked_fill(was_finished, -1));
    finished = was_finished.logical_or(ends.index_select(0, tokens));
    cache.reorder(src);
  }
  at::Tensor norm = (scores / lengths).view({B, K});
  at::Tensor best = (at::arange(B, long_opts) * K) + norm.argmax(1);
  return {seqs.index_select(0, best).slice(1, 0, std::min(t, o.max_tokens)), std::get<0>(norm.max(1))};
}

}  // namespace

uint64_t row_seed(uint64_t seed, int64_t row) { return splitmix(seed, static_cast<uint64_t>(row)); }

DecodeResult decode(const Gpt2Model& gpt, const at::Tensor& prefix, const DecodeOptions& o) {
  check(prefix.dim() == 3 && prefix.size(0) > 0 && prefix.size(2) == gpt.config().n_embd, "E_SHAPE",
        "prefix must have shape [B, P, " + std::to_string(gpt.config().n_embd) + "] with B >= 1");
  check(o.max_tokens >= 1, "E_VALUE", "maxTokens must be at least 1");
  check(o.min_tokens >= 0 && o.min_tokens <= o.max_tokens, "E_VALUE", "minTokens must lie in [0, maxTokens]");
  check(prefix.size(1) + o.max_tokens <= gpt.config().n_positions, "E_VALUE",
        "prefix length + maxTokens exceeds GPT-2's n_positions (" + std::to_string(gpt.config().n_positions) + ")");
  for (int64_t id : o.stop_ids) check(id >= 0 && id < gpt.config().vocab_size, "E_VALUE", "stop token id out of range");
  check(o.eos_id < gpt.config().vocab_size, "E_VALUE", "eos token id out of range");
  check(o.temperature > 0 && o.top_p > 0 && o.top_p <= 1 && o.top_k >= 0, "E_VALUE", "temperature must be > 0, topP in (0, 1], topK >= 0");
  check(prefix.is_floating_point(), "E_DTYPE", "prefix must be float32");
  Bf16Autocast autocast(o.bf16 && gpt.device().is_cuda());
  at::Tensor p = prefix.to(gpt.device(), at::kFloat);
  check(at::isfinite(p).all().item<bool>(), "E_VALUE", "prefix (or the features it was mapped from) contains NaN or infinite values");
  if (o.method == "beam") return beam(gpt, p, o);
  check(o.method == "greedy" || o.method == "sample", "E_VALUE", "decoding must be 'greedy', 'sample' or 'beam'");
  return greedy_or_sample(gpt, p, o);
}

}  // namespace semicap
