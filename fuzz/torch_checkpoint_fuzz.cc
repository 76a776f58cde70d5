// libFuzzer target for the torch checkpoint reader (native/torch_checkpoint.cc): zip container + restricted pickle.
//
// Contract checked here: parse_torch_checkpoint either returns a parse whose tensors are consistent (names unique
// and matching the records, nbytes = numel x dtype size, zero-copy views inside the input, copies owned by the
// parse, every byte of every view readable) or throws semicap::Error with code E_CHECKPOINT naming the input. Any
// other exception, a sanitizer report or an inconsistent parse aborts (libFuzzer saves the input).
//
// Build and run: fuzz/build.sh && fuzz/run.sh torch_checkpoint (see fuzz/README.md).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <set>
#include <string>
#include <vector>

#include "errors.h"
#include "torch_checkpoint.h"

namespace {

[[noreturn]] void bug(const char* why) {
  std::fprintf(stderr, "torch_checkpoint_fuzz: contract violation: %s\n", why);
  std::abort();
}

bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0, n = s.size(); i < n;) {
    const unsigned char c = p[i];
    const int extra = c < 0x80 ? 0 : (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2 : (c >= 0xF0 && c <= 0xF4) ? 3 : -1;
    if (extra < 0 || n - i - 1 < static_cast<size_t>(extra)) return false;
    for (int k = 1; k <= extra; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return false;
    i += 1 + static_cast<size_t>(extra);
  }
  return true;
}

void check_parse(const semicap::ParsedTorchCheckpoint& p, const uint8_t* data, size_t size) {
  if (p.names.size() != p.tensors.size() || p.names.size() != p.records.size()) bug("names, tensors and records disagree in count");
  std::set<std::string> names(p.names.begin(), p.names.end());
  if (names.size() != p.names.size()) bug("duplicate names accepted");
  volatile uint8_t sink = 0;
  for (const auto& n : p.names) {
    auto it = p.tensors.find(n);
    auto rt = p.records.find(n);
    if (it == p.tensors.end() || rt == p.records.end()) bug("a name without a tensor or record");
    if (p.metadata.count(n)) bug("a name both tensor and metadata");
    if (!valid_utf8(n)) bug("a name that is not UTF-8 accepted");
    const semicap::TensorView& v = it->second;
    const semicap::TorchTensorRecord& r = rt->second;
    if (v.dtype != r.dtype || v.shape != r.shape || r.shape.size() != r.strides.size()) bug("view and record disagree");
    uint64_t want = semicap::dtype_size(v.dtype);
    for (int64_t d : v.shape) {
      if (d < 0) bug("negative dimension accepted");
      want *= static_cast<uint64_t>(d);
    }
    for (int64_t s : r.strides)
      if (s < 0) bug("negative stride accepted");
    if (r.storage_offset < 0) bug("negative storage offset accepted");
    if (want != v.nbytes) bug("nbytes disagrees with shape x dtype size");
    if (v.nbytes == 0) continue;
    if (r.zero_copy) {
      if (v.data < data || v.data > data + size || static_cast<size_t>(data + size - v.data) < v.nbytes) bug("zero-copy view outside the input");
    } else {
      bool owned = false;
      for (const auto& b : p.owned)
        if (v.data >= b->data() && v.data + v.nbytes <= b->data() + b->size()) owned = true;
      if (!owned) bug("copied view outside its buffers");
    }
    // Read every byte: ASan reports any read outside the input buffer or the copies.
    for (size_t i = 0; i < v.nbytes; ++i) sink = sink + v.data[i];
  }
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exactly-sized heap buffer, so that ASan catches a read one byte past the end.
  std::vector<uint8_t> buf(data, data + size);
  static const uint8_t empty = 0;
  const uint8_t* bytes = buf.empty() ? &empty : buf.data();
  try {
    auto parsed = semicap::parse_torch_checkpoint(bytes, size, "fuzz-input");
    check_parse(parsed, bytes, size);
  } catch (const semicap::Error& e) {
    if (e.code != "E_CHECKPOINT") bug(("semicap::Error with code " + e.code).c_str());
    if (std::strstr(e.what(), "fuzz-input") == nullptr) bug("error message does not name the input");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torch_checkpoint_fuzz: unexpected std::exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    bug("unexpected non-std exception");
  }
  return 0;
}
