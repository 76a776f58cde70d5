// CPU matrix products for inference on weights laid out once ("packed"): float32, bfloat16 or int8 (weight-only,
// per-output-channel scales), accumulated in float32. Torch-free on purpose: this header and its .cc files compile
// in seconds and are tested on their own.
//
// Each instruction set has its own translation unit built with its own -m flags (cpu_kernels_avx512.cc,
// cpu_kernels_avx2.cc, cpu_kernels_portable.cc) from one template source, so the loops tested on one ISA are the
// loops that run on the others; which one runs is decided at run time from cpuid, never at compile time. A CPU
// without AVX-512 never executes AVX-512 code. avx512bf16 is the AVX-512 loops plus the AVX512-BF16 dot product for
// bfloat16 weights and for int8 weights marked i8_dot (float32 and other int8 weights run the avx512 loops there).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace semicap::kernels {

enum class Isa { Portable = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };
enum class WType { F32 = 0, BF16 = 1, I8 = 2 };
// An activation applied to each output in the product's epilogue (after bias and scale), saving a pass over y:
// QuickGelu x * sigmoid(1.702 x) (CLIP), GeluTanh 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (GPT-2). Both
// within a few float32 ulps of the exact functions (their own e^x, not libm's).
enum class Act { None = 0, QuickGelu = 1, GeluTanh = 2 };

const char* isa_name(Isa isa);      // "portable", "avx2", "avx512", "avx512bf16"
const char* wtype_name(WType t);    // "float32", "bfloat16", "int8"

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false, avx_vnni = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
};
CpuFeatures cpu_features();

// The best ISA this CPU runs (AVX-512 needs F+BW+VL+DQ; AVX2 needs AVX2+FMA; avx512bf16 needs AVX-512 and
// AVX512-BF16), lowered (never raised) by SEMICAP_CPU_ISA=portable|avx2|avx512|avx512bf16. Read once.
Isa active_isa();
// The same decision for a given request string (tests): a request above what the CPU has is lowered.
Isa choose_isa(const CpuFeatures& f, const char* request);

// A weight matrix W with N outputs and K inputs, for y[m, n] = bias[n] + scale[n] * sum_k x[m, k] * W(n, k).
// Layout (details in cpu_kernels_impl.h): ceil(N / panel) panels of `panel` columns (the last zero-padded); K cut
// into 4 segments, each holding every panel's rows of that segment in turn, so a product over consecutive panels
// reads 4 sequential streams (a core pulls more bandwidth from 4 places at once than from one). bf16 rows are
// pair-interleaved (columns j and V + j), except for avx512bf16, whose bf16 weights are laid out by pairs of k
// (ceil(K / 2) rows of 32-bit words, each holding W(n, 2i) and W(n, 2i + 1): the operand of VDPBF16PS). panel: 8
// portable, 16 AVX2, 32 AVX-512. Memory is 64-byte aligned and owned; not copyable.
struct PackedWeight {
  WType type = WType::F32;
  Isa isa = Isa::Portable;     // the kernels it was laid out for
  int64_t N = 0, K = 0;
  int panel = 0;               // columns per panel (depends on isa)
  void* data = nullptr;        // float / uint16_t (bf16 bits) / int8_t
  float* scale = nullptr;      // int8: [N] per-output-channel scales; null otherwise
  size_t data_bytes = 0;
  // int8 on avx512bf16 only (ignored elsewhere): multiply through VDPBF16PS, each panel widened to bf16 pairs once
  // per product and x rounded to bf16, instead of widening to float32 for every row tile. Twice the multiply-adds,
  // for products with many rows (CLIP); the owner sets it for all of a model's products, so that a result does not
  // depend on how many rows came together.
  bool i8_dot = false;
  PackedWeight() = default;
  PackedWeight(const PackedWeight&) = delete;             // owns data and scale
  PackedWeight& operator=(const PackedWeight&) = delete;
  ~PackedWeight();
  size_t bytes() const;        // data + scales
  size_t scale_bytes() const;  // what scale points to (the panels' columns, padding included); 0 before packing
};

// Lays out w for `isa`. w_is_kn: w is [K, N] with row stride ldw (GPT-2's Conv1D); else [N, K] with row stride
// ldw (torch's Linear; GPT-2's wte for the logits). int8: symmetric, scale[n] = max_k |W(n, k)| / 127 (1 when the
// column is all zero; non-finite weights do not count, NaN -> 0, +-Inf -> +-127), q = round-to-nearest-even(W /
// scale). bf16: round-to-nearest-even of the float32 bits (NaN kept NaN). Packing for an ISA this CPU does not run
// is allowed (unpack works; gemm_packed throws). Throws std::invalid_argument on bad sizes (N or K < 1, ldw shorter
// than a row, null w).
std::unique_ptr<PackedWeight> pack(const float* w, int64_t N, int64_t K, bool w_is_kn, int64_t ldw, WType type, Isa isa);

// Lays out a float32 w again into pw's own memory (pw float32, its N, K and isa as pack() set them, or smaller N / K
// that still fit its bytes), panels [p0, p1) of ceil(N / panel) only, so that threads can share it: renews the copy
// of a weight being trained after each optimizer step without allocating. The same bytes as pack(). Throws
// std::invalid_argument on another type, a bad range, too little memory, a null w or ldw shorter than a row.
void repack_f32(PackedWeight& pw, const float* w, bool w_is_kn, int64_t ldw, int64_t p0, int64_t p1);
// y[m * ldy + n] for m < rows and n in [n_begin, n_end): n_begin a multiple of w.panel, n_end <= N (only the last
// range may end inside a panel). x is [rows, K] with row stride ldx >= K; ldy >= n_end; no alignment needed for
// x, y, bias. bias may be null. Serial and reentrant (per-thread scratch, grown on demand and kept): callers split
// the columns between threads by whole panels (contiguous panel ranges keep the 4 streams sequential; splitting by
// rows instead makes every thread stream the whole weight). Runs the kernels of w.isa (bfloat16 weights on
// avx512bf16: x is rounded to bfloat16 too, products exact, sums in float32, as in VDPBF16PS); throws
// std::invalid_argument on a bad range or stride, or when this CPU does not run w.isa (pack() callers use
// active_isa() or lower).
void gemm_packed(const float* x, int64_t rows, int64_t ldx, const PackedWeight& w, const float* bias, float* y,
                 int64_t ldy, int64_t n_begin, int64_t n_end, Act act = Act::None);

// x packed once for products against weights packed like w (its isa, type and K): the layout gemm_packed builds
// block by block in each caller's scratch, for many blocks at once. Threads that split one product's columns share
// it instead of each packing all of x (at two threads that was 7% of CLIP's samples). rows_per_block: the block
// gemm_packed uses for `rows` rows. pack_rows packs `rows` rows in blocks of `block` (the last shorter) into xs
// (packed_rows_floats(rows, w.K) floats, 64-byte aligned), part `part` of `parts` (whole row tiles), so that the
// threads can share the packing too; gemm_packed_rows is gemm_packed over rows packed so, with the same block.
// With gemm_packed's block for all the rows (and rows starting at a multiple of it), the tiles and so the results
// are gemm_packed's, bitwise. Both throw std::invalid_argument as gemm_packed does.
int64_t packed_rows_floats(int64_t rows, int64_t K);
int64_t rows_per_block(const PackedWeight& w, int64_t rows);
void pack_rows(const float* x, int64_t rows, int64_t ldx, const PackedWeight& w, int64_t block, float* xs, int part,
               int parts);
void gemm_packed_rows(const float* xs, int64_t rows, int64_t block, const PackedWeight& w, const float* bias, float* y,
                      int64_t ldy, int64_t n_begin, int64_t n_end, Act act = Act::None);
// Per-thread memory for packed rows (grows, never shrinks; apart from the scratch the products use).
float* thread_rows_scratch(int64_t floats);

// The greedy choice over one row of float32 logits x[0..n), by the loop of `isa` (active_isa() in the addon): *arg =
// the first index of the largest value (torch's argmax) and *logp = its log-probability, -log(sum_j e^(x[j] - max))
// (torch's log_softmax at *arg, within float32 rounding: the sum's order differs). One pass for the maximum, one for
// the sum; no allocation. Returns false, leaving both unset, when x holds a NaN, its maximum is not finite, or n < 1; throws
// std::invalid_argument when this CPU does not run `isa`.
bool greedy_pick(const float* x, int64_t n, int64_t* arg, float* logp, Isa isa);

// One decoding query's attention over its KV cache, by the loop of `isa`: out[0..D) = sum_t softmax_t(q . k_t / sqrt(D))
// v_t over t < len, with k_t = k + t * D and v_t = v + t * D. scores: len floats of scratch. Vectorised over D; a
// row's result depends on its own q, k, v and the ISA only. Throws std::invalid_argument on a null buffer, D or len
// below 1, or an ISA this CPU does not run.
void attend(const float* q, const float* k, const float* v, int64_t D, int64_t len, float* scores, float* out, Isa isa);

// Attention of nq queries of one head over Tk keys (prefill, CLIP): query i at q + i * ldq, keys given transposed
// (kt[d * ldk + t], ldk at least attend_keys_stride(Tk), the padding past Tk finite: it is multiplied and never
// used), values as rows (v[t * ldv + d]), query i's result at out + i * ldo. Query i sees every key, or when causal the
// first Tk - nq + i + 1 (the queries are the last nq positions). scores: ldk floats of scratch. Vectorised over keys
// for the scores and over D for the sum; a query's result depends on its own q, the keys it sees and the ISA only.
// Throws std::invalid_argument on a null buffer, D or Tk below 1, nq below 0 or above Tk when causal, a row stride
// below D, ldk below attend_keys_stride(Tk), or an ISA this CPU does not run.
int64_t attend_keys_stride(int64_t Tk);
void attend_queries(const float* q, int64_t ldq, int64_t nq, const float* kt, int64_t ldk, const float* v, int64_t ldv,
                    int64_t D, int64_t Tk, bool causal, float* scores, float* out, int64_t ldo, Isa isa);

// Layer norm of `rows` rows of C floats (x and y row-major, rows C apart; y may be x), by the loop of `isa`:
// y = (x - mean) / sqrt(var + eps) * w + b per row, the biased variance as torch's layer_norm, within float32
// rounding of it (the sums' order differs). A row's result depends on its own x and the ISA only. Throws
// std::invalid_argument on a null buffer, rows below 0, C below 1, eps not >= 0, or an ISA this CPU does not run.
void layer_norm(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps, float* y, Isa isa);

// y[0..n) = act(x[0..n)) by the loop of `isa`: bitwise what gemm_packed's epilogue gives for the same sums (a
// product run without its activation, its output kept, then activated here: SCST's recorded decoding). y may be x.
// Throws std::invalid_argument on a null buffer, n below 0, an unknown activation, or an ISA this CPU does not run.
void activate(const float* x, float* y, int64_t n, Act act, Isa isa);

// The weight as float32 [N, K] again (tests; int8 and bf16 give the dequantised values).
void unpack(const PackedWeight& w, float* out);

}  // namespace semicap::kernels
