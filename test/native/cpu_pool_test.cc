// Tests of native/cpu_pool: every index runs exactly once whoever runs it, back-to-back jobs (helpers awake), jobs
// after the helpers fell asleep, helpers told to sleep after each job, concurrent callers, a nested call, an exception from a helper's chunk.
// Build and run: test/native/build.sh && test/native/out/cpu_pool_test
#include "cpu_pool.h"

#include "check.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using semicap::pool_for;

namespace {

using semicap_test::g_checks;
using semicap_test::g_failures;

// Runs one job and checks that its ranges are non-empty, within [0, n), and cover every index exactly once.
void covered_once(int64_t n, int64_t chunks, int threads) {
  std::unique_ptr<std::atomic<int>[]> seen(new std::atomic<int>[n]);
  for (int64_t i = 0; i < n; ++i) seen[i] = 0;
  std::atomic<int> bad_ranges{0}, calls{0};
  pool_for(n, chunks, threads, [&](int64_t b, int64_t e) {
    calls.fetch_add(1);
    if (b < 0 || e > n || b >= e) {
      bad_ranges.fetch_add(1);
      return;
    }
    for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
  });
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += seen[i] != 1;
  CHECK(bad_ranges == 0 && wrong == 0, "n %ld chunks %ld threads %d: %d bad ranges, %ld indices not run once", (long)n,
        (long)chunks, threads, bad_ranges.load(), (long)wrong);
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>({chunks, n, 65535}));
  CHECK(n == 0 ? calls == 0 : calls >= 1 && calls <= most, "n %ld chunks %ld threads %d: %d calls", (long)n, (long)chunks, threads,
        calls.load());
}

}  // namespace

int main() {
  // Shapes: empty, one index, fewer indices than chunks, more chunks than the word holds, odd sizes.
  for (int threads : {1, 2, 3, 4, 8})
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1000, 70001})
      for (int64_t chunks : {0, 1, 2, 3, 4, 16, 70000}) covered_once(n, chunks, threads);

  // Back to back, as a decoding step's products: the helpers stay awake between jobs.
  const uint64_t wakes_b2b = semicap::pool_stats().wakes;
  for (int rep = 0; rep < 20000; ++rep) covered_once(37, 4, 2);
  std::printf("back to back: 20000 jobs, %llu wakes\n", (unsigned long long)(semicap::pool_stats().wakes - wakes_b2b));
  {
    std::set<std::thread::id> who;
    std::mutex mu;
    pool_for(8, 8, 2, [&](int64_t, int64_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      std::lock_guard<std::mutex> g(mu);
      who.insert(std::this_thread::get_id());
    });
    CHECK(who.size() == 2, "8 chunks of 10 ms with two threads ran on %zu threads", who.size());
    CHECK(who.count(std::this_thread::get_id()) == 1, "the calling thread took no chunk");
  }

  // Jobs after the helpers fell asleep (the gap is longer than their spin): each wakes one and still runs once.
  const uint64_t wakes_before = semicap::pool_stats().wakes;
  for (int rep = 0; rep < 20; ++rep) {
    std::this_thread::sleep_for(std::chrono::microseconds(semicap::pool_stats().spin_us + 3000));
    covered_once(1000, 4, 2);
  }
  CHECK(semicap::pool_stats().wakes > wakes_before, "no sleeping helper was woken (%llu -> %llu)",
        (unsigned long long)wakes_before, (unsigned long long)semicap::pool_stats().wakes);

  // A caller with a PoolRestAfterJobs open: its helpers sleep right after each job (and every job still runs every
  // index once); other callers' helpers keep looking for work.
  {
    auto slow_job = [] {
      std::atomic<int64_t> sum{0};
      pool_for(8, 8, 2, [&](int64_t b, int64_t e) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        for (int64_t i = b; i < e; ++i) sum.fetch_add(i + 1);
      });
      CHECK(sum == 36, "a job of 8 indices summed %ld", (long)sum.load());
    };
    const uint64_t rests_before = semicap::pool_stats().rests;
    {
      semicap::PoolRestAfterJobs rest;
      for (int rep = 0; rep < 5; ++rep) {
        slow_job();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    const uint64_t rested = semicap::pool_stats().rests - rests_before;
    CHECK(rested >= 4 && rested <= 5, "5 jobs under PoolRestAfterJobs: the helper slept right after %llu of them", (unsigned long long)rested);
    for (int rep = 0; rep < 5; ++rep) {
      slow_job();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(semicap::pool_stats().rests - rests_before == rested, "jobs without PoolRestAfterJobs: helpers slept right after %llu",
          (unsigned long long)(semicap::pool_stats().rests - rests_before - rested));
    std::printf("rest after jobs: %llu of 5\n", (unsigned long long)rested);
  }

  // Concurrent callers: one has the helpers, the others run alone; every job still runs every index once.
  {
    const semicap::PoolStats before = semicap::pool_stats();
    std::vector<std::thread> callers;
    for (int c = 0; c < 4; ++c)
      callers.emplace_back([c] {
        for (int rep = 0; rep < 3000; ++rep) covered_once(64 + c, 4, 2 + c % 2);
      });
    for (auto& t : callers) t.join();
    const semicap::PoolStats after = semicap::pool_stats();
    CHECK((after.jobs - before.jobs) + (after.alone - before.alone) == 12000, "jobs %llu + alone %llu != 12000",
          (unsigned long long)(after.jobs - before.jobs), (unsigned long long)(after.alone - before.alone));
    std::printf("concurrent callers: %llu jobs shared, %llu alone\n", (unsigned long long)(after.jobs - before.jobs),
                (unsigned long long)(after.alone - before.alone));
  }

  // A chunk that asks for the pool again (from the caller or a helper) runs that work on its own thread.
  {
    std::atomic<int64_t> sum{0};
    pool_for(4, 4, 2, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        pool_for(100, 4, 2, [&](int64_t b2, int64_t e2) {
          for (int64_t j = b2; j < e2; ++j) sum.fetch_add(j);
        });
    });
    CHECK(sum == 4 * 4950, "nested jobs summed %ld", (long)sum.load());
  }

  // An exception in any chunk reaches the caller after the job ends; the pool keeps working.
  for (int rep = 0; rep < 50; ++rep) {
    bool thrown = false;
    try {
      pool_for(8, 8, 2, [&](int64_t b, int64_t) {
        if (b == rep % 8) throw std::runtime_error("chunk failed");
      });
    } catch (const std::runtime_error& e) {
      thrown = std::string(e.what()) == "chunk failed";
    }
    CHECK(thrown, "rep %d: the chunk's exception did not reach the caller", rep);
    covered_once(100, 4, 2);
  }

  const semicap::PoolStats s = semicap::pool_stats();
  std::printf("pool: %d helpers, %llu jobs, %llu alone, %llu wakes, spin %d us\n", s.helpers,
              (unsigned long long)s.jobs, (unsigned long long)s.alone, (unsigned long long)s.wakes, s.spin_us);
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
