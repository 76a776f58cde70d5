#include "checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "errors.h"
#include "nn.h"
#include "safetensors.h"

namespace fs = std::filesystem;

namespace semicap {

namespace {

std::string step_name(int64_t step) {
  char name[32];
  snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return name;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
  f.flush();
  check(f.good(), "E_IO", p.string() + ": write failed");
}

void write_tensor_file(const fs::path& path, const TensorFile& file) {
  std::vector<at::Tensor> keep;
  std::vector<TensorToWrite> items;
  for (const auto& [n, t0] : file.tensors) {
    at::Tensor t = t0.detach().to(at::kCPU, at::kFloat).contiguous().clone();
    keep.push_back(t);
    items.push_back({n, DType::F32, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(), t.nbytes()});
  }
  write_safetensors(path.string(), items, file.metadata);
}

}  // namespace

std::string checkpoint_path(const std::string& dir, int64_t step) { return (fs::path(dir) / step_name(step)).string(); }

void prune_checkpoints(const std::string& dir, int64_t keep) {
  std::error_code ec;
  std::vector<fs::path> steps;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) != 0 || !e.is_directory()) continue;
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) {
      fs::remove_all(e.path(), ec);
      continue;
    }
    steps.push_back(e.path());
  }
  std::sort(steps.begin(), steps.end());  // zero-padded step numbers sort in order
  while (keep > 0 && static_cast<int64_t>(steps.size()) > keep) {
    fs::remove_all(steps.front(), ec);
    steps.erase(steps.begin());
  }
}

std::string write_checkpoint(const CheckpointSpec& spec, int64_t step, const std::vector<TensorFile>& files) {
  const std::string name = step_name(step);
  fs::path root(spec.dir), final_dir = root / name, tmp = root / (name + ".tmp");
  std::error_code ec;
  fs::create_directories(root, ec);
  fs::remove_all(tmp, ec);
  check(fs::create_directories(tmp, ec), "E_IO", tmp.string() + ": cannot create (" + ec.message() + ")");
  for (const auto& [src, dst] : spec.links) {
    fs::path to = tmp / dst;
    fs::create_directories(to.parent_path(), ec);
    fs::create_hard_link(src, to, ec);
    if (ec) {
      ec.clear();
      fs::copy_file(src, to, fs::copy_options::overwrite_existing, ec);
      check(!ec, "E_IO", "checkpoint: cannot copy " + src + " (" + ec.message() + ")");
    }
  }
  write_text(tmp / "config.json", spec.config_json);
  // Fault injection for tests of crash safety: fail after the config, before the weights are complete.
  if (const char* f = std::getenv("SEMICAP_TEST_FAIL_CHECKPOINT"); f && std::to_string(step) == f)
    fail("E_IO", "injected checkpoint failure at step " + std::to_string(step));
  for (const auto& file : files) write_tensor_file(tmp / file.name, file);
  std::string state = spec.state_json;  // JSON object text, completed with the step
  if (!state.empty() && state.back() == '}') state.pop_back();
  if (state.empty()) state = "{";
  write_text(tmp / "trainer_state.json", state + (state.size() > 1 ? "," : "") + "\"step\":" + std::to_string(step) + "}\n");
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  check(!ec, "E_IO", final_dir.string() + ": rename failed (" + ec.message() + ")");
  // `latest` flips to the new folder only once it is complete.
  write_text(root / "latest.tmp", std::string(name) + "\n");
  fs::rename(root / "latest.tmp", root / "latest", ec);
  check(!ec, "E_IO", (root / "latest").string() + ": rename failed (" + ec.message() + ")");
  prune_checkpoints(spec.dir, spec.keep);
  return final_dir.string();
}

bool read_tensor_file(const std::string& dir, const std::string& name, const at::Device& device, TensorFile* out, bool required) {
  const fs::path path = fs::path(dir) / name;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    check(!required, "E_CHECKPOINT", path.string() + ": missing");
    return false;
  }
  auto file = WeightsFile::open(path.string());
  out->name = name;
  out->tensors.clear();
  for (const auto& n : file->parsed().names)
    out->tensors.emplace_back(n, view_as_tensor(file->parsed().tensors.at(n)).to(device, at::kFloat).clone());
  out->metadata = file->parsed().metadata;
  return true;
}

}  // namespace semicap
