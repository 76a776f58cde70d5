// The product loops of cpu_kernels, written once and compiled once per instruction set. NOT a normal header: each
// of cpu_kernels_portable.cc, cpu_kernels_avx2.cc, cpu_kernels_avx512.cc and cpu_kernels_avx512bf16.cc (which also
// defines SK_BF16DOT) defines SK_VBYTES (16, 32, 64: the vector width in bytes), includes <immintrin.h> (or
// <emmintrin.h>) and <cstdint> itself, and then includes this file inside its own anonymous namespace, so nothing
// compiled here has a name another translation unit could share.
//
// Rules for this file (a violation can make the linker keep the AVX-512 copy of a function for every caller, and a
// CPU without AVX-512 then dies with SIGILL): no #include, no STL, no exceptions, no function from any header other
// than the compiler's always-inline intrinsics; everything is static or in the including anonymous namespace.
//
// Layout (written by pack() in cpu_kernels.cc; P = 2 * V columns per panel, V = SK_VBYTES / 4 floats per vector;
// np = ceil(N / P) panels, the last zero-padded):
//   K is cut into SEG = 4 segments, segment s = rows [ks(s), ks(s) + len(s)) with len(s) = K / 4 + (s < K % 4) and
//   ks(s) = the sum of the lengths before it. Segment s holds, for panel 0, 1, ..., np - 1 in turn, its len(s) rows,
//   each P consecutive elements (columns p*P .. p*P+P-1). Element (n, k), k in segment s, is at element offset
//     (np * ks(s) + (n / P) * len(s) + (k - ks(s))) * P + n % P.
//   So a product over consecutive panels reads 4 long sequential streams: one core pulls a weight from memory ~45%
//   faster from 4 places at once than from one (Zen 3: 14 vs 20 GB/s; software prefetch does not do it).
//   float32: plain. int8: plain (the per-column scale is applied after the k-sum). bfloat16: the P values of a row
//   interleaved so that one vector load of V uint32 words gives both halves with one shift and one and:
//   word j = bits(col j) | bits(col V + j) << 16.
//
// The product: rows are cut into tiles of at most RMAX rows; a tile keeps 2 * R vector accumulators in registers
// while it walks one panel over the whole of K (all 4 segments at once), so every weight element loaded is used for
// all R rows from a register and y is written once, never read back. x is packed first (per tile, k-major: the R
// values of a k side by side). Panel by panel, every tile of a row block goes over the panel: the first pulls it
// from memory (4 sequential streams), the others find it in L2 (a panel is at most P * K floats: 48 KiB for K 768
// on AVX2). Rows come in blocks whose packed x (rows * K floats, at most X_BYTES) stays in the last-level cache
// while the panels go by. bf16/int8 are widened in registers.
//   Measured on an AMD EPYC (Zen 3, AVX2), hot weights, one thread: 400 x 768 x 3072 at ~94 GFLOP/s (~64 before
//   FloatRow::madd_row kept the tile out of the stack) against ~63 for the earlier K-blocked path (a weight block
//   copied to L1 per row block, y added to once per K-block), which this path replaced.

#ifndef SK_VBYTES
#error "define SK_VBYTES before including cpu_kernels_impl.h"
#endif

constexpr int VB = SK_VBYTES;
constexpr int V = VB / 4;  // floats per vector
constexpr int P = 2 * V;   // columns per panel
#ifndef SK_RMAX  // (test/native/build.sh also builds the AVX2 loops with the AVX-512 tiling, to run its tile sizes)
#if SK_VBYTES == 64
#define SK_RMAX 12  // 24 of the 32 zmm registers hold accumulators
#else
#define SK_RMAX 6   // 12 of the 16 xmm/ymm registers hold accumulators
#endif
#endif
constexpr int RMAX = SK_RMAX;
constexpr int SEG = 4;                        // K segments of the layout (pack() asks segments())
// The first tile of a panel pulls it from memory. When that tile has many rows its arithmetic keeps the core busy
// and the hardware prefetcher alone no longer keeps enough of the weight in flight: such tiles also prefetch the
// weight PF_AHEAD_BYTES ahead in each of its 4 streams (into L2). Measured on a Zen 4, one thread, weights from DRAM
// (GB/s of weight read, logits 768 x 50257): float32 8 rows 18-19 -> 22-25, bf16 pairs 8 rows 16-19 -> 24-25 on
// AVX-512; the same prefetch at 1-4 rows (light tiles, which the hardware prefetcher alone feeds at 28-32 GB/s) cost
// 10-25%, so it starts at two thirds of a full tile (8 rows of 12, 4 of 6). Not on SSE2 (the portable loop, narrow
// panel rows). The distance is in bytes, not panel rows (a float32 row is twice a bf16 one): on a Zen 5 VM, 8 rows,
// 512 MB of weights rotated, 2 KiB beat 1 and 4 KiB for float32 (GPT-2's products 5-15% faster than at 4 KiB, the
// old 32 rows of 128 B) and for bf16 (2 KiB: the old 32 rows of 64 B); int8 (1 -> 2 KiB), AVX2 float32 (2 KiB
// before and after) and 400-row (CLIP) products did not move.
constexpr int PF_MIN_ROWS = SK_VBYTES >= 32 ? (2 * RMAX + 2) / 3 : RMAX + 1;
constexpr int64_t PF_AHEAD_BYTES = 2048;
#ifndef SK_X_BYTES
#define SK_X_BYTES (4 * 1024 * 1024)
#endif
constexpr int64_t X_BYTES = SK_X_BYTES;       // packed x of one row block (kept in the last-level cache)

typedef float vf __attribute__((vector_size(VB)));
typedef float vfu __attribute__((vector_size(VB), aligned(4), may_alias));
typedef uint32_t vu __attribute__((vector_size(VB)));
typedef uint32_t vuu __attribute__((vector_size(VB), aligned(2), may_alias));

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }

static inline vf vload(const float* p) { return *reinterpret_cast<const vfu*>(p); }
static inline void vstore(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }

#if SK_VBYTES == 64
static inline vf vset1(float s) { return (vf)_mm512_set1_ps(s); }
static inline vf vfma(vf a, vf b, vf c) { return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#elif SK_VBYTES == 32
static inline vf vset1(float s) { return (vf)_mm256_set1_ps(s); }
static inline vf vfma(vf a, vf b, vf c) { return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
static inline vf vset1(float s) { return (vf)_mm_set1_ps(s); }
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }  // SSE2: no FMA
#endif

typedef int32_t vi __attribute__((vector_size(VB)));

// e^x for the activations of the epilogue (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-5 polynomial for
// e^r, then 2^n in the exponent bits; ~1 ulp over the clamped range). NaN stays NaN.
static inline vf vexp(vf x) {
  const vf hi = vset1(88.3762626647949f), lo = vset1(-87.3365447505531f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const vf fx = x * vset1(1.44269504088896341f) + vset1(0.5f);
  vi n = __builtin_convertvector(fx, vi);  // truncation; floor below
  vf fn = __builtin_convertvector(n, vf);
  const vi over = fn > fx;                 // -1 where truncation went up (negative fx)
  n += over;
  fn = __builtin_convertvector(n, vf);
  const vf r = x - fn * vset1(0.693359375f) - fn * vset1(-2.12194440e-4f);
  vf p = vset1(1.9875691500e-4f);
  p = p * r + vset1(1.3981999507e-3f);
  p = p * r + vset1(8.3334519073e-3f);
  p = p * r + vset1(4.1665795894e-2f);
  p = p * r + vset1(1.6666665459e-1f);
  p = p * r + vset1(5.0000001201e-1f);
  p = p * r * r + r + vset1(1.f);
  const vi bits = (n + 127) << 23;
  return p * (vf)bits;
}

// Activations applied to a product's outputs before they are stored (ACT_* match kernels::Act): both are
// x * sigmoid(z) = x / (1 + e^-z), z = 1.702 x (CLIP's quick_gelu) or 2 sqrt(2 / pi) (x + 0.044715 x^3) (GPT-2's tanh
// GELU: 0.5 (1 + tanh(u)) = sigmoid(2u)).
enum { ACT_NONE = 0, ACT_QUICK_GELU = 1, ACT_GELU_TANH = 2 };
static inline vf vact(vf x, int act) {
  vf z;
  if (act == ACT_QUICK_GELU) z = x * vset1(1.702f);
  else z = (x + vset1(0.044715f) * x * x * x) * vset1(1.5957691216057308f);
  return x / (vset1(1.f) + vexp(-z));
}

// One panel row (P columns) as two vectors (get), and how a row of x meets them: madd_row(c0, c1, a, b, &x) adds
// x * a to c0 and x * b to c1, x broadcast once. X is the type of packed x; krows<T>(K) (below) the weight rows a
// K-long sum walks.
struct FloatRow {
  typedef float X;
  typedef vf W;
  static constexpr bool pairs = false;
  static constexpr bool widen_panel = false;
#if SK_VBYTES == 32
  // In assembly on AVX2: it has 16 vector registers and a 6-row tile needs 15 (12 accumulators, the two weight
  // vectors, the broadcast). Written with vector operators, GCC 12 hoisted later loads among these and kept
  // accumulators on the stack (an FMA reading and a store writing them every iteration); as operands of this block
  // they stay in registers. Measured on a Zen 3 (AVX2), one thread: 6-row tiles hot in L2 56-60 -> 85 GFLOP/s,
  // CLIP's 50- and 400-row products 64-66 -> 94-95 (float32, bf16 and int8 alike), 8-row logits from memory 9.7 ->
  // 8.6 ms; 1-4 rows from memory unchanged (they wait on memory).
  static inline void madd_row(vf& c0, vf& c1, vf a, vf b, const float* x) {
    vf t;
    asm("vbroadcastss %[x], %[t]\n\t"
        "vfmadd231ps %[a], %[t], %[c0]\n\t"
        "vfmadd231ps %[b], %[t], %[c1]"
        : [c0] "+x"(c0), [c1] "+x"(c1), [t] "=&x"(t)
        : [a] "x"(a), [b] "x"(b), [x] "m"(*x));
  }
#else
  static inline void madd_row(vf& c0, vf& c1, vf a, vf b, const float* x) {
    const vf xb = vset1(*x);
    c0 = vfma(a, xb, c0);
    c1 = vfma(b, xb, c1);
  }
#endif
};
template <int T> struct Row;
template <> struct Row<0> : FloatRow {
  typedef float E;
  typedef E Src;  // what the packed weight holds (the tile reads E)
  static inline void get(const float* p, vf& a, vf& b) { a = vload(p); b = vload(p + V); }
};
template <> struct Row<1> : FloatRow {
  typedef uint16_t E;
  typedef E Src;
  static inline void get(const uint16_t* p, vf& a, vf& b) {
    const vu u = *reinterpret_cast<const vuu*>(p);
    a = (vf)(u << 16);
    b = (vf)(u & 0xFFFF0000u);
  }
};
template <> struct Row<2> : FloatRow {
  typedef int8_t E;
  typedef E Src;
  // GCC scalarises __builtin_convertvector from int8, so the sign extension is spelled per ISA.
  static inline vf widen(const int8_t* p) {
#if SK_VBYTES == 64
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif SK_VBYTES == 32
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
    int32_t u;
    __builtin_memcpy(&u, p, 4);
    __m128i v = _mm_cvtsi32_si128(u);
    v = _mm_unpacklo_epi8(v, v);
    v = _mm_unpacklo_epi16(v, v);
    return (vf)_mm_cvtepi32_ps(_mm_srai_epi32(v, 24));
#endif
  }
  static inline void get(const int8_t* p, vf& a, vf& b) {
    a = widen(p);
    b = widen(p + V);
  }
};

#ifdef SK_BF16DOT
// bfloat16 weights on AVX512-BF16 (cpu_kernels_avx512bf16.cc): VDPBF16PS multiplies 16 pairs of bf16 and adds both
// products to a float32 lane, twice the multiply-adds of an FMA per instruction. Its operands come in pairs of k, so
// this path has its own layout (written by pack() for Isa::Avx512Bf16): K2 = ceil(K / 2) pair rows cut into SEG
// segments exactly as K is above, each pair row P 32-bit words, word j = bits(W(n0 + j, 2i)) | bits(W(n0 + j, 2i + 1))
// << 16 (the high half 0 past an odd K). x is rounded to bf16 (to nearest even) as it is packed, the same pairs side
// by side; products of two bf16 are exact in float32 and the sums are float32, so against the float32 path over the
// same bf16 weights the only new error is x's rounding (a relative 2^-9 per element).
template <> struct Row<3> {
  typedef uint32_t E;
  typedef E Src;
  static constexpr bool widen_panel = false;
  typedef uint32_t X;
  typedef vu W;
  static constexpr bool pairs = true;
  static inline void get(const uint32_t* p, vu& a, vu& b) {
    a = *reinterpret_cast<const vuu*>(p);
    b = *reinterpret_cast<const vuu*>(p + V);
  }
  static inline void madd_row(vf& c0, vf& c1, vu a, vu b, const uint32_t* x) {
    const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(*x));
    c0 = (vf)_mm512_dpbf16_ps((__m512)c0, (__m512bh)a, xb);
    c1 = (vf)_mm512_dpbf16_ps((__m512)c1, (__m512bh)b, xb);
  }
};

// int8 weights through the same tile (PackedWeight::i8_dot): the packed weight keeps the plain int8 layout; each
// panel is widened into bf16 pair rows (exact: |q| <= 127 fits bf16's 8 significant bits) once per product, into
// scratch, and all row tiles read it from there; the per-column scale is applied in the epilogue. For products with
// many rows, where the widening is paid once for many tiles.
template <> struct Row<4> : Row<3> {
  typedef int8_t Src;
  static constexpr bool widen_panel = true;
};

static inline uint32_t bf16_bits(float v) {
  uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (u >> 16) | 0x40;  // NaN stays a quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1);
  return u >> 16;
}
#endif  // SK_BF16DOT

template <int T> static inline int64_t krows(int64_t K) { return Row<T>::pairs ? (K + 1) / 2 : K; }

// Independent k-chains per accumulator: one or two rows alone would wait on the FMA latency.
template <int R> struct Split { static constexpr int value = R == 1 ? 4 : (R <= 3 ? 2 : 1); };

// The rows a tile reads: SEG runs of weight rows (run s: len + (s < extra) rows of P elements from w[s]) against
// the matching packed x (x[s]: R floats per k). The runs are read side by side, run s feeding accumulator chain
// s % KS.
template <int T> struct Runs {
  const typename Row<T>::E* w[SEG];
  const typename Row<T>::X* x[SEG];
  int64_t len;
  int extra;
};

// out[r][0..1] = sum over the runs' rows k of x[k][r] * (weight row k). PF: also prefetch the runs PF_AHEAD_BYTES
// ahead (see PF_MIN_ROWS).
template <int T, int R, bool PF>
static inline void tile(const Runs<T>& q, vf (&out)[R][2]) {
  constexpr int KS = Split<R>::value;
  vf acc[KS][R][2];
#pragma GCC unroll 64
  for (int s = 0; s < KS; ++s)
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) acc[s][r][0] = acc[s][r][1] = vf{};
  const typename Row<T>::E* w[SEG];
  const typename Row<T>::X* x[SEG];
#pragma GCC unroll 8
  for (int s = 0; s < SEG; ++s) { w[s] = q.w[s]; x[s] = q.x[s]; }
  for (int64_t i = 0; i < q.len; ++i) {
#pragma GCC unroll 8
    for (int s = 0; s < SEG; ++s) {
      typename Row<T>::W a, b;
      if constexpr (PF) {  // prefetches never fault, so reading past the weight's end is harmless
        constexpr int64_t row_bytes = sizeof(typename Row<T>::E) * P;
        static_assert(PF_AHEAD_BYTES >= row_bytes, "the prefetch distance is at least one panel row");
        const char* ahead = reinterpret_cast<const char*>(w[s] + (i + PF_AHEAD_BYTES / row_bytes) * P);
        __builtin_prefetch(ahead, 0, 1);
        if constexpr (row_bytes > 64) __builtin_prefetch(ahead + 64, 0, 1);
      }
      Row<T>::get(w[s] + i * P, a, b);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) {
        Row<T>::madd_row(acc[s % KS][r][0], acc[s % KS][r][1], a, b, &x[s][i * R + r]);
      }
    }
  }
  for (int s = 0; s < q.extra; ++s) {
    typename Row<T>::W a, b;
    Row<T>::get(w[s] + q.len * P, a, b);
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      Row<T>::madd_row(acc[0][r][0], acc[0][r][1], a, b, &x[s][q.len * R + r]);
    }
  }
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    vf s0 = acc[0][r][0], s1 = acc[0][r][1];
#pragma GCC unroll 8
    for (int s = 1; s < KS; ++s) { s0 += acc[s][r][0]; s1 += acc[s][r][1]; }
    out[r][0] = s0;
    out[r][1] = s1;
  }
}

// Where a tile's sums go: y[r, 0..ncols) = bias + scale * acc (scale and bias may be null; scale is
// padded to whole panels by pack(), bias is the caller's and is read only for the ncols columns).
struct Out {
  float* y;
  int64_t ldy;
  int ncols;           // <= P
  const float* bias;   // at the panel's first column, or null
  const float* scale;  // at the panel's first column, or null
  int act;             // ACT_*: applied after bias and scale
};

template <int R>
static inline void store(const vf (&acc)[R][2], const Out& o) {
  vf s0 = vset1(1.f), s1 = s0;
  if (o.scale) { s0 = vload(o.scale); s1 = vload(o.scale + V); }
  vf b0 = vf{}, b1 = vf{};
  if (o.ncols == P && o.bias) { b0 = vload(o.bias); b1 = vload(o.bias + V); }
  else if (o.bias) {  // a last panel that ends inside: its bias padded with zeros
    float t[P];
    for (int j = 0; j < P; ++j) t[j] = j < o.ncols ? o.bias[j] : 0.f;
    b0 = vload(t);
    b1 = vload(t + V);
  }
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    vf v0 = acc[r][0], v1 = acc[r][1];
    if (o.scale) { v0 *= s0; v1 *= s1; }
    v0 += b0;
    v1 += b1;
    if (o.act != ACT_NONE) { v0 = vact(v0, o.act); v1 = vact(v1, o.act); }
    float* yr = o.y + r * o.ldy;
    if (o.ncols == P) {
      vstore(yr, v0);
      vstore(yr + V, v1);
    } else {
      float t[P];
      vstore(t, v0);
      vstore(t + V, v1);
      for (int j = 0; j < o.ncols; ++j) yr[j] = t[j];
    }
  }
}

template <int T, int R, bool PF>
static inline void tile_store(const Runs<T>& q, const Out& o) {
  // The tile's y lines are likely not cached (y is rows x N): fetch them while the k loop runs.
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    __builtin_prefetch(o.y + r * o.ldy, 1);
    __builtin_prefetch(o.y + r * o.ldy + P - 1, 1);
  }
  vf acc[R][2];
  tile<T, R, PF>(q, acc);
  store<R>(acc, o);
}

// A tile of R rows; first: the panel's first tile, which reads it from memory (the others find it in L2).
template <int T, int R>
static inline void tile_at(bool first, const Runs<T>& q, const Out& o) {
  // (a panel widened into scratch, Row<4>, is already in cache)
  if constexpr (R >= PF_MIN_ROWS && !Row<T>::widen_panel) {
    if (first) return tile_store<T, R, true>(q, o);
  }
  tile_store<T, R, false>(q, o);
}

// One tile of r rows (1..RMAX): the instantiation for R == r.
template <int T, int R = 1>
static inline void tile_any(int r, bool first, const Runs<T>& q, const Out& o) {
  if constexpr (R <= RMAX) {
    if (r == R) return tile_at<T, R>(first, q, o);
    tile_any<T, R + 1>(r, first, q, o);
  }
}

// rows cut into ceil(rows / RMAX) tiles, all of RMAX rows but the last (8 -> 6 + 2 on AVX2): a panel's first tile
// streams it from memory, and while it waits on memory its arithmetic is free; the later tiles find the panel in L2
// and their arithmetic is what costs, so the first tile takes as many rows as it can (decoding 8 rows: 6 + 2 measured
// faster than 4 + 4).
struct Cut {
  int64_t nt, rows;
  explicit Cut(int64_t r) : nt((r + RMAX - 1) / RMAX), rows(r) {}
  int64_t start(int64_t t) const { return t * RMAX; }
  int size(int64_t t) const { return static_cast<int>(t + 1 < nt ? RMAX : rows - t * RMAX); }
};

// Zip of blocks of S floats: lo takes the first block of each pair of blocks from a, then from b; hi the second
// (Eklundh's transpose, one round). The masks are constants once unrolled (one permute each).
template <int S>
static inline void zip_blocks(vf a, vf b, vf& lo, vf& hi) {
  vi ml, mh;
#pragma GCC unroll 16
  for (int p = 0; p < V; ++p) {
    const int chunk = p / (2 * S) * (2 * S), off = p % (2 * S);
    ml[p] = off < S ? chunk + off : V + chunk + off - S;
    mh[p] = off < S ? chunk + S + off : V + chunk + off;
  }
  lo = __builtin_shuffle(a, b, ml);
  hi = __builtin_shuffle(a, b, mh);
}

template <int S>
static inline void transpose_rounds(vf (&v)[V]) {
  if constexpr (S >= 1) {
#pragma GCC unroll 16
    for (int i = 0; i < V; ++i)
      if ((i & S) == 0) zip_blocks<S>(v[i], v[i + S], v[i], v[i + S]);
    transpose_rounds<S / 2>(v);
  }
}

// Rows x[0..R) (R <= V, the missing rows zero), k .. k + V - 1, as V columns: out[q] = (x[0][k + q], ...,
// x[V - 1][k + q]).
static inline void transpose_block(const float* x, int64_t ldx, int R, int64_t k, vf (&out)[V]) {
#pragma GCC unroll 16
  for (int r = 0; r < V; ++r) out[r] = r < R ? vload(x + r * ldx + k) : vf{};
  transpose_rounds<V / 2>(out);
}

// One tile's R rows of x ([R, K], row stride ldx) k-major into dst: dst[k * R + r] = x[r][k]; for the pair rows,
// bf16 pairs (x[2i], x[2i + 1]) in one word, the high half 0 past an odd K. Float rows are transposed in registers
// (the scalar loop was 4% of CLIP's samples at one thread; it only moves bits, so the result is the same).
template <int T>
static void pack_tile(const float* x, int64_t ldx, int R, int64_t K, typename Row<T>::X* dst) {
#ifdef SK_BF16DOT
  if constexpr (Row<T>::pairs) {
    const int64_t KR = krows<T>(K);
    for (int r = 0; r < R; ++r) {
      const float* src = x + r * ldx;
      for (int64_t i = 0; i < K / 2; ++i) dst[i * R + r] = bf16_bits(src[2 * i]) | bf16_bits(src[2 * i + 1]) << 16;
      if (K % 2) dst[(KR - 1) * R + r] = bf16_bits(src[K - 1]);
    }
    return;
  }
#endif
  int64_t k = 0;
#if SK_VBYTES >= 32
  for (; R <= V && k + V <= K; k += V) {  // (the wide test build tiles 12 rows on AVX2: those go lane by lane)
    vf col[V];
    transpose_block(x, ldx, R, k, col);
#if SK_VBYTES == 64
    const __mmask16 lanes = static_cast<__mmask16>((1u << R) - 1);
#pragma GCC unroll 16
    for (int q = 0; q < V; ++q) _mm512_mask_storeu_ps(dst + (k + q) * R, lanes, (__m512)col[q]);
#else
    // Whole vectors, each spilling V - R lanes into the columns after it, which are written later (columns go in
    // order); a column whose spill would pass the tile's end goes lane by lane.
#pragma GCC unroll 8
    for (int q = 0; q < V; ++q) {
      if ((k + q) * R + V <= K * R) {
        vstore(dst + (k + q) * R, col[q]);
      } else {
        for (int r = 0; r < R; ++r) dst[(k + q) * R + r] = col[q][r];
      }
    }
#endif
  }
#endif
  for (; k < K; ++k)
    for (int r = 0; r < R; ++r) dst[k * R + r] = x[r * ldx + k];
}

// x[0..rows) x [0, K) into xp: tile by tile (see Cut), each k-major (tile t at xp + start(t) * krows(K)).
template <int T>
static void pack_x(const float* x, int64_t ldx, int64_t rows, int64_t K, typename Row<T>::X* xp) {
  const Cut cut(rows);
  const int64_t KR = krows<T>(K);
  for (int64_t t = 0; t < cut.nt; ++t)
    pack_tile<T>(x + cut.start(t) * ldx, ldx, cut.size(t), K, xp + cut.start(t) * KR);
}

// Segment s of K: [seg_start(K, s), + seg_len(K, s)).
static inline int64_t seg_len(int64_t K, int s) { return K / SEG + (s < K % SEG ? 1 : 0); }
static inline int64_t seg_start(int64_t K, int s) { return s * (K / SEG) + (s < K % SEG ? s : K % SEG); }

// Every tile of the rows (packed in xp by pack_x) against one panel; run s = segment s, starting at w[s] in the
// weight.
template <int T>
static void tiles(const typename Row<T>::X* xp, int64_t rows, int64_t K, const typename Row<T>::E* const* w, Out o) {
  const Cut cut(rows);
  float* y0 = o.y;
  Runs<T> q;
  q.len = K / SEG;
  q.extra = static_cast<int>(K % SEG);
  for (int s = 0; s < SEG; ++s) q.w[s] = w[s];
  for (int64_t t = 0; t < cut.nt; ++t) {
    const int64_t r0 = cut.start(t);
    const int R = cut.size(t);
    for (int s = 0; s < SEG; ++s) q.x[s] = xp + r0 * K + seg_start(K, s) * R;
    o.y = y0 + r0 * o.ldy;
    tile_any<T>(R, t == 0, q, o);
  }
}

// Rows per row block: as many whole tiles as fit X_BYTES of packed x (at least one tile).
static inline int64_t row_block(int64_t K) {
  const int64_t mb = X_BYTES / (K * 4);
  return mb < RMAX ? RMAX : mb - mb % RMAX;
}

// Floats of scratch gemm_t needs (64-byte aligned): the packed x of one row block.
static inline int64_t x_floats(int64_t rows, int64_t K) { return (lmin(rows, row_block(K)) * K + 15) / 16 * 16; }
#ifdef SK_BF16DOT
// The packed x of one row block, then one panel of int8 weights widened to bf16 pairs (Row<4>).
static inline int64_t scratch_floats(int64_t rows, int64_t K) { return x_floats(rows, K) + (K + 1) / 2 * P; }

// Panel p of an int8 weight (plain layout, np panels) as K2 bf16 pair rows, one after the other (which is the pair
// layout of one panel: its SEG segments of K2 rows follow each other).
static void widen_panel(const int8_t* data, int64_t np, int64_t K, int64_t p, uint32_t* out) {
  const int8_t* row[2];
  for (int64_t k = 0; k < K; k += 2) {
    for (int h = 0; h < 2; ++h) {
      const int64_t kk = k + h;
      int s = 0;
      while (s + 1 < SEG && kk >= seg_start(K, s + 1)) ++s;
      row[h] = kk < K ? data + (np * seg_start(K, s) + p * seg_len(K, s) + (kk - seg_start(K, s))) * P : nullptr;
    }
    uint32_t* dst = out + (k / 2) * P;
#pragma GCC unroll 2
    for (int j = 0; j < P; j += V) {
      const vu lo = (vu)Row<2>::widen(row[0] + j) >> 16;
      const vu hi = row[1] ? ((vu)Row<2>::widen(row[1] + j) & 0xFFFF0000u) : vu{};
      *reinterpret_cast<vuu*>(dst + j) = lo | hi;
    }
  }
}
#else
static inline int64_t scratch_floats(int64_t rows, int64_t K) { return x_floats(rows, K); }
#endif

// Rows per row block of `rows` rows: near-equal blocks of at most row_block(K) rows.
static inline int64_t block_rows(int64_t rows, int64_t K) {
  const int64_t mb = row_block(K);  // (a block's packed x takes mb * KR <= mb * K elements of 4 bytes)
  const int64_t nmb = (rows + mb - 1) / mb;
  return (rows + nmb - 1) / nmb;
}

// Every row of x packed at once, in blocks of mb rows (the last shorter), each as gemm_t packs a block (block m0
// at xp + m0 * krows(K)): the tiles [part * nt / parts, (part + 1) * nt / parts) of the nt tiles of all blocks, so
// that threads can share the packing of one product.
template <int T>
static void pack_rows_t(const float* x, int64_t rows, int64_t ldx, int64_t K, int64_t mb, typename Row<T>::X* xp,
                        int64_t part, int64_t parts) {
  if (rows <= 0 || parts <= 0 || mb <= 0) return;
  const int64_t KR = krows<T>(K);
  int64_t nt = 0;
  for (int64_t m0 = 0; m0 < rows; m0 += mb) nt += Cut(lmin(mb, rows - m0)).nt;
  const int64_t t0 = part * nt / parts, t1 = (part + 1) * nt / parts;
  int64_t t = 0;
  for (int64_t m0 = 0; m0 < rows && t < t1; m0 += mb) {
    const Cut cut(lmin(mb, rows - m0));
    for (int64_t i = 0; i < cut.nt; ++i, ++t) {
      if (t < t0 || t >= t1) continue;
      const int64_t r = m0 + cut.start(i);
      pack_tile<T>(x + r * ldx, ldx, cut.size(i), K, xp + r * KR);
    }
  }
}

// y = x W over the panels of [n_begin, n_end), rows in blocks of mb (block_rows). xs: x already packed by
// pack_rows_t with the same mb, else null and x is packed here block by block into scratch.
template <int T>
static void gemm_t(const float* x, int64_t rows, int64_t ldx, const typename Row<T>::Src* data, const float* scale,
                   int64_t N, int64_t K, const float* bias, float* y, int64_t ldy, int64_t n_begin, int64_t n_end,
                   int act, float* scratch, const typename Row<T>::X* xs, int64_t mb) {
  if (rows <= 0 || n_end <= n_begin || mb <= 0) return;
  const int64_t np = (N + P - 1) / P;
  const int64_t p0 = n_begin / P, p1 = (n_end + P - 1) / P;
  const int64_t KR = krows<T>(K);  // weight rows: K, or K's pairs
  for (int64_t m0 = 0; m0 < rows; m0 += mb) {
    const int64_t mr = lmin(mb, rows - m0);
    const typename Row<T>::X* xp = xs ? xs + m0 * KR : reinterpret_cast<typename Row<T>::X*>(scratch);
    if (!xs) pack_x<T>(x + m0 * ldx, ldx, mr, K, reinterpret_cast<typename Row<T>::X*>(scratch));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * P;
      Out o;
      o.y = y + m0 * ldy + n0;
      o.ldy = ldy;
      o.ncols = static_cast<int>(lmin(P, n_end - n0));
      o.bias = bias ? bias + n0 : nullptr;
      o.scale = scale ? scale + n0 : nullptr;
      o.act = act;
      // Panel p's rows of segment s are contiguous; consecutive panels continue 4 sequential streams.
      const typename Row<T>::E* w[SEG];
#ifdef SK_BF16DOT
      if constexpr (Row<T>::widen_panel) {
        uint32_t* panel = reinterpret_cast<uint32_t*>(scratch + (xs ? 0 : x_floats(rows, K)));  // (see run_gemm)
        widen_panel(data, np, K, p, panel);
        for (int s = 0; s < SEG; ++s) w[s] = panel + seg_start(KR, s) * P;
      } else
#endif
      {
        for (int s = 0; s < SEG; ++s) w[s] = data + (np * seg_start(KR, s) + p * seg_len(KR, s)) * P;
      }
      tiles<T>(xp, mr, KR, w, o);
    }
  }
}

// sum_i e^(x[i] - m) over x[0..n), in vectors and then the lanes, a scalar-padded tail last; with out, each
// e^(x[i] - m) is also stored there (out may be x).
static inline float exp_sum(const float* x, int64_t n, float m, float* out) {
  const vf mb = vset1(m);
  vf acc = vf{};
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    const vf e = vexp(vload(x + i) - mb);
    if (out) vstore(out + i, e);
    acc += e;
  }
  float s = 0.f;
  for (int j = 0; j < V; ++j) s += acc[j];
  if (i < n) {
    float t[V];
    for (int j = 0; j < V; ++j) t[j] = i + j < n ? x[i + j] : m;
    const vf e = vexp(vload(t) - mb);
    for (int j = 0; i + j < n; ++j) {
      if (out) out[i + j] = e[j];
      s += e[j];
    }
  }
  return s;
}

// The greedy choice over one row of logits x[0..n): *arg = the first index of the largest value and *sum =
// sum_j e^(x[j] - x[arg]) (so that log p(arg) = -log(sum); the caller takes the log). One pass for the maximum
// and its first index (per lane: the lane's first maximum, then the smallest index among lanes holding the overall
// maximum) and one for the sum. Returns 0 without finishing when x holds a NaN or its maximum is not finite: the
// caller's general path decides then (torch's argmax ranks NaN first).
static int row_pick(const float* x, int64_t n, int64_t* arg, float* sum) {
  if (n <= 0) return 0;
  const vf ninf = vset1(-__builtin_inff());
  vf mv = ninf;
  vi iv = vi{}, idx;
  vi nan = vi{};
  for (int j = 0; j < V; ++j) idx[j] = j;
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    const vf v = vload(x + i);
    nan |= (vi)(v != v);
    const vi gt = (vi)(v > mv);
    mv = gt ? v : mv;
    iv = gt ? idx : iv;
    idx += V;
  }
  float m = -__builtin_inff();
  int64_t a = -1;
  for (int j = 0; j < V; ++j) {
    if (nan[j]) return 0;
    if (mv[j] > m || (mv[j] == m && a >= 0 && iv[j] < a)) { m = mv[j]; a = iv[j]; }
  }
  for (; i < n; ++i) {
    const float v = x[i];
    if (v != v) return 0;
    if (v > m) { m = v; a = i; }
  }
  if (a < 0 || !(m - m == 0.f)) return 0;  // every value -inf, or +inf
  *arg = a;
  *sum = exp_sum(x, n, m, nullptr);
  return 1;
}

// dst[j * V + l] = scale * sum_u c[u] * rows[u * ld + j * V + l] for j < NB: NB vectors summed in registers, the
// rows in order (one broadcast of c[u] each).
template <int NB>
static inline void combine_block(const float* c, int64_t n, const float* rows, int64_t ld, vf scale, float* dst) {
  vf a[NB];
  for (int j = 0; j < NB; ++j) a[j] = vf{};
  for (int64_t u = 0; u < n; ++u) {
    const vf cu = vset1(c[u]);
    const float* r = rows + u * ld;
    for (int j = 0; j < NB; ++j) a[j] = vfma(cu, vload(r + j * V), a[j]);
  }
  for (int j = 0; j < NB; ++j) vstore(dst + j * V, a[j] * scale);
}

// The same over `vectors` vectors: 8 at a time, then 4, 2 and 1. Each vector's sum is the same whichever block holds it.
static inline void combine_rows(const float* c, int64_t n, const float* rows, int64_t ld, int64_t vectors, vf scale,
                                float* dst) {
  int64_t j = 0;
  for (; j + 8 <= vectors; j += 8) combine_block<8>(c, n, rows + j * V, ld, scale, dst + j * V);
  if (vectors - j >= 4) combine_block<4>(c, n, rows + j * V, ld, scale, dst + j * V), j += 4;
  if (vectors - j >= 2) combine_block<2>(c, n, rows + j * V, ld, scale, dst + j * V), j += 2;
  if (vectors - j >= 1) combine_block<1>(c, n, rows + j * V, ld, scale, dst + j * V);
}

// The end of one query's attention: scores[0..len) (mx their largest) become softmax weights, and o[0..D) = sum_u
// weight_u * v[u * ldv + d], up to 8 vectors of o in registers (a scalar tail past the last whole vector). Each o[d]
// is the weights' multiply-adds in key order, whichever block holds it.
static void softmax_weigh(float* scores, int64_t len, float mx, const float* v, int64_t ldv, int64_t D, float* o) {
  const float inv = 1.f / exp_sum(scores, len, mx, scores);
  for (int64_t u = 0; u < len; ++u) scores[u] *= inv;
  combine_rows(scores, len, v, ldv, D / V, vset1(1.f), o);
  for (int64_t d = D / V * V; d < D; ++d) {
    float acc = 0.f;
    for (int64_t u = 0; u < len; ++u) acc += scores[u] * v[u * ldv + d];
    o[d] = acc;
  }
}

// One decoding query's attention over its cache: out[0..D) = sum_t softmax_t(q . k_t * scale) v_t over t < len, rows
// k_t = k + t * D (likewise v). scores: len floats of scratch. Vectors over D (a scalar tail past the last whole
// vector), so a row's result depends only on its own q, k and v and on the ISA.
static void attend_one(const float* q, const float* k, const float* v, int64_t D, int64_t len, float scale,
                       float* scores, float* out) {
  const int64_t DV = D / V * V;
  // The cache was written steps ago and the weights streamed through since: ask for all of it at once (a few KiB)
  // instead of one short stream at a time.
  for (int64_t i = 0; i < len * D; i += 16) {
    __builtin_prefetch(k + i);
    __builtin_prefetch(v + i);
  }
  float mx = -__builtin_inff();
  int64_t t = 0;
  if (D % V == 0) {
    // V keys at a time: their dot products as V vectors of partial sums, transposed in registers so that lane t of
    // the sum of the V columns, added in order, is key t's horizontal sum: the same additions in the same order as
    // the one-key loop below (bitwise the same scores), without a chain of V scalar additions per key.
    for (; t + V <= len; t += V) {
      vf acc[V];
#pragma GCC unroll 16
      for (int j = 0; j < V; ++j) {
        const float* kt = k + (t + j) * D;
        vf a = vf{};
        for (int64_t d = 0; d < D; d += V) a = vfma(vload(q + d), vload(kt + d), a);
        acc[j] = a;
      }
      transpose_rounds<V / 2>(acc);
      vf s = vf{};
#pragma GCC unroll 16
      for (int j = 0; j < V; ++j) s += acc[j];
      vstore(scores + t, s * vset1(scale));
    }
    for (int64_t u = 0; u < t; ++u) mx = scores[u] > mx ? scores[u] : mx;
  }
  for (; t < len; ++t) {
    const float* kt = k + t * D;
    vf acc = vf{};
    for (int64_t d = 0; d < DV; d += V) acc = vfma(vload(q + d), vload(kt + d), acc);
    float s = 0.f;
    for (int j = 0; j < V; ++j) s += acc[j];
    for (int64_t d = DV; d < D; ++d) s += q[d] * kt[d];
    s *= scale;
    scores[t] = s;
    mx = s > mx ? s : mx;
  }
  softmax_weigh(scores, len, mx, v, D, D, out);
}

// The attention of nq queries of one head (query i at q + i * ldq) over its keys, given transposed: kt[d * ldk + t]
// is key t's element d, with ldk >= Tk rounded up to 16 and the padding finite (it is multiplied, never used);
// v[t * ldv + d] the values' rows. Query i sees keys [0, len) with len = Tk, or when causal Tk - nq + i + 1 (the
// queries are the last nq positions). The scores are vectors over keys (a broadcast of q[d] times a row of kt, up
// to 8 vectors of keys in registers), the weighted sum vectors over D (up to 8 in registers), instead of a dot
// product and a horizontal sum per key: prefill and CLIP have many queries per head. scores: ldk floats of scratch;
// out + i * ldo gets query i.
static void attend_queries_one(const float* q, int64_t ldq, int64_t nq, const float* kt, int64_t ldk, const float* v,
                               int64_t ldv, int64_t D, int64_t Tk, bool causal, float scale, float* scores, float* out,
                               int64_t ldo) {
  const vf sv = vset1(scale);
  for (int64_t i = 0; i < nq; ++i) {
    const float* qi = q + i * ldq;
    const int64_t len = causal ? Tk - nq + i + 1 : Tk;
    combine_rows(qi, D, kt, ldk, (len + V - 1) / V, sv, scores);  // whole vectors of keys: padding past len too
    float mx = -__builtin_inff();
    for (int64_t u = 0; u < len; ++u) mx = scores[u] > mx ? scores[u] : mx;
    softmax_weigh(scores, len, mx, v, ldv, D, out + i * ldo);
  }
}

// One row's layer norm: y = (x - mean) / sqrt(var + eps) * w + b over x[0..C), the mean and then the variance in two
// passes of V lanes each (lane sums added in a fixed order, a scalar tail past the last whole vector), so a row's
// result depends only on its own x and the ISA.
static void layer_norm_one(const float* x, int64_t C, const float* w, const float* b, float eps, float* y) {
  const int64_t CV = C / V * V;
  vf acc = vf{};
  for (int64_t i = 0; i < CV; i += V) acc += vload(x + i);
  float sum = 0.f;
  for (int j = 0; j < V; ++j) sum += acc[j];
  for (int64_t i = CV; i < C; ++i) sum += x[i];
  const float mean = sum / static_cast<float>(C);
  const vf mv = vset1(mean);
  acc = vf{};
  for (int64_t i = 0; i < CV; i += V) {
    const vf d = vload(x + i) - mv;
    acc = vfma(d, d, acc);
  }
  float ss = 0.f;
  for (int j = 0; j < V; ++j) ss += acc[j];
  for (int64_t i = CV; i < C; ++i) ss += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.f / __builtin_sqrtf(ss / static_cast<float>(C) + eps);
  const vf rv = vset1(rstd);
  for (int64_t i = 0; i < CV; i += V) vstore(y + i, vfma((vload(x + i) - mv) * rv, vload(w + i), vload(b + i)));
  for (int64_t i = CV; i < C; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

// y[0..n) = act(x[0..n)) through the products' own epilogue (vact, whole vectors, the tail padded), so a product
// run without its activation and activated here gives bitwise what the fused product gives. y may be x.
static void activate_one(const float* x, float* y, int64_t n, int act) {
  if (act == ACT_NONE) {
    if (y != x) __builtin_memmove(y, x, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  int64_t i = 0;
  for (; i + V <= n; i += V) vstore(y + i, vact(vload(x + i), act));
  if (i < n) {
    float t[V] = {};
    for (int64_t j = 0; j < n - i; ++j) t[j] = x[i + j];
    vstore(t, vact(vload(t), act));
    for (int64_t j = 0; j < n - i; ++j) y[i + j] = t[j];
  }
}

// The entry points each ISA translation unit exports. wtype: 0 float32, 1 bfloat16, 2 int8, 3 int8 through bf16
// pairs (PackedWeight::i8_dot); xs: x packed by pack_rows_entry for the same wtype and K, or null.
static inline void gemm_entry(int wtype, const void* data, const float* scale, int64_t N, int64_t K, const float* x,
                              int64_t rows, int64_t ldx, const float* bias, float* y, int64_t ldy, int64_t n_begin,
                              int64_t n_end, int act, float* scratch, const float* xs, int64_t mb) {
  if (!xs) mb = block_rows(rows, K);
#ifdef SK_BF16DOT
  const uint32_t* xw = reinterpret_cast<const uint32_t*>(xs);
#endif
  switch (wtype) {
    case 0:
      gemm_t<0>(x, rows, ldx, static_cast<const float*>(data), nullptr, N, K, bias, y, ldy, n_begin, n_end, act,
                scratch, xs, mb);
      break;
    case 1:
#ifdef SK_BF16DOT
      gemm_t<3>(x, rows, ldx, static_cast<const uint32_t*>(data), nullptr, N, K, bias, y, ldy, n_begin, n_end, act,
                scratch, xw, mb);
#else
      gemm_t<1>(x, rows, ldx, static_cast<const uint16_t*>(data), nullptr, N, K, bias, y, ldy, n_begin, n_end, act,
                scratch, xs, mb);
#endif
      break;
    case 2:
      gemm_t<2>(x, rows, ldx, static_cast<const int8_t*>(data), scale, N, K, bias, y, ldy, n_begin, n_end, act,
                scratch, xs, mb);
      break;
#ifdef SK_BF16DOT
    case 3:
      gemm_t<4>(x, rows, ldx, static_cast<const int8_t*>(data), scale, N, K, bias, y, ldy, n_begin, n_end, act,
                scratch, xw, mb);
      break;
#endif
    default: break;
  }
}

static inline void pack_rows_entry(int wtype, int64_t K, const float* x, int64_t rows, int64_t ldx, int64_t mb,
                                   float* xs, int64_t part, int64_t parts) {
  switch (wtype) {
    case 0: pack_rows_t<0>(x, rows, ldx, K, mb, xs, part, parts); break;
    case 2: pack_rows_t<2>(x, rows, ldx, K, mb, xs, part, parts); break;
#ifdef SK_BF16DOT
    case 1: pack_rows_t<3>(x, rows, ldx, K, mb, reinterpret_cast<uint32_t*>(xs), part, parts); break;
    case 3: pack_rows_t<4>(x, rows, ldx, K, mb, reinterpret_cast<uint32_t*>(xs), part, parts); break;
#else
    case 1: pack_rows_t<1>(x, rows, ldx, K, mb, xs, part, parts); break;
#endif
    default: break;
  }
}

// The entry points cpu_kernels.cc declares, expanded by each ISA file right after the anonymous namespace that
// holds this file (a macro, so that the three files do not each spell them out).
#define SK_ENTRY_POINTS                                                                                            \
  int panel_width() { return P; }                                                                                  \
  int segments() { return SEG; }                                                                                   \
  int64_t scratch_size(int64_t rows, int64_t K) { return scratch_floats(rows, K); }                                \
  void gemm(int wtype, const void* data, const float* scale, int64_t N, int64_t K, const float* x, int64_t rows,   \
            int64_t ldx, const float* bias, float* y, int64_t ldy, int64_t n_begin, int64_t n_end, int act,        \
            float* scratch, const float* xs, int64_t mb) {                                                         \
    gemm_entry(wtype, data, scale, N, K, x, rows, ldx, bias, y, ldy, n_begin, n_end, act, scratch, xs, mb);        \
  }                                                                                                                \
  int64_t rows_per_block(int64_t rows, int64_t K) { return block_rows(rows, K); }                                  \
  void pack_rows(int wtype, int64_t K, const float* x, int64_t rows, int64_t ldx, int64_t mb, float* xs,           \
                 int64_t part, int64_t parts) {                                                                    \
    pack_rows_entry(wtype, K, x, rows, ldx, mb, xs, part, parts);                                                  \
  }                                                                                                                \
  int pick(const float* x, int64_t n, int64_t* arg, float* sum) { return row_pick(x, n, arg, sum); }              \
  void attend(const float* q, const float* k, const float* v, int64_t D, int64_t len, float scale, float* scores,  \
              float* out) {                                                                                        \
    attend_one(q, k, v, D, len, scale, scores, out);                                                               \
  }                                                                                                                \
  void layer_norm(const float* x, int64_t C, const float* w, const float* b, float eps, float* y) {                \
    layer_norm_one(x, C, w, b, eps, y);                                                                            \
  }                                                                                                                \
  void activate(const float* x, float* y, int64_t n, int act) { activate_one(x, y, n, act); }                      \
  void attend_queries(const float* q, int64_t ldq, int64_t nq, const float* kt, int64_t ldk, const float* v,      \
                      int64_t ldv, int64_t D, int64_t Tk, bool causal, float scale, float* scores, float* out,     \
                      int64_t ldo) {                                                                               \
    attend_queries_one(q, ldq, nq, kt, ldk, v, ldv, D, Tk, causal, scale, scores, out, ldo);                       \
  }
