#include "skinny_gemm.h"

#include <algorithm>

namespace semicap {
namespace {

constexpr int kTile = 64;  // columns per pass: 8 rows x 64 floats fill the 32 AVX-512 registers (64 measured best)

// One 64-column tile for M rows. Written as plain loops that GCC turns into FMAs on the target of each clone;
// the weight is read once, row by row, 256 bytes per row.
template <int M>
__attribute__((target_clones("avx512f", "avx2,fma", "default")))
void tile_kernel(const float* x, int64_t K, const float* w, int64_t ldw, const float* bias, float* y, int64_t ldy) {
  float acc[M][kTile];
  for (int m = 0; m < M; ++m)
    for (int t = 0; t < kTile; ++t) acc[m][t] = bias ? bias[t] : 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = w + k * ldw;
    for (int m = 0; m < M; ++m) {
      const float xv = x[m * K + k];
      for (int t = 0; t < kTile; ++t) acc[m][t] += xv * wk[t];
    }
  }
  for (int m = 0; m < M; ++m)
    for (int t = 0; t < kTile; ++t) y[m * ldy + t] = acc[m][t];
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, const float*, float*, int64_t);
constexpr TileFn kTiles[9] = {nullptr, tile_kernel<1>, tile_kernel<2>, tile_kernel<3>, tile_kernel<4>,
                              tile_kernel<5>, tile_kernel<6>, tile_kernel<7>, tile_kernel<8>};

// Columns that do not fill a tile: one at a time (at most 63 of them).
void tail(const float* x, int64_t rows, int64_t K, const float* w, int64_t ldw, const float* bias, float* y,
          int64_t ldy, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n)
    for (int64_t m = 0; m < rows; ++m) {
      float s = bias ? bias[n] : 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * w[k * ldw + n];
      y[m * ldy + n] = s;
    }
}

}  // namespace

void skinny_gemm(const float* x, int64_t rows, int64_t K, const float* w, int64_t ldw, const float* bias, float* y,
                 int64_t ldy, int64_t n_begin, int64_t n_end) {
  // More than 8 rows: blocks of 8 (each block reads the weight again, still faster than the packed gemm to 16).
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int64_t r = std::min<int64_t>(8, rows - r0);
    const float* xr = x + r0 * K;
    float* yr = y + r0 * ldy;
    int64_t n = n_begin;
    for (; n + kTile <= n_end; n += kTile) kTiles[r](xr, K, w + n, ldw, bias ? bias + n : nullptr, yr + n, ldy);
    tail(xr, r, K, w, ldw, bias, yr, ldy, n, n_end);
  }
}

}  // namespace semicap
