#include "packed.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__x86_64__)
#include <emmintrin.h>  // (SSE2, part of x86-64)
#endif

#include "env.h"
#include "errors.h"

namespace semicap {
namespace {

using kernels::WType;

// SEMICAP_CPU_GEMM=kernel|blas forces every float32 product one way; SEMICAP_NO_CPU_GEMM=1 is the same as blas.
enum class F32Mode { Auto, Kernel, Blas };
F32Mode f32_mode() {
  static const F32Mode mode = [] {
    if (env_flag("SEMICAP_NO_CPU_GEMM")) return F32Mode::Blas;
    const char* v = std::getenv("SEMICAP_CPU_GEMM");
    if (v && std::strcmp(v, "kernel") == 0) return F32Mode::Kernel;
    if (v && std::strcmp(v, "blas") == 0) return F32Mode::Blas;
    return F32Mode::Auto;
  }();
  return mode;
}

// Rows are bucketed by powers of two: 1, 2-4, 5-8, ..., 257-512, 513+ (bucket 0, 1, 2, ..., 8, 9). The index keys
// the lookup every product makes (no string on the decoding path); the label is for reports and the cache file.
constexpr int kBuckets = 10;
int rows_bucket(int64_t rows) {
  int b = 0;
  for (int64_t hi = 1; rows > hi && b < kBuckets - 1; hi = hi == 1 ? 4 : hi * 2) ++b;
  return b;
}
std::string bucket_label(int b) {
  if (b == 0) return "1";
  if (b == kBuckets - 1) return "513+";
  const int64_t hi = int64_t{4} << (b - 1), lo = b == 1 ? 2 : hi / 2 + 1;
  return std::to_string(lo) + "-" + std::to_string(hi);
}
int bucket_of_label(const std::string& label) {
  for (int b = 0; b < kBuckets; ++b)
    if (bucket_label(b) == label) return b;
  return -1;
}

using ChoiceKey = std::tuple<int, int, int64_t, int64_t, int>;  // type, rows bucket, K, N, threads

// Whether to split a product between threads is timed again, in later calls and later processes, until this many
// sessions have timed it; each keeps the fastest time seen per side. One session can catch the other vCPU of a VM
// busy (a neighbour, another request) and find the split no faster: on a Zen 3 VM such sessions left CLIP's
// 400-row products and the 9-16-row logits on one thread, CLIP b8 at two threads ~10% slower. Splitting or not
// never changes a result, so the re-timing is free to change the choice (BLAS against the kernels is decided once).
constexpr int kSplitChecks = 3;

// Choices are kept in a small text file per user so that a machine keeps making the same choice across processes
// (float32 results then do not depend on which side won a close race in this process). One line per choice:
// "v3 <machine> <type> <rows> <K> <N> <threads> <kernel|kernel1|blas> <kernel_us> <kernel1_us> <blas_us> <checks>",
// tab-separated; the machine field names the CPU, the kernels' ISA and revision and the BLAS core, so another CPU,
// BLAS or kernel loop measures again. A re-timed choice appends a line; the last line of a key wins. Lines that do
// not parse are ignored (v1 and v2 lines among them). SEMICAP_KERNEL_CACHE=<file> moves it, =off keeps choices in
// memory only.
std::string cache_path() {
  const char* v = std::getenv("SEMICAP_KERNEL_CACHE");
  if (v && *v) return std::strcmp(v, "off") == 0 || std::strcmp(v, "0") == 0 ? std::string() : std::string(v);
  std::string dir;
  if (const char* c = std::getenv("SEMICAP_CACHE"); c && *c) dir = c;
  else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) dir = std::string(x) + "/semicap";
  else if (const char* h = std::getenv("HOME"); h && *h) dir = std::string(h) + "/.cache/semicap";
  else return std::string();
  return dir + "/kernel-choices.tsv";
}

// Part of the machine field: raise it when the kernels' speed changes (a new loop), so that choices measured
// against the old kernels are measured again instead of kept.
constexpr const char* kKernelsRevision = "kernels-6";  // 5: splits on cpu_pool instead of OpenMP; 6: timed with cold weights

// The file's names for a weight type (kernels::wtype_name) and a path (path_name), back to their codes; -1: unknown.
int type_of_name(const std::string& s) {
  for (WType t : {WType::F32, WType::BF16, WType::I8})
    if (s == kernels::wtype_name(t)) return static_cast<int>(t);
  return -1;
}
int path_of_name(const std::string& s) {
  for (Path p : {Path::Kernel, Path::Kernel1, Path::Blas})
    if (s == path_name(p)) return static_cast<int>(p);
  return -1;
}

std::string machine_key() {
  std::string brand;
#if defined(__x86_64__) || defined(__i386__)
  unsigned r[12] = {0};
  if (__get_cpuid_max(0x80000000, nullptr) >= 0x80000004)
    for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
  brand.assign(reinterpret_cast<const char*>(r), sizeof(r));
  brand = brand.c_str();
#endif
  using Str = char* (*)();
  auto core = reinterpret_cast<Str>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  std::string key = brand + "|" + kernels::isa_name(kernels::active_isa()) + "|" + (core ? core() : "blas") + "|" +
                    kKernelsRevision;
  for (char& ch : key)
    if (ch == '\t' || ch == '\n' || ch == '\r') ch = ' ';
  return key;
}

struct Calibration {
  struct Entry {
    KernelChoice c;
    uint64_t calls = 0;     // lookups in this process (the first session counts as one)
    bool timing = false;    // a thread is re-timing the split now
  };
  std::mutex mu;
  std::map<ChoiceKey, Entry> choices;
  bool loaded = false;
  std::string path, machine;

  void load_file() {  // under mu
    loaded = true;
    path = cache_path();
    if (path.empty()) return;
    machine = machine_key();
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      std::vector<std::string> f;
      std::stringstream ss(line);
      std::string field;
      while (std::getline(ss, field, '\t')) f.push_back(field);
      if (f.size() != 12 || f[0] != "v3" || f[1] != machine) continue;
      const int type = type_of_name(f[2]), path = path_of_name(f[7]);
      if (type < 0 || path < 0) continue;
      try {
        KernelChoice c{f[2], f[3], std::stoll(f[4]), std::stoll(f[5]), std::stoi(f[6]), static_cast<Path>(path),
                       std::stod(f[8]), std::stod(f[9]), std::stod(f[10]), std::stoi(f[11])};
        const int bucket = bucket_of_label(c.rows);
        if (bucket < 0 || c.K <= 0 || c.N <= 0 || c.threads <= 0 || c.checks < 1 ||
            (type != static_cast<int>(WType::F32) && c.path == Path::Blas))
          continue;
        choices[ChoiceKey{type, bucket, c.K, c.N, c.threads}].c = c;  // the last line of a key wins
      } catch (...) {
      }
    }
  }

  void append(const KernelChoice& c) {  // under mu
    if (path.empty()) return;
    const std::string dir = path.substr(0, path.find_last_of('/'));
    if (!dir.empty() && dir != path) {
      const std::string parent = dir.substr(0, dir.find_last_of('/'));
      if (!parent.empty() && parent != dir) mkdir(parent.c_str(), 0755);
      mkdir(dir.c_str(), 0755);
    }
    std::ostringstream o;
    o << "v3\t" << machine << "\t" << c.type << "\t" << c.rows << "\t" << c.K << "\t" << c.N << "\t" << c.threads
      << "\t" << path_name(c.path) << "\t" << c.kernel_us << "\t" << c.kernel1_us << "\t" << c.blas_us << "\t"
      << c.checks << "\n";
    const std::string line = o.str();
    int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;  // a read-only home: choices stay in memory
    ssize_t n = ::write(fd, line.data(), line.size());  // one write: concurrent processes append whole lines
    (void)n;
    ::close(fd);
  }
};
Calibration& calibration() {
  static Calibration* c = new Calibration();  // never destroyed: products may run during exit
  return *c;
}

// Whether a product is big enough for its columns (or rows) to be split between threads at all.
bool splittable(int64_t rows, int64_t K, int64_t N) {
  return rows * N * K >= (int64_t{1} << 18) && inference_threads() > 1;
}

// The kernels over the packed weight; split (callers pass it only for splittable() products): columns split between
// threads by whole panels (rows when there are few), else all on the calling thread. Either way every output element gets the same arithmetic (the row tiles
// start at the same multiples of the tile height), so the choice never changes a result.
at::Tensor run_kernels(const at::Tensor& x, const kernels::PackedWeight& pw, const at::Tensor& bias, kernels::Act act,
                       bool split) {
  const int64_t K = pw.K, N = pw.N, rows = x.numel() / K;
  at::Tensor xc = x.reshape({rows, K}).contiguous();
  at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  at::Tensor y = at::empty({rows, N}, x.options());
  const float* xp = xc.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t P = pw.panel, panels = (N + P - 1) / P;
  const int threads = inference_threads();
  auto cols = [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    kernels::gemm_packed(xp + r0 * K, r1 - r0, K, pw, bp, yp + r0 * N, N, p0 * P, std::min(N, p1 * P), act);
  };
  constexpr int64_t kRowBlock = 48, kSharedRows = 48, kSharedBytes = int64_t{8} << 20;
  if (!split) {
    cols(0, rows, 0, panels);
  } else if (panels >= 4 * threads || rows < 2 * kRowBlock) {
    // One chunk of panels per thread (CLIP's 400 rows at two threads: with two chunks a thread, CLIP b8 260-279 ms
    // against 241-261 with one). With many rows x is packed once, all threads packing their share of it, and then
    // read by all: when every chunk packed all of x for itself, that was 7% of CLIP's samples at two threads (and
    // the share grows with the threads). Few rows (decoding) pack in microseconds: there a second job costs more.
    // Rows go in groups of whole row blocks (the blocks gemm_packed would use, so the same tiles and results), at
    // most kSharedBytes of packed x, which each calling thread keeps.
    if (rows >= kSharedRows) {
      const int64_t block = kernels::rows_per_block(pw, rows);
      const int64_t group = std::max<int64_t>(1, kSharedBytes / (block * K * 4)) * block;
      float* xs = kernels::thread_rows_scratch(kernels::packed_rows_floats(std::min(rows, group), K));
      for (int64_t r0 = 0; r0 < rows; r0 += group) {
        const int64_t gr = std::min(group, rows - r0);
        pool_for(threads, threads, threads, [&](int64_t b, int64_t e) {
          for (int64_t part = b; part < e; ++part)
            kernels::pack_rows(xp + r0 * K, gr, K, pw, block, xs, static_cast<int>(part), threads);
        });
        pool_for(panels, threads, threads, [&](int64_t p0, int64_t p1) {
          kernels::gemm_packed_rows(xs, gr, block, pw, bp, yp + r0 * N, N, p0 * P, std::min(N, p1 * P), act);
        });
      }
    } else {
      pool_for(panels, threads, threads, [&](int64_t p0, int64_t p1) { cols(0, rows, p0, p1); });
    }
  } else {
    const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
    pool_for(blocks, 2 * threads, threads,
             [&](int64_t b0, int64_t b1) { cols(b0 * kRowBlock, std::min(rows, b1 * kRowBlock), 0, panels); });
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

double micros_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

// Flushes a weight out of the caches before a timed product, so that the product reads it from memory as it does in
// use: a model's weights are read once per forward pass or decoding step, and a captioner's (GPT-2 124M: 500 MB
// float32) do not fit in any last-level cache. Timed hot, three times in a row, a 1-row 768x2304 product read its
// 7 MB from a Zen 3's L3 in 223 us on one thread and lost to the split (382 us, helper woken); in decoding the
// split won: 20 tokens at batch 1, two threads, 461-487 -> 371-384 ms. The flush is shared with the helpers, so
// that they are awake for the split, as they are between a decoding step's products. Weights larger than 64 MB
// cannot stay cached anyway and are left alone.
void flush_from_caches(const void* p, size_t bytes) {
#if defined(__x86_64__)
  if (p == nullptr || bytes == 0 || bytes > (size_t{64} << 20)) return;
  const char* c = static_cast<const char*>(p);
  const int64_t lines = static_cast<int64_t>((bytes + 63) / 64);
  share_work(lines, lines * 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) _mm_clflush(c + i * 64);
  });
  _mm_mfence();
#endif
}

}  // namespace

int inference_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

kernels::WType parse_wtype(const std::string& s) {
  if (s == "float32") return WType::F32;
  if (s == "bfloat16") return WType::BF16;
  if (s == "int8") return WType::I8;
  fail("E_CONFIG", "dtype must be 'float32', 'bfloat16' or 'int8', got '" + s + "'");
}

void PackedSlot::set_type(kernels::WType t) {
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int>(t) == type_.load()) return;
  type_ = static_cast<int>(t);
  packed_.reset();
}

void PackedSlot::set_i8_dot(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  if (on == i8_dot_.load()) return;
  i8_dot_ = on;
  packed_.reset();
}

void PackedSlot::drop() {
  std::lock_guard<std::mutex> lock(mu_);
  packed_.reset();
}

size_t PackedSlot::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return packed_ ? packed_->bytes() : 0;
}

std::shared_ptr<const kernels::PackedWeight> PackedSlot::get(const at::Tensor& w) {
  // A convolution's weight [out, in, kh, kw] is the matrix [out, in * kh * kw] (CLIP's patch embedding): a view
  // with the same storage and version counter.
  if (!kn_ && w.dim() > 2) return get(w.reshape({w.size(0), -1}));
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t version = static_cast<int64_t>(w._version());
  const WType type = static_cast<WType>(type_.load());
  if (packed_ && version_ == version && ptr_ == w.data_ptr() && packed_->type == type) return packed_;
  check(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_cpu(), "E_NATIVE", "packed weights must be float32 CPU matrices");
  at::Tensor wc = w.contiguous();
  const int64_t N = kn_ ? wc.size(1) : wc.size(0), K = kn_ ? wc.size(0) : wc.size(1);
  // A float32 copy nobody else holds (the slot's own lock is held, and readers only take copies through it), of the
  // same shape: laid out again in its own memory, threads sharing the panels. A weight being trained comes here
  // after every optimizer step (SCST's sampling); fresh memory would be faulted in and zeroed page by page first.
  if (packed_ && packed_.use_count() == 1 && type == WType::F32 && packed_->type == type && packed_->N == N &&
      packed_->K == K && packed_->isa == kernels::active_isa()) {
    auto& pw = const_cast<kernels::PackedWeight&>(*packed_);
    const float* src = wc.data_ptr<float>();
    const int64_t panels = (N + pw.panel - 1) / pw.panel;
    share_work(panels, N * K, [&](int64_t p0, int64_t p1) { kernels::repack_f32(pw, src, kn_, kn_ ? N : K, p0, p1); });
    version_ = version;
    ptr_ = w.data_ptr();
    return packed_;
  }
  packed_.reset();  // the old copy goes before the new one is made
  auto pw = kernels::pack(wc.data_ptr<float>(), N, K, kn_, kn_ ? N : K, type, kernels::active_isa());
  pw->i8_dot = i8_dot_.load();
  packed_ = std::move(pw);
  version_ = version;
  ptr_ = w.data_ptr();
  // A clean file-mapped original, just read by the packing (at load or at the weight's first product): the packed
  // copy stands for it.
  if (file_backed_ && version == 0) page_out(w);
  return packed_;
}

bool packing_used(kernels::WType type) { return type != WType::F32 || f32_mode() != F32Mode::Blas; }

namespace {
// What both packed paths need of their operands: a slot, float32 CPU x (not empty) and w (a matrix), x's last
// dimension w's inputs.
bool operands_fit(const at::Tensor& x, const at::Tensor& w, const PackedSlot* slot) {
  if (!slot || !x.is_cpu() || x.scalar_type() != at::kFloat || x.dim() == 0 || x.numel() == 0) return false;
  if (!w.is_cpu() || w.scalar_type() != at::kFloat || w.dim() != 2) return false;
  return x.size(-1) == (slot->w_is_kn() ? w.size(0) : w.size(1));
}
}  // namespace

bool packed_usable(const at::Tensor& x, const at::Tensor& w, const PackedSlot* slot) {
  if (c10::GradMode::is_enabled() || !operands_fit(x, w, slot)) return false;
  // A weight being trained is read through a float32 copy only: sampling with bfloat16 / int8 copies would draw
  // from another policy than the float32 one whose log-probabilities are trained.
  if (w.requires_grad() && slot->type() != WType::F32) return false;
  return slot->type() != WType::F32 || f32_mode() != F32Mode::Blas;
}

bool trained_usable(const at::Tensor& x, const at::Tensor& w, const PackedSlot* slot) {
  if (!c10::GradMode::is_enabled() || !operands_fit(x, w, slot) || slot->type() != WType::F32) return false;
  return f32_mode() != F32Mode::Blas && kernels::active_isa() != kernels::Isa::Portable;
}

const char* path_name(Path p) { return p == Path::Kernel ? "kernel" : p == Path::Kernel1 ? "kernel1" : "blas"; }

namespace {
thread_local ProductTape* t_recording = nullptr;
thread_local ProductTape* t_replaying = nullptr;
std::atomic<int64_t> g_replayed{0};
}  // namespace

int64_t ProductTape::total_replayed() { return g_replayed.load(); }

ProductTape::ProductTape(int64_t row0, int64_t rows, int64_t max_steps) : row0_(row0), rows_(rows), max_steps_(max_steps) {
  check(row0 >= 0 && rows >= 1 && max_steps >= 1, "E_NATIVE", "product tape: bad rows or steps");
}
ProductTape::Record::Record(ProductTape* t) : tape(t), outer(t_recording) {
  t_recording = t;
  if (t) t->begin_step();
}
ProductTape::Record::~Record() {
  if (tape) tape->end_step();
  t_recording = outer;
}
ProductTape::Replay::Replay(ProductTape* t) : outer(t_replaying) {
  t_replaying = t;
  if (t) t->call_ = 0;
}
ProductTape::Replay::~Replay() { t_replaying = outer; }
ProductTape* ProductTape::recording() { return t_recording; }
ProductTape* ProductTape::replaying() { return t_replaying; }

void ProductTape::begin_step() {
  if (steps_ >= max_steps_) broken_ = true;
  ++steps_;
  call_ = 0;
}

void ProductTape::end_step() {
  if (call_ != static_cast<int64_t>(entries_.size())) broken_ = true;  // a step with fewer calls than the first
}

void ProductTape::skip(const PackedSlot* slot) {
  if (broken_) return;
  if (steps_ == 1) entries_.push_back({slot, at::Tensor()});
  else if (call_ >= static_cast<int64_t>(entries_.size()) || entries_[call_].slot != slot) broken_ = true;
  else entries_[call_].kept = at::Tensor();  // skipped at one step: never replayed
  ++call_;
}

void ProductTape::record(const PackedSlot* slot, const at::Tensor& y) {
  if (broken_) return;
  const int64_t N = y.size(-1), R = y.numel() / std::max<int64_t>(N, 1);
  if (y.size(0) != R || R < row0_ + rows_ || y.scalar_type() != at::kFloat || !y.is_cpu()) {  // one position per row
    broken_ = true;
    return;
  }
  if (steps_ == 1) {
    entries_.push_back({slot, at::empty({rows_, max_steps_, N}, y.options())});
  } else if (call_ >= static_cast<int64_t>(entries_.size()) || entries_[call_].slot != slot ||
             (entries_[call_].kept.defined() && entries_[call_].kept.size(2) != N)) {
    broken_ = true;
    return;
  }
  Entry& e = entries_[call_++];
  if (e.kept.defined()) e.kept.select(1, steps_ - 1).copy_(y.reshape({R, N}).narrow(0, row0_, rows_));
}

at::Tensor ProductTape::replay(const PackedSlot* slot, const at::Tensor& x, int64_t N) {
  if (broken_ || call_ >= static_cast<int64_t>(entries_.size())) {
    broken_ = true;
    return at::Tensor();
  }
  const Entry& e = entries_[call_++];
  const bool fits = e.slot == slot && e.kept.defined() && e.kept.size(2) == N && x.dim() == 3 && x.size(0) == rows_ &&
                    x.size(1) == steps_;  // (a step past max_steps broke the tape)
  if (!fits) {
    if (e.slot != slot) broken_ = true;  // out of step with the decoding's calls: nothing after can match
    return at::Tensor();
  }
  g_replayed.fetch_add(1);
  return steps_ == max_steps_ ? e.kept : e.kept.narrow(1, 0, steps_).contiguous();
}

namespace {
at::Tensor product(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, PackedSlot& slot,
                   const std::function<at::Tensor()>& blas, kernels::Act act, bool kernels_only);
}  // namespace

at::Tensor packed_product(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, PackedSlot& slot,
                          const std::function<at::Tensor()>& blas, kernels::Act act, bool kernels_only) {
  ProductTape* tape = ProductTape::recording();
  if (!tape) return product(x, w, bias, slot, blas, act, kernels_only);
  ProductTape::Record pause(nullptr);  // (products inside this one are not the decoding's)
  const bool trained = w.requires_grad() || kernels_only;  // the kernels, never BLAS (whose callback applies act)
  if (act != kernels::Act::None && !trained) {
    tape->skip(&slot);
    return product(x, w, bias, slot, blas, act, kernels_only);
  }
  at::Tensor y = product(x, w, bias, slot, blas, kernels::Act::None, kernels_only);
  tape->record(&slot, y);
  if (act != kernels::Act::None) {  // the epilogue's activation, after the kept copy: bitwise the fused product
    const kernels::Isa isa = slot.get(w)->isa;
    float* p = y.data_ptr<float>();
    share_work(y.numel(), y.numel(), [&](int64_t i0, int64_t i1) { kernels::activate(p + i0, p + i0, i1 - i0, act, isa); });
  }
  return y;
}

namespace {
at::Tensor product(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, PackedSlot& slot,
                   const std::function<at::Tensor()>& blas, kernels::Act act, bool kernels_only) {
  auto pw = slot.get(w);
  const WType type = slot.type();
  const int64_t rows = x.numel() / pw->K;
  // A weight being trained, read without autograd (SCST's sampling): always the kernels, never BLAS, and nothing
  // timed or recorded. Its packed copy is renewed after every optimizer step, so a race against BLAS would be timed
  // on weights that are about to change; and the kernels' rows do not depend on the batch or the thread count, so
  // every rank of a data-parallel run samples what one process would. Split as this shape's choice says, else split.
  const bool trained = w.requires_grad() || kernels_only;
  const bool with_blas = type == WType::F32 && f32_mode() == F32Mode::Auto && !trained;
  const bool split = splittable(rows, pw->K, pw->N);
  if (!with_blas && !split) return run_kernels(x, *pw, bias, act, false);
  const int threads = at::get_num_threads();
  ChoiceKey key{static_cast<int>(type), rows_bucket(rows), pw->K, pw->N, threads};
  Calibration& cal = calibration();
  // (a choice kept for a bucket may meet a product of it too small to split)
  auto run = [&](Path p) { return p == Path::Blas ? blas() : run_kernels(x, *pw, bias, act, split && p == Path::Kernel); };
  // The split or the calling thread alone: the split must win by a margin (one thread leaves the other core to
  // other work: a second request, the event loop).
  auto split_or_not = [](double tk, double t1) { return tk * 1.05 < t1 ? Path::Kernel : Path::Kernel1; };
  // The kernels on the calling thread, and the split and BLAS when asked, three times each, alternating: the fastest
  // time per path (NaN: not timed) and its last output. On a shared machine other work only ever adds time, and
  // two runs each were seen to pick the slower side; the first BLAS run may fault the weight's pages back in.
  struct Timed {
    double us[3] = {std::nan(""), std::nan(""), std::nan("")};
    at::Tensor y[3];
  };
  auto time_paths = [&](Timed& t, bool with_split, bool with_blas_path) {  // three more runs a path into t
    for (int i = 0; i < 3; ++i)
      for (Path p : {Path::Kernel, Path::Kernel1, Path::Blas}) {
        if ((p == Path::Kernel && !with_split) || (p == Path::Blas && !with_blas_path)) continue;
        if (p == Path::Blas) flush_from_caches(w.data_ptr(), w.nbytes());
        else flush_from_caches(pw->data, pw->data_bytes);
        const auto t0 = std::chrono::steady_clock::now();
        t.y[static_cast<int>(p)] = run(p);
        double& us = t.us[static_cast<int>(p)];
        us = std::fmin(us, micros_since(t0));  // (fmin of NaN and a time is the time)
      }
  };
  // A choice made before: decided under the lock, run outside it (concurrent callers' products do not wait on
  // each other).
  Path known = Path::Kernel1;
  bool found = false, retime = false;
  {
    std::lock_guard<std::mutex> lock(cal.mu);
    if (!cal.loaded) cal.load_file();
    auto it = cal.choices.find(key);
    if (it != cal.choices.end()) {
      Calibration::Entry& e = it->second;
      const KernelChoice& c = e.c;
      found = true;
      if (!trained) ++e.calls;
      // BLAS chosen, but this process forces the kernels (SEMICAP_CPU_GEMM=kernel) or the weight is being trained:
      // the faster of the timed kernels.
      known = c.path == Path::Blas && !with_blas ? split_or_not(c.kernel_us, c.kernel1_us) : c.path;
      // Not settled: time the split again at this process's 1st, 16th and 256th call of the shape.
      retime = !trained && split && c.path != Path::Blas && c.checks < kSplitChecks && !e.timing &&
               (e.calls == 1 || e.calls == 16 || e.calls == 256);
      e.timing = e.timing || retime;
    }
  }
  if (found && !retime) return run(known);
  if (trained) return run(Path::Kernel);  // (split: the products too small to split returned above)
  if (retime) {
    Timed t;
    time_paths(t, true, false);
    std::lock_guard<std::mutex> lock(cal.mu);
    Calibration::Entry& e = cal.choices.at(key);
    KernelChoice& c = e.c;
    c.kernel_us = std::fmin(c.kernel_us, t.us[static_cast<int>(Path::Kernel)]);
    c.kernel1_us = std::fmin(c.kernel1_us, t.us[static_cast<int>(Path::Kernel1)]);
    c.path = split_or_not(c.kernel_us, c.kernel1_us);
    ++c.checks;
    e.timing = false;
    cal.append(c);
    return t.y[static_cast<int>(c.path)];
  }
  // First product of this shape: its result is the one returned, so every product of this shape takes the same
  // path. The candidates: the kernels split between the threads and on one thread (a memory-bound product on a VM's
  // second vCPU was measured no faster split: the join costs what the second stream gains), and BLAS for float32
  // unless forced either way.
  Timed t;
  time_paths(t, split, with_blas);
  // BLAS must win by a margin too: it reads the float32 original, which then stays resident beside the packed copy
  // (double the weight's memory), and a near tie is within what a shared machine's noise moves.
  auto decide = [&](const Timed& t) {
    const double tk = t.us[static_cast<int>(Path::Kernel)], t1 = t.us[static_cast<int>(Path::Kernel1)];
    const Path kernel_path = split ? split_or_not(tk, t1) : Path::Kernel1;
    const double best_kernel = kernel_path == Path::Kernel ? tk : t1;
    return with_blas && !(best_kernel <= t.us[static_cast<int>(Path::Blas)] * 1.05) ? Path::Blas : kernel_path;
  };
  // BLAS ahead after one round is believed only after a second (the fastest time per path over both): unlike the
  // split it is decided once, and one round on a noisy VM picked either side of the same product (Zen 5, one thread,
  // 1 x 768 x 2304: BLAS in 2 of 4 fresh processes, at 302-319 against 333-348 us; in decoding it then took 16% of
  // the time per token, ~240 us a product against the kernels' 160-210).
  if (decide(t) == Path::Blas) time_paths(t, split, true);
  const double tk = t.us[static_cast<int>(Path::Kernel)], t1 = t.us[static_cast<int>(Path::Kernel1)],
               tb = t.us[static_cast<int>(Path::Blas)];
  const Path path = decide(t);
  if (with_blas && path != Path::Blas && slot.file_backed()) page_out(w);  // the BLAS runs above read it back in
  {
    std::lock_guard<std::mutex> lock(cal.mu);
    // Settled at once when there is no split to time again (one thread) or BLAS won.
    const int checks = split && path != Path::Blas ? 1 : kSplitChecks;
    KernelChoice c{kernels::wtype_name(type), bucket_label(std::get<1>(key)), pw->K, pw->N, threads, path, tk, t1, tb, checks};
    if (cal.choices.emplace(key, Calibration::Entry{c, 1}).second) cal.append(c);
  }
  return t.y[static_cast<int>(path)];
}
}  // namespace

size_t page_out(const at::Tensor& w) {
#ifdef MADV_PAGEOUT
  if (!w.defined() || !w.is_cpu() || w.nbytes() == 0) return 0;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t b = reinterpret_cast<uintptr_t>(w.data_ptr()), e = b + w.nbytes();
  b = (b + page - 1) / page * page;
  e = e / page * page;
  if (e <= b) return 0;
  return madvise(reinterpret_cast<void*>(b), e - b, MADV_PAGEOUT) == 0 ? e - b : 0;
#else
  return 0;
#endif
}

std::vector<KernelChoice> kernel_choices() {
  Calibration& cal = calibration();
  std::lock_guard<std::mutex> lock(cal.mu);
  std::vector<KernelChoice> out;
  for (auto& [k, v] : cal.choices) out.push_back(v.c);
  return out;
}

}  // namespace semicap
