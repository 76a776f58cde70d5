// cpu_kernels: cpuid, the ISA choice, packing and the dispatch to the per-ISA loops (cpu_kernels_<isa>.cc, all from
// cpu_kernels_impl.h). This file is compiled with the project's ordinary flags: it runs on every x86-64 CPU.
#include "cpu_kernels.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>
#include <algorithm>
#include <mutex>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace semicap::kernels {

// The per-ISA entry points (defined in cpu_kernels_<isa>.cc; the signatures must match, the linker checks them).
#define SEMICAP_KERNEL_DECL(ns)                                                                                     \
  namespace ns {                                                                                                    \
  int panel_width();                                                                                                \
  int segments();                                                                                                   \
  int64_t scratch_size(int64_t rows, int64_t K);                                                                    \
  void gemm(int wtype, const void* data, const float* scale, int64_t N, int64_t K, const float* x, int64_t rows,     \
            int64_t ldx, const float* bias, float* y, int64_t ldy, int64_t n_begin, int64_t n_end, int act,         \
            float* scratch, const float* xs, int64_t mb);                                                          \
  int64_t rows_per_block(int64_t rows, int64_t K);                                                                 \
  void pack_rows(int wtype, int64_t K, const float* x, int64_t rows, int64_t ldx, int64_t mb, float* xs,           \
                 int64_t part, int64_t parts);                                                                     \
  int pick(const float* x, int64_t n, int64_t* arg, float* sum);                                                   \
  void attend(const float* q, const float* k, const float* v, int64_t D, int64_t len, float scale, float* scores,  \
              float* out);                                                                                         \
  void layer_norm(const float* x, int64_t C, const float* w, const float* b, float eps, float* y);                 \
  void activate(const float* x, float* y, int64_t n, int act);                                                     \
  void attend_queries(const float* q, int64_t ldq, int64_t nq, const float* kt, int64_t ldk, const float* v,      \
                      int64_t ldv, int64_t D, int64_t Tk, bool causal, float scale, float* scores, float* out,     \
                      int64_t ldo);                                                                                \
  }
SEMICAP_KERNEL_DECL(portable)
SEMICAP_KERNEL_DECL(avx2)
SEMICAP_KERNEL_DECL(avx512)
SEMICAP_KERNEL_DECL(avx512bf16)
#undef SEMICAP_KERNEL_DECL

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Portable: return "portable";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512bf16";
  }
  return "?";
}

const char* wtype_name(WType t) {
  switch (t) {
    case WType::F32: return "float32";
    case WType::BF16: return "bfloat16";
    case WType::I8: return "int8";
  }
  return "?";
}

CpuFeatures cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  const unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 1) return f;
  __cpuid(1, a, b, c, d);
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  const bool fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  // What the OS saves on a context switch (XCR0): SSE+AVX state (bits 1, 2), AVX-512 opmask+ZMM (5, 6, 7), AMX
  // tile config+data (17, 18). An instruction set whose registers the OS does not save is not usable.
  uint64_t xcr0 = 0;
  if (osxsave) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  }
  const bool os_avx = avx && (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;
  f.fma = os_avx && fma;
  f.f16c = os_avx && f16c;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned max_sub = a;
    f.avx2 = os_avx && ((b >> 5) & 1);
    f.avx512f = os_avx512 && ((b >> 16) & 1);
    f.avx512dq = os_avx512 && ((b >> 17) & 1);
    f.avx512bw = os_avx512 && ((b >> 30) & 1);
    f.avx512vl = os_avx512 && ((b >> 31) & 1);
    f.avx512_vnni = os_avx512 && ((c >> 11) & 1);
    f.amx_bf16 = os_amx && ((d >> 22) & 1);
    f.amx_tile = os_amx && ((d >> 24) & 1);
    f.amx_int8 = os_amx && ((d >> 25) & 1);
    if (max_sub >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      f.avx_vnni = os_avx && ((a >> 4) & 1);
      f.avx512_bf16 = os_avx512 && ((a >> 5) & 1);
    }
  }
#endif
  return f;
}

Isa choose_isa(const CpuFeatures& f, const char* request) {
  Isa best = Isa::Portable;
  if (f.avx2 && f.fma && f.f16c) best = Isa::Avx2;
  if (best == Isa::Avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) best = Isa::Avx512;
  if (best == Isa::Avx512 && f.avx512_bf16) best = Isa::Avx512Bf16;
  if (!request) return best;
  Isa want;
  if (std::strcmp(request, "portable") == 0) want = Isa::Portable;
  else if (std::strcmp(request, "avx2") == 0) want = Isa::Avx2;
  else if (std::strcmp(request, "avx512") == 0) want = Isa::Avx512;
  else if (std::strcmp(request, "avx512bf16") == 0) want = Isa::Avx512Bf16;
  else return best;  // unset, empty or unknown: the best
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

namespace {
Isa best_isa() {
  static const Isa isa = choose_isa(cpu_features(), nullptr);
  return isa;
}
int panel_for(Isa isa) {
  switch (isa) {
    case Isa::Portable: return portable::panel_width();
    case Isa::Avx2: return avx2::panel_width();
    case Isa::Avx512: return avx512::panel_width();
    case Isa::Avx512Bf16: return avx512bf16::panel_width();
  }
  return 0;
}
int segments_for(Isa isa) {
  switch (isa) {
    case Isa::Portable: return portable::segments();
    case Isa::Avx2: return avx2::segments();
    case Isa::Avx512: return avx512::segments();
    case Isa::Avx512Bf16: return avx512bf16::segments();
  }
  return 1;
}

// Where element (n, k) of W lies in the packed array (see the layout in cpu_kernels_impl.h): K in `seg` segments,
// each holding every panel's rows of that segment in turn.
struct Layout {
  int64_t P, np;
  std::vector<int64_t> koff, klen;  // per k: (np * ks + (k - ks)) * P, and the length of k's segment
  Layout(int64_t N, int64_t K, int64_t panel, int seg) : P(panel), np((N + panel - 1) / panel), koff(K), klen(K) {
    int64_t ks = 0;
    for (int s = 0; s < seg; ++s) {
      const int64_t len = K / seg + (s < K % seg ? 1 : 0);
      for (int64_t k = ks; k < ks + len; ++k) {
        koff[k] = (np * ks + (k - ks)) * P;
        klen[k] = len;
      }
      ks += len;
    }
  }
  int64_t at(int64_t n, int64_t k) const { return koff[k] + (n / P) * klen[k] * P + n % P; }
};
size_t elem_size(WType t) { return t == WType::F32 ? 4 : (t == WType::BF16 ? 2 : 1); }
// bfloat16 weights for VDPBF16PS (see cpu_kernels_impl.h): laid out as ceil(K / 2) rows of 32-bit pairs.
bool pair_layout(WType t, Isa isa) { return t == WType::BF16 && isa == Isa::Avx512Bf16; }

// The kernels' memory (packed weights, per-thread scratch), zeroed, 64-byte aligned. Blocks of 64 KiB or more are
// carved one after another out of large mappings that start on a 2 MiB boundary and ask for transparent huge pages
// ("madvise" mode is the common default), so every weight, whatever its size, streams from 2 MiB pages and no block
// is rounded up to one. The TLB then misses 512x less often, and under a VM's nested paging a miss is dear (Zen 5 VM,
// CLIP b8 at one thread, interleaved runs, per 400-row product, medians / p90 in ms): weights of 4 MiB or more on
// their own 2 MiB-aligned blocks and the rest on 4 KiB pages (before): 768 x 768 2.76-2.93 / 5.4-6.7; each weight on
// its own mapping, whole 2 MiB pages huge, its tail on 4 KiB pages: 2.67-3.01 / 3.0-3.4, and 768 x 3072 0.1-1 ms
// slower than with whole pages; every block rounded up to whole 2 MiB pages: 2.65-2.70 / 2.8-2.9 (CLIP b8
// 430-451 ms against 479-522), but ~10% more resident memory for the captioner. Smaller blocks come from malloc.
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kArenaMin = size_t{64} << 10;   // smaller blocks: malloc
constexpr size_t kChunk = size_t{64} << 20;      // a mapping's size, unless one block needs more
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// The large blocks: a block is taken from the current mapping's unused end (never from space freed before, so
// what is handed out is always still zero). Freeing a block gives the whole 2 MiB pages inside it back to the system
// at once, and a mapping whose blocks are all freed is unmapped (a disposed model's weights leave no memory behind).
class Arena {
 public:
  static Arena& instance() {
    static Arena* a = new Arena;  // never destroyed: a weight may be freed during static destruction
    return *a;
  }

  void* take(size_t bytes) {
    const size_t n = round_up(bytes, 64);
    std::lock_guard<std::mutex> lock(mu_);
    Chunk* c = current_ >= 0 ? &chunks_[current_] : nullptr;
    if (!c || c->end - c->next < n) {
      const size_t len = std::max(kChunk, round_up(n, kHugePage));
      // Map 2 MiB more than the chunk, keep the part from the first 2 MiB boundary.
      void* m = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) throw std::bad_alloc();
      const uintptr_t base = reinterpret_cast<uintptr_t>(m), start = round_up(base, kHugePage);
      if (start > base) munmap(m, start - base);
      if (base + kHugePage > start) munmap(reinterpret_cast<void*>(start + len), base + kHugePage - start);
#ifdef MADV_HUGEPAGE
      madvise(reinterpret_cast<void*>(start), len, MADV_HUGEPAGE);  // a hint: ignored where THP is off
#endif
      // The new mapping stays current unless the old one has more room left (a block larger than a chunk).
      const bool keep_old = c && c->end - c->next > len - n;
      chunks_.push_back({start, start + len, start, 0});
      if (!keep_old) current_ = static_cast<int>(chunks_.size()) - 1;
      c = &chunks_.back();
    }
    void* p = reinterpret_cast<void*>(c->next);
    c->next += n;
    ++c->live;
    return p;
  }

  void give(void* p, size_t bytes) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + round_up(bytes, 64);
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < chunks_.size(); ++i) {
      Chunk& c = chunks_[i];
      if (b < c.begin || b >= c.end) continue;
      if (--c.live == 0) {
        munmap(reinterpret_cast<void*>(c.begin), c.end - c.begin);
        chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(i));
        const int j = static_cast<int>(i);
        current_ = current_ == j ? -1 : (current_ > j ? current_ - 1 : current_);
      } else {
        const uintptr_t pb = round_up(b, kHugePage), pe = e / kHugePage * kHugePage;
        if (pe > pb) madvise(reinterpret_cast<void*>(pb), pe - pb, MADV_DONTNEED);
      }
      return;
    }
  }

 private:
  struct Chunk {
    uintptr_t begin, end, next;
    int64_t live;
  };
  std::mutex mu_;
  std::vector<Chunk> chunks_;  // a few: one per 64 MiB of weights
  int current_ = -1;
};

void* alloc64(size_t bytes) {
  if (bytes >= kArenaMin) return Arena::instance().take(bytes);
  const size_t n = round_up(bytes ? bytes : 1, 64);
  void* p = std::aligned_alloc(64, n);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, n);
  return p;
}

// Frees what alloc64(bytes) returned (the same bytes).
void free64(void* p, size_t bytes) {
  if (!p) return;
  if (bytes >= kArenaMin) Arena::instance().give(p, bytes);
  else std::free(p);
}

// Per-thread working memory of the products (packed rows of x, a widened panel slice): grows, never shrinks; freed
// when the thread ends.
struct Scratch {
  float* p = nullptr;
  int64_t n = 0;
  ~Scratch() { free64(p, static_cast<size_t>(n) * sizeof(float)); }
};
float* grow(Scratch& s, int64_t floats) {
  if (floats > s.n) {
    free64(s.p, static_cast<size_t>(s.n) * sizeof(float));
    s.p = nullptr;
    s.n = 0;
    s.p = static_cast<float*>(alloc64(static_cast<size_t>(floats) * sizeof(float)));
    s.n = floats;
  }
  return s.p;
}
float* thread_scratch(int64_t floats) {
  thread_local Scratch s;
  return grow(s, floats);
}

uint16_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
  u += 0x7FFFu + ((u >> 16) & 1);  // round to nearest even (overflow to Inf is the right rounding)
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}
}  // namespace

Isa active_isa() {
  static const Isa isa = choose_isa(cpu_features(), std::getenv("SEMICAP_CPU_ISA"));
  return isa;
}

PackedWeight::~PackedWeight() {
  free64(data, data_bytes);
  free64(scale, scale_bytes());
}

size_t PackedWeight::scale_bytes() const {
  return panel > 0 ? static_cast<size_t>((N + panel - 1) / panel * panel) * sizeof(float) : 0;
}

size_t PackedWeight::bytes() const { return data_bytes + (scale ? static_cast<size_t>(N) * sizeof(float) : 0); }

std::unique_ptr<PackedWeight> pack(const float* w, int64_t N, int64_t K, bool w_is_kn, int64_t ldw, WType type,
                                   Isa isa) {
  if (N < 1 || K < 1) throw std::invalid_argument("cpu_kernels::pack: N and K must be >= 1");
  if (ldw < (w_is_kn ? N : K))
    throw std::invalid_argument("cpu_kernels::pack: ldw " + std::to_string(ldw) + " is shorter than a row (" +
                                std::to_string(w_is_kn ? N : K) + ")");
  if (!w) throw std::invalid_argument("cpu_kernels::pack: null weight");
  if (type != WType::F32 && type != WType::BF16 && type != WType::I8)
    throw std::invalid_argument("cpu_kernels::pack: unknown weight type");
  if (isa != Isa::Portable && isa != Isa::Avx2 && isa != Isa::Avx512 && isa != Isa::Avx512Bf16)
    throw std::invalid_argument("cpu_kernels::pack: unknown isa");
  const int P = panel_for(isa), V = P / 2;
  const int64_t np = (N + P - 1) / P;
  if (K > (int64_t(1) << 40) / (np * P)) throw std::invalid_argument("cpu_kernels::pack: weight too large");
  auto pw = std::make_unique<PackedWeight>();
  pw->type = type;
  pw->isa = isa;
  pw->N = N;
  pw->K = K;
  pw->panel = P;
  const int64_t K2 = (K + 1) / 2;
  pw->data_bytes = pair_layout(type, isa) ? static_cast<size_t>(np * P * K2) * 4
                                          : static_cast<size_t>(np * P * K) * elem_size(type);
  pw->data = alloc64(pw->data_bytes);
  auto at = [&](int64_t n, int64_t k) { return w_is_kn ? w[k * ldw + n] : w[n * ldw + k]; };
  // Visits every (n, k) in the source's memory order.
  auto each = [&](auto&& f) {
    if (w_is_kn) {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) f(n, k);
    } else {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) f(n, k);
    }
  };
  const Layout lay(N, K, P, segments_for(isa));
  // Visits every (n, k) in the packed order (panel by panel, each panel row's columns side by side), handing over
  // the destination index: the writes are sequential, and each panel row is read from at most P source rows
  // (measured ~3x faster than scattering in the source's order for [N, K] weights).
  auto dest_order = [&](auto&& f) {
    for (int64_t p = 0; p < np; ++p) {
      const int64_t n0 = p * P, nc = std::min<int64_t>(P, N - n0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t base = lay.at(n0, k);
        for (int64_t j = 0; j < nc; ++j) f(n0 + j, k, base + j, j);
      }
    }
  };
  if (type == WType::F32) {
    repack_f32(*pw, w, w_is_kn, ldw, 0, np);
  } else if (pair_layout(type, isa)) {
    // Pair row i of panel p: word j (two uint16, low first) = W(n0 + j, 2i), W(n0 + j, 2i + 1); 0 past an odd K.
    uint16_t* d = static_cast<uint16_t*>(pw->data);
    const Layout lay2(N, K2, P, segments_for(isa));
    for (int64_t p = 0; p < np; ++p) {
      const int64_t n0 = p * P, nc = std::min<int64_t>(P, N - n0);
      for (int64_t i = 0; i < K2; ++i) {
        uint16_t* row = d + 2 * lay2.at(n0, i);
        for (int64_t j = 0; j < nc; ++j) {
          row[2 * j] = to_bf16(at(n0 + j, 2 * i));
          if (2 * i + 1 < K) row[2 * j + 1] = to_bf16(at(n0 + j, 2 * i + 1));
        }
      }
    }
  } else if (type == WType::BF16) {
    uint16_t* d = static_cast<uint16_t*>(pw->data);
    // Within a panel row, word j holds columns j (low half) and V + j (high half): see cpu_kernels_impl.h.
    dest_order([&](int64_t n, int64_t k, int64_t i, int64_t j) {
      d[i - j + (j < V ? 2 * j : 2 * (j - V) + 1)] = to_bf16(at(n, k));
    });
  } else {
    int8_t* d = static_cast<int8_t*>(pw->data);
    pw->scale = static_cast<float*>(alloc64(pw->scale_bytes()));  // padding: 0
    float* s = pw->scale;
    std::vector<float> amax(static_cast<size_t>(N), 0.f);
    each([&](int64_t n, int64_t k) {
      const float a = std::fabs(at(n, k));
      if (std::isfinite(a) && a > amax[n]) amax[n] = a;  // non-finite weights do not set the scale
    });
    for (int64_t n = 0; n < N; ++n) s[n] = amax[n] > 0.f ? amax[n] / 127.f : 1.f;
    dest_order([&](int64_t n, int64_t k, int64_t i, int64_t) {
      float q = std::nearbyint(at(n, k) / s[n]);  // the default rounding mode: to nearest even
      if (std::isnan(q)) q = 0.f;               // NaN weights become 0, +-Inf +-127
      q = q > 127.f ? 127.f : (q < -127.f ? -127.f : q);
      d[i] = static_cast<int8_t>(q);
    });
  }
  return pw;
}

void repack_f32(PackedWeight& pw, const float* w, bool w_is_kn, int64_t ldw, int64_t p0, int64_t p1) {
  const int64_t N = pw.N, K = pw.K, P = pw.panel;
  if (pw.type != WType::F32 || !pw.data || N < 1 || K < 1 || P != panel_for(pw.isa))
    throw std::invalid_argument("cpu_kernels::repack_f32: not a float32 packed weight");
  const int64_t np = (N + P - 1) / P;
  if (p0 < 0 || p1 > np || p0 > p1) throw std::invalid_argument("cpu_kernels::repack_f32: bad panel range");
  if (!w || ldw < (w_is_kn ? N : K)) throw std::invalid_argument("cpu_kernels::repack_f32: null weight or short rows");
  if (pw.data_bytes < static_cast<size_t>(np * P * K) * sizeof(float))
    throw std::invalid_argument("cpu_kernels::repack_f32: packed memory too small");
  float* d = static_cast<float*>(pw.data);
  const Layout lay(N, K, P, segments_for(pw.isa));
  // Panel by panel, each panel row's columns side by side: sequential writes. [K, N] rows are copied P columns at a
  // time; an [N, K] weight is read from the panel's P rows at once (each of their cache lines serves 16 k in turn).
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * P, nc = std::min<int64_t>(P, N - n0);
    for (int64_t k = 0; k < K; ++k) {
      float* row = d + lay.at(n0, k);
      if (w_is_kn) {
        std::memcpy(row, w + k * ldw + n0, nc * sizeof(float));
      } else {
        const float* src = w + n0 * ldw + k;
        for (int64_t j = 0; j < nc; ++j) row[j] = src[j * ldw];
      }
      for (int64_t j = nc; j < P; ++j) row[j] = 0.f;  // a last panel's padding (memory may be reused)
    }
  }
}

namespace {
void check_runs(const char* fn, const PackedWeight& w) {
  if (static_cast<int>(w.isa) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("cpu_kernels::") + fn + ": weight packed for " + isa_name(w.isa) +
                                ", which this CPU does not run");
}

void check_product(const char* fn, int64_t rows, const PackedWeight& w, int64_t n_begin, int64_t n_end, Act act) {
  if (rows < 0 || n_begin < 0 || n_end > w.N || n_begin > n_end || w.panel <= 0 || n_begin % w.panel != 0)
    throw std::invalid_argument(std::string("cpu_kernels::") + fn + ": bad column range [" + std::to_string(n_begin) +
                                ", " + std::to_string(n_end) + ") for N " + std::to_string(w.N) + ", panel " +
                                std::to_string(w.panel));
  check_runs(fn, w);
  if (act != Act::None && act != Act::QuickGelu && act != Act::GeluTanh)
    throw std::invalid_argument(std::string("cpu_kernels::") + fn + ": unknown activation");
}

// Weight-type codes of the ISA entry points: 0 float32, 1 bfloat16, 2 int8, 3 int8 through bf16 pairs.
int wtype_code(const PackedWeight& w) {
  return w.type == WType::I8 && w.i8_dot && w.isa == Isa::Avx512Bf16 ? 3 : static_cast<int>(w.type);
}

// xs: rows packed by pack_rows in blocks of mb, or null (each call packs x into its thread's scratch). With xs the
// scratch holds only what a product needs besides x (a widened int8 panel): the scratch of 0 rows.
void run_gemm(const float* x, int64_t rows, int64_t ldx, const PackedWeight& w, const float* bias, float* y,
              int64_t ldy, int64_t n_begin, int64_t n_end, Act act, const float* xs, int64_t mb) {
  const int t = wtype_code(w);
  const int a = static_cast<int>(act);
  const int64_t sr = xs ? 0 : rows;
  switch (w.isa) {
    case Isa::Portable: {
      float* s = thread_scratch(portable::scratch_size(sr, w.K));
      portable::gemm(t, w.data, w.scale, w.N, w.K, x, rows, ldx, bias, y, ldy, n_begin, n_end, a, s, xs, mb);
      break;
    }
    case Isa::Avx2: {
      float* s = thread_scratch(avx2::scratch_size(sr, w.K));
      avx2::gemm(t, w.data, w.scale, w.N, w.K, x, rows, ldx, bias, y, ldy, n_begin, n_end, a, s, xs, mb);
      break;
    }
    case Isa::Avx512: {
      float* s = thread_scratch(avx512::scratch_size(sr, w.K));
      avx512::gemm(t, w.data, w.scale, w.N, w.K, x, rows, ldx, bias, y, ldy, n_begin, n_end, a, s, xs, mb);
      break;
    }
    case Isa::Avx512Bf16: {
      float* s = thread_scratch(avx512bf16::scratch_size(sr, w.K));
      avx512bf16::gemm(t, w.data, w.scale, w.N, w.K, x, rows, ldx, bias, y, ldy, n_begin, n_end, a, s, xs, mb);
      break;
    }
  }
}
}  // namespace

void gemm_packed(const float* x, int64_t rows, int64_t ldx, const PackedWeight& w, const float* bias, float* y,
                 int64_t ldy, int64_t n_begin, int64_t n_end, Act act) {
  check_product("gemm_packed", rows, w, n_begin, n_end, act);
  if (rows > 0 && (ldx < w.K || ldy < n_end))
    throw std::invalid_argument("cpu_kernels::gemm_packed: ldx < K or ldy < n_end");
  if (rows == 0 || n_begin == n_end) return;
  run_gemm(x, rows, ldx, w, bias, y, ldy, n_begin, n_end, act, nullptr, 0);
}

int64_t packed_rows_floats(int64_t rows, int64_t K) { return rows <= 0 || K <= 0 ? 0 : (rows * K + 15) / 16 * 16; }

int64_t rows_per_block(const PackedWeight& w, int64_t rows) {
  if (rows <= 0) return 1;
  switch (w.isa) {
    case Isa::Portable: return portable::rows_per_block(rows, w.K);
    case Isa::Avx2: return avx2::rows_per_block(rows, w.K);
    case Isa::Avx512: return avx512::rows_per_block(rows, w.K);
    case Isa::Avx512Bf16: return avx512bf16::rows_per_block(rows, w.K);
  }
  return 1;
}

void pack_rows(const float* x, int64_t rows, int64_t ldx, const PackedWeight& w, int64_t block, float* xs, int part,
               int parts) {
  if (rows < 0 || (rows > 0 && ldx < w.K) || block < 1 || parts < 1 || part < 0 || part >= parts || (rows > 0 && !xs))
    throw std::invalid_argument("cpu_kernels::pack_rows: bad rows, stride, block, buffer or part");
  check_runs("pack_rows", w);
  if (rows == 0) return;
  const int t = wtype_code(w);
  switch (w.isa) {
    case Isa::Portable: portable::pack_rows(t, w.K, x, rows, ldx, block, xs, part, parts); break;
    case Isa::Avx2: avx2::pack_rows(t, w.K, x, rows, ldx, block, xs, part, parts); break;
    case Isa::Avx512: avx512::pack_rows(t, w.K, x, rows, ldx, block, xs, part, parts); break;
    case Isa::Avx512Bf16: avx512bf16::pack_rows(t, w.K, x, rows, ldx, block, xs, part, parts); break;
  }
}

void gemm_packed_rows(const float* xs, int64_t rows, int64_t block, const PackedWeight& w, const float* bias, float* y,
                      int64_t ldy, int64_t n_begin, int64_t n_end, Act act) {
  check_product("gemm_packed_rows", rows, w, n_begin, n_end, act);
  if (rows > 0 && (ldy < n_end || !xs || block < 1))
    throw std::invalid_argument("cpu_kernels::gemm_packed_rows: ldy < n_end, no rows or a bad block");
  if (rows == 0 || n_begin == n_end) return;
  run_gemm(nullptr, rows, w.K, w, bias, y, ldy, n_begin, n_end, act, xs, block);
}

float* thread_rows_scratch(int64_t floats) {
  thread_local Scratch s;  // apart from thread_scratch: the helpers' products read it while the owner runs its own
  return grow(s, floats);
}

bool greedy_pick(const float* x, int64_t n, int64_t* arg, float* logp, Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("cpu_kernels::greedy_pick: ") + isa_name(isa) + " does not run on this CPU");
  if (!x || n <= 0) return false;
  float s = 0.f;
  int ok = 0;
  switch (isa) {
    case Isa::Portable: ok = portable::pick(x, n, arg, &s); break;
    case Isa::Avx2: ok = avx2::pick(x, n, arg, &s); break;
    case Isa::Avx512: ok = avx512::pick(x, n, arg, &s); break;
    case Isa::Avx512Bf16: ok = avx512bf16::pick(x, n, arg, &s); break;
  }
  if (!ok) return false;
  *logp = -std::log(s);  // x[arg] - max is 0
  return true;
}

void attend(const float* q, const float* k, const float* v, int64_t D, int64_t len, float* scores, float* out, Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("cpu_kernels::attend: ") + isa_name(isa) + " does not run on this CPU");
  if (!q || !k || !v || !scores || !out || D < 1 || len < 1)
    throw std::invalid_argument("cpu_kernels::attend: null buffer, or D or len below 1");
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  switch (isa) {
    case Isa::Portable: portable::attend(q, k, v, D, len, scale, scores, out); break;
    case Isa::Avx2: avx2::attend(q, k, v, D, len, scale, scores, out); break;
    case Isa::Avx512: avx512::attend(q, k, v, D, len, scale, scores, out); break;
    case Isa::Avx512Bf16: avx512bf16::attend(q, k, v, D, len, scale, scores, out); break;
  }
}

int64_t attend_keys_stride(int64_t Tk) { return (Tk + 15) / 16 * 16; }

void attend_queries(const float* q, int64_t ldq, int64_t nq, const float* kt, int64_t ldk, const float* v, int64_t ldv,
                    int64_t D, int64_t Tk, bool causal, float* scores, float* out, int64_t ldo, Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("cpu_kernels::attend_queries: ") + isa_name(isa) + " does not run on this CPU");
  if (!q || !kt || !v || !scores || !out || D < 1 || Tk < 1 || nq < 0 || (causal && nq > Tk) || ldq < D || ldv < D ||
      ldo < D || ldk < attend_keys_stride(Tk))
    throw std::invalid_argument("cpu_kernels::attend_queries: null buffer, D or Tk below 1, nq below 0 (or above Tk when "
                                "causal), a row stride below D, or ldk below attend_keys_stride(Tk)");
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  switch (isa) {
    case Isa::Portable: portable::attend_queries(q, ldq, nq, kt, ldk, v, ldv, D, Tk, causal, scale, scores, out, ldo); break;
    case Isa::Avx2: avx2::attend_queries(q, ldq, nq, kt, ldk, v, ldv, D, Tk, causal, scale, scores, out, ldo); break;
    case Isa::Avx512: avx512::attend_queries(q, ldq, nq, kt, ldk, v, ldv, D, Tk, causal, scale, scores, out, ldo); break;
    case Isa::Avx512Bf16:
      avx512bf16::attend_queries(q, ldq, nq, kt, ldk, v, ldv, D, Tk, causal, scale, scores, out, ldo);
      break;
  }
}

void layer_norm(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, float* y, Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("cpu_kernels::layer_norm: ") + isa_name(isa) + " does not run on this CPU");
  if (!x || !w || !b || !y || rows < 0 || C < 1 || !(eps >= 0.f))
    throw std::invalid_argument("cpu_kernels::layer_norm: null buffer, rows below 0, C below 1 or eps not >= 0");
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    switch (isa) {
      case Isa::Portable: portable::layer_norm(xr, C, w, b, eps, yr); break;
      case Isa::Avx2: avx2::layer_norm(xr, C, w, b, eps, yr); break;
      case Isa::Avx512: avx512::layer_norm(xr, C, w, b, eps, yr); break;
      case Isa::Avx512Bf16: avx512bf16::layer_norm(xr, C, w, b, eps, yr); break;
    }
  }
}

void activate(const float* x, float* y, int64_t n, Act act, Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("cpu_kernels::activate: ") + isa_name(isa) + " does not run on this CPU");
  if (!x || !y || n < 0 || static_cast<int>(act) < 0 || static_cast<int>(act) > 2)
    throw std::invalid_argument("cpu_kernels::activate: null buffer, n below 0 or an unknown activation");
  const int a = static_cast<int>(act);
  switch (isa) {
    case Isa::Portable: portable::activate(x, y, n, a); break;
    case Isa::Avx2: avx2::activate(x, y, n, a); break;
    case Isa::Avx512: avx512::activate(x, y, n, a); break;
    case Isa::Avx512Bf16: avx512bf16::activate(x, y, n, a); break;
  }
}

void unpack(const PackedWeight& w, float* out) {
  const int64_t N = w.N, K = w.K, P = w.panel, V = P / 2;
  if (pair_layout(w.type, w.isa)) {
    const Layout lay2(N, (K + 1) / 2, P, segments_for(w.isa));
    const uint16_t* d = static_cast<const uint16_t*>(w.data);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) out[n * K + k] = from_bf16(d[2 * lay2.at(n, k / 2) + k % 2]);
    return;
  }
  const Layout lay(N, K, P, segments_for(w.isa));
  for (int64_t n = 0; n < N; ++n) {
    const int64_t j = n % P;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = lay.at(n, k);
      float v;
      if (w.type == WType::F32) v = static_cast<const float*>(w.data)[i];
      else if (w.type == WType::BF16)
        v = from_bf16(static_cast<const uint16_t*>(w.data)[i - j + (j < V ? 2 * j : 2 * (j - V) + 1)]);
      else v = static_cast<float>(static_cast<const int8_t*>(w.data)[i]) * w.scale[n];
      out[n * K + k] = v;
    }
  }
}

}  // namespace semicap::kernels
