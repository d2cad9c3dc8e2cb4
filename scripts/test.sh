#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate.
# Installs what it needs on Debian; needs only the Rust toolchain beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
# iproute2: the tcp fabric is also tested between two network namespaces ("hosts").
# Packages for later suites (libibverbs, qemu for soft-RoCE) get installed here too.
ensure_debian_packages iproute2

step "cargo fmt --check"
cargo fmt --all -- --check || die "formatting differs: run 'cargo fmt --all'"

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
# The examples and benchmarks are built (and so checked) by --all-targets; the doc tests
# run in the second call, which --all-targets leaves out.
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

echo
echo "all tests passed"
