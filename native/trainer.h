// The training loop of both stages (Jin 2023): stage 1 on labeled captions (teacher-forced cross-entropy and/or
// self-critical sequence training against the references), stage 2 on unlabeled images (SCST with the CLIP-S
// reward, KL to the stage-1 model, repetition penalty, optional CE batches mixed in). Runs on its own thread;
// talks to JS only through the callbacks below. Batches and sampling are a pure function of (seed, step, position
// in the global batch), and a checkpoint holds everything else a step reads (weights, optimizer moments and step,
// the KL reference), so a resumed run repeats the uninterrupted one exactly on the CPU, and N data-parallel ranks
// draw the samples one process with the combined batch would. Homes: this file = the loop; checkpoint.* = files;
// rewards.* = rewards; distributed.* = process groups and data-parallel normalisation.
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "captioner_model.h"
#include "distributed.h"

namespace semicap {

struct TrainConfig {
  std::string stage = "supervised";  // supervised | clip-reward
  std::string objective = "ce";      // supervised: ce | scst (clip-reward is always scst)
  int64_t steps = 100, batch_size = 8, grad_accum = 1, samples = 5, max_tokens = 20, ce_steps = 0;
  double lr = 1e-4, weight_decay = 0.01, beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8, grad_clip = 1.0;
  int64_t warmup = 0;
  std::string schedule = "linear";
  double temperature = 1.0;
  std::string reward = "refText";  // refText | refContrastive | clipS | custom
  bool ref_max = false;
  double clip_w = 2.5, reward_scale = 1.0, contrastive_tau = 0.1;
  double kl_coef = 0, rep_coef = 0;
  int64_t rep_ngram = 2;
  double ce_weight = 0;        // supervised scst: + ce_weight * CE on the same batch's captions
  double ce_mix_weight = 0;    // clip-reward: + weight * CE on a labeled batch
  uint64_t seed = 0;
  bool train_lm = true, autocast_bf16 = false;
  int64_t eos_id = -1;
  std::vector<int64_t> stop_ids;
  // Checkpoints (checkpoint.h): folders <dir>/step-NNNNNNNN with config.json, model.safetensors,
  // optimizer.safetensors, reference.safetensors (with klCoef), trainer_state.json and linked static files;
  // <dir>/latest names the newest complete one.
  std::string ckpt_dir, ckpt_config_json, ckpt_state_json;
  int64_t ckpt_every = 0, ckpt_keep = 2;
  std::vector<std::pair<std::string, std::string>> ckpt_links;  // (source path, name in the folder)
  // Resume: a checkpoint folder, and the step it was written at.
  std::string resume_dir;
  int64_t start_step = 0;
  // Data parallel: each rank takes its slice of every global batch (batch_size per rank); gradients are summed
  // over ranks after backward, with every loss term (CE, SCST, KL) normalised by the global token count, samples
  // drawn per global example and metrics reduced over ranks, so N ranks compute what one process with the
  // combined batch would.
  DistConfig dist;
};

struct TrainData {
  at::Tensor features;      // [N, D] cached CLIP image features
  at::Tensor cap_ids;       // [M, L] GPT-2 ids of labeled captions (end token included), -1-padded
  at::Tensor cap_image;     // [M] image of each caption
  at::Tensor ref_features;  // [R, D] CLIP text features of reference captions (for ref rewards)
  at::Tensor ref_image;     // [R]
  at::Tensor sup_images;    // images stage-1 SCST samples from (labeled)
  at::Tensor unl_images;    // images stage 2 samples from (unlabeled pool)
};

struct Progress {
  std::string stage;
  int64_t step = 0, total = 0;
  double loss = 0, ce = NAN, reward = NAN, baseline = NAN, kl = NAN, lr = 0, grad_norm = 0, examples_per_sec = 0, seconds = 0;
  std::string checkpoint;  // set when a checkpoint was written at this step
};

struct TrainCallbacks {
  std::function<void(const Progress&)> progress;
  // Sampled captions (GPT-2 ids [N, L], -1-padded) of images [N] -> either CLIP ids [N, T] (`first`) for a CLIP
  // reward, or rewards [N] (`second`) for a custom one. Blocks until JS answers.
  std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor& ids, const at::Tensor& images)> score;
  std::function<bool()> should_stop;
};

struct TrainSummary {
  int64_t steps = 0;
  double last_loss = NAN, mean_reward = NAN, seconds = 0;
  std::string checkpoint;
};

TrainSummary train(CaptionerModel& model, const TrainConfig& cfg, const TrainData& data, const TrainCallbacks& cb);

void validate_train_data(const TrainConfig& cfg, const TrainData& data, int64_t clip_dim);

}  // namespace semicap
