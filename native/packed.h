// float32 CPU inference through weights laid out once for the kernels of cpu_kernels.h, in float32, bfloat16 or
// int8. A PackedSlot belongs to one weight (a Linear, a Conv1D, GPT-2's logits); it packs lazily and repacks when
// the weight changes (version counter or storage): a weight being trained is repacked after each optimizer step
// (which bumps its version) when it is read without autograd, as SCST's sampling does (float32 slots only).
// For float32 the kernels compete with BLAS: the first product of each shape (rows bucket, K, N, threads) times
// both and keeps the faster (SEMICAP_CPU_GEMM=kernel|blas forces one); a weight being trained always takes the
// kernels. bfloat16 / int8 always use the kernels.
#pragma once
#include <ATen/ATen.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_pool.h"

namespace semicap {

// The threads CPU inference work may use from this thread: libtorch's intra-op count, 1 inside a parallel region.
int inference_threads();

// fn(begin, end) over [0, n): shared with cpu_pool's helpers (two chunks per thread) when `work` (multiply-adds or
// elements) reaches 2^16 and inference_threads() is above 1; below that (~15 us) handing half of it to a helper saves
// nothing, and the calling thread does it all.
template <class F>
void share_work(int64_t n, int64_t work, F&& fn) {
  const int threads = work < (int64_t{1} << 16) ? 1 : inference_threads();
  if (threads < 2) fn(int64_t{0}, n);
  else pool_for(n, 2 * threads, threads, fn);
}

class PackedSlot {
 public:
  explicit PackedSlot(bool w_is_kn) : kn_(w_is_kn) {}
  bool w_is_kn() const { return kn_; }
  kernels::WType type() const { return static_cast<kernels::WType>(type_.load()); }
  void set_type(kernels::WType t);
  // int8 products through bf16 pairs where the CPU has AVX512-BF16 (kernels::PackedWeight::i8_dot): for a model
  // whose products all have many rows (CLIP's tokens), set for every slot of that model.
  void set_i8_dot(bool on);
  // The packed form of w (packing it now when missing or stale). Thread-safe.
  std::shared_ptr<const kernels::PackedWeight> get(const at::Tensor& w);
  void drop();
  size_t bytes() const;
  // The weight's bytes are a clean file mapping that may be paged out while the packed copy serves.
  void set_file_backed(bool on) { file_backed_ = on; }
  bool file_backed() const { return file_backed_; }

 private:
  const bool kn_;
  std::atomic<int> type_{0};
  std::atomic<bool> i8_dot_{false};
  std::atomic<bool> file_backed_{false};
  mutable std::mutex mu_;
  std::shared_ptr<const kernels::PackedWeight> packed_;
  int64_t version_ = -1;
  const void* ptr_ = nullptr;
};

// Whether x times w may go through the slot: float32 CPU inference (grad mode off) on a float32 CPU weight, on a CPU
// and build where the kernels run.
bool packed_usable(const at::Tensor& x, const at::Tensor& w, const PackedSlot* slot);

// Whether weights of this type are ever read through slots (float32 with SEMICAP_CPU_GEMM=blas: never).
bool packing_used(kernels::WType type);

// y = act(x W^T + b) (Linear, w [N, K]) or act(x W + b) (Conv1D, w [K, N]), through the slot's packed weight or
// `blas` (which must apply act itself: the choice between the two times them as the caller gets them).
// kernels_only: the path of a weight being trained (the kernels, nothing timed or recorded) for any weight.
at::Tensor packed_product(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, PackedSlot& slot,
                          const std::function<at::Tensor()>& blas, kernels::Act act = kernels::Act::None,
                          bool kernels_only = false);

// Whether x times w may go through trained_product: autograd on, a float32 CPU weight whose slot is float32, on a
// CPU where the vector kernels run (not the portable loops), unless SEMICAP_CPU_GEMM=blas.
bool trained_usable(const at::Tensor& x, const at::Tensor& w, const PackedSlot* slot);

// x times w with autograd on (native/trained_product.cc): the forward through the slot's packed copy (the kernels,
// as for a weight being trained), the gradients through BLAS as libtorch's own products compute them.
at::Tensor trained_product(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, PackedSlot& slot);

// SCST's sampled decoding runs, step by step, the very products that the teacher-forced forward over its samples
// then runs again with autograd on: the same weights (the optimizer steps after the backward) on the same inputs
// (no dropout). A tape keeps them: while a Record scope is open on a thread (one decoding step), every product that
// thread runs through packed_product keeps rows [row0, row0 + rows) of its output, before its activation, at that
// step; while a Replay scope is open, trained_product's forward returns the kept outputs of its call instead of
// computing them (the backward is unchanged: it reads the forward's inputs and the weights). Calls are matched by
// their order within a step, checked against the layer (its slot) and the shapes: a call that does not match
// computes, and so do all after it. What replaying saves: the forward's products over the samples, a fifth of an
// SCST step. What it changes: float32 rounding only (the kept outputs were computed a step at a time).
class ProductTape {
 public:
  ProductTape(int64_t row0, int64_t rows, int64_t max_steps);
  struct Record {  // one decoding step
    explicit Record(ProductTape* tape);
    ~Record();
    ProductTape* tape;
    ProductTape* outer;
  };
  struct Replay {
    explicit Replay(ProductTape* tape);
    ~Replay();
    ProductTape* outer;
  };
  static ProductTape* recording();
  static ProductTape* replaying();
  // Recording: y = the call's output (rows x ... x N); a call whose output cannot be kept (skip) still takes its place.
  void record(const PackedSlot* slot, const at::Tensor& y);
  void skip(const PackedSlot* slot);
  // Replaying: the kept outputs of this call for x (rows x steps x K), or undefined (then compute).
  at::Tensor replay(const PackedSlot* slot, const at::Tensor& x, int64_t N);
  // Products replayed by every tape in this process (runtimeInfo().replayedProducts).
  static int64_t total_replayed();

 private:
  struct Entry {
    const PackedSlot* slot;
    at::Tensor kept;  // [rows, max_steps, N]; undefined: skipped
  };
  void begin_step();
  void end_step();
  std::vector<Entry> entries_;
  int64_t row0_, rows_, max_steps_, steps_ = 0, call_ = 0;
  bool broken_ = false;
};

// Asks the kernel to drop w's pages when they are file-backed and clean (a weight adopted from a safetensors
// mapping that the packed copy now stands for); dirty or anonymous pages are kept. Returns the bytes advised.
size_t page_out(const at::Tensor& w);

// The choices made so far per product shape (runtimeInfo().kernelChoices): for float32 between the kernels and BLAS,
// and for every type, when several threads could share a product, whether they do or one thread runs it alone.
enum class Path { Kernel, Kernel1, Blas };  // the kernels on every thread, on the calling thread alone; BLAS
const char* path_name(Path p);
struct KernelChoice {
  std::string type;  // float32 | bfloat16 | int8
  std::string rows;
  int64_t K, N;
  int threads;
  Path path;
  double kernel_us, kernel1_us, blas_us;  // fastest of the timed runs; NaN: not a candidate
  int checks;  // sessions that have timed the split so far, in any process (kSplitChecks: settled)
};
std::vector<KernelChoice> kernel_choices();

// "float32" | "bfloat16" | "int8" (E_CONFIG otherwise).
kernels::WType parse_wtype(const std::string& s);

}  // namespace semicap
