// float32 matrix products for CPU inference, 8 rows x 64 columns of accumulators in AVX-512 registers.
//
// Why not BLAS: OpenBLAS packs the whole weight on every call and reads it at 8-10 GB/s when there are few rows
// (batched decoding: 8 rows), and on AMD's AVX-512 CPUs it is pinned to its AVX2 kernels (~100 GFLOP/s) where these
// loops reach 160-180. Measured on the 2-core VM, 1 thread: GPT-2's 48 block products at 8 rows 21-23 ms vs 35-41;
// logits [8,768]x[768,50257] 11 vs 17-20 ms; CLIP's [400,768]x[768,3072] 11.7 vs 18.5 ms. Torch-free on purpose.
#pragma once
#include <cstdint>

namespace semicap {

// True when the CPU runs the AVX-512 clone of the kernels; elsewhere callers keep BLAS (the same loops compiled
// for AVX2 would spill their 64 accumulators).
bool cpu_gemm_available();

// y[m, n] = bias[n] + sum_k x[m, k] * w[k, n] for m < rows, n in [n_begin, n_end): w row-major [K, ldw] (GPT-2's
// Conv1D layout, or wte^T). x is [rows, K], y is [rows, ldy], bias may be null.
void gemm_kn(const float* x, int64_t rows, int64_t K, const float* w, int64_t ldw, const float* bias, float* y,
             int64_t ldy, int64_t n_begin, int64_t n_end);

// The same with w row-major [N, K] (torch's Linear layout): each 64-column panel is transposed once into a
// K x 64 buffer and then serves every row.
void gemm_nk(const float* x, int64_t rows, int64_t K, const float* w, const float* bias, float* y, int64_t ldy,
             int64_t n_begin, int64_t n_end);

}  // namespace semicap
