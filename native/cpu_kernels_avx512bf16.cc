// The cpu_kernels loops for avx512bf16, compiled with: -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma
// (see CMakeLists.txt and test/native/build.sh): the avx512 loops, with bfloat16 weights through VDPBF16PS
// (SK_BF16DOT, see cpu_kernels_impl.h). Only cpu_kernels.cc calls in here, and only when cpuid says the CPU runs
// AVX-512 and AVX512-BF16.
#define SK_BF16DOT 1
#define SK_ISA_NAMESPACE avx512bf16
#include "cpu_kernels_avx512.cc"
