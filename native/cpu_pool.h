// The helper threads that share a product (or an attention, a greedy pick) with the thread that asked for it.
//
// Why not at::parallel_for (OpenMP): libgomp gives every calling thread its own team, and with several callers (the
// libuv pool's four threads) it throttles spinning, so each parallel region wakes a sleeping worker through a futex.
// On a KVM guest that wake-up costs ~100 us (an IPI to a halted vCPU), measured on the decoding path: 49 split
// products per token at batch 8 turned a 33 -> 18.5 ms split into 33 -> 22-24.5 ms. Here one set of helpers serves
// every caller; after each job a helper keeps looking for the next one for a short while (yielding its CPU to anyone
// else who wants it) before it sleeps, so the products of one decoding step find it awake.
//
// Work is handed out in chunks that any participant takes in turn, so a helper that is slow to wake costs nothing
// but its share: the calling thread takes the chunks nobody else has. A second caller that finds the helpers busy
// runs its work alone rather than waiting. Every chunk does the same arithmetic whoever runs it.
#pragma once
#include <cstdint>
#include <type_traits>

namespace semicap {

// Calls fn(ctx, begin, end) over [0, n) cut into at most `chunks` consecutive ranges, on the calling thread and up to
// threads - 1 helpers. Returns when every range has run; the first exception a range threw is then rethrown here.
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void pool_run(int64_t n, int64_t chunks, int threads, RangeFn fn, void* ctx);

// The same for a callable: pool_for(n, chunks, threads, [&](int64_t b, int64_t e) { ... }).
template <class F>
void pool_for(int64_t n, int64_t chunks, int threads, F&& f) {
  using Fn = std::remove_reference_t<F>;
  pool_run(n, chunks, threads, [](void* c, int64_t b, int64_t e) { (*static_cast<Fn*>(c))(b, e); },
           const_cast<void*>(static_cast<const void*>(&f)));
}

// While one is open on a thread, the helpers that share that thread's jobs go to sleep as soon as a job is done
// instead of looking for the next one: for work whose products alternate with libtorch's own parallel (OpenMP) work,
// as training's do (layer norms, activations, softmax and the BLAS backward between the products). A helper looking
// for work holds a CPU that OpenMP's worker, woken at that moment, then shares with the calling thread: on a 2-vCPU
// VM, CE steps at two threads were ~8% slower with the helpers looking for 200 us after each job (see README).
class PoolRestAfterJobs {
 public:
  PoolRestAfterJobs();
  ~PoolRestAfterJobs();
  PoolRestAfterJobs(const PoolRestAfterJobs&) = delete;
  PoolRestAfterJobs& operator=(const PoolRestAfterJobs&) = delete;
};

struct PoolStats {
  int helpers = 0;        // helper threads started so far
  uint64_t jobs = 0;      // jobs shared with helpers
  uint64_t alone = 0;     // jobs run alone because another caller had the helpers
  uint64_t wakes = 0;     // sleeping helpers a caller had to wake
  uint64_t rests = 0;     // helpers that slept right after a job, as its caller's PoolRestAfterJobs asked
  int spin_us = 0;        // how long a helper looks for the next job before it sleeps
};
PoolStats pool_stats();

}  // namespace semicap
