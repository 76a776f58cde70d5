#!/usr/bin/env bash
# Builds the safetensors fuzz target with clang (libFuzzer + ASan + UBSan) into build/fuzz/safetensors_fuzz.
# The parser is torch-free, so this compiles native/safetensors.cc alone: no libtorch, no CMake, ~10 s.
#
#   fuzz/build.sh                 # needs clang and its compiler-rt (Debian: apt-get install clang libclang-rt-dev)
#   CLANGXX=clang++-14 fuzz/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CLANGXX:-}
if [[ -z $cxx ]]; then
  for c in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$c" >/dev/null; then cxx=$c; break; fi
  done
fi
[[ -n $cxx ]] || { echo "fuzz/build.sh: no clang++ found (apt-get install clang libclang-rt-dev)"; exit 2; }
mkdir -p build/fuzz
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Inative)
set -x
"$cxx" "${flags[@]}" fuzz/safetensors_fuzz.cc native/safetensors.cc -o build/fuzz/safetensors_fuzz
