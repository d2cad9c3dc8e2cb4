#!/usr/bin/env bash
# Builds what scripts/device-checks.sh runs on a machine without a Rust toolchain (the lent
# 16-core GPU machine, or any x86-64 Linux host of 16+ cores) into .device/ (git-ignored):
#
#   .device/bin/rafi                  release, stripped
#   .device/bin/pingpong              rdma-mock's floor and raw ping-pong (the baselines)
#   .device/lib/libsaxpy_cuda.so      only when nvcc is here (NVCC=…); else the checks
#                                     build it there with that machine's nvcc
#
# Then carry `.device` and run `bash scripts/device-checks.sh` there (docs/performance.md,
# "Scaling on a larger machine", has the whole procedure). About 10 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
target=${CARGO_TARGET_DIR:-target}
step "building rafi and the floor (release)"
cargo build --release --locked -p rafi --bin rafi
cargo build --release --locked -p rdma-mock --example pingpong

rm -rf .device
mkdir -p .device/bin .device/lib
strip -o .device/bin/rafi "$target/release/rafi"
strip -o .device/bin/pingpong "$target/release/examples/pingpong"

NVCC=${NVCC:-nvcc}
if command -v "$NVCC" >/dev/null 2>&1; then
    step "building examples/functions/cuda with $NVCC (sm_90: H100/H200)"
    make -C examples/functions/cuda NVCC="$NVCC" ARCH="${ARCH:-sm_90}" OUT="$PWD/.device/lib"
else
    echo "no nvcc here: scripts/device-checks.sh builds the CUDA example with the machine's own" >&2
fi
git rev-parse --short HEAD >.device/commit 2>/dev/null || echo unknown >.device/commit
du -sh .device
echo "bundle ready: carry .device, run: bash scripts/device-checks.sh"
