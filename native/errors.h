// One exception type for everything native code rejects. The binding layer turns it into a JS error whose
// `.code` is `code`, so callers can tell a bad checkpoint from a bad shape without parsing messages.
#pragma once
#include <stdexcept>
#include <string>

namespace semicap {

struct Error : std::runtime_error {
  std::string code;
  Error(std::string c, const std::string& message) : std::runtime_error(message), code(std::move(c)) {}
};

[[noreturn]] inline void fail(const char* code, const std::string& message) { throw Error(code, message); }

inline void check(bool ok, const char* code, const std::string& message) {
  if (!ok) fail(code, message);
}

}  // namespace semicap
