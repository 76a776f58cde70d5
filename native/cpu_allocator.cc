#include "cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

namespace semicap {
namespace {

constexpr size_t kMinCached = size_t(1) << 20;   // smaller blocks: libtorch's allocator, no caching
constexpr size_t kGranule = size_t(64) << 10;    // sizes are rounded up to 64 KiB so near-equal requests share
thread_local int t_bypass = 0;                   // CpuCacheBypass scopes alive on this thread

struct Block {
  c10::DataPtr memory;  // from the base allocator; freeing it returns the pages
  size_t size = 0;
  uint64_t age = 0;     // when it was put back (eviction takes the oldest first)
  std::multimap<size_t, Block*>::iterator by_size;
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(c10::Allocator* base) : base_(base) {}

  // libtorch 1.13 - 2.2 declare allocate() const, 2.3+ non-const; defining both overrides whichever exists.
  c10::DataPtr allocate(size_t n) const { return const_cast<CachingCpuAllocator*>(this)->take(n); }
  c10::DataPtr allocate(size_t n) { return take(n); }
  // Pure virtual since libtorch 2.3; unused (and harmless) before.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }
  // The context of every DataPtr is its data pointer (libtorch's raw_allocate / raw_deallocate rely on that), so
  // returning a block means looking it up by address.
  c10::DeleterFnPtr raw_deleter() const override { return &CachingCpuAllocator::give_back; }

  void set_limit(size_t limit) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = limit;
    evict_to(limit_);
  }
  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    evict_to(0);
  }
  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    CpuCacheStats s;
    s.hits = hits_;
    s.misses = misses_;
    s.cached_bytes = cached_;
    s.in_use_bytes = in_use_;
    s.limit_bytes = limit_;
    s.installed = true;
    return s;
  }

 private:
  static void give_back(void* ctx);

  c10::DataPtr take(size_t n) {
    if (n < kMinCached) return base_->allocate(n);
    const size_t want = (n + kGranule - 1) / kGranule * kGranule;
    Block* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(want);
      if (it != free_.end() && it->first <= want + want / 4) {  // at most 25% wasted
        block = it->second;
        free_.erase(it);
        by_age_.erase(block->age);
        cached_ -= block->size;
        ++hits_;
      } else {
        ++misses_;
      }
      if (block) {
        in_use_ += block->size;
        live_.emplace(block->memory.get(), block);
      }
    }
    if (!block) {
      block = new Block();
      try {
        block->memory = base_->allocate(want);
      } catch (...) {
        empty();  // out of memory: what the cache holds may be what is missing
        try {
          block->memory = base_->allocate(want);
        } catch (...) {
          delete block;
          throw;
        }
      }
      block->size = want;
      std::lock_guard<std::mutex> lock(mu_);
      in_use_ += want;
      live_.emplace(block->memory.get(), block);
    }
    void* data = block->memory.get();
    return c10::DataPtr(data, data, &CachingCpuAllocator::give_back, c10::Device(c10::DeviceType::CPU));
  }

  void put_back(void* data) {
    std::unique_lock<std::mutex> lock(mu_);
    auto found = live_.find(data);
    if (found == live_.end()) {  // a small block from the base allocator, released through raw_deallocate
      lock.unlock();
      if (c10::DeleterFnPtr base_delete = base_->raw_deleter()) base_delete(data);
      return;
    }
    Block* block = found->second;
    live_.erase(found);
    in_use_ -= block->size;
    if (block->size > limit_ || t_bypass > 0) {
      delete block;
      return;
    }
    evict_to(limit_ - block->size);
    block->age = ++clock_;
    block->by_size = free_.emplace(block->size, block);
    by_age_.emplace(block->age, block);
    cached_ += block->size;
  }

  // Frees the oldest cached blocks until at most `target` bytes are cached. Caller holds mu_.
  void evict_to(size_t target) {
    while (cached_ > target && !by_age_.empty()) {
      Block* b = by_age_.begin()->second;
      by_age_.erase(by_age_.begin());
      free_.erase(b->by_size);
      cached_ -= b->size;
      delete b;
    }
  }

  c10::Allocator* base_;
  std::mutex mu_;
  std::multimap<size_t, Block*> free_;
  std::map<uint64_t, Block*> by_age_;
  std::unordered_map<void*, Block*> live_;  // handed out, by data pointer
  size_t cached_ = 0, in_use_ = 0, limit_ = 0;
  uint64_t hits_ = 0, misses_ = 0, clock_ = 0;
};

CachingCpuAllocator* g_allocator = nullptr;  // lives for the process: tensors may be freed at any time
std::mutex g_install_mu;

void CachingCpuAllocator::give_back(void* data) { g_allocator->put_back(data); }

}  // namespace

CpuCacheBypass::CpuCacheBypass() { ++t_bypass; }
CpuCacheBypass::~CpuCacheBypass() { --t_bypass; }

void install_cpu_cache(size_t limit_bytes) {
  std::lock_guard<std::mutex> lock(g_install_mu);
  if (!g_allocator) {
    g_allocator = new CachingCpuAllocator(c10::GetCPUAllocator());
    g_allocator->set_limit(limit_bytes);
    c10::SetCPUAllocator(g_allocator, /*priority=*/1);
    return;
  }
  g_allocator->set_limit(limit_bytes);
}

void set_cpu_cache_limit(size_t limit_bytes) {
  std::lock_guard<std::mutex> lock(g_install_mu);
  if (g_allocator) g_allocator->set_limit(limit_bytes);
}

void empty_cpu_cache() {
  std::lock_guard<std::mutex> lock(g_install_mu);
  if (g_allocator) g_allocator->empty();
}

CpuCacheStats cpu_cache_stats() {
  std::lock_guard<std::mutex> lock(g_install_mu);
  return g_allocator ? g_allocator->stats() : CpuCacheStats{};
}

}  // namespace semicap
