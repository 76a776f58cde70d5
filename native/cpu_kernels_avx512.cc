// The cpu_kernels loops for avx512, compiled with: -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma (see CMakeLists.txt and test/native/build.sh).
// Only cpu_kernels.cc calls in here, and only when cpuid says the CPU runs this ISA. No header of the project or of
// the standard library is included: every function compiled in this file is local to it (see cpu_kernels_impl.h).
// cpu_kernels_avx512bf16.cc compiles this file again as namespace avx512bf16, with SK_BF16DOT.
#include <immintrin.h>
#include <stdint.h>

#define SK_VBYTES 64
#ifndef SK_ISA_NAMESPACE
#define SK_ISA_NAMESPACE avx512
#endif

// GCC 12 warns "__Y may be used uninitialized" inside its own AVX-512 intrinsics (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace semicap::kernels::SK_ISA_NAMESPACE {
namespace {
#include "cpu_kernels_impl.h"
}  // namespace

SK_ENTRY_POINTS

}  // namespace semicap::kernels::SK_ISA_NAMESPACE
