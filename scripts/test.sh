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
ensure_debian_packages iproute2 libibverbs-dev librdmacm-dev libclang-dev pkg-config

# run_in_rxe_vm TEST...: builds the integration-test targets TEST... (tests/TEST.rs) with
# the verbs feature on the host and runs them all in one boot of the soft-RoCE VM
# (scripts/rxe-vm.sh; docs/soft-roce.md), one after the other, single-threaded. A failing
# test fails the script. A VM that cannot be set up (status 125) fails it under CI=true
# and is a warning elsewhere.
run_in_rxe_vm() {
    local target
    local -a args=() bins=()
    for target in "$@"; do args+=(--test "$target"); done
    mapfile -t bins < <(cargo test --features verbs --locked --no-run \
        --message-format=json "${args[@]}" |
        grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
    [ ${#bins[@]} -eq $# ] || die "expected $# test binaries for $*, cargo listed ${#bins[@]}"
    local status=0
    RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-900} scripts/rxe-vm.sh sh -c \
        'for t in "$@"; do echo "--- $t (in the rxe VM)"; "$t" --test-threads=1 || exit; done' \
        sh "${bins[@]}" || status=$?
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

step "cargo test"
# The examples and benchmarks are built (and so checked) by --all-targets; the doc tests
# run in the second call, which --all-targets leaves out.
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# On the host (no RDMA device): the verbs tests print a skip line, except the one that
# checks the error for a missing libibverbs and that shm still works then.
cargo test --locked --features verbs --test verbs

step "soft-RoCE: verbs tests in a qemu guest"
# More suites run on verbs by adding their test target here, e.g. `conformance`.
run_in_rxe_vm verbs

echo
echo "all tests passed"
