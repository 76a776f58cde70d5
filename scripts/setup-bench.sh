#!/usr/bin/env bash
# What `npm run bench` needs beyond scripts/setup.sh: eager PyTorch (the training peer and the reference side of the
# cross-checks) and ONNX for exporting the inference peer. ONNX Runtime itself is installed by bench/run.ts into
# bench/ort/node_modules (its install step would fetch CUDA libraries from outside the npm registry:
# ONNXRUNTIME_NODE_INSTALL=skip keeps the CPU binaries that ship in the npm tarball).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
dpkg -s python3-torch >/dev/null 2>&1 || need+=(python3-torch)
dpkg -s python3-onnx >/dev/null 2>&1 || need+=(python3-onnx)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
