#include "exit_guard.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace semicap {
namespace {

std::atomic<int> g_in_flight{0};
std::atomic<bool> g_exiting{false};
void on_process_exit(int status) {
  // Both sides are sequentially consistent: either this sees the work that started, or that work sees the flag and
  // parks before touching anything.
  g_exiting.store(true, std::memory_order_seq_cst);
  if (g_in_flight.load(std::memory_order_seq_cst) == 0) return;
  std::fflush(nullptr);
  _exit(status);
}

// glibc's on_exit passes the status exit() was called with; elsewhere the hook cuts the exit short with
// EXIT_FAILURE (the status is not known there).
#if defined(__GLIBC__)
void hook(int status, void*) { on_process_exit(status); }
#else
void hook() { on_process_exit(EXIT_FAILURE); }
#endif

}  // namespace

void install_exit_guard() {
  static std::once_flag once;
  std::call_once(once, [] {
#if defined(__GLIBC__)
    on_exit(hook, nullptr);
#else
    std::atexit(hook);
#endif
  });
}

NativeWorkScope::NativeWorkScope() {
  g_in_flight.fetch_add(1, std::memory_order_seq_cst);
  if (g_exiting.load(std::memory_order_seq_cst)) {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));  // the process ends without this thread going on
  }
}

NativeWorkScope::~NativeWorkScope() { g_in_flight.fetch_sub(1, std::memory_order_seq_cst); }

}  // namespace semicap
