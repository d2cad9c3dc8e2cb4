#!/usr/bin/env bash
# rafi's main job, until the invocation path exists: two processes, each pinned to its own
# core, ping-pong over the rdma-mock software fabric; printed next to the latency floor of
# this machine (a cache-line ping-pong between two processes) measured in the same run.
#
#   scripts/demo.sh              shm fabric, 64 B WRITE_WITH_IMM
#   FABRIC=tcp scripts/demo.sh   the tcp fabric instead (compared with busy-polling TCP)
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

# Like for like: the fabric polls, so the baseline polls too.
case "$FABRIC" in
    shm) baseline=cacheline baseline_args=(--baseline cacheline) ;;
    tcp) baseline="busy-polling tcp" baseline_args=(--baseline tcp --wait spin) ;;
    *) die "FABRIC must be shm or tcp, not '$FABRIC'" ;;
esac

# run NAME ARGS...: runs one ping-pong, shows its line, keeps its p50 in P50[NAME].
declare -A P50
run() {
    local name=$1 line
    shift
    line=$("$pingpong" "$@")
    echo "$line"
    P50[$name]=$(awk '{ for (i = 1; i < NF; i++) if ($i == "p50") { print $(i + 1); exit } }' <<<"$line")
}

step "baseline: $baseline ping-pong between two processes"
run floor "${baseline_args[@]}" --size "$SIZE" --iters "$ITERS"
step "rdma-mock $FABRIC fabric: WRITE_WITH_IMM of $SIZE bytes each way"
run write-imm --fabric "$FABRIC" --op write-imm --size "$SIZE" --iters "$ITERS"
step "rdma-mock $FABRIC fabric: SEND of $SIZE bytes each way"
run send --fabric "$FABRIC" --op send --size "$SIZE" --iters "$ITERS"

step "summary (p50 round trip, as a multiple of the $baseline baseline measured just now)"
for op in write-imm send; do
    awk -v op="$op" -v a="${P50[$op]}" -v b="${P50[floor]}" \
        'BEGIN { printf "  %-10s %8s ns = %.2f x %s ns\n", op, a, a / b, b }'
done
