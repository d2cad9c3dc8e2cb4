#!/usr/bin/env bash
# Builds what scripts/device-checks.sh runs on a machine without a Rust toolchain (the lent
# 16-core GPU machine, or any x86-64 Linux host of 16+ cores) into .device/ (git-ignored):
#
#   .device/bin/rafi                  release, stripped
#   .device/bin/pingpong              rdma-mock's floor and raw ping-pong (the baselines)
#   .device/bin/blackscholes-offload, small-tasks-overlap   the MPI offload applications
#   .device/lib/librafi_example_functions.so                 and their function library
#   .device/debs/*.deb                Open MPI's runtime from Debian (the applications link
#                                     this one; the checks unpack it under /tmp there)
#   .device/lib/libsaxpy_cuda.so      only when nvcc is here (NVCC=…); else the checks
#                                     build it there with that machine's nvcc
#
# Then carry `.device` and run `bash scripts/device-checks.sh` there (docs/performance.md,
# "On a larger machine", has the whole procedure). About 20 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# Open MPI's runtime, as the Debian packages that libmpi and mpirun need beyond glibc.
MPI_PACKAGES=(openmpi-bin openmpi-common libopenmpi3 libevent-core-2.1-7
    libevent-pthreads-2.1-7 libfabric1 libhwloc15 libibverbs1 libmunge2 libnl-3-200
    libnl-route-3-200 libnuma1 libpmix2 libpsm-infinipath1 libpsm2-2 librdmacm1 libucx0
    libatomic1)

require_cargo
# The mpi crate runs bindgen over Open MPI's headers.
ensure_debian_packages libopenmpi-dev openmpi-bin libclang-dev pkg-config
target=${CARGO_TARGET_DIR:-target}
step "building rafi, the floor and the MPI offload applications (release)"
cargo build --release --locked -p rafi --bin rafi
cargo build --release --locked -p rdma-mock --example pingpong
cargo build --release --locked -p rafi-example-functions -p rafi-mpi-examples

rm -rf .device
mkdir -p .device/bin .device/lib .device/debs
strip -o .device/bin/rafi "$target/release/rafi"
strip -o .device/bin/pingpong "$target/release/examples/pingpong"
for app in blackscholes-offload small-tasks-overlap; do
    strip -o ".device/bin/$app" "$target/release/$app"
done
strip -o .device/lib/librafi_example_functions.so "$target/release/librafi_example_functions.so"

step "downloading Open MPI's runtime packages"
download() {
    (cd .device/debs && apt-get -q download "${MPI_PACKAGES[@]}" >/dev/null 2>&1) &&
        [ "$(find .device/debs -name '*.deb' | wc -l)" -eq ${#MPI_PACKAGES[@]} ]
}
download || { apt-get -q update >/dev/null && download; } ||
    die "could not download ${MPI_PACKAGES[*]} (apt-get download)"

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
