// A restricted, torch-free reader and writer for PyTorch checkpoints in the zip format torch.save writes since torch
// 1.6 (`pytorch_model.bin`, ClipCap's `coco_weights.pt`, ...). Like safetensors.cc it is what a hostile file reaches
// first, so it has no torch headers and is fuzzed alone (fuzz/torch_checkpoint_fuzz.cc).
//
// Reading: the zip container (stored records only, zip64 included) is checked against the file size, then
// `<root>/data.pkl` runs on a small pickle machine that knows only what a state_dict needs: dicts, lists, tuples,
// scalars, strings, and an allow-list of globals (collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// _rebuild_parameter, _rebuild_parameter_with_state with an empty state, and the torch.<Type>Storage classes).
// Nothing read from the file is ever executed: any other global is refused, naming it. libtorch's pickle_load is not
// used (it turns OrderedDict into None and moves CUDA tensors).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "safetensors.h"

namespace semicap {

// Where a tensor of a torch checkpoint lives: `<root>/data/<storage_key>`, element offset and strides as stored.
struct TorchTensorRecord {
  DType dtype;
  std::vector<int64_t> shape, strides;
  int64_t storage_offset = 0;
  std::string storage_key;
  bool zero_copy = false;  // the view points into the input; otherwise into an owned, contiguous copy
};

// The parse of a torch checkpoint. `names`/`tensors`/`metadata` have the shape of ParsedSafetensors:
// - nested dicts flatten with '.' joins ({"model": {"w": t}} -> "model.w"); a dict reached twice (shared) is refused;
// - non-tensor leaves (ints, floats, strings, bools, None, lists, tuples: "epoch", "args", ...) are skipped and
//   listed in `metadata` under their flattened name, with a short text value ("3", "'adam'", "list[4]"), at most
//   4096 of them;
// - contiguous tensors are views INTO `bytes` (zero copy); non-contiguous ones (transposed, sliced, expanded)
//   are copied element by element into `owned` buffers, at most 8 x the input size + 1 MiB in all;
// - tensors sharing a storage (a tied lm_head and wte) both appear; their views may overlap.
struct ParsedTorchCheckpoint {
  std::vector<std::string> names;
  std::map<std::string, TensorView> tensors;
  std::map<std::string, std::string> metadata;
  std::map<std::string, TorchTensorRecord> records;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> owned;
  std::string root;  // the archive's folder ("archive", "pytorch_model", ...)
};

// Throws semicap::Error(E_CHECKPOINT, "<what>: ...") for every violation and never anything else.
ParsedTorchCheckpoint parse_torch_checkpoint(const uint8_t* bytes, size_t size, const std::string& what);

// True when `bytes` start like a torch.save file of the legacy (pre-1.6) format: the pickled magic number, or a
// tar archive. Such files are refused with legacy_torch_message().
bool looks_like_legacy_torch(const uint8_t* bytes, size_t size);
// True when `bytes` start like any pickle (PROTO 2..5).
bool looks_like_pickle(const uint8_t* bytes, size_t size);
std::string legacy_torch_message(const std::string& what);

// One tensor to write. `alias_of` non-empty: this name shares the storage of the earlier entry of that name (same
// dtype, shape numel <= that entry's; `data` is ignored), as a tied lm_head shares wte's storage in torch.
struct TorchTensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string alias_of;
};

// Writes a checkpoint torch.load reads (weights_only=True included): stored zip records, data 64-byte aligned (the
// local header's "FB" padding field, as PyTorchStreamWriter writes it), `<root>/data.pkl` at pickle protocol 2 (an
// OrderedDict of _rebuild_tensor_v2 over BINPERSID storages), `<root>/byteorder` = "little", `<root>/version` = "3",
// `<root>/data/<n>`. Atomic (temp file + fsync + rename). zip64 records when needed (or always, `force_zip64`).
void write_torch_checkpoint(const std::string& path, const std::vector<TorchTensorToWrite>& entries,
                            bool force_zip64 = false);

}  // namespace semicap
