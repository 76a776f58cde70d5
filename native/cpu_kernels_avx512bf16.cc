// The cpu_kernels loops for avx512bf16, compiled with: -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma
// (see CMakeLists.txt and test/native/build.sh): the avx512 loops, with bfloat16 weights through VDPBF16PS
// (SK_BF16DOT, see cpu_kernels_impl.h). Only cpu_kernels.cc calls in here, and only when cpuid says the CPU runs
// AVX-512 and AVX512-BF16. No header of the project or of the standard library is included: every function compiled
// in this file is local to it (see cpu_kernels_impl.h).
#include <immintrin.h>
#include <stdint.h>

#define SK_VBYTES 64
#define SK_BF16DOT 1

// GCC 12 warns "__Y may be used uninitialized" inside its own AVX-512 intrinsics (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace semicap::kernels::avx512bf16 {
namespace {
#include "cpu_kernels_impl.h"
}  // namespace

SK_ENTRY_POINTS

}  // namespace semicap::kernels::avx512bf16
