// Batched caption decoding from a prefix of embeddings: greedy, sampling (temperature, top-k, top-p) and
// length-normalised beam search as in ClipCap's generate_beam. Every image of the batch decodes in one tensor
// program; the only host sync per step is the "all finished?" check.
#pragma once
#include "gpt2.h"

namespace semicap {

class ProductTape;

struct DecodeOptions {
  std::string method = "greedy";  // greedy | sample | beam
  int64_t max_tokens = 30, min_tokens = 0, beams = 5, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  // Sampling: row i draws its uniform at step t from (row_seeds[i], t) alone, so a row's sample does not depend on
  // which other rows share its batch (data-parallel training draws per global example). Empty: row_seed(seed, i).
  std::vector<uint64_t> row_seeds;
  // Sampling: the first greedy_rows rows take the most likely token instead, and row_seeds (when given) hold the
  // other rows' seeds only. SCST decodes its greedy baseline beside its samples: one pass over GPT-2's weights per
  // step for both, and each image's prefix prefilled once for both.
  int64_t greedy_rows = 0;
  std::vector<int64_t> stop_ids;  // tokens that end a caption and are part of it (e.g. ones containing ".")
  int64_t eos_id = -1;            // ends a caption, not part of it (<|endoftext|>)
  bool bf16 = false;              // bf16 autocast (CUDA only)
  // Greedy / sampling: each step after the first records its products on this tape (packed.h; SCST replays them).
  ProductTape* tape = nullptr;
};

struct DecodeResult {
  at::Tensor ids;     // [B, L] int64, -1 after the end
  at::Tensor scores;  // [B] float: mean log-probability per generated token
};

DecodeResult decode(const Gpt2Model& gpt, const at::Tensor& prefix, const DecodeOptions& opts);

// The seed of row `row` of a request seeded `seed`: unbatched sampling (decode() without row_seeds) draws row i's
// uniforms from row_seed(seed, i), as the batched decoder (batch_decode.h) does for the same request, so a request
// samples the same tokens alone or sharing decode steps with others.
uint64_t row_seed(uint64_t seed, int64_t row);
// One sampled token per row of logits [R, V] at step t (o.row_seeds: one per row), as decode() samples.
at::Tensor sample_tokens(const at::Tensor& logits, const DecodeOptions& o, int64_t t);
// [V] bool on the model's device: true at o.stop_ids and o.eos_id.
at::Tensor end_token_mask(const Gpt2Model& gpt, const DecodeOptions& o);

}  // namespace semicap
