#include "json_reader.h"

#include <cstring>
#include <limits>

#include "errors.h"

namespace semicap {

namespace {
void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) s += static_cast<char>(cp);
  else if (cp < 0x800) { s += static_cast<char>(0xC0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) { s += static_cast<char>(0xE0 | (cp >> 12)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
  else { s += static_cast<char>(0xF0 | (cp >> 18)); s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
}
}  // namespace

JsonReader::JsonReader(const char* p, size_t n, std::string what, std::string context)
    : p_(p), begin_(p), end_(p + n), what_(std::move(what)), context_(std::move(context)) {}

void JsonReader::bad(const std::string& why) const {
  fail("E_CHECKPOINT", what_ + ": " + context_ + ": " + why + " (at byte " + std::to_string(pos()) + ")");
}

void JsonReader::ws() { while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_; }
bool JsonReader::eat(char c) { ws(); if (p_ < end_ && *p_ == c) { ++p_; return true; } return false; }
void JsonReader::expect(char c) { if (!eat(c)) bad(std::string("expected '") + c + "'"); }
bool JsonReader::at_end() { ws(); return p_ == end_; }
char JsonReader::peek() { ws(); if (p_ >= end_) bad("unexpected end"); return *p_; }

std::string JsonReader::string() {
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

uint64_t JsonReader::integer() {
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

std::vector<uint64_t> JsonReader::int_array() {
  expect('[');
  std::vector<uint64_t> out;
  if (eat(']')) return out;
  do { out.push_back(integer()); if (out.size() > 64) bad("too many dimensions"); } while (eat(','));
  expect(']');
  return out;
}

void JsonReader::skip_value(int depth) { parse(depth, nullptr); }

Json JsonReader::value(int depth) {
  Json j;
  parse(depth, &j);
  return j;
}

void JsonReader::parse(int depth, Json* out) {
  if (depth > 32) bad("nesting too deep");
  char c = peek();
  if (c == '"') {
    if (!out) { string(); return; }
    out->type = Json::String;
    out->text = string();
    return;
  }
  if (c == '{') {
    ++p_;
    if (out) out->type = Json::Object;
    if (eat('}')) return;
    do {
      std::string k = string();
      expect(':');
      if (!out) { parse(depth + 1, nullptr); continue; }
      out->members.emplace_back(std::move(k), Json());
      parse(depth + 1, &out->members.back().second);
    } while (eat(','));
    expect('}');
    return;
  }
  if (c == '[') {
    ++p_;
    if (out) out->type = Json::Array;
    if (eat(']')) return;
    do {
      if (!out) { parse(depth + 1, nullptr); continue; }
      out->elements.emplace_back();
      parse(depth + 1, &out->elements.back());
    } while (eat(','));
    expect(']');
    return;
  }
  // Other JSON scalars may appear in fields a caller ignores: accept them as the safetensors reference parser does.
  for (const char* lit : {"true", "false", "null"}) {
    size_t n = std::strlen(lit);
    if (static_cast<size_t>(end_ - p_) >= n && std::memcmp(p_, lit, n) == 0) {
      p_ += n;
      if (out) { out->type = lit[0] == 'n' ? Json::Null : Json::Bool; out->text = lit; }
      return;
    }
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    const char* literal = p_;
    if (*p_ == '-') ++p_;
    const char* start = p_;
    while (p_ < end_ && ((*p_ >= '0' && *p_ <= '9') || *p_ == '.' || *p_ == 'e' || *p_ == 'E' || *p_ == '+' || *p_ == '-')) ++p_;
    if (p_ == start) bad("bad number");
    if (out) { out->type = Json::Number; out->text.assign(literal, p_); }
    return;
  }
  bad("unsupported value");
}

uint32_t JsonReader::hex4() {
  if (end_ - p_ < 4) bad("short \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    char c = *p_++;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
    else bad("bad \\u escape");
  }
  return v;
}

}  // namespace semicap
