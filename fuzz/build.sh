#!/usr/bin/env bash
# Builds the fuzz targets with clang (libFuzzer + ASan + UBSan) into build/fuzz/:
#   safetensors_fuzz        native/safetensors.cc (+ its JSON reader, json_reader.cc)
#   torch_checkpoint_fuzz   native/torch_checkpoint.cc (+ safetensors.cc for the dtype table)
# Both link atomic_file.cc (the writers' temp file + rename).
# The parsers are torch-free, so this compiles them alone: no libtorch, no CMake, ~10 s each.
#
#   fuzz/build.sh [target...]     # default: both; needs clang and its compiler-rt (Debian: apt-get install clang libclang-rt-dev)
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
common=(native/safetensors.cc native/json_reader.cc native/atomic_file.cc)
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Inative)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(safetensors torch_checkpoint)
set -x
for t in "${targets[@]}"; do
  case $t in
    safetensors) "$cxx" "${flags[@]}" fuzz/safetensors_fuzz.cc "${common[@]}" -o build/fuzz/safetensors_fuzz ;;
    torch_checkpoint) "$cxx" "${flags[@]}" fuzz/torch_checkpoint_fuzz.cc native/torch_checkpoint.cc "${common[@]}" -o build/fuzz/torch_checkpoint_fuzz ;;
    *) echo "fuzz/build.sh: unknown target $t (safetensors, torch_checkpoint)"; exit 2 ;;
  esac
done
