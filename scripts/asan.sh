#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the test suite.
#
#   scripts/asan.sh [vitest args...]      e.g. scripts/asan.sh test/safetensors.test.ts
#
# 1. Builds the addon with -DSEMICAP_SANITIZE=ON into build/asan (the normal build in build/Release is untouched).
# 2. Runs vitest with SEMICAP_ADDON pointing at that build. Node itself is not instrumented, so the ASan and UBSan
#    runtimes are preloaded (they must come first in the library list). Leak detection is off: V8 and libtorch keep
#    process-lifetime allocations by design, which LeakSanitizer would report at every exit.
# 3. Greps the output for sanitizer reports and exits non-zero if there is one (or if the tests fail).
#
# Known noise, not sanitizer findings: LD_PRELOAD reaches every child process, so test/report.test.ts's headless
# Chromium checks fail (its wrapper script breaks under the preload); and ASan's quarantine and 3-5x slowdown make
# the RSS assertions and the number of kill -9 rounds in test/reliability.test.ts meaningless, so that file relaxes
# them when it sees libasan in LD_PRELOAD.
#
# Environment: SEMICAP_ASAN_SKIP_BUILD=1 reuses an existing build/asan; SEMICAP_ASAN_LOG=<file> (default
# build/asan/asan-test.log) keeps the full output; JOBS=<n> build parallelism (default: nproc).
set -uo pipefail
cd "$(dirname "$0")/.."

out=build/asan
log=${SEMICAP_ASAN_LOG:-$out/asan-test.log}
addon=$out/Release/semicap.node

if [[ "${SEMICAP_ASAN_SKIP_BUILD:-0}" != 1 || ! -f $addon ]]; then
  echo "asan.sh: building the sanitizer addon into $out (slow: libtorch headers, -O2 + instrumentation)"
  # cmake-js 8: -O <dir> is the build folder, --CD<VAR>=<value> passes -D<VAR>=<value> to CMake.
  npx cmake-js compile -O "$out" -p "${JOBS:-$(nproc)}" --CDSEMICAP_SANITIZE=ON || { echo "asan.sh: build failed"; exit 2; }
fi

libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
for f in "$libasan" "$libubsan"; do
  [[ -e $f ]] || { echo "asan.sh: $f not found (install gcc's libasan/libubsan)"; exit 2; }
done
mkdir -p "$(dirname "$log")"

echo "asan.sh: running vitest with $addon (log: $log)"
# detect_leaks=0: see above. new_delete_type_mismatch=0: libtorch/protobuf sized-delete noise in uninstrumented code.
# handle_segv=0 would hide crashes from ASan; keep ASan's handler. halt_on_error=0 with -fsanitize-recover would go
# on after a report, but gcc's ASan halts by default, which is what we want: a report is a failure.
SEMICAP_ADDON=$addon \
LD_PRELOAD="$libasan:$libubsan" \
ASAN_OPTIONS=detect_leaks=0:new_delete_type_mismatch=0:alloc_dealloc_mismatch=0:detect_odr_violation=0:allocator_may_return_null=1:abort_on_error=0:print_summary=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=0 \
  npx vitest run "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

asan=$(grep -c "ERROR: AddressSanitizer" "$log")
ubsan=$(grep -c "runtime error:" "$log")
echo "asan.sh: AddressSanitizer reports: $asan, UBSan 'runtime error:' lines: $ubsan, vitest exit status: $status"
if (( asan > 0 || ubsan > 0 )); then
  grep -n -A20 -E "ERROR: AddressSanitizer|runtime error:" "$log" | head -200
  exit 1
fi
exit "$status"
