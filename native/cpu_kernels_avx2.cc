// The cpu_kernels loops for avx2, compiled with: -mavx2 -mfma -mf16c (see CMakeLists.txt and test/native/build.sh).
// Only cpu_kernels.cc calls in here, and only when cpuid says the CPU runs this ISA. No header of the project or of
// the standard library is included: every function compiled in this file is local to it (see cpu_kernels_impl.h).
#include <immintrin.h>
#include <stdint.h>

#define SK_VBYTES 32

namespace semicap::kernels::avx2 {
namespace {
#include "cpu_kernels_impl.h"
}  // namespace

SK_ENTRY_POINTS

}  // namespace semicap::kernels::avx2
