// Continuous batching over one GPT-2: rows (captions being decoded, each from its own prefix and with its own
// options) join and leave at token boundaries, and one step decodes one token for every active row together.
//
// On the CPU each row keeps its own KV cache ([1, H, prefix + maxTokens, D] per layer) and position. A step runs the
// token embeddings, layer norms and every matrix product once over all rows ([B,1,C]); attention runs per row
// against that row's own cache in the fused loop (Gpt2Model::forward_rows), the same math as decoding the row alone.
// Elsewhere (CUDA: one kernel per row per layer would cost more than the step) the rows' keys and values share
// slabs, a slot per row (Gpt2Model::forward_slots), and attention runs over all rows at once with each row's later
// positions masked; SEMICAP_BATCH_SLOTS=1 forces that path on the CPU too (tests). Newcomers are prefilled together
// (their prefixes all have the mapper's length K) into a temporary cache that is then split per row.
//
// Token choice is the unbatched decoder's (decode.cc): greedy argmax, or sampling with temperature / top-k / top-p
// whose uniforms come from the row's seed and the step index only (row_seed(request seed, row index)), so a row
// decodes the same tokens alone or with any company. Beam search is not batched across requests (its beams already
// form a batch; it keeps decode()'s path).
#pragma once
#include <unordered_map>

#include "decode.h"

namespace semicap {

// What one row produced at one token boundary.
struct RowToken {
  int64_t row = 0;      // the row's id (from add())
  int64_t token = 0;    // the token chosen (an end token is reported too; it ends the row)
  bool finished = false;  // the row ended with this token (end token or maxTokens) and has left the batch
  float logp = 0;       // log-probability of the token (after min-tokens masking, as decode() scores it)
  float score = 0;      // when finished: mean log-probability per token, as decode()'s score
};

class DecodeBatch {
 public:
  // Checks one row's options against the model: method greedy / sample, lengths, sampling ranges, token ids.
  static void validate(const Gpt2Model& gpt, int64_t prefix_length, const DecodeOptions& o);

  // Prefills newcomers (prefix [n, K, C] float on the model's device, one option set per row, each with exactly one
  // row seed when sampling) and chooses their first tokens. Rows that end at once are reported finished and are
  // not kept. Returns one RowToken per newcomer, in order.
  std::vector<RowToken> add(const Gpt2Model& gpt, const at::Tensor& prefix, const std::vector<DecodeOptions>& opts);
  // One token for every active row; finished rows leave. Empty when no row is active.
  // burst > 1 (the slab path, every row greedy): up to `burst` tokens per row in one call, with one host sync at the
  // end instead of one per token (on CUDA a sync per token leaves the device idle while the host launches the next
  // step). Never past a row's maxTokens; a row that ends inside the burst ends there (what it computed after its end
  // token is dropped). RowTokens come step by step, rows in batch order within a step.
  std::vector<RowToken> step(const Gpt2Model& gpt, int64_t burst = 1);
  // Drops rows (an abort, a deadline); unknown ids (already finished or removed) are ignored. Returns how many left.
  int64_t remove(const std::vector<int64_t>& rows);
  void clear() {
    rows_.clear();
    order_.clear();
    release_slab();
  }
  int64_t size() const { return static_cast<int64_t>(order_.size()); }
  bool has(int64_t row) const { return rows_.count(row) > 0; }
  int64_t slab_slots() const { return slab_.slots; }  // 0 on the per-row path and when no row is active

 private:
  struct Row {
    DecodeOptions opts;
    at::Tensor ends;       // [V] bool: stop ids and eos
    KvCache cache;         // the CPU path's own cache
    int64_t slot = -1;     // the slab path's slot
    int64_t prefix = 0;    // prefix length: the next key goes to position prefix + t - 1
    int64_t t = 0;         // tokens produced so far
    int64_t last = 0;      // the last token (the next step's input)
    float logp_sum = 0;
    float count = 0;
    Row() : cache(0) {}
  };
  // step() for burst > 1 steps (n checked by step()).
  std::vector<RowToken> burst(const Gpt2Model& gpt, int64_t n);
  // Rows still short of their minTokens may not end (decode() masks them too). The end tokens to mask over the next
  // n steps of `rows`, on `device`; nothing when no row is short in any of them.
  struct EndMasks {
    at::Tensor ends, shorts;  // [R, V] each row's end tokens; [n, R, 1] whether row r is still short at step j
    // logits [R, V] of step j with the short rows' end tokens at -inf.
    at::Tensor apply(const at::Tensor& logits, int64_t j) const;
  };
  static EndMasks end_masks(const std::vector<Row*>& rows, int64_t n, const at::Device& device);
  // Chooses the tokens at one boundary for `rows` (their step t = row.t) from logits [R, V]; updates the rows.
  std::vector<RowToken> choose(const Gpt2Model& gpt, const at::Tensor& logits, const std::vector<int64_t>& ids);
  // choose()'s path for all-greedy rows with float32 CPU logits: the token and its log p per row (false: use the
  // general path).
  static bool greedy_cpu(const std::vector<Row*>& rows, const at::Tensor& logits, std::vector<int64_t>& next,
                         std::vector<float>& logp);
  // Row `id` took `token` with log-probability `logp`: its state moves on one token; says whether it finished.
  RowToken advance(int64_t id, Row& row, int64_t token, float logp);
  // The active rows' next n steps on the slab, checked and on the model's device (one copy from the host).
  struct SlotSteps {
    at::Tensor slot, pos, where;  // [B], [n, B], [n, B * H]
    std::vector<int64_t> L;       // per step: max position + 1
  };
  SlotSteps slot_steps(const Gpt2Model& gpt, int64_t n) const;
  // Active rows marked in `ended` (batch order) leave.
  void leave(const std::vector<bool>& ended);
  // Erases a row, its slot back to the free list (the slab released when no row is left).
  void drop(int64_t id);
  // Room in the slab for `slots` rows of `capacity` positions, laid out like the prefill cache `like`; what the slab
  // holds is kept.
  void reserve_slab(const KvCache& like, int64_t slots, int64_t capacity);
  void release_slab() {
    slab_ = KvSlab();
    free_slots_.clear();
  }
  std::unordered_map<int64_t, Row> rows_;
  bool use_slots_ = false;  // decided when a newcomer finds the batch empty
  KvSlab slab_;
  std::vector<int64_t> free_slots_;
  std::vector<int64_t> order_;  // active rows in the order they joined
  int64_t next_id_ = 1;
};

}  // namespace semicap
