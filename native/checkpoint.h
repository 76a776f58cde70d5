// Training checkpoints on disk: folders <dir>/step-NNNNNNNN holding config.json, model.safetensors,
// optimizer.safetensors, reference.safetensors (the KL reference, when the run has one), trainer_state.json and
// linked static files; <dir>/latest names the newest complete one. A folder is written under a temp name and
// renamed when complete, and `latest` flips only then, so a crash mid-save leaves the previous checkpoint intact.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace semicap {

struct CheckpointSpec {
  std::string dir, config_json, state_json;  // state_json: a JSON object completed with "step"
  int64_t keep = 2;                          // newest complete folders kept (<= 0: all)
  std::vector<std::pair<std::string, std::string>> links;  // (source path, name in the folder)
};

// One safetensors file of a checkpoint folder (tensors are written as float32).
struct TensorFile {
  std::string name;  // e.g. "model.safetensors"
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
};

std::string checkpoint_path(const std::string& dir, int64_t step);

// Keeps the newest `keep` complete step folders in `dir` (also those earlier runs wrote) and removes temp folders
// that interrupted saves left behind. Only call when no save is in progress.
void prune_checkpoints(const std::string& dir, int64_t keep);

// Writes the folder for `step` (atomically), points `latest` at it, prunes. Returns the folder's path.
std::string write_checkpoint(const CheckpointSpec& spec, int64_t step, const std::vector<TensorFile>& files);

// Reads `name` from checkpoint folder `dir` onto `device` as float32. A missing file: E_CHECKPOINT when `required`,
// otherwise false.
bool read_tensor_file(const std::string& dir, const std::string& name, const at::Device& device, TensorFile* out, bool required = true);

}  // namespace semicap
