#!/usr/bin/env bash
# Run on the GPU machine (bench/gpu/prepare.sh first, here): builds the addon against that machine's CUDA PyTorch,
# runs the CUDA checks, the benchmark and the continuous-batching check (bench/gpu/batching.mjs, on the captioner
# bench.mjs saves). Results land in $OUT (check.json, bench.json, batching.json, logs). SEMICAP_GPU_CPU_ONLY=1 stops
# after the addon's CPU check (cpu-check.json).
set -uo pipefail
OUT=${OUT:-/tmp/semicap-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
cd "$(dirname "$0")/../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The host CPU first (an x86-64 that may have AVX-512/AMX, which the dev machines lack): the torch-free kernel tests
# run every instruction set it has against double precision, and the kernel bench times the product shapes there
# (SEMICAP_GPU_SKIP_CPU=1 skips them).
if [ "${SEMICAP_GPU_SKIP_CPU:-0}" = 0 ]; then
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed -E 's/(Flags: +).*/\1'"$(grep -o -w -E 'avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_tile|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"'/'
bash test/native/build.sh > /dev/null && test/native/out/cpu_kernels_test | tail -4 && test/native/out/cpu_kernels_test_wide | tail -1
timeout 100 test/native/out/cpu_kernels_bench --budget 0.15 > "$OUT/kernels-bench.txt" 2>&1; tail -n +1 "$OUT/kernels-bench.txt" | head -3
echo "cpu kernels done at $(( $(date +%s) - T0 )) s"
fi
mkdir -p /tmp/nodebin && xz -dc .device/node.xz > /tmp/nodebin/node && chmod +x /tmp/nodebin/node
export PATH=/tmp/nodebin:$PATH
node --version
tar -xJf .device/node_modules.tar.xz
rm -rf dist && cp -r .device/dist dist
TORCH_PREFIX=$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include" -DCMAKE_CUDA_ARCHITECTURES=90 2>&1 | tail -15
cmake --build build/cuda -j 16 -- -k 0 2>&1 | grep -E "error|warning: .*deprecated|Linking" | head -40
if [ ! -f build/cuda/semicap.node ]; then
  echo "build failed; retrying without distributed training"
  cmake -S . -B build/cuda -DSEMICAP_DISTRIBUTED=OFF > /dev/null && cmake --build build/cuda -j 16 2>&1 | grep -E "error|Linking" | head -20
  [ -f build/cuda/semicap.node ] || exit 1
fi
mkdir -p build/Release && cp build/cuda/semicap.node build/Release/semicap.node || exit 1
echo "build done at $(( $(date +%s) - T0 )) s"
# The addon's CPU paths on this host's CPU: golden parity and greedy ids through each ISA's kernels and weight type.
node bench/gpu/cpu-check.mjs .device/golden/tiny
echo "cpu check done at $(( $(date +%s) - T0 )) s"
[ "${SEMICAP_GPU_CPU_ONLY:-0}" = 0 ] || exit 0
node bench/gpu/check.mjs .device/golden/tiny /tmp/semicap-check
echo "checks done at $(( $(date +%s) - T0 )) s"
python3 bench/gpu/make_models.py /tmp/semicap-models
node bench/gpu/bench.mjs /tmp/semicap-models .device/gpt2-tokenizer /tmp/semicap-bench
echo "bench done at $(( $(date +%s) - T0 )) s"
node bench/gpu/batching.mjs /tmp/semicap-models /tmp/semicap-bench
echo "batching done at $(( $(date +%s) - T0 )) s"
