#include "trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <chrono>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <map>

#include "autocast.h"
#include "decode.h"
#include "errors.h"
#include "losses.h"
#include "optim.h"
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

// This rank's slice of the global batch (batch B per rank, world ranks): the same rows one process with batch
// B * world would draw.
at::Tensor draw(const at::Tensor& pool, int64_t step, int64_t B, uint64_t seed, uint64_t stream, const DistConfig& d) {
  at::Tensor all = draw_global(pool, step, B * d.world, seed, stream);
  return all.narrow(0, d.rank * B, B);
}

at::Tensor pad_to(const at::Tensor& ids, int64_t L) {
  if (ids.size(1) >= L) return ids;
  return at::cat({ids, at::full({ids.size(0), L - ids.size(1)}, -1, ids.options())}, 1);
}

at::Tensor normalize(const at::Tensor& x) { return x / x.norm(2, -1, true).clamp_min(1e-12); }

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
    if (d.ref_features.defined() && d.ref_features.numel()) {
      refs_ = normalize(d.ref_features.to(device_, at::kFloat));
      ref_image_ = d.ref_image.to(device_, at::kLong);
    }
    sup_images_ = d.sup_images;
    unl_images_ = d.unl_images;

    std::vector<at::Tensor> params;
    std::vector<std::string> names;
    for (const auto& n : m.params.names()) {
      bool trainable = cfg_.train_lm || n.rfind("gpt.", 0) != 0;
      m.params.get(n).requires_grad_(trainable);
      if (trainable) {
        params.push_back(m.params.get(n));
        names.push_back(n);
      }
    }
    opt_ = std::make_unique<AdamW>(params, names, AdamWConfig{cfg_.lr, cfg_.beta1, cfg_.beta2, cfg_.adam_eps, cfg_.weight_decay});
    if (!cfg_.resume_dir.empty()) resume();
    if (cfg_.dist.enabled()) {
      dist_ = std::make_unique<Distributed>(cfg_.dist);
      dist_->broadcast(m.params.all());  // every rank starts from rank 0's weights
    }
    if (cfg_.kl_coef > 0) make_reference();
  }

  ~Loop() {
    opt_->zero_grad();
    m_.params.set_requires_grad(false);
  }

  TrainSummary run() {
    if (!cfg_.ckpt_dir.empty() && (!dist_ || dist_->rank() == 0)) {
      std::error_code ec;
      if (fs::is_directory(cfg_.ckpt_dir, ec)) prune_checkpoints();
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
      double loss_sum = 0;
      int64_t examples = 0;
      for (int64_t micro = 0; micro < cfg_.grad_accum; ++micro) {
        if (micro > 0 && cb_.should_stop()) fail("E_ABORTED", "training aborted at step " + std::to_string(step));
        const int64_t k = step * cfg_.grad_accum + micro;
        at::Tensor loss;
        {
          Bf16Autocast autocast(cfg_.autocast_bf16 && device_.is_cuda());  // forward in bf16, backward follows it
          loss = micro_step(k, p, &examples);
        }
        (loss / static_cast<double>(cfg_.grad_accum)).backward();
        loss_sum += loss.item<double>();
      }
      if (dist_) {
        std::vector<at::Tensor> grads;
        for (auto& t : opt_->params())
          if (t.grad().defined()) grads.push_back(t.grad());
        dist_->allreduce_sum(grads);
        // Losses are normalised by global counts, so the sum over ranks is the global loss; rewards are averaged.
        loss_sum = dist_->allreduce_sum(loss_sum);
        if (!std::isnan(p.reward)) p.reward = dist_->allreduce_sum(p.reward) / static_cast<double>(dist_->world());
        if (!std::isnan(p.baseline)) p.baseline = dist_->allreduce_sum(p.baseline) / static_cast<double>(dist_->world());
        if (!std::isnan(p.ce)) p.ce = dist_->allreduce_sum(p.ce);
        examples *= dist_->world();
      }
      p.grad_norm = clip_grad_norm(opt_->params(), cfg_.grad_clip);
      opt_->step(p.lr);
      p.loss = loss_sum / static_cast<double>(cfg_.grad_accum);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
      p.examples_per_sec = static_cast<double>(examples) / std::max(dt, 1e-9);
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!std::isnan(p.reward)) {
        reward_sum += p.reward;
        ++reward_n;
      }
      const bool last = step + 1 == cfg_.steps;
      if (!cfg_.ckpt_dir.empty() && (last || (cfg_.ckpt_every > 0 && (step + 1) % cfg_.ckpt_every == 0))) {
        // Rank 0 alone writes; the others wait until the checkpoint is complete.
        if (!dist_ || dist_->rank() == 0) p.checkpoint = s.checkpoint = write_checkpoint(step + 1);
        if (dist_) {
          dist_->barrier();
          if (dist_->rank() != 0) p.checkpoint = s.checkpoint = checkpoint_path(step + 1);
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
  // One micro-batch's loss (k counts micro-batches over the whole run).
  at::Tensor micro_step(int64_t k, Progress& p, int64_t* examples) {
    const int64_t step = k / cfg_.grad_accum;
    if (cfg_.stage == "supervised" && (cfg_.objective == "ce" || step < cfg_.ce_steps)) {
      at::Tensor rows = draw(at::arange(cap_ids_.size(0), at::kLong), k, cfg_.batch_size, cfg_.seed, 1, cfg_.dist).to(device_);
      at::Tensor ce = ce_batch(rows);
      p.ce = ce.item<double>();
      *examples += cfg_.batch_size;
      return ce;
    }
    const at::Tensor& pool = cfg_.stage == "supervised" ? sup_images_ : unl_images_;
    at::Tensor images = draw(pool, k, cfg_.batch_size, cfg_.seed, 2, cfg_.dist).to(device_);
    at::Tensor loss = scst_batch(images, k, p);
    *examples += cfg_.batch_size * cfg_.samples;
    if (cfg_.stage == "supervised" && cfg_.ce_weight > 0) {
      at::Tensor rows = captions_of(images);
      if (rows.numel()) {
        at::Tensor ce = ce_batch(rows);
        p.ce = ce.item<double>();
        loss = loss + cfg_.ce_weight * ce;
      }
    }
    if (cfg_.stage == "clip-reward" && cfg_.ce_mix_weight > 0) {
      at::Tensor rows = draw(at::arange(cap_ids_.size(0), at::kLong), k, cfg_.batch_size, cfg_.seed, 3, cfg_.dist).to(device_);
      at::Tensor ce = ce_batch(rows);
      p.ce = ce.item<double>();
      loss = loss + cfg_.ce_mix_weight * ce;
    }
    return loss;
  }

  // Rows of cap_ids_ whose image is in `images`.
  at::Tensor captions_of(const at::Tensor& images) {
    at::Tensor hit = (cap_image_.unsqueeze(1) == images.unsqueeze(0)).any(1);
    return hit.nonzero().squeeze(1);
  }

  at::Tensor ce_batch(const at::Tensor& rows) {
    at::Tensor ids = cap_ids_.index_select(0, rows);
    // Trim trailing all-padding columns: the batch is as long as its longest caption.
    int64_t L = (ids >= 0).sum(1).max().item<int64_t>();
    ids = ids.slice(1, 0, std::max<int64_t>(L, 1));
    at::Tensor logits = m_.sequence_logits(features_.index_select(0, cap_image_.index_select(0, rows)), ids);
    auto [logp, mask] = token_logprobs(logits, ids);
    return -logp.sum() / global_count(mask);
  }

  // Real tokens in this micro-batch summed over ranks: the loss denominator one process with the whole batch uses.
  double global_count(const at::Tensor& mask) {
    double n = mask.sum().item<double>();
    return std::max(1.0, dist_ ? dist_->allreduce_sum(n) : n);
  }

  at::Tensor scst_batch(const at::Tensor& images, int64_t k, Progress& p) {
    const int64_t B = images.size(0), K = cfg_.samples;
    at::Tensor feats = features_.index_select(0, images);
    at::Tensor greedy, samples;
    {
      c10::NoGradGuard no_grad;
      at::Tensor prefix = m_.prefix_from_features(feats);
      DecodeOptions o;
      o.max_tokens = cfg_.max_tokens;
      o.stop_ids = cfg_.stop_ids;
      o.eos_id = cfg_.eos_id;
      greedy = decode(*m_.gpt, prefix, o).ids;
      o.method = "sample";
      o.temperature = cfg_.temperature;
      o.seed = mix(cfg_.seed, 1000 + static_cast<uint64_t>(k));
      samples = decode(*m_.gpt, prefix.repeat_interleave(K, 0), o).ids;
    }
    const int64_t L = std::max(greedy.size(1), samples.size(1));
    greedy = pad_to(greedy, L);
    samples = pad_to(samples, L);
    at::Tensor owners = at::cat({images, images.repeat_interleave(K, 0)});
    at::Tensor rewards = score(at::cat({greedy, samples}), owners, images);
    if (cfg_.rep_coef > 0) rewards = rewards - cfg_.rep_coef * repeated_ngrams(at::cat({greedy, samples}), cfg_.rep_ngram).to(rewards.device());
    rewards = rewards * cfg_.reward_scale;
    at::Tensor baseline = rewards.slice(0, 0, B).repeat_interleave(K, 0);
    at::Tensor r = rewards.slice(0, B);
    at::Tensor sample_feats = feats.repeat_interleave(K, 0);
    at::Tensor logits = m_.sequence_logits(sample_feats, samples);
    auto [logp, mask] = token_logprobs(logits, samples);
    at::Tensor loss = scst_loss(logp, mask, r, baseline);
    if (dist_) loss = loss * (mask.sum().item<double>() / global_count(mask));  // global token normalisation
    if (cfg_.kl_coef > 0) {
      // Grad mode stays on (nothing here requires grad, so no graph is recorded): the reference then takes the same
      // matmul path as the policy, and the KL of identical models is exactly 0, not BLAS-vs-kernel rounding.
      at::Tensor ref_logits = ref_->sequence_logits(sample_feats, samples).detach();
      at::Tensor kl = kl_penalty(logits, ref_logits, mask);
      p.kl = kl.item<double>();
      loss = loss + cfg_.kl_coef * kl;
    }
    p.reward = r.mean().item<double>();
    p.baseline = baseline.mean().item<double>();
    return loss;
  }

  // Rewards of sampled captions (ids [N, L]) of images `owners`; `batch` = the distinct images of the batch.
  at::Tensor score(const at::Tensor& ids, const at::Tensor& owners, const at::Tensor& batch) {
    auto [clip_ids, custom] = cb_.score(ids.cpu(), owners.cpu());
    if (cfg_.reward == "custom") {
      check(custom.defined() && custom.dim() == 1 && custom.size(0) == ids.size(0), "E_VALUE", "a custom reward must return one number per caption");
      check(at::isfinite(custom).all().item<bool>(), "E_VALUE", "a custom reward returned NaN or infinity");
      return custom.to(device_, at::kFloat);
    }
    check(clip_ids.defined() && clip_ids.dim() == 2 && clip_ids.size(0) == ids.size(0), "E_VALUE", "reward tokenization returned the wrong shape");
    at::Tensor text;
    {
      auto clip = m_.clip;
      check(clip && clip->model, "E_DISPOSED", "the CLIP model was disposed");
      std::lock_guard<std::mutex> lock(clip->mu);
      c10::NoGradGuard no_grad;
      text = normalize(clip->model->text(clip_ids).features.to(device_));
    }
    at::Tensor own = owners.to(device_);
    if (cfg_.reward == "clipS") return clip_s_reward(text, normalize(features_.index_select(0, own)), cfg_.clip_w);
    if (cfg_.reward == "refText") return ref_text_reward(text, own, refs_, ref_image_, cfg_.ref_max);
    if (cfg_.reward == "refContrastive") return ref_contrastive_reward(text, own, refs_, ref_image_, batch, cfg_.contrastive_tau);
    fail("E_CONFIG", "unknown reward '" + cfg_.reward + "'");
  }

  void make_reference() {
    ref_ = std::make_unique<CaptionerModel>(m_.mapper->config(), m_.gpt->config(), m_.normalize_prefix);
    c10::NoGradGuard no_grad;
    ref_->params.to(device_);
    for (const auto& n : m_.params.names()) ref_->params.get(n).copy_(m_.params.get(n));
  }

  void resume() {
    fs::path dir(cfg_.resume_dir);
    {
      c10::NoGradGuard no_grad;
      m_.params.load(SafetensorsFile::open((dir / "model.safetensors").string()), CaptionerModel::checkpoint_key);
    }
    auto file = SafetensorsFile::open((dir / "optimizer.safetensors").string());
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const auto& n : file->parsed().names) named.emplace_back(n, view_as_tensor(file->parsed().tensors.at(n)).to(device_, at::kFloat));
    auto it = file->parsed().metadata.find("step");
    check(it != file->parsed().metadata.end(), "E_CHECKPOINT", (dir / "optimizer.safetensors").string() + ": no step in metadata");
    opt_->load_state(named, std::stoll(it->second));
  }

  // Keeps the newest ckpt_keep complete step folders in the directory (also those earlier runs wrote) and removes
  // temp folders that interrupted saves left behind.
  void prune_checkpoints() {
    std::error_code ec;
    std::vector<fs::path> steps;
    for (const auto& e : fs::directory_iterator(cfg_.ckpt_dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("step-", 0) != 0 || !e.is_directory()) continue;
      if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) {
        fs::remove_all(e.path(), ec);  // only ever called when no save of this run is in progress
        continue;
      }
      steps.push_back(e.path());
    }
    std::sort(steps.begin(), steps.end());  // zero-padded step numbers sort in order
    while (cfg_.ckpt_keep > 0 && static_cast<int64_t>(steps.size()) > cfg_.ckpt_keep) {
      fs::remove_all(steps.front(), ec);
      steps.erase(steps.begin());
    }
  }

  static std::string step_name(int64_t step) {
    char name[32];
    snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
    return name;
  }
  std::string checkpoint_path(int64_t step) const { return (fs::path(cfg_.ckpt_dir) / step_name(step)).string(); }

  std::string write_checkpoint(int64_t step) {
    const std::string name = step_name(step);
    fs::path root(cfg_.ckpt_dir), final_dir = root / name, tmp = root / (name + ".tmp");
    std::error_code ec;
    fs::create_directories(root, ec);
    fs::remove_all(tmp, ec);
    check(fs::create_directories(tmp, ec), "E_IO", tmp.string() + ": cannot create (" + ec.message() + ")");
    for (const auto& [src, dst] : cfg_.ckpt_links) {
      fs::path to = tmp / dst;
      fs::create_directories(to.parent_path(), ec);
      fs::create_hard_link(src, to, ec);
      if (ec) {
        ec.clear();
        fs::copy_file(src, to, fs::copy_options::overwrite_existing, ec);
        check(!ec, "E_IO", "checkpoint: cannot copy " + src + " (" + ec.message() + ")");
      }
    }
    auto write_text = [&](const fs::path& p, const std::string& text) {
      std::ofstream f(p, std::ios::binary);
      f << text;
      f.flush();
      check(f.good(), "E_IO", p.string() + ": write failed");
    };
    write_text(tmp / "config.json", cfg_.ckpt_config_json);
    // Fault injection for tests of crash safety: fail after the config, before the weights are complete.
    if (const char* f = std::getenv("SEMICAP_TEST_FAIL_CHECKPOINT"); f && std::to_string(step) == f)
      fail("E_IO", "injected checkpoint failure at step " + std::to_string(step));
    std::vector<at::Tensor> keep;
    std::vector<TensorToWrite> items;
    auto add = [&](const std::string& n, const at::Tensor& t0) {
      at::Tensor t = t0.detach().to(at::kCPU, at::kFloat).contiguous().clone();
      keep.push_back(t);
      items.push_back({n, DType::F32, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(), t.nbytes()});
    };
    for (const auto& n : m_.params.names()) add(n, m_.params.get(n));
    write_safetensors((tmp / "model.safetensors").string(), items, {{"format", "pt"}, {"step", std::to_string(step)}});
    keep.clear();
    items.clear();
    for (const auto& [n, t] : opt_->state()) add(n, t);
    write_safetensors((tmp / "optimizer.safetensors").string(), items, {{"step", std::to_string(opt_->steps())}});
    std::string state = cfg_.ckpt_state_json;  // JSON object text from JS, completed with the step
    if (!state.empty() && state.back() == '}') state.pop_back();
    write_text(tmp / "trainer_state.json", state + (state.size() > 1 ? "," : "") + "\"step\":" + std::to_string(step) + "}\n");
    fs::remove_all(final_dir, ec);
    fs::rename(tmp, final_dir, ec);
    check(!ec, "E_IO", final_dir.string() + ": rename failed (" + ec.message() + ")");
    // `latest` flips to the new folder only once it is complete.
    write_text(root / "latest.tmp", std::string(name) + "\n");
    fs::rename(root / "latest.tmp", root / "latest", ec);
    check(!ec, "E_IO", (root / "latest").string() + ": rename failed (" + ec.message() + ")");
    prune_checkpoints();
    return final_dir.string();
  }

  CaptionerModel& m_;
  const TrainConfig& cfg_;
  const TrainCallbacks& cb_;
  at::Device device_;
  at::Tensor features_, cap_ids_, cap_image_, refs_, ref_image_, sup_images_, unl_images_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<Distributed> dist_;
  std::unique_ptr<CaptionerModel> ref_;
};

}  // namespace

TrainSummary train(CaptionerModel& model, const TrainConfig& cfg, const TrainData& data, const TrainCallbacks& cb) {
  validate_train_data(cfg, data, model.mapper->config().clip_dim);
  Loop loop(model, cfg, data, cb);
  return loop.run();
}

}  // namespace semicap
