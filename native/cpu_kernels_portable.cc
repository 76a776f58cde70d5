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

SK_ENTRY_POINTS

}  // namespace semicap::kernels::portable
