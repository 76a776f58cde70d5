// A strict little JSON reader for the weights formats: safetensors headers (safetensors.cc reads them token by token)
// and sharded `*.index.json` files (weights_file.cc reads them whole with value()). Torch-free: hostile files reach
// it first, and it is fuzzed with the parsers (fuzz/build.sh). Strings must be valid UTF-8 (no overlongs, no
// surrogates); \u escapes (surrogate pairs included) are decoded to UTF-8.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace semicap {

// A parsed JSON value (JsonReader::value()).
struct Json {
  enum Type { Null, Bool, Number, String, Array, Object } type = Null;
  std::string text;  // String: the value; Number / Bool / Null: the literal as written
  std::vector<std::pair<std::string, Json>> members;  // Object, in file order (duplicates kept)
  std::vector<Json> elements;                          // Array
};

class JsonReader {
 public:
  // Every error throws semicap::Error(E_CHECKPOINT, "<what>: <context>: <why> (at byte <n>)").
  JsonReader(const char* p, size_t n, std::string what, std::string context);

  [[noreturn]] void bad(const std::string& why) const;
  size_t pos() const { return static_cast<size_t>(p_ - begin_); }

  void ws();
  bool eat(char c);      // skips whitespace, then consumes `c` if it is next
  void expect(char c);   // eat(c) or "expected 'c'"
  bool at_end();         // only whitespace is left
  char peek();           // the next non-space character ("unexpected end" if none)

  std::string string();          // a string, decoded
  uint64_t integer();            // a non-negative integer (no sign, fraction, exponent or leading zero)
  std::vector<uint64_t> int_array();  // [integer, ...], at most 64 entries
  void skip_value(int depth = 0);     // any value (numbers loosely: digits . e E + -), nesting <= 32
  Json value(int depth = 0);          // the same, kept

 private:
  void parse(int depth, Json* out);  // skip_value / value: `out` null skips
  uint32_t hex4();

  const char* p_;
  const char* begin_;
  const char* end_;
  std::string what_, context_;
};

}  // namespace semicap
