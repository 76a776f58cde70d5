#include "trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <algorithm>
#include <map>
#include <set>

#include "autocast.h"
#include "checkpoint.h"
#include "decode.h"
#include "errors.h"
#include "losses.h"
#include "packed.h"
#include "optim.h"
#include "rewards.h"
#include "safetensors.h"

namespace fs = std::filesystem;

namespace semicap {

void validate_train_data(const TrainConfig& cfg, const TrainData& d, int64_t clip_dim) {
  check(d.features.defined() && d.features.dim() == 2 && d.features.size(1) == clip_dim && d.features.size(0) > 0, "E_SHAPE",
        "features must have shape [N, " + std::to_string(clip_dim) + "] with N >= 1");
  check(d.features.scalar_type() == at::kFloat, "E_DTYPE", "features must be float32");
  check(at::isfinite(d.features).all().item<bool>(), "E_VALUE", "features contain NaN or infinite values");
  const int64_t N = d.features.size(0);
  auto idx = [&](const at::Tensor& t, int64_t bound, const char* what) {
    if (!t.defined() || t.numel() == 0) return;
    check(t.dim() == 1 && (t.scalar_type() == at::kLong || t.scalar_type() == at::kInt), "E_SHAPE", std::string(what) + " must be a 1-D int64 tensor");
    auto mm = at::aminmax(t);
    check(std::get<0>(mm).item<int64_t>() >= 0 && std::get<1>(mm).item<int64_t>() < bound, "E_VALUE",
          std::string(what) + " has an index outside [0, " + std::to_string(bound) + ")");
  };
  if (d.cap_ids.defined() && d.cap_ids.numel() > 0) {
    check(d.cap_ids.dim() == 2 && d.cap_ids.scalar_type() == at::kLong, "E_SHAPE", "caption ids must be an int64 [M, L] tensor");
    check(d.cap_image.defined() && d.cap_image.dim() == 1 && d.cap_image.size(0) == d.cap_ids.size(0), "E_SHAPE", "captionImages must have one entry per caption");
    check((d.cap_ids.select(1, 0) >= 0).all().item<bool>(), "E_VALUE", "every caption needs at least one token");
  }
  idx(d.cap_image, N, "captionImages");
  if (d.ref_features.defined() && d.ref_features.numel() > 0) {
    check(d.ref_features.dim() == 2 && d.ref_features.size(1) == clip_dim, "E_SHAPE", "reference features must have shape [R, D]");
    check(d.ref_image.defined() && d.ref_image.size(0) == d.ref_features.size(0), "E_SHAPE", "referenceImages must have one entry per reference");
  }
  idx(d.ref_image, N, "referenceImages");
  idx(d.sup_images, N, "labeledImages");
  idx(d.unl_images, N, "unlabeledImages");
  check(cfg.steps >= 1 && cfg.batch_size >= 1 && cfg.grad_accum >= 1 && cfg.samples >= 1 && cfg.max_tokens >= 1, "E_VALUE",
        "steps, batchSize, gradAccumulation, samples and maxTokens must be >= 1");
  check(cfg.lr > 0 && cfg.temperature > 0 && cfg.reward_scale > 0 && cfg.contrastive_tau > 0, "E_VALUE", "lr, temperature, reward scale and tau must be > 0");
  check(cfg.start_step >= 0 && cfg.start_step <= cfg.steps, "E_VALUE", "resume step lies outside the run");
  const bool needs_captions = cfg.stage == "supervised" || cfg.ce_mix_weight > 0;
  if (needs_captions) check(d.cap_ids.defined() && d.cap_ids.size(0) > 0, "E_DATA", "this stage needs labeled captions");
  if (cfg.stage == "supervised" && cfg.objective == "scst") check(d.sup_images.defined() && d.sup_images.numel() > 0, "E_DATA", "SCST needs labeled images");
  if (cfg.stage == "clip-reward") check(d.unl_images.defined() && d.unl_images.numel() > 0, "E_DATA", "the clip-reward stage needs unlabeled images");
  const bool ref_reward = cfg.reward == "refText" || cfg.reward == "refContrastive";
  if ((cfg.stage == "supervised" && cfg.objective == "scst" && ref_reward))
    check(d.ref_features.defined() && d.ref_features.numel() > 0, "E_DATA", "a reference reward needs reference features");
}

namespace {

// SCST replays its sampled decoding's products unless SEMICAP_SCST_REPLAY=0 (read at each step: tests compare both).
bool replay_products() {
  const char* v = std::getenv("SEMICAP_SCST_REPLAY");
  return !(v && std::strcmp(v, "0") == 0);
}

uint64_t mix(uint64_t a, uint64_t b) {  // splitmix64 of a combined with b: independent streams per (seed, purpose, n)
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Indices step*B .. step*B+B-1 of an endless sequence of per-epoch permutations of `pool`.
at::Tensor draw_global(const at::Tensor& pool, int64_t step, int64_t B, uint64_t seed, uint64_t stream) {
  const int64_t n = pool.size(0);
  std::map<int64_t, at::Tensor> perms;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < B; ++i) {
    int64_t c = step * B + i, epoch = c / n;
    auto it = perms.find(epoch);
    if (it == perms.end()) {
      at::Generator g = at::detail::createCPUGenerator(mix(mix(seed, stream), static_cast<uint64_t>(epoch)));
      it = perms.emplace(epoch, at::randperm(n, g, at::TensorOptions().dtype(at::kLong))).first;
    }
    out.push_back(it->second[c % n].item<int64_t>());
  }
  return pool.to(at::kCPU, at::kLong).index_select(0, at::tensor(out, at::kLong));
}

// This rank's slice of a global batch (batch B per rank): the same rows one process with batch B * world draws.
at::Tensor local_slice(const at::Tensor& global, int64_t B, const DistConfig& d) { return global.narrow(0, d.rank * B, B); }

// Sums over one step's micro-batches of this rank's share of each metric; reduced over ranks once per step.
struct StepMetrics {
  double loss = 0, ce = 0, kl = 0, reward = 0, baseline = 0, rows = 0;  // reward, baseline: sums over sampled rows
  int64_t ce_n = 0, kl_n = 0, examples = 0;                            // micro-batches with a CE / KL term
};

class Loop {
 public:
  Loop(CaptionerModel& m, const TrainConfig& c, const TrainData& d, const TrainCallbacks& cb)
      : m_(m), cfg_(c), cb_(cb), device_(m.gpt->device()) {
    features_ = d.features.to(device_, at::kFloat);
    if (d.cap_ids.defined() && d.cap_ids.numel()) {
      auto mm = at::aminmax(d.cap_ids);
      check(std::get<0>(mm).item<int64_t>() >= -1 && std::get<1>(mm).item<int64_t>() < m.gpt->config().vocab_size, "E_VALUE",
            "caption ids must lie in [0, vocab_size) (-1 for padding)");
      cap_ids_ = d.cap_ids.to(device_, at::kLong);
      cap_image_ = d.cap_image.to(device_, at::kLong);
    }
    sup_images_ = d.sup_images;
    unl_images_ = d.unl_images;
    rewards_ = std::make_unique<Rewards>(cfg_, m_, features_, d, [this](const at::Tensor& ids, const at::Tensor& images) { return cb_.score(ids, images); });

    std::vector<at::Tensor> params;
    for (const auto& n : m.params.names()) {
      bool trainable = cfg_.train_lm || n.rfind("gpt.", 0) != 0;
      m.params.get(n).requires_grad_(trainable);
      if (trainable) {
        params.push_back(m.params.get(n));
        trainable_.push_back(n);
      }
    }
    opt_ = std::make_unique<AdamW>(params, trainable_, AdamWConfig{cfg_.lr, cfg_.beta1, cfg_.beta2, cfg_.adam_eps, cfg_.weight_decay});
    const bool resuming = !cfg_.resume_dir.empty();
    if (resuming) resume();
    if (cfg_.dist.enabled()) {
      DistConfig dc = cfg_.dist;
      if (device_.is_cuda()) dc.cuda_index = device_.has_index() ? device_.index() : 0;
      dist_ = std::make_unique<Distributed>(dc);
      dist_->broadcast(m.params.all());  // every rank starts from rank 0's weights
    }
    if (cfg_.kl_coef > 0) {
      // The KL reference is the model the stage started from: a copy of it now, or, on resume, the one the
      // checkpoint saved (the resumed weights have moved away from it).
      make_reference();
      if (resuming) load_reference();
    }
    spec_.dir = cfg_.ckpt_dir;
    spec_.config_json = cfg_.ckpt_config_json;
    spec_.state_json = cfg_.ckpt_state_json;
    spec_.keep = cfg_.ckpt_keep;
    spec_.links = cfg_.ckpt_links;
  }

  ~Loop() {
    opt_->zero_grad();
    m_.params.set_requires_grad(false);
  }

  TrainSummary run() {
    const bool writer = !dist_ || dist_->rank() == 0;
    if (!cfg_.ckpt_dir.empty() && writer) {
      std::error_code ec;
      if (fs::is_directory(cfg_.ckpt_dir, ec)) prune_checkpoints(cfg_.ckpt_dir, cfg_.ckpt_keep);
    }
    TrainSummary s;
    auto t0 = std::chrono::steady_clock::now();
    double reward_sum = 0;
    int64_t reward_n = 0;
    for (int64_t step = cfg_.start_step; step < cfg_.steps; ++step) {
      if (cb_.should_stop()) fail("E_ABORTED", "training aborted at step " + std::to_string(step));
      auto ts = std::chrono::steady_clock::now();
      Progress p;
      p.stage = cfg_.stage;
      p.step = step + 1;
      p.total = cfg_.steps;
      p.lr = schedule_lr(cfg_.lr, step, cfg_.warmup, cfg_.steps, cfg_.schedule);
      opt_->zero_grad();
      StepMetrics sm;
      for (int64_t micro = 0; micro < cfg_.grad_accum; ++micro) {
        if (micro > 0 && cb_.should_stop()) fail("E_ABORTED", "training aborted at step " + std::to_string(step));
        const int64_t k = step * cfg_.grad_accum + micro;
        at::Tensor loss;
        {
          Bf16Autocast autocast(cfg_.autocast_bf16 && device_.is_cuda());  // forward in bf16, backward follows it
          loss = micro_step(k, sm);
        }
        (loss / static_cast<double>(cfg_.grad_accum)).backward();
        sm.loss += loss.item<double>();
      }
      // Losses are normalised by global counts, so the sums over ranks are the single-process gradient and metrics.
      sum_gradients(dist_.get(), opt_->params());
      std::vector<double> sums{sm.loss, sm.ce, sm.kl, sm.reward, sm.baseline, sm.rows, static_cast<double>(sm.examples)};
      sum_over_ranks(dist_.get(), sums);
      p.loss = sums[0] / static_cast<double>(cfg_.grad_accum);
      if (sm.ce_n) p.ce = sums[1] / static_cast<double>(sm.ce_n);
      if (sm.kl_n) p.kl = sums[2] / static_cast<double>(sm.kl_n);
      if (sums[5] > 0) {
        p.reward = sums[3] / sums[5];
        p.baseline = sums[4] / sums[5];
      }
      p.grad_norm = opt_->clip_and_step(p.lr, cfg_.grad_clip);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
      p.examples_per_sec = sums[6] / std::max(dt, 1e-9);
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!std::isnan(p.reward)) {
        reward_sum += p.reward;
        ++reward_n;
      }
      const bool last = step + 1 == cfg_.steps;
      if (!cfg_.ckpt_dir.empty() && (last || (cfg_.ckpt_every > 0 && (step + 1) % cfg_.ckpt_every == 0))) {
        // Rank 0 alone writes; the others wait until the checkpoint is complete.
        if (writer) p.checkpoint = s.checkpoint = save(step + 1);
        if (dist_) {
          dist_->barrier();
          if (!writer) p.checkpoint = s.checkpoint = checkpoint_path(cfg_.ckpt_dir, step + 1);
        }
      }
      s.steps = step + 1;
      s.last_loss = p.loss;
      cb_.progress(p);
    }
    s.mean_reward = reward_n ? reward_sum / static_cast<double>(reward_n) : NAN;
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return s;
  }

 private:
  // One micro-batch's loss, this rank's share (k counts micro-batches over the whole run).
  at::Tensor micro_step(int64_t k, StepMetrics& sm) {
    const int64_t step = k / cfg_.grad_accum, B = cfg_.batch_size, world = cfg_.dist.world;
    if (cfg_.stage == "supervised" && (cfg_.objective == "ce" || step < cfg_.ce_steps)) {
      at::Tensor rows = local_slice(draw_global(at::arange(cap_ids_.size(0), at::kLong), k, B * world, cfg_.seed, 1), B, cfg_.dist).to(device_);
      at::Tensor ce = ce_batch(rows);
      sm.ce += ce.item<double>();
      ++sm.ce_n;
      sm.examples += B;
      return ce;
    }
    const at::Tensor& pool = cfg_.stage == "supervised" ? sup_images_ : unl_images_;
    at::Tensor batch = draw_global(pool, k, B * world, cfg_.seed, 2);
    at::Tensor images = local_slice(batch, B, cfg_.dist).to(device_);
    at::Tensor loss = scst_batch(images, batch, k, sm);
    sm.examples += B * cfg_.samples;
    if (cfg_.stage == "supervised" && cfg_.ce_weight > 0) {
      at::Tensor ce = ce_batch(captions_of(images));
      sm.ce += ce.item<double>();
      ++sm.ce_n;
      loss = loss + cfg_.ce_weight * ce;
    }
    if (cfg_.stage == "clip-reward" && cfg_.ce_mix_weight > 0) {
      at::Tensor rows = local_slice(draw_global(at::arange(cap_ids_.size(0), at::kLong), k, B * world, cfg_.seed, 3), B, cfg_.dist).to(device_);
      at::Tensor ce = ce_batch(rows);
      sm.ce += ce.item<double>();
      ++sm.ce_n;
      loss = loss + cfg_.ce_mix_weight * ce;
    }
    return loss;
  }

  // Rows of cap_ids_ whose image is in `images`.
  at::Tensor captions_of(const at::Tensor& images) {
    at::Tensor hit = (cap_image_.unsqueeze(1) == images.unsqueeze(0)).any(1);
    return hit.nonzero().squeeze(1);
  }

  // Token-mean cross-entropy over the global batch (this rank's share). Every rank takes part in the count's
  // all-reduce, also one whose rows are empty.
  at::Tensor ce_batch(const at::Tensor& rows) {
    if (rows.numel() == 0) {
      sum_over_ranks(dist_.get(), 0.0);
      return at::zeros({}, features_.options());
    }
    at::Tensor ids = cap_ids_.index_select(0, rows);
    // Trim trailing all-padding columns: the batch is as long as its longest caption.
    int64_t L = (ids >= 0).sum(1).max().item<int64_t>();
    ids = ids.slice(1, 0, std::max<int64_t>(L, 1));
    at::Tensor logits = m_.sequence_logits(features_.index_select(0, cap_image_.index_select(0, rows)), ids);
    auto [logp, mask] = token_logprobs(logits, ids);
    return global_token_mean(dist_.get(), -logp.sum(), mask.sum().item<double>());
  }

  // `images`: this rank's images; `batch`: the global batch's (CPU).
  at::Tensor scst_batch(const at::Tensor& images, const at::Tensor& batch, int64_t k, StepMetrics& sm) {
    const int64_t B = images.size(0), K = cfg_.samples;
    at::Tensor feats = features_.index_select(0, images);
    at::Tensor greedy, samples;
    // The decoding keeps the samples' products and the forward below replays them (ProductTape, packed.h), on the
    // CPU. SEMICAP_SCST_REPLAY=0 computes the forward again.
    std::unique_ptr<ProductTape> tape;
    if (replay_products() && cfg_.max_tokens >= 2 && feats.is_cpu() && m_.gpt->device().is_cpu())
      tape = std::make_unique<ProductTape>(B, B * K, cfg_.max_tokens - 1);
    {
      c10::NoGradGuard no_grad;
      at::Tensor prefix = m_.prefix_from_features(feats);
      DecodeOptions o;
      o.max_tokens = cfg_.max_tokens;
      o.stop_ids = cfg_.stop_ids;
      o.eos_id = cfg_.eos_id;
      // The greedy baseline (B rows) and the samples (B * K rows) in one decoding: one pass over the weights per
      // token for both. A row's tokens do not depend on the rows beside it (the kernels' rows are independent).
      o.method = "sample";
      o.greedy_rows = B;
      o.temperature = cfg_.temperature;
      o.tape = tape.get();
      // One stream per global sample (step, position in the global batch): the samples do not depend on how the
      // batch is divided over ranks, and a resumed run draws what the uninterrupted one drew.
      const uint64_t base = mix(cfg_.seed, 1000 + static_cast<uint64_t>(k));
      const uint64_t first = static_cast<uint64_t>(cfg_.dist.rank * B * K);
      for (int64_t r = 0; r < B * K; ++r) o.row_seeds.push_back(mix(base, first + static_cast<uint64_t>(r)));
      at::Tensor ids = decode(*m_.gpt, at::cat({prefix, prefix.repeat_interleave(K, 0)}), o).ids;
      greedy = ids.slice(0, 0, B);
      samples = ids.slice(0, B);
    }
    at::Tensor owners = at::cat({images, images.repeat_interleave(K, 0)});
    at::Tensor rewards = (*rewards_)(at::cat({greedy, samples}), owners, batch);
    at::Tensor baseline = rewards.slice(0, 0, B).repeat_interleave(K, 0);
    at::Tensor r = rewards.slice(0, B);
    // The prefix of each image is mapped once and serves its K samples.
    at::Tensor logits = m_.sequence_logits(feats, samples, K, tape.get());
    auto [logp, mask] = token_logprobs(logits, samples);
    // Policy gradient and KL are both per-token means over the global batch's sampled tokens.
    const double tokens = std::max(1.0, sum_over_ranks(dist_.get(), mask.sum().item<double>()));
    at::Tensor loss = scst_loss_sum(logp, r, baseline) / tokens;
    if (cfg_.kl_coef > 0) {
      // Grad mode stays on (nothing here requires grad, so no graph is recorded): the reference then takes the same
      // matmul path as the policy's forward, not BLAS. Against replayed policy logits (computed a decoding step at a
      // time) the KL of identical models is 0 up to float32 rounding (~1e-9); exactly 0 with SEMICAP_SCST_REPLAY=0.
      at::Tensor ref_logits = ref_->sequence_logits(feats, samples, K).detach();
      at::Tensor kl = kl_penalty_sum(logits, ref_logits, mask) / tokens;
      sm.kl += kl.item<double>();
      ++sm.kl_n;
      loss = loss + cfg_.kl_coef * kl;
    }
    sm.reward += r.sum().item<double>();
    sm.baseline += baseline.sum().item<double>();
    sm.rows += static_cast<double>(r.size(0));
    return loss;
  }

  void make_reference() {
    ref_ = std::make_unique<CaptionerModel>(m_.mapper->config(), m_.gpt->config(), m_.normalize_prefix);
    c10::NoGradGuard no_grad;
    ref_->params.to(device_);
    for (const auto& n : m_.params.names()) ref_->params.get(n).copy_(m_.params.get(n));
  }

  // The reference's trainable parameters as the checkpoint saved them (the others never change).
  void load_reference() {
    TensorFile f;
    if (!read_tensor_file(cfg_.resume_dir, "reference.safetensors", device_, &f, false))
      fail("E_CHECKPOINT", cfg_.resume_dir + ": no reference.safetensors (the KL reference); the checkpoint was written by a run "
                           "without klCoef or by an older version, so this run cannot be resumed exactly with a KL penalty");
    std::set<std::string> want(trainable_.begin(), trainable_.end());
    c10::NoGradGuard no_grad;
    for (const auto& [n, t] : f.tensors) {
      check(want.erase(n) == 1 && ref_->params.get(n).sizes() == t.sizes(), "E_CHECKPOINT",
            cfg_.resume_dir + "/reference.safetensors: unexpected or mis-shaped tensor " + n);
      ref_->params.get(n).copy_(t);
    }
    check(want.empty(), "E_CHECKPOINT", cfg_.resume_dir + "/reference.safetensors: missing " + (want.empty() ? "" : *want.begin()));
  }

  void resume() {
    fs::path dir(cfg_.resume_dir);
    {
      c10::NoGradGuard no_grad;
      m_.params.load(WeightsFile::open((dir / "model.safetensors").string()), [this](const std::string& k) { return m_.key(k); });
    }
    TensorFile f;
    read_tensor_file(cfg_.resume_dir, "optimizer.safetensors", device_, &f);
    auto it = f.metadata.find("step");
    check(it != f.metadata.end(), "E_CHECKPOINT", (dir / "optimizer.safetensors").string() + ": no step in metadata");
    opt_->load_state(f.tensors, std::stoll(it->second));
  }

  std::string save(int64_t step) {
    std::vector<TensorFile> files(2);
    files[0].name = "model.safetensors";
    for (const auto& n : m_.params.names()) files[0].tensors.emplace_back(n, m_.params.get(n));
    files[0].metadata = {{"format", "pt"}, {"step", std::to_string(step)}};
    files[1].name = "optimizer.safetensors";
    files[1].tensors = opt_->state();
    files[1].metadata = {{"step", std::to_string(opt_->steps())}};
    if (ref_) {
      TensorFile ref;
      ref.name = "reference.safetensors";
      for (const auto& n : trainable_) ref.tensors.emplace_back(n, ref_->params.get(n));
      ref.metadata = {{"format", "pt"}, {"purpose", "KL reference (trainable parameters)"}};
      files.push_back(std::move(ref));
    }
    return write_checkpoint(spec_, step, files);
  }

  CaptionerModel& m_;
  const TrainConfig& cfg_;
  const TrainCallbacks& cb_;
  at::Device device_;
  at::Tensor features_, cap_ids_, cap_image_, sup_images_, unl_images_;
  std::vector<std::string> trainable_;
  std::unique_ptr<Rewards> rewards_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<Distributed> dist_;
  std::unique_ptr<CaptionerModel> ref_;
  CheckpointSpec spec_;
};

}  // namespace

TrainSummary train(CaptionerModel& model, const TrainConfig& cfg, const TrainData& data, const TrainCallbacks& cb) {
  validate_train_data(cfg, data, model.mapper->config().clip_dim);
  Loop loop(model, cfg, data, cb);
  return loop.run();
}

}  // namespace semicap
