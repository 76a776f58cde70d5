// Environment switches the addon reads once: a flag is on when set, non-empty and not "0".
#pragma once
#include <cstdlib>
#include <cstring>

namespace semicap {

inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

}  // namespace semicap
