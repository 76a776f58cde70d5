// Keeps process exit from running libraries' static destructors under native work that is still running.
//
// process.exit() (or an uncaught exception) ends Node through exit(): atexit handlers and every library's static
// destructors run on the main thread while a training thread, or a libuv thread inside a caption, keeps going with
// libtorch, Gloo and OpenMP state being torn down under it. Seen: a data-parallel rank that called process.exit(3)
// from a progress listener died of SIGABRT 1-3 times in 40 (Gloo's pair thread threw on a buffer already gone)
// instead of exiting with 3. With native work in flight the exit hook ends the process at once with the same status
// (_exit, after flushing C stdio), as the OS would on a kill; with none in flight exit runs as usual.
#pragma once

namespace semicap {

// Registers the hook (once per process; later calls do nothing).
void install_exit_guard();

// Marks native work in flight for its lifetime. A thread that starts work after exit has begun never returns from
// the constructor: nothing it would touch is safe any more, and the process is about to end.
class NativeWorkScope {
 public:
  NativeWorkScope();
  ~NativeWorkScope();
  NativeWorkScope(const NativeWorkScope&) = delete;
  NativeWorkScope& operator=(const NativeWorkScope&) = delete;
};

}  // namespace semicap
