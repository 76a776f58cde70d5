// safetensors reader (memory-mapped, zero-copy views) and writer (atomic: temp file + fsync + rename).
// Deliberately free of torch headers: the parser is what hostile files reach first, and it is fuzzed alone.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace semicap {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType d);
const char* dtype_name(DType d);
bool dtype_from_name(const std::string& name, DType* out);

struct TensorView {
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping (or the parsed buffer)
  size_t nbytes = 0;
};

// Limits from the format's own reference parser: a header is at most 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;

// Parses a whole safetensors image held in memory. Throws semicap::Error(E_CHECKPOINT) naming `what` (usually the
// file path) and the reason for every violation: header length past the end or over 100 MB, invalid JSON or UTF-8,
// unknown dtype, negative or overflowing shapes, shape x dtype size != byte length, offsets not contiguous from 0,
// duplicate names, data not covering the rest of the file exactly.
struct ParsedSafetensors {
  std::vector<std::string> names;  // in file order
  std::map<std::string, TensorView> tensors;
  std::map<std::string, std::string> metadata;
};
ParsedSafetensors parse_safetensors(const uint8_t* bytes, size_t size, const std::string& what);

// Any weights file, opened by content (native/weights_file.cc): a safetensors file, a torch.save zip checkpoint
// (`pytorch_model.bin`, `*.pt`: native/torch_checkpoint.h), or a sharded folder given by its `*.index.json`
// (`{"metadata": {...}, "weight_map": {name: shard file}}`, each shard safetensors or torch zip, in the index's
// folder). Files are private (copy-on-write) mappings; `parsed()` has one shape for every format: names in order
// (shard by shard for a folder), views, metadata (a torch checkpoint lists its non-tensor leaves there, a folder its
// index's metadata). Views stay valid while the object lives and never overlap (tensors of a torch file that share a
// storage get views into separate private mappings of the same pages); writes to them never reach the file.
// A legacy (pre-1.6) torch file or another pickle is refused with E_CHECKPOINT saying how to re-save it.
class WeightsFile {
 public:
  static std::shared_ptr<WeightsFile> open(const std::string& path);
  ~WeightsFile();
  const ParsedSafetensors& parsed() const { return parsed_; }
  const std::string& path() const { return path_; }
  // "safetensors", "torch" or "sharded".
  const std::string& format() const { return format_; }

 private:
  WeightsFile() = default;
  friend struct WeightsFileLoader;
  struct Mapping { void* addr; size_t size; };
  std::string path_, format_;
  std::vector<Mapping> maps_;
  std::vector<std::shared_ptr<const void>> owned_;  // copies of non-contiguous torch tensors
  ParsedSafetensors parsed_;
};

// Writes tensors (in the order given) to `path` atomically: a crash or full disk leaves the old file intact.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);
// The same, calling `progress(bytes_written, total_bytes)` after the header and after every tensor (total counts the
// 8-byte length, the header and the data). Data is written in slices of at most 64 MiB, each reported.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::function<void(uint64_t, uint64_t)>& progress);

}  // namespace semicap
