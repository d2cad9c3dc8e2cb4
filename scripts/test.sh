#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate.
# Installs what it needs on Debian; needs only the Rust toolchain beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
# iproute2: the tcp fabric is also tested between two network namespaces ("hosts").
# libibverbs-dev, librdmacm-dev, libclang-dev, pkg-config: building the verbs backend
# (rdma-sys runs bindgen on verbs.h). The soft-RoCE VM installs its own (qemu, a kernel).
# libopenmpi-dev, openmpi-bin, gfortran: the MPI examples (examples/mpi/rust) and the Open
# MPI baseline (benches/baselines) bind Open MPI with bindgen (the mpi crate); the C API's
# tests build the C and Fortran examples with mpicc/mpifort against librafi; all of them
# run under mpirun.
ensure_debian_packages iproute2 libibverbs-dev librdmacm-dev libclang-dev pkg-config \
    libopenmpi-dev openmpi-bin gfortran

# run_in_rxe_vm [PACKAGE/]TEST[:FILTER]...: builds the integration-test targets TEST...
# (tests/TEST.rs or tests/TEST/main.rs of PACKAGE, default the rafi crate) with the verbs
# feature on the host and runs them all in one boot of
# the soft-RoCE VM (scripts/rxe-vm.sh; docs/soft-roce.md), one after the other,
# single-threaded, each with its libtest FILTER if given (e.g. `verbs::` to leave out the
# shm and tcp instances that already ran on the host). A failing test fails the script. A
# VM that cannot be set up (status 125) fails it under CI=true and is a warning elsewhere.
run_in_rxe_vm() {
    local spec target filter bin package
    local -a runs=()
    for spec in "$@"; do
        target=${spec%%:*}
        filter=
        [ "$target" != "$spec" ] && filter=${spec#*:}
        package=rafi
        if [[ $target == */* ]]; then
            package=${target%%/*}
            target=${target#*/}
        fi
        bin=$(cargo test -p "$package" --features verbs --locked --no-run --message-format=json \
            --test "$target" | grep -o '"executable":"[^"]*"' |
            sed 's/^"executable":"//; s/"$//' | grep "/deps/$target-")
        [ -n "$bin" ] || die "no test binary for $target"
        runs+=("$bin" "$filter")
    done
    local status=0
    RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-900} scripts/rxe-vm.sh sh -c '
        while [ $# -gt 0 ]; do
            echo "--- $1 $2 (in the rxe VM)"
            "$1" --test-threads=1 $2 || exit
            shift 2
        done' sh "${runs[@]}" || status=$?
    if [ "$status" -eq 125 ] && [ "${CI:-}" != true ]; then
        echo "warning: the soft-RoCE VM could not be set up (output above); verbs tests not run" >&2
    elif [ "$status" -ne 0 ]; then
        die "verbs tests in the soft-RoCE VM failed (status $status)"
    fi
}

step "cargo fmt --check"
cargo fmt --all -- --check || die "formatting differs: run 'cargo fmt --all'"

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --features verbs -- -D warnings
# The C API with verbs leases (its own feature: --features above reaches the root crate only).
cargo clippy -p rafi-capi --all-targets --locked --features verbs -- -D warnings
# The library alone, as an MPI code links it (no CLI, benchmarks or tokio).
cargo clippy -p rafi --lib --locked --no-default-features -- -D warnings

step "cargo test"
# The examples and benchmarks are built (and so checked) by --all-targets; the doc tests
# run in the second call, which --all-targets leaves out.
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# On the host (no RDMA device): the verbs tests print a skip line, except the one that
# checks the error for a missing libibverbs and that shm still works then.
cargo test --locked --features verbs --test verbs

step "Slurm: managers through sbatch on a local Slurm cluster"
scripts/test-slurm.sh

step "soft-RoCE: verbs tests in a qemu guest"
# The verbs smoke tests, the conformance suite, the end-to-end invocation tests, the hot
# path's allocation check, and `rafi bench pingpong|invoke --fabric verbs` on rxe0; each
# asserts that rxe0 is the device it really used. More suites: add them here.
# The C API's MPI examples too (rafi-capi/mpi_examples: in the guest its cluster runs on
# verbs over rxe0), with librafi built with verbs first: cargo does not run in the guest.
cargo build -p rafi-capi --features verbs --locked
run_in_rxe_vm verbs conformance:verbs:: invoke:verbs:: invoke_hot_path:verbs remote_memory:verbs:: \
    cli:verbs_pingpong_and_invoke_on_the_device rafi-capi/mpi_examples

echo
echo "all tests passed"
