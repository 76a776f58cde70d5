#include "cpu_gemm.h"

#include "env.h"

#include <algorithm>
#include <vector>

namespace semicap {
namespace {

constexpr int kTile = 64;  // columns per panel: 8 rows x 64 floats fill the 32 AVX-512 registers (64 measured best)
constexpr int kRows = 8;

// One 8 x 64 block (fewer rows at the end): the panel w is read row by row, 256 bytes per row, each element used for
// every row from a register. Plain loops that GCC turns into FMAs for each clone's target.
template <int M>
__attribute__((target_clones("avx512f", "default")))
void block_kernel(const float* x, int64_t K, const float* w, int64_t ldw, const float* bias, float* y, int64_t ldy) {
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

using BlockFn = void (*)(const float*, int64_t, const float*, int64_t, const float*, float*, int64_t);
constexpr BlockFn kBlocks[kRows + 1] = {nullptr, block_kernel<1>, block_kernel<2>, block_kernel<3>, block_kernel<4>,
                                        block_kernel<5>, block_kernel<6>, block_kernel<7>, block_kernel<8>};

// Every row against one full panel (the panel stays in L2 across the row blocks).
void panel_rows(const float* x, int64_t rows, int64_t K, const float* panel, int64_t ldp, const float* bias, float* y,
                int64_t ldy) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t r = std::min<int64_t>(kRows, rows - r0);
    kBlocks[r](x + r0 * K, K, panel, ldp, bias, y + r0 * ldy, ldy);
  }
}

// Columns that do not fill a panel, one at a time (at most 63). w_at(k, n) reads the weight in either layout.
template <class At>
void tail_columns(const float* x, int64_t rows, int64_t K, At w_at, const float* bias, float* y, int64_t ldy,
                  int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n)
    for (int64_t m = 0; m < rows; ++m) {
      float s = bias ? bias[n] : 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * w_at(k, n);
      y[m * ldy + n] = s;
    }
}

}  // namespace

bool cpu_gemm_available() {
  // SEMICAP_NO_CPU_GEMM=1 keeps every product on BLAS (to compare, or to rule these kernels out).
  static const bool ok = __builtin_cpu_supports("avx512f") && !env_flag("SEMICAP_NO_CPU_GEMM");
  return ok;
}

void gemm_kn(const float* x, int64_t rows, int64_t K, const float* w, int64_t ldw, const float* bias, float* y,
             int64_t ldy, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + kTile <= n_end; n += kTile) panel_rows(x, rows, K, w + n, ldw, bias ? bias + n : nullptr, y + n, ldy);
  tail_columns(x, rows, K, [&](int64_t k, int64_t c) { return w[k * ldw + c]; }, bias, y, ldy, n, n_end);
}

void gemm_nk(const float* x, int64_t rows, int64_t K, const float* w, const float* bias, float* y, int64_t ldy,
             int64_t n_begin, int64_t n_end) {
  std::vector<float> panel(static_cast<size_t>(K) * kTile);
  int64_t n = n_begin;
  for (; n + kTile <= n_end; n += kTile) {
    for (int t = 0; t < kTile; ++t) {
      const float* src = w + (n + t) * K;
      for (int64_t k = 0; k < K; ++k) panel[k * kTile + t] = src[k];
    }
    panel_rows(x, rows, K, panel.data(), kTile, bias ? bias + n : nullptr, y + n, ldy);
  }
  tail_columns(x, rows, K, [&](int64_t k, int64_t c) { return w[c * K + k]; }, bias, y, ldy, n, n_end);
}

}  // namespace semicap
