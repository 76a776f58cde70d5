#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include "errors.h"

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

// A strict little JSON reader, enough for safetensors headers: objects, arrays, strings, non-negative integers.
// Anything else the format does not use is rejected rather than guessed at.
class HeaderParser {
 public:
  HeaderParser(const char* p, size_t n, const std::string& what) : p_(p), end_(p + n), what_(what) {}

  [[noreturn]] void bad(const std::string& why) const {
    fail("E_CHECKPOINT", what_ + ": invalid safetensors header: " + why + " (at byte " + std::to_string(pos()) + ")");
  }
  size_t pos() const { return static_cast<size_t>(p_ - start_); }
  void set_start(const char* s) { start_ = s; }

  void ws() { while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_; }
  bool eat(char c) { ws(); if (p_ < end_ && *p_ == c) { ++p_; return true; } return false; }
  void expect(char c) { if (!eat(c)) bad(std::string("expected '") + c + "'"); }
  bool at_end() { ws(); return p_ == end_; }
  char peek() { ws(); if (p_ >= end_) bad("unexpected end"); return *p_; }

  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (p_ >= end_) bad("unterminated string");
      unsigned char c = static_cast<unsigned char>(*p_++);
      if (c == '"') break;
      if (c < 0x20) bad("control character in string");
      if (c == '\\') {
        if (p_ >= end_) bad("unterminated escape");
        char e = *p_++;
        switch (e) {
          case '"': out += '"'; break; case '\\': out += '\\'; break; case '/': out += '/'; break;
          case 'b': out += '\b'; break; case 'f': out += '\f'; break; case 'n': out += '\n'; break;
          case 'r': out += '\r'; break; case 't': out += '\t'; break;
          case 'u': {
            uint32_t cp = hex4();
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (end_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') bad("lone surrogate");
              p_ += 2;
              uint32_t lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) bad("bad surrogate pair");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
              bad("lone surrogate");
            }
            append_utf8(out, cp);
            break;
          }
          default: bad("bad escape");
        }
      } else if (c < 0x80) {
        out += static_cast<char>(c);
      } else {
        // Validate one UTF-8 sequence (no overlongs, no surrogates, <= U+10FFFF).
        int extra = (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2 : (c >= 0xF0 && c <= 0xF4) ? 3 : -1;
        if (extra < 0 || end_ - p_ < extra) bad("invalid UTF-8");
        uint32_t cp = c & (0x3F >> extra);
        for (int i = 0; i < extra; ++i) {
          unsigned char cc = static_cast<unsigned char>(p_[i]);
          if ((cc & 0xC0) != 0x80) bad("invalid UTF-8");
          cp = (cp << 6) | (cc & 0x3F);
        }
        if ((extra == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
          bad("invalid UTF-8");
        out.append(p_ - 1, p_ + extra);
        p_ += extra;
      }
    }
    return out;
  }

  uint64_t integer() {
    ws();
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') bad("expected a non-negative integer");
    if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9') bad("leading zero");
    uint64_t v = 0;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      uint64_t d = static_cast<uint64_t>(*p_ - '0');
      if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) bad("integer overflow");
      v = v * 10 + d;
      ++p_;
    }
    if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) bad("expected an integer");
    return v;
  }

  std::vector<uint64_t> int_array() {
    expect('[');
    std::vector<uint64_t> out;
    if (eat(']')) return out;
    do { out.push_back(integer()); if (out.size() > 64) bad("too many dimensions"); } while (eat(','));
    expect(']');
    return out;
  }

  void skip_value(int depth = 0) {
    if (depth > 32) bad("nesting too deep");
    char c = peek();
    if (c == '"') { string(); return; }
    if (c == '{') { ++p_; if (eat('}')) return; do { string(); expect(':'); skip_value(depth + 1); } while (eat(',')); expect('}'); return; }
    if (c == '[') { ++p_; if (eat(']')) return; do { skip_value(depth + 1); } while (eat(',')); expect(']'); return; }
    // Other JSON scalars may appear in fields this reader ignores: accept them as the reference parser does.
    for (const char* lit : {"true", "false", "null"}) {
      size_t n = strlen(lit);
      if (static_cast<size_t>(end_ - p_) >= n && std::memcmp(p_, lit, n) == 0) { p_ += n; return; }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      if (*p_ == '-') ++p_;
      const char* start = p_;
      while (p_ < end_ && ((*p_ >= '0' && *p_ <= '9') || *p_ == '.' || *p_ == 'e' || *p_ == 'E' || *p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == start) bad("bad number");
      return;
    }
    bad("unsupported value");
  }

 private:
  uint32_t hex4() {
    if (end_ - p_ < 4) bad("short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else bad("bad \\u escape");
    }
    return v;
  }
  static void append_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) s += static_cast<char>(cp);
    else if (cp < 0x800) { s += static_cast<char>(0xC0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { s += static_cast<char>(0xE0 | (cp >> 12)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
    else { s += static_cast<char>(0xF0 | (cp >> 18)); s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
  }

  const char* p_;
  const char* end_;
  const char* start_ = nullptr;
  const std::string& what_;
};

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

  HeaderParser p(hdr, header_len, what);
  p.set_start(hdr);
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

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("E_IO", path + ": write failed: " + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
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

  std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("E_IO", tmp + ": cannot create: " + std::strerror(errno));
  try {
    uint8_t len[8];
    uint64_t hl = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(hl >> (8 * i));
    write_all(fd, len, 8, tmp);
    write_all(fd, h.data(), h.size(), tmp);
    const uint64_t total = 8 + h.size() + offset;
    uint64_t done = 8 + h.size();
    if (progress) progress(done, total);
    for (const auto& t : tensors) {
      if (!progress) { write_all(fd, t.data, t.nbytes, tmp); continue; }
      constexpr size_t kSlice = size_t{64} << 20;
      for (size_t at = 0; at < t.nbytes; at += kSlice) {
        const size_t n = std::min(kSlice, t.nbytes - at);
        write_all(fd, static_cast<const uint8_t*>(t.data) + at, n, tmp);
        done += n;
        progress(done, total);
      }
    }
    if (::fsync(fd) != 0) fail("E_IO", tmp + ": fsync failed: " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) { ::unlink(tmp.c_str()); fail("E_IO", tmp + ": close failed: " + std::strerror(errno)); }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail("E_IO", path + ": rename failed: " + std::strerror(e));
  }
}

}  // namespace semicap
