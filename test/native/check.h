// The check macro of the torch-free native tests: counts checks and failures, prints each failure with its place and
// a printf-style message, and gives up after 50. Thread-safe (the pool test checks from several threads).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace semicap_test {
inline int g_failures = 0, g_checks = 0;
inline std::mutex g_check_mu;
}  // namespace semicap_test

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    std::lock_guard<std::mutex> check_lock_(semicap_test::g_check_mu);     \
    ++semicap_test::g_checks;                                              \
    if (!(cond)) {                                                         \
      ++semicap_test::g_failures;                                          \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);          \
      std::printf(__VA_ARGS__);                                            \
      std::printf("\n");                                                   \
      if (semicap_test::g_failures > 50) std::exit(1);                     \
    }                                                                      \
  } while (0)
