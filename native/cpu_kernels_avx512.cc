// The cpu_kernels loops for avx512, compiled with: -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma (see CMakeLists.txt and test/native/build.sh).
// Only cpu_kernels.cc calls in here, and only when cpuid says the CPU runs this ISA. No header of the project or of
// the standard library is included: every function compiled in this file is local to it (see cpu_kernels_impl.h).
#include <immintrin.h>
#include <stdint.h>

#define SK_VBYTES 64

// GCC 12 warns "__Y may be used uninitialized" inside its own AVX-512 intrinsics (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace semicap::kernels::avx512 {
namespace {
#include "cpu_kernels_impl.h"
}  // namespace

SK_ENTRY_POINTS

}  // namespace semicap::kernels::avx512
