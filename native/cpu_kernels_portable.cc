// The cpu_kernels loops for portable, compiled with: no extra flags: the x86-64 baseline (SSE2) (see CMakeLists.txt and test/native/build.sh).
// Only cpu_kernels.cc calls in here, and only when cpuid says the CPU runs this ISA. No header of the project or of
// the standard library is included: every function compiled in this file is local to it (see cpu_kernels_impl.h).
#include <emmintrin.h>
#include <stdint.h>

#define SK_VBYTES 16

namespace semicap::kernels::portable {
namespace {
#include "cpu_kernels_impl.h"
}  // namespace

int panel_width() { return P; }
int segments() { return SEG; }

int64_t scratch_size(int64_t rows, int64_t K) { return scratch_floats(rows, K); }

void gemm(int wtype, const void* data, const float* scale, int64_t N, int64_t K, const float* x, int64_t rows,
          int64_t ldx, const float* bias, float* y, int64_t ldy, int64_t n_begin, int64_t n_end, float* scratch) {
  gemm_entry(wtype, data, scale, N, K, x, rows, ldx, bias, y, ldy, n_begin, n_end, scratch);
}

}  // namespace semicap::kernels::portable
