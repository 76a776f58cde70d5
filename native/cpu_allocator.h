// A caching allocator for libtorch's CPU tensors (what CUDA gets from c10's caching allocator, for the CPU).
//
// Why: on this kind of VM the first touch of fresh memory costs ~16 us per 4 KiB page; training and batched
// inference allocate and free the same large buffers every step (logits, activations, gradients), and glibc hands
// anything over its mmap threshold (at most 32 MiB) back to the kernel on free, so every step paid for gigabytes of
// zero-filled pages. Blocks of at least 1 MiB are kept on free and reused for requests of about their size; smaller
// ones go straight to libtorch's own allocator.
#pragma once
#include <cstddef>
#include <cstdint>

namespace semicap {

struct CpuCacheStats {
  uint64_t hits = 0, misses = 0;          // large allocations served from the cache / from the system
  size_t cached_bytes = 0;                // free blocks held now
  size_t in_use_bytes = 0;                // large blocks handed out and not yet freed
  size_t limit_bytes = 0;                 // most free bytes the cache keeps (0: caching off)
  bool installed = false;
};

// Installs the allocator as libtorch's CPU allocator (once per process; later calls only change the limit).
// limit_bytes: the most free memory kept for reuse; 0 turns caching off (every block goes back on free).
void install_cpu_cache(size_t limit_bytes);
void set_cpu_cache_limit(size_t limit_bytes);
// Returns every cached free block to the system.
void empty_cpu_cache();
CpuCacheStats cpu_cache_stats();

// While one is alive on a thread, the large blocks that thread frees go back to the system instead of into the
// cache. A model load frees its parameters' placeholder storage (allocated at construction, never written) as the
// checkpoint's file mapping takes its place; cached, those blocks were reused by later tensors and touched page by
// page, so a loaded captioner's RSS crept up by hundreds of MB as it served (measured: +300 MB over 25 captions).
class CpuCacheBypass {
 public:
  CpuCacheBypass();
  ~CpuCacheBypass();
  CpuCacheBypass(const CpuCacheBypass&) = delete;
  CpuCacheBypass& operator=(const CpuCacheBypass&) = delete;
};

}  // namespace semicap
