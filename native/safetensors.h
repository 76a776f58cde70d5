// safetensors reader (memory-mapped, zero-copy views) and writer (atomic: temp file + fsync + rename).
// Deliberately free of torch headers: the parser is what hostile files reach first, and it is fuzzed alone.
#pragma once
#include <cstddef>
#include <cstdint>
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

// A private (copy-on-write) mapping of a file, parsed. Views stay valid while the object lives; writes to them never
// reach the file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  const ParsedSafetensors& parsed() const { return parsed_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
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

}  // namespace semicap
