#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for semicap: system packages (libtorch, OpenBLAS, a C++ toolchain, and
# Chromium for the report tests), then the npm dependencies, which build the native addon and the TypeScript.
# Run as root or with sudo available. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
# libtorch (CPU) from Debian; CUDA users point LIBTORCH at an official archive or install a pip torch instead.
dpkg -s libtorch-dev >/dev/null 2>&1 || need+=(libtorch-dev)
# Debian's libtorch calls whatever libblas.so.3 is installed: the reference BLAS runs matmuls at 2-5 GFLOP/s,
# OpenBLAS (its OpenMP build, sharing libtorch's OpenMP threads) at 30-100.
dpkg -s libopenblas0-openmp >/dev/null 2>&1 || need+=(libopenblas0-openmp)
# Gloo's headers, for data-parallel training on libtorch's c10d (the library itself is inside libtorch).
dpkg -s libgloo-dev >/dev/null 2>&1 || need+=(libgloo-dev)
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v ccache >/dev/null || need+=(ccache)
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "semicap setup: installing ${need[*]}"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<17)) { console.error("semicap needs Node >= 20.17, found "+process.version); process.exit(1) }'
npm ci
