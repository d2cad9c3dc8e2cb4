#!/usr/bin/env bash
# Invocation latency and bandwidth next to the floors and the raw fabric ping-pong, all
# measured in one run on the same two cores, printed as a markdown table of ratios.
#
# Usage: scripts/bench-invoke.sh [--rounds N] [--quick] [--cpus A,B]
#   --rounds N   rounds of the whole set, interleaved (default 3); the median of each
#                ratio over the rounds is reported (cross-core latency on a shared 2-vCPU
#                host can triple for a while)
#   --quick      a tenth of the iterations: a smoke test, not a measurement
#   --cpus A,B   client core and executor/responder core (default 0,1)
#
# Raw JSON lines go to $CARGO_TARGET_DIR/bench-invoke/<UTC time>.jsonl; see
# docs/performance.md for what each line measures and the targets.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ROUNDS=3
DIV=1
CPUS=0,1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --quick) DIV=10; shift ;;
        --cpus) CPUS=$2; shift 2 ;;
        *) die "unknown option $1 (see the header of $0)" ;;
    esac
done
CLIENT=${CPUS%,*}
SERVER=${CPUS#*,}

require_cargo
ensure_debian_packages python3
step "building rafi and the floors (release)"
cargo build --release --locked --bin rafi -p rafi
cargo build --release --locked -p rdma-mock --example pingpong
rafi=target/release/rafi
floor=target/release/examples/pingpong
out_dir=${CARGO_TARGET_DIR:-target}/bench-invoke
mkdir -p "$out_dir"
results=$out_dir/$(date -u +%Y%m%dT%H%M%SZ).jsonl

# run KEY COMMAND...: one measurement, its JSON line tagged with "key" and the round.
run() {
    local key=$1
    shift
    echo "  $key" >&2
    "$@" 2>/dev/null | python3 -c '
import json, sys
key, rnd = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    d = json.loads(line)
    d["key"], d["round"] = key, rnd
    print(json.dumps(d))' "$key" "$round" >>"$results"
}

n() { echo $(($1 / DIV)); }
for round in $(seq "$ROUNDS"); do
    step "round $round of $ROUNDS"
    run floor-cacheline "$floor" --baseline cacheline --iters "$(n 100000)" --client-cpu "$CLIENT" --server-cpu "$SERVER" --json
    run floor-copy-64 "$floor" --baseline copy --size 64 --iters "$(n 100000)" --client-cpu "$CLIENT" --server-cpu "$SERVER" --json
    run floor-wake "$floor" --baseline wake --iters "$(n 20000)" --client-cpu "$CLIENT" --server-cpu "$SERVER" --json
    run floor-copy-1m "$floor" --baseline copy --size 1M --iters "$(n 3000)" --client-cpu "$CLIENT" --server-cpu "$SERVER" --json
    run pingpong-64 "$rafi" bench pingpong --fabric shm --size 64 --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-hot-64 "$rafi" bench invoke --fabric shm --mode hot --size 64 --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-hot-noop-0 "$rafi" bench invoke --fabric shm --mode hot --function rafi.noop --size 0 --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-hot-noop-64 "$rafi" bench invoke --fabric shm --mode hot --function rafi.noop --size 64 --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-hot-noop-64-headers "$rafi" bench invoke --fabric shm --mode hot --function rafi.noop --size 64 --headers --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-hot-64-headers "$rafi" bench invoke --fabric shm --mode hot --size 64 --headers --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-warm-64 "$rafi" bench invoke --fabric shm --mode warm --size 64 --iters "$(n 20000)" --cpus "$CPUS" --json
    run pingpong-1m "$rafi" bench pingpong --fabric shm --size 1M --iters "$(n 3000)" --cpus "$CPUS" --json
    run invoke-hot-1m "$rafi" bench invoke --fabric shm --mode hot --size 1M --iters "$(n 3000)" --cpus "$CPUS" --json
done

step "results (median over $ROUNDS rounds of each round's ratio; raw lines in $results)"
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["key"]] = r
def med(f):
    vals = [f(d) for d in by.values()]
    return statistics.median(vals)
p50 = lambda k: (lambda d: d[k]["p50_ns"])
def bw(k, size):  # bytes each way per round trip -> GB/s over p50
    return lambda d: 2 * size / d[k]["p50_ns"]
MIB = 1 << 20
print("| measurement | p50 (ns, median) | ratio | target |")
print("|---|---:|---:|---|")
def line(name, key, ratio, target):
    print(f"| {name} | {med(p50(key)):.0f} | {ratio} | {target} |")
line("cache-line ping-pong (floor)", "floor-cacheline", "1.00", "")
line("64 B each way, copied in and out of shared memory (floor)", "floor-copy-64",
     f"{med(lambda d: d['floor-copy-64']['p50_ns'] / d['floor-cacheline']['p50_ns']):.2f}x cache line", "")
line("raw WRITE_WITH_IMM ping-pong, 64 B", "pingpong-64",
     f"{med(lambda d: d['pingpong-64']['p50_ns'] / d['floor-cacheline']['p50_ns']):.2f}x cache line", "")
line("hot invocation, rafi.echo 64 B in and out", "invoke-hot-64",
     f"{med(lambda d: d['invoke-hot-64']['p50_ns'] / d['pingpong-64']['p50_ns']):.2f}x ping-pong, "
     f"{med(lambda d: d['invoke-hot-64']['p50_ns'] / d['floor-copy-64']['p50_ns']):.2f}x copy floor",
     "")
line("hot invocation, rafi.echo 64 B, with headers (full form)", "invoke-hot-64-headers",
     f"{med(lambda d: d['invoke-hot-64-headers']['p50_ns'] / d['pingpong-64']['p50_ns']):.2f}x ping-pong", "")
line("hot invocation, rafi.noop 64 B in", "invoke-hot-noop-64",
     f"{med(lambda d: d['invoke-hot-noop-64']['p50_ns'] / d['pingpong-64']['p50_ns']):.2f}x ping-pong",
     "<= 1.3x ping-pong")
line("hot invocation, rafi.noop 64 B in, with headers (full form)", "invoke-hot-noop-64-headers",
     f"{med(lambda d: d['invoke-hot-noop-64-headers']['p50_ns'] / d['pingpong-64']['p50_ns']):.2f}x ping-pong", "")
line("hot invocation, rafi.noop 0 B", "invoke-hot-noop-0",
     f"{med(lambda d: d['invoke-hot-noop-0']['p50_ns'] / d['pingpong-64']['p50_ns']):.2f}x ping-pong", "")
line("eventfd wake of a sleeping peer (floor)", "floor-wake", "1.00", "")
line("warm invocation, 64 B (worker asleep)", "invoke-warm-64",
     f"{med(lambda d: d['invoke-warm-64']['p50_ns'] / d['floor-wake']['p50_ns']):.2f}x wake", "<= 1.5x wake")
gb = lambda k: med(bw(k, MIB))
print(f"| 1 MiB each way, copied in and out of shared memory (floor) | {med(p50('floor-copy-1m')):.0f} | {gb('floor-copy-1m'):.2f} GB/s | |")
print(f"| raw ping-pong, 1 MiB | {med(p50('pingpong-1m')):.0f} | {gb('pingpong-1m'):.2f} GB/s | |")
print(f"| hot invocation, rafi.echo 1 MiB in and out | {med(p50('invoke-hot-1m')):.0f} | "
      f"{gb('invoke-hot-1m'):.2f} GB/s = {100 * med(lambda d: d['floor-copy-1m']['p50_ns'] / d['invoke-hot-1m']['p50_ns']):.0f}% of the copy floor | >= 70% |")
PY
