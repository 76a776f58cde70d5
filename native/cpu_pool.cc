#include "cpu_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace semicap {
namespace {

thread_local bool t_in_job = false;  // this thread is running a chunk: work it starts runs on it alone
thread_local int t_rest = 0;         // PoolRestAfterJobs scopes open on this thread

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The job in one word, so that taking a chunk is one compare-and-swap that also checks which job it belongs to:
// id (24 bits) | helpers wanted (8) | chunks (16) | next chunk to take (16). A helper that wakes after its job ended
// finds another id and takes nothing. (The id wraps after 16 M jobs; a helper would have to stall between reading
// the word and its compare-and-swap for that many jobs to take a chunk of the wrong one.)
constexpr int kIdShift = 40, kHelpersShift = 32, kChunksShift = 16;
constexpr uint64_t kMask16 = 0xffff, kMask8 = 0xff, kMask24 = 0xffffff;
inline uint32_t id_of(uint64_t s) { return static_cast<uint32_t>((s >> kIdShift) & kMask24); }
inline int helpers_of(uint64_t s) { return static_cast<int>((s >> kHelpersShift) & kMask8); }
inline int64_t chunks_of(uint64_t s) { return static_cast<int64_t>((s >> kChunksShift) & kMask16); }
inline int64_t next_of(uint64_t s) { return static_cast<int64_t>(s & kMask16); }

// How long a helper keeps looking for the next job before it sleeps. The gaps between one decoding step's products
// are tens of microseconds; a caption's whole run keeps the helpers awake, and they sleep ~0.2 ms after it.
int spin_us_setting() {
  if (const char* e = std::getenv("SEMICAP_SPIN_US")) {
    char* end = nullptr;
    long v = std::strtol(e, &end, 10);
    if (end != e && *end == '\0' && v >= 0 && v <= 1000000) return static_cast<int>(v);
  }
  return 200;
}

struct Pool {
  std::atomic<uint64_t> state{0};
  // The running job's function, context and size: written by its caller before `state` publishes the job, read by a
  // helper only after it took a chunk (so the job cannot have ended).
  RangeFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> done{0};  // chunks finished in the running job
  std::exception_ptr error;      // the first exception a chunk threw (guarded by error_mu)
  std::mutex error_mu;

  std::mutex owner;  // held by the caller whose job is running
  std::mutex mu;     // guards starting helpers
  // Where each helper sleeps, so that a job wakes only the helpers it wants.
  struct Bed {
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<bool> asleep{false};
  };
  std::unique_ptr<Bed[]> beds{new Bed[kMask8]};
  std::atomic<int> started{0};
  const int spin_us = spin_us_setting();

  std::atomic<uint64_t> jobs{0}, alone{0}, wakes{0}, rests{0};
  // The last job's caller had a PoolRestAfterJobs open: its helpers sleep as soon as they are done with it.
  std::atomic<bool> rest_after{false};

  // Takes and runs chunks of job `id` until none are left.
  void work(uint32_t id) {
    for (;;) {
      uint64_t s = state.load(std::memory_order_acquire);
      if (id_of(s) != id) return;
      const int64_t c = next_of(s), chunks = chunks_of(s);
      if (c >= chunks) return;
      if (!state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_relaxed)) continue;
      const int64_t total = n;
      t_in_job = true;
      try {
        fn(ctx, total * c / chunks, total * (c + 1) / chunks);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_mu);
        if (!error) error = std::current_exception();
      }
      t_in_job = false;
      done.fetch_add(1, std::memory_order_release);
    }
  }

  // Looks for a job other than `seen` for spin_us (0 when `rest`), giving the CPU to anyone else who wants it, then
  // sleeps.
  uint64_t wait_for_job(int index, uint32_t seen, bool rest) {
    if (rest) {
      rests.fetch_add(1, std::memory_order_relaxed);
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      for (;;) {
        for (int k = 0; k < 64; ++k) {
          const uint64_t s = state.load(std::memory_order_acquire);
          if (id_of(s) != seen) return s;
          cpu_relax();
        }
        if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(spin_us)) break;
        sched_yield();
      }
    }
    // The caller stores the job, then looks at `asleep`; this thread sets `asleep`, then looks at the job (both
    // sequentially consistent), so one of them sees the other: either this thread finds the job, or the caller takes
    // the bed's lock (held until wait() releases it) and wakes it.
    Bed& bed = beds[index];
    std::unique_lock<std::mutex> lk(bed.mu);
    bed.asleep.store(true, std::memory_order_seq_cst);
    uint64_t s;
    while (id_of(s = state.load(std::memory_order_seq_cst)) == seen) bed.cv.wait(lk);
    bed.asleep.store(false, std::memory_order_relaxed);
    return s;
  }

  void helper_loop(int index, uint32_t seen) {
    bool rest = false;
    for (;;) {
      const uint64_t s = wait_for_job(index, seen, rest);
      seen = id_of(s);
      if (index < helpers_of(s)) work(seen);
      rest = rest_after.load(std::memory_order_relaxed);  // (a newer job's setting, at worst: a hint either way)
    }
  }

  // Starts helpers until there are `want` (under `owner`, before the job that needs them is published).
  void grow(int want) {
    if (started.load(std::memory_order_relaxed) >= want) return;
    std::lock_guard<std::mutex> lk(mu);
    const uint32_t seen = id_of(state.load(std::memory_order_relaxed));
    for (int i = started.load(std::memory_order_relaxed); i < want; ++i) {
      try {
        std::thread([this, i, seen] {
          pthread_setname_np(pthread_self(), "semicap-helper");
          helper_loop(i, seen);
        }).detach();
      } catch (...) {
        break;  // no more threads: the jobs run with the helpers there are
      }
      started.store(i + 1, std::memory_order_relaxed);
    }
  }

  void run(int64_t total, int64_t chunks, int helpers, RangeFn f, void* c) {
    std::unique_lock<std::mutex> lk(owner, std::try_to_lock);
    if (!lk.owns_lock()) {
      alone.fetch_add(1, std::memory_order_relaxed);
      f(c, 0, total);
      return;
    }
    grow(helpers);
    helpers = std::min(helpers, started.load(std::memory_order_relaxed));
    if (helpers == 0) {
      f(c, 0, total);
      return;
    }
    fn = f, ctx = c, n = total;
    rest_after.store(t_rest > 0, std::memory_order_relaxed);
    done.store(0, std::memory_order_relaxed);
    const uint32_t id = (id_of(state.load(std::memory_order_relaxed)) + 1) & kMask24;
    state.store((uint64_t{id} << kIdShift) | (uint64_t(helpers) << kHelpersShift) | (uint64_t(chunks) << kChunksShift),
                std::memory_order_seq_cst);
    for (int i = 0; i < helpers; ++i) {
      Bed& bed = beds[i];
      if (!bed.asleep.load(std::memory_order_seq_cst)) continue;
      { std::lock_guard<std::mutex> g(bed.mu); }
      bed.cv.notify_one();
      wakes.fetch_add(1, std::memory_order_relaxed);
    }
    jobs.fetch_add(1, std::memory_order_relaxed);
    work(id);
    // Every chunk is taken; wait for the ones still running on helpers.
    for (int spins = 0; done.load(std::memory_order_acquire) < chunks; ++spins) {
      cpu_relax();
      if ((spins & 255) == 255) sched_yield();
    }
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: helpers may still be looking at it during exit
  return *p;
}

}  // namespace

void pool_run(int64_t n, int64_t chunks, int threads, RangeFn fn, void* ctx) {
  if (n <= 0) return;
  chunks = std::min<int64_t>({chunks, n, static_cast<int64_t>(kMask16)});
  const int helpers = std::min(threads - 1, static_cast<int>(kMask8));
  if (chunks <= 1 || helpers <= 0 || t_in_job) {
    fn(ctx, 0, n);
    return;
  }
  pool().run(n, chunks, helpers, fn, ctx);
}

PoolRestAfterJobs::PoolRestAfterJobs() { ++t_rest; }
PoolRestAfterJobs::~PoolRestAfterJobs() { --t_rest; }

PoolStats pool_stats() {
  Pool& p = pool();
  PoolStats s;
  s.helpers = p.started.load();
  s.jobs = p.jobs.load();
  s.alone = p.alone.load();
  s.wakes = p.wakes.load();
  s.rests = p.rests.load();
  s.spin_us = p.spin_us;
  return s;
}

}  // namespace semicap
