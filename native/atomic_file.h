// Atomic file replacement for the weights writers (write_safetensors, write_torch_checkpoint): the bytes go to a
// temp file next to `path` (`<path>.tmp-<pid>`), and commit() fsyncs, closes and renames it over `path`. An
// AtomicFile destroyed before commit() succeeds (an exception on the way) closes and unlinks the temp file, so a
// crash or a full disk leaves the old file intact. Torch-free (the fuzz targets link it).
#pragma once
#include <cstddef>
#include <string>

namespace semicap {

class AtomicFile {
 public:
  // Creates the temp file; E_IO "<tmp>: cannot create: ..." when it cannot.
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // All of `data` (retrying short writes and EINTR); E_IO "<tmp>: write failed: ...".
  void write(const void* data, size_t n);
  // fsync, close, rename over the path; E_IO naming the temp file (fsync, close) or the path (rename).
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace semicap
