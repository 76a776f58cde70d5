// libFuzzer target for the safetensors parser (native/safetensors.cc), the code hostile files reach first.
//
// Contract checked here: parse_safetensors either returns a parse whose views all lie inside the input and agree
// with their shapes, or throws semicap::Error with code E_CHECKPOINT. Any other exception, a sanitizer report, a
// view outside the buffer or an inconsistent parse is a bug (abort -> libFuzzer saves the crashing input).
//
// Build and run: fuzz/build.sh && fuzz/run.sh (see fuzz/README.md).
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
#include "safetensors.h"

namespace {

[[noreturn]] void bug(const char* why) {
  std::fprintf(stderr, "safetensors_fuzz: contract violation: %s\n", why);
  std::abort();
}

void check_parse(const semicap::ParsedSafetensors& p, const uint8_t* data, size_t size) {
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  const uint8_t* begin = data + 8 + header_len;
  const uint8_t* end = data + size;
  if (p.names.size() != p.tensors.size()) bug("names and tensors disagree in count");
  std::set<std::string> names(p.names.begin(), p.names.end());
  if (names.size() != p.names.size()) bug("duplicate names accepted");
  uint64_t total = 0;
  volatile uint8_t sink = 0;
  for (const auto& n : p.names) {
    auto it = p.tensors.find(n);
    if (it == p.tensors.end()) bug("a name without a tensor");
    const semicap::TensorView& v = it->second;
    uint64_t want = semicap::dtype_size(v.dtype);
    for (int64_t d : v.shape) {
      if (d < 0) bug("negative dimension accepted");
      want *= static_cast<uint64_t>(d);
    }
    if (want != v.nbytes) bug("nbytes disagrees with shape x dtype size");
    if (v.nbytes > 0) {
      if (v.data < begin || v.data > end || static_cast<size_t>(end - v.data) < v.nbytes) bug("view outside the data section");
      // Touch the first and last byte: ASan reports any read outside the input buffer.
      sink = sink + v.data[0] + v.data[v.nbytes - 1];
    }
    total += v.nbytes;
  }
  if (total != static_cast<uint64_t>(end - begin)) bug("tensors do not tile the data section");
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exactly-sized heap buffer, so that ASan catches a read one byte past the end.
  std::vector<uint8_t> buf(data, data + size);
  const uint8_t* bytes = buf.empty() ? nullptr : buf.data();
  static const uint8_t empty = 0;
  try {
    auto parsed = semicap::parse_safetensors(bytes ? bytes : &empty, size, "fuzz-input");
    check_parse(parsed, bytes ? bytes : &empty, size);
  } catch (const semicap::Error& e) {
    if (e.code != "E_CHECKPOINT") bug(("semicap::Error with code " + e.code).c_str());
    if (std::strstr(e.what(), "fuzz-input") == nullptr) bug("error message does not name the input");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "safetensors_fuzz: unexpected std::exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    bug("unexpected non-std exception");
  }
  return 0;
}
