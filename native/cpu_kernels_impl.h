// The product loops of cpu_kernels, written once and compiled once per instruction set. NOT a normal header: each
// of cpu_kernels_portable.cc, cpu_kernels_avx2.cc and cpu_kernels_avx512.cc defines SK_VBYTES (16, 32, 64: the
// vector width in bytes), includes <immintrin.h> (or <emmintrin.h>) and <cstdint> itself, and then includes this file
// inside its own anonymous namespace, so nothing compiled here has a name another translation unit could share.
//
// Rules for this file (a violation can make the linker keep the AVX-512 copy of a function for every caller, and a
// CPU without AVX-512 then dies with SIGILL): no #include, no STL, no exceptions, no function from any header other
// than the compiler's always-inline intrinsics; everything is static or in the including anonymous namespace.
//
// Layout (written by pack() in cpu_kernels.cc; P = 2 * V floats per panel, V = SK_VBYTES / 4):
//   panel p, row k: P consecutive elements for columns p*P .. p*P+P-1, at element offset (p * K + k) * P.
//   float32: plain. int8: plain (scale per column applied after the k-sum).
//   bfloat16: the P values of a row interleaved so that one vector load of V uint32 words gives both halves
//     with one shift and one and: word j = bits(col j) | bits(col V + j) << 16.
//
// The product: rows are cut into tiles of at most RMAX rows; a tile keeps 2 * R vector accumulators in registers
// while it walks one panel front to back, so every weight element loaded is used for all R rows from a register.
//   - few rows (decoding, rows <= SMALL_ROWS): each panel once over the whole of K per tile (a pure stream; with
//     more than one tile the panel's second pass hits L2). bf16/int8 are widened in registers.
//   - many rows (CLIP, prefill): K is cut into blocks of KC (a panel's K-slice stays in L1) and rows into blocks of
//     at most MB (their x-slice stays in L2); bf16/int8 slices are widened once into a float buffer on the stack and
//     the float32 loop runs on it. Later K-blocks add into y.

#ifndef SK_VBYTES
#error "define SK_VBYTES before including cpu_kernels_impl.h"
#endif

constexpr int VB = SK_VBYTES;
constexpr int V = VB / 4;  // floats per vector
constexpr int P = 2 * V;   // columns per panel
#if SK_VBYTES == 64
constexpr int RMAX = 12;   // 24 of the 32 zmm registers hold accumulators
#else
constexpr int RMAX = 6;    // 12 of the 16 xmm/ymm registers hold accumulators
#endif
constexpr int SMALL_ROWS = RMAX;              // at most one tile: the streaming path
#ifndef SK_KC
#define SK_KC ((SK_VBYTES == 64) ? 192 : (SK_VBYTES == 32 ? 256 : 512))
#endif
#ifndef SK_MB_BYTES
#define SK_MB_BYTES (192 * 1024)
#endif
constexpr int KC = SK_KC;                     // K rows per block of the many-rows path
constexpr int64_t MB_BYTES = SK_MB_BYTES;     // x-slice (rows * KC floats) kept in L2
#ifndef SK_PF_BYTES
#define SK_PF_BYTES 0
#endif
constexpr int PF_BYTES = SK_PF_BYTES;         // software prefetch distance in the weight stream (0: off)

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

// One panel row (P columns) as two float vectors.
template <int T> struct Row;
template <> struct Row<0> {
  typedef float E;
  static inline void get(const float* p, vf& a, vf& b) { a = vload(p); b = vload(p + V); }
};
template <> struct Row<1> {
  typedef uint16_t E;
  static inline void get(const uint16_t* p, vf& a, vf& b) {
    const vu u = *reinterpret_cast<const vuu*>(p);
    a = (vf)(u << 16);
    b = (vf)(u & 0xFFFF0000u);
  }
};
template <> struct Row<2> {
  typedef int8_t E;
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

// Independent k-chains per accumulator: one or two rows alone would wait on the FMA latency.
template <int R> struct Split { static constexpr int value = R == 1 ? 4 : (R <= 3 ? 2 : 1); };

// out[r][0..1] = sum over k < kc of xp[k * R + r] * (panel row k). xp: the tile's rows of x packed k-major (R
// floats per k), so the R broadcasts of a k read one cache line; w: the panel at the first k (P elements per k).
template <int T, int R>
static inline void tile(const float* xp, const typename Row<T>::E* w, int64_t kc, vf (&out)[R][2]) {
  constexpr int KS = Split<R>::value;
  vf acc[KS][R][2];
#pragma GCC unroll 64
  for (int s = 0; s < KS; ++s)
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) acc[s][r][0] = acc[s][r][1] = vf{};
  int64_t k = 0;
  for (; k + KS <= kc; k += KS) {
#pragma GCC unroll 8
    for (int s = 0; s < KS; ++s) {
      if (PF_BYTES > 0 && (s * P * sizeof(*w)) % 64 == 0)
        __builtin_prefetch(reinterpret_cast<const char*>(w + (k + s) * P) + PF_BYTES);
      vf a, b;
      Row<T>::get(w + (k + s) * P, a, b);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) {
        const vf xb = vset1(xp[(k + s) * R + r]);
        acc[s][r][0] = vfma(a, xb, acc[s][r][0]);
        acc[s][r][1] = vfma(b, xb, acc[s][r][1]);
      }
    }
  }
  for (; k < kc; ++k) {
    vf a, b;
    Row<T>::get(w + k * P, a, b);
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      const vf xb = vset1(xp[k * R + r]);
      acc[0][r][0] = vfma(a, xb, acc[0][r][0]);
      acc[0][r][1] = vfma(b, xb, acc[0][r][1]);
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

// Where a tile's sums go: y[r, 0..ncols) = (add ? y : bias) + scale * acc (scale and bias may be null; scale is
// padded to whole panels by pack(), bias is the caller's and is read only for the ncols columns).
struct Out {
  float* y;
  int64_t ldy;
  int ncols;           // <= P
  const float* bias;   // at the panel's first column, or null
  const float* scale;  // at the panel's first column, or null
  bool add;            // a later K-block: add to y (bias already there)
};

template <int R>
static inline void store(const vf (&acc)[R][2], const Out& o) {
  vf s0 = vset1(1.f), s1 = s0;
  if (o.scale) { s0 = vload(o.scale); s1 = vload(o.scale + V); }
  if (o.ncols == P) {
    vf b0 = vf{}, b1 = vf{};
    if (!o.add && o.bias) { b0 = vload(o.bias); b1 = vload(o.bias + V); }
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      float* yr = o.y + r * o.ldy;
      vf v0 = acc[r][0], v1 = acc[r][1];
      if (o.scale) { v0 *= s0; v1 *= s1; }
      if (o.add) { v0 += vload(yr); v1 += vload(yr + V); }
      else if (o.bias) { v0 += b0; v1 += b1; }
      vstore(yr, v0);
      vstore(yr + V, v1);
    }
    return;
  }
  for (int r = 0; r < R; ++r) {
    float* yr = o.y + r * o.ldy;
    vf v0 = acc[r][0], v1 = acc[r][1];
    if (o.scale) { v0 *= s0; v1 *= s1; }
    float t[P];
    vstore(t, v0);
    vstore(t + V, v1);
    for (int j = 0; j < o.ncols; ++j) {
      float v = t[j];
      if (o.add) v += yr[j];
      else if (o.bias) v += o.bias[j];
      yr[j] = v;
    }
  }
}

template <int T, int R>
static inline void tile_store(const float* xp, const typename Row<T>::E* w, int64_t kc, const Out& o) {
  // The tile's y lines are likely not cached (y is rows x N): fetch them while the k loop runs.
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    __builtin_prefetch(o.y + r * o.ldy, 1);
    __builtin_prefetch(o.y + r * o.ldy + P - 1, 1);
  }
  vf acc[R][2];
  tile<T, R>(xp, w, kc, acc);
  store<R>(acc, o);
}

// One tile of r rows (1..RMAX).
template <int T>
static void tile_any(int r, const float* xp, const typename Row<T>::E* w, int64_t kc, const Out& o) {
  switch (r) {
    case 1: tile_store<T, 1>(xp, w, kc, o); break;
    case 2: tile_store<T, 2>(xp, w, kc, o); break;
    case 3: tile_store<T, 3>(xp, w, kc, o); break;
    case 4: tile_store<T, 4>(xp, w, kc, o); break;
    case 5: tile_store<T, 5>(xp, w, kc, o); break;
    case 6: tile_store<T, 6>(xp, w, kc, o); break;
#if SK_VBYTES == 64
    case 7: tile_store<T, 7>(xp, w, kc, o); break;
    case 8: tile_store<T, 8>(xp, w, kc, o); break;
    case 9: tile_store<T, 9>(xp, w, kc, o); break;
    case 10: tile_store<T, 10>(xp, w, kc, o); break;
    case 11: tile_store<T, 11>(xp, w, kc, o); break;
    case 12: tile_store<T, 12>(xp, w, kc, o); break;
#endif
    default: break;
  }
}

// rows cut into ceil(rows / RMAX) tiles of near-equal size (400 -> 65 x 6 + 2 x 5, 8 -> 4 + 4 on AVX2): tile t
// starts at row t * base + min(t, extra) and has base + (t < extra) rows.
struct Cut {
  int64_t nt, base, extra;
  explicit Cut(int64_t rows) : nt((rows + RMAX - 1) / RMAX), base(rows / nt), extra(rows % nt) {}
  int64_t start(int64_t t) const { return t * base + (t < extra ? t : extra); }
  int size(int64_t t) const { return static_cast<int>(base + (t < extra ? 1 : 0)); }
};

// x[0..rows) x [k0, k0 + kc) into xp: tile by tile (see Cut), each k-major (tile t at xp + start(t) * kc).
static void pack_x(const float* x, int64_t ldx, int64_t rows, int64_t k0, int64_t kc, float* xp) {
  const Cut cut(rows);
  for (int64_t t = 0; t < cut.nt; ++t) {
    const int64_t r0 = cut.start(t);
    const int R = cut.size(t);
    float* dst = xp + r0 * kc;
    for (int r = 0; r < R; ++r) {
      const float* src = x + (r0 + r) * ldx + k0;
      for (int64_t k = 0; k < kc; ++k) dst[k * R + r] = src[k];
    }
  }
}

template <int T>
static void tiles(const float* xp, int64_t rows, const typename Row<T>::E* w, int64_t kc, Out o) {
  const Cut cut(rows);
  float* y0 = o.y;
  for (int64_t t = 0; t < cut.nt; ++t) {
    const int64_t r0 = cut.start(t);
    o.y = y0 + r0 * o.ldy;
    tile_any<T>(cut.size(t), xp + r0 * kc, w, kc, o);
  }
}

// Widens a panel's K-slice (kc rows of P) to float32 (the layout of Row<0>).
template <int T>
static inline void widen(const typename Row<T>::E* w, int64_t kc, float* buf) {
  for (int64_t k = 0; k < kc; ++k) {
    vf a, b;
    Row<T>::get(w + k * P, a, b);
    vstore(buf + k * P, a);
    vstore(buf + k * P + V, b);
  }
}

// Rows per row block of the many-rows path, before balancing.
static inline int64_t row_block() {
  const int64_t mb = MB_BYTES / (KC * 4);
  return mb < RMAX ? RMAX : mb - mb % RMAX;
}

// Floats of scratch gemm_t needs (64-byte aligned): the packed x, and for bf16/int8 the widened panel slice.
static inline int64_t scratch_floats(int64_t rows, int64_t K) {
  if (rows <= SMALL_ROWS) return rows * K;
  const int64_t xs = lmin(rows, row_block()) * lmin(K, KC);
  return (xs + 15) / 16 * 16 + static_cast<int64_t>(KC) * P;
}

template <int T>
static void gemm_t(const float* x, int64_t rows, int64_t ldx, const typename Row<T>::E* data, const float* scale,
                   int64_t K, const float* bias, float* y, int64_t ldy, int64_t n_begin, int64_t n_end,
                   float* scratch) {
  typedef typename Row<T>::E E;
  if (rows <= 0 || n_end <= n_begin) return;
  const int64_t p0 = n_begin / P, p1 = (n_end + P - 1) / P;
  auto out_for = [&](int64_t p, bool add) {
    const int64_t n0 = p * P;
    Out o;
    o.y = y + n0;
    o.ldy = ldy;
    o.ncols = static_cast<int>(lmin(P, n_end - n0));
    o.bias = bias ? bias + n0 : nullptr;
    o.scale = scale ? scale + n0 : nullptr;
    o.add = add;
    return o;
  };
  float* xp = scratch;
  if (rows <= SMALL_ROWS) {
    // Few rows (decoding): one tile streams each panel once over the whole of K; bf16/int8 widen in registers.
    pack_x(x, ldx, rows, 0, K, xp);
    for (int64_t p = p0; p < p1; ++p) tiles<T>(xp, rows, data + p * K * P, K, out_for(p, false));
    return;
  }
  // Many rows: K-blocks outermost, then row blocks (their packed x stays in L2), then panels (a panel's K-slice is
  // read from memory once per row block and stays in L1 while the tiles go over it). Later K-blocks add into y.
  int64_t mb = row_block();
  const int64_t nmb = (rows + mb - 1) / mb;
  mb = (rows + nmb - 1) / nmb;  // near-equal row blocks
  float* wbuf = scratch + (lmin(rows, row_block()) * lmin(K, KC) + 15) / 16 * 16;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = lmin(KC, K - k0);
    for (int64_t m0 = 0; m0 < rows; m0 += mb) {
      const int64_t mr = lmin(mb, rows - m0);
      pack_x(x + m0 * ldx, ldx, mr, k0, kc, xp);
      for (int64_t p = p0; p < p1; ++p) {
        const E* w = data + (p * K + k0) * P;
        Out o = out_for(p, k0 > 0);
        o.y += m0 * ldy;
        if (T == 0) {
          tiles<0>(xp, mr, reinterpret_cast<const float*>(w), kc, o);
        } else {
          widen<T>(w, kc, wbuf);
          tiles<0>(xp, mr, wbuf, kc, o);
        }
      }
    }
  }
}

// The entry point each ISA translation unit exports under its own namespace.
static inline void gemm_entry(int wtype, const void* data, const float* scale, int64_t K, const float* x, int64_t rows,
                              int64_t ldx, const float* bias, float* y, int64_t ldy, int64_t n_begin, int64_t n_end,
                              float* scratch) {
  switch (wtype) {
    case 0: gemm_t<0>(x, rows, ldx, static_cast<const float*>(data), nullptr, K, bias, y, ldy, n_begin, n_end, scratch); break;
    case 1: gemm_t<1>(x, rows, ldx, static_cast<const uint16_t*>(data), nullptr, K, bias, y, ldy, n_begin, n_end, scratch); break;
    case 2: gemm_t<2>(x, rows, ldx, static_cast<const int8_t*>(data), scale, K, bias, y, ldy, n_begin, n_end, scratch); break;
    default: break;
  }
}
