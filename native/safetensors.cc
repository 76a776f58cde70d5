#include "safetensors.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <set>

#include "atomic_file.h"
#include "errors.h"
#include "json_reader.h"

namespace semicap {

size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32"; case DType::F16: return "F16"; case DType::BF16: return "BF16";
    case DType::F64: return "F64"; case DType::I64: return "I64"; case DType::I32: return "I32";
    case DType::I16: return "I16"; case DType::I8: return "I8"; case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

bool dtype_from_name(const std::string& n, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F64", DType::F64}, {"I64", DType::I64},
      {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},     {"U8", DType::U8},   {"BOOL", DType::BOOL}};
  for (auto& [name, d] : table)
    if (n == name) { *out = d; return true; }
  return false;
}

namespace {

struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

}  // namespace

ParsedSafetensors parse_safetensors(const uint8_t* bytes, size_t size, const std::string& what) {
  if (size < 8) fail("E_CHECKPOINT", what + ": not a safetensors file (" + std::to_string(size) + " bytes, the header length alone takes 8)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes) fail("E_CHECKPOINT", what + ": safetensors header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  if (header_len > size - 8) fail("E_CHECKPOINT", what + ": safetensors header length " + std::to_string(header_len) + " runs past the end of the file (" + std::to_string(size) + " bytes): truncated?");
  const char* hdr = reinterpret_cast<const char*>(bytes + 8);
  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  // Only what the format uses is read: objects, strings, non-negative integers (any other value in an ignored field).
  JsonReader p(hdr, header_len, what, "invalid safetensors header");
  ParsedSafetensors out;
  std::vector<Entry> entries;
  std::set<std::string> seen;
  p.expect('{');
  if (!p.eat('}')) {
    do {
      std::string name = p.string();
      if (!seen.insert(name).second) p.bad("duplicate name '" + name + "'");
      p.expect(':');
      if (name == "__metadata__") {
        p.expect('{');
        if (!p.eat('}')) {
          do {
            std::string k = p.string();
            p.expect(':');
            if (p.peek() != '"') p.bad("__metadata__ values must be strings");
            out.metadata[k] = p.string();
          } while (p.eat(','));
          p.expect('}');
        }
        continue;
      }
      Entry e{name, DType::F32, {}, 0, 0};
      bool has_dtype = false, has_shape = false, has_offsets = false;
      p.expect('{');
      if (!p.eat('}')) {
        do {
          std::string key = p.string();
          p.expect(':');
          if (key == "dtype") {
            std::string d = p.string();
            if (!dtype_from_name(d, &e.dtype)) p.bad("tensor '" + name + "' has unknown dtype '" + d + "'");
            has_dtype = true;
          } else if (key == "shape") {
            for (uint64_t dim : p.int_array()) {
              if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) p.bad("tensor '" + name + "' has a dimension too large");
              e.shape.push_back(static_cast<int64_t>(dim));
            }
            has_shape = true;
          } else if (key == "data_offsets") {
            auto o = p.int_array();
            if (o.size() != 2) p.bad("tensor '" + name + "': data_offsets must have 2 entries");
            e.begin = o[0];
            e.end = o[1];
            has_offsets = true;
          } else {
            p.skip_value();
          }
        } while (p.eat(','));
        p.expect('}');
      }
      if (!has_dtype || !has_shape || !has_offsets) p.bad("tensor '" + name + "' lacks dtype, shape or data_offsets");
      entries.push_back(std::move(e));
    } while (p.eat(','));
    p.expect('}');
  }
  if (!p.at_end()) p.bad("trailing bytes after the header object");

  // Byte lengths must agree with shapes, and the buffers must tile the data section exactly, in offset order.
  for (const auto& e : entries) {
    uint64_t n = dtype_size(e.dtype);
    for (int64_t d : e.shape) {
      if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
        fail("E_CHECKPOINT", what + ": tensor '" + e.name + "': element count overflows 64 bits");
      n *= static_cast<uint64_t>(d);
    }
    if (e.end < e.begin) fail("E_CHECKPOINT", what + ": tensor '" + e.name + "': data_offsets end before they begin");
    if (e.end - e.begin != n)
      fail("E_CHECKPOINT", what + ": tensor '" + e.name + "': shape and dtype " + dtype_name(e.dtype) + " need " +
                               std::to_string(n) + " bytes but data_offsets span " + std::to_string(e.end - e.begin));
    if (e.end > data_size)
      fail("E_CHECKPOINT", what + ": tensor '" + e.name + "': data_offsets end at " + std::to_string(e.end) +
                               ", past the end of the data (" + std::to_string(data_size) + " bytes): truncated?");
  }
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  for (const Entry* e : by_offset) {
    if (e->begin != cursor)
      fail("E_CHECKPOINT", what + ": tensor '" + e->name + "' starts at byte " + std::to_string(e->begin) + " but the previous one ends at " +
                               std::to_string(cursor) + (e->begin < cursor ? " (overlapping buffers)" : " (a gap between buffers)"));
    cursor = e->end;
  }
  if (cursor != data_size)
    fail("E_CHECKPOINT", what + ": the tensors cover " + std::to_string(cursor) + " bytes of data but the file holds " + std::to_string(data_size));

  for (auto& e : entries) {
    out.names.push_back(e.name);
    out.tensors[e.name] = TensorView{e.dtype, e.shape, data + e.begin, static_cast<size_t>(e.end - e.begin)};
  }
  return out;
}

namespace {
std::string json_escape(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') { o += '\\'; o += static_cast<char>(c); }
    else if (c < 0x20) { char buf[8]; snprintf(buf, sizeof buf, "\\u%04x", c); o += buf; }
    else o += static_cast<char>(c);
  }
  return o + "\"";
}
}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, tensors, metadata, nullptr);
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::function<void(uint64_t, uint64_t)>& progress) {
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    for (auto it = metadata.begin(); it != metadata.end(); ++it) {
      if (it != metadata.begin()) h += ",";
      h += json_escape(it->first) + ":" + json_escape(it->second);
    }
    h += "}";
    first = false;
  }
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (!names.insert(t.name).second) fail("E_VALUE", "write_safetensors: duplicate tensor name '" + t.name + "'");
    uint64_t n = dtype_size(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    if (n != t.nbytes) fail("E_VALUE", "write_safetensors: tensor '" + t.name + "' byte length disagrees with its shape");
    if (!first) h += ",";
    first = false;
    h += json_escape(t.name) + ":{\"dtype\":\"" + dtype_name(t.dtype) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) h += (i ? "," : "") + std::to_string(t.shape[i]);
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + n) + "]}";
    offset += n;
  }
  h += "}";
  while (h.size() % 8 != 0) h += ' ';  // the reference writer pads so the data starts 8-aligned

  AtomicFile file(path);
  uint8_t len[8];
  uint64_t hl = h.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(hl >> (8 * i));
  file.write(len, 8);
  file.write(h.data(), h.size());
  const uint64_t total = 8 + h.size() + offset;
  uint64_t done = 8 + h.size();
  if (progress) progress(done, total);
  for (const auto& t : tensors) {
    if (!progress) { file.write(t.data, t.nbytes); continue; }
    constexpr size_t kSlice = size_t{64} << 20;
    for (size_t at = 0; at < t.nbytes; at += kSlice) {
      const size_t n = std::min(kSlice, t.nbytes - at);
      file.write(static_cast<const uint8_t*>(t.data) + at, n);
      done += n;
      progress(done, total);
    }
  }
  file.commit();
}

}  // namespace semicap
