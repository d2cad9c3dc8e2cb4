#!/usr/bin/env bash
# rafi's main job, until the invocation path exists: two processes, each pinned to its own
# core, ping-pong over the rdma-mock software fabric; printed next to the latency floor of
# this machine (a cache-line ping-pong between two processes) measured in the same run.
#
#   scripts/demo.sh              shm fabric, 64 B WRITE_WITH_IMM
#   FABRIC=tcp scripts/demo.sh   the tcp fabric instead (compared with plain TCP)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
FABRIC=${FABRIC:-shm}
SIZE=${SIZE:-64}
ITERS=${ITERS:-100000}

step "building the ping-pong (release)"
cargo build --release --locked -p rdma-mock --example pingpong
pingpong=target/release/examples/pingpong

case "$FABRIC" in
    shm) baseline=cacheline ;;
    tcp) baseline=tcp ;;
    *) die "FABRIC must be shm or tcp, not '$FABRIC'" ;;
esac

step "baseline: $baseline ping-pong between two processes"
"$pingpong" --baseline "$baseline" --size "$SIZE" --iters "$ITERS"
step "rdma-mock $FABRIC fabric: WRITE_WITH_IMM of $SIZE bytes each way"
"$pingpong" --fabric "$FABRIC" --op write-imm --size "$SIZE" --iters "$ITERS"
step "rdma-mock $FABRIC fabric: SEND of $SIZE bytes each way"
"$pingpong" --fabric "$FABRIC" --op send --size "$SIZE" --iters "$ITERS"
