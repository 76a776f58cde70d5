#!/usr/bin/env bash
# Builds the torch-free cpu_kernels and cpu_pool tests and the kernels bench on their own (no cmake, no libtorch):
#   test/native/build.sh && test/native/out/cpu_kernels_test && test/native/out/cpu_kernels_test_wide
#   test/native/out/cpu_pool_test
#   test/native/out/cpu_kernels_bench
# The ISA flags per file are the ones CMakeLists.txt gives them. CXX=clang++ works too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/out"
mkdir -p "$out"
CXX="${CXX:-g++}"
common=(-std=gnu++17 -O3 -g -Wall -Wextra -Wno-unused-parameter -I"$root/native")
declare -A flags=(
  [cpu_kernels]=""
  [cpu_kernels_portable]=""
  [cpu_kernels_avx2]="-mavx2 -mfma -mf16c"
  [cpu_kernels_avx512]="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma"
  [cpu_kernels_avx512bf16]="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma"
)
objs=()
for f in cpu_kernels cpu_kernels_portable cpu_kernels_avx2 cpu_kernels_avx512 cpu_kernels_avx512bf16; do
  # shellcheck disable=SC2086
  "$CXX" "${common[@]}" ${flags[$f]} -c "$root/native/$f.cc" -o "$out/$f.o" &
  objs+=("$out/$f.o")
done
# The AVX2 loops once more with the AVX-512 tiling (12-row tiles) and small row blocks (64 KiB of packed x, so the
# test's shapes cross row blocks): this CPU may not run AVX-512,
# but it runs the same template code at those tile sizes (cpu_kernels_test_wide).
"$CXX" "${common[@]}" -mavx2 -mfma -mf16c -DSK_RMAX=12 -DSK_X_BYTES=65536 -c "$root/native/cpu_kernels_avx2.cc" \
  -o "$out/cpu_kernels_avx2_wide.o" &
"$CXX" "${common[@]}" -c "$here/cpu_kernels_test.cc" -o "$out/cpu_kernels_test.o" &
"$CXX" "${common[@]}" -c "$here/cpu_kernels_bench.cc" -o "$out/cpu_kernels_bench.o" &
"$CXX" "${common[@]}" -pthread "$here/cpu_pool_test.cc" "$root/native/cpu_pool.cc" -o "$out/cpu_pool_test" &
wait
"$CXX" -o "$out/cpu_kernels_test" "$out/cpu_kernels_test.o" "${objs[@]}"
"$CXX" -o "$out/cpu_kernels_test_wide" "$out/cpu_kernels_test.o" "$out/cpu_kernels.o" "$out/cpu_kernels_portable.o" \
  "$out/cpu_kernels_avx2_wide.o" "$out/cpu_kernels_avx512.o" "$out/cpu_kernels_avx512bf16.o"
"$CXX" -o "$out/cpu_kernels_bench" "$out/cpu_kernels_bench.o" "${objs[@]}" -ldl
# No function the AVX-512 object defines may be one the others could share (a weak/comdat symbol): the linker
# could keep that copy for every caller, and a CPU without AVX-512 would die with SIGILL.
weak="$(nm -C "$out/cpu_kernels_avx512.o" "$out/cpu_kernels_avx512bf16.o" "$out/cpu_kernels_avx2.o" | grep -E ' [WVu] ' || true)"
if [ -n "$weak" ]; then
  echo "build.sh: weak symbols in the ISA objects:" >&2
  echo "$weak" >&2
  exit 1
fi
echo "built $out/cpu_kernels_test $out/cpu_kernels_test_wide $out/cpu_kernels_bench $out/cpu_pool_test"
