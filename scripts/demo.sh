#!/usr/bin/env bash
# rafi's main job on this host: an executor on the shm fabric with the example function
# libraries (C), a client that invokes them and prints what happened, then the latency of
# an invocation next to the raw fabric ping-pong measured in the same run.
#
#   scripts/demo.sh                 executor worker pinned to the second core, hot polling
#   MODE=warm scripts/demo.sh       the worker sleeps when idle
#
# (Leases, executor managers and `rafi up` come with the cluster; see the open issues.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
MODE=${MODE:-hot}
ITERS=${ITERS:-100000}
# The C examples need a compiler and make; python3 reads the JSON lines, taskset pins.
ensure_debian_packages gcc make python3 util-linux

step "building rafi, the demo client and the example function libraries (release)"
cargo build --release --locked --bin rafi --example demo
libs=target/demo-functions
make -s -C examples/functions/c OUT="$PWD/$libs"
rafi=target/release/rafi

# Two cores: the client on the first this process may use, the worker on the second.
mapfile -t cpus < <(python3 - <<'PY' 2>/dev/null || echo 0
import os
for c in sorted(os.sched_getaffinity(0))[:2]: print(c)
PY
)
client_cpu=${cpus[0]}
worker_cpu=${cpus[1]:-${cpus[0]}}

step "starting an executor: shm fabric, one worker on cpu $worker_cpu, $MODE polling"
out=$(mktemp)
"$rafi" executor --fabric shm --listen 127.0.0.1:0 --cores "$worker_cpu" --mode "$MODE" \
    --library "$libs/libecho.so" --library "$libs/libblackscholes.so" \
    --library "$libs/libmatmul.so" >"$out" &
executor=$!
trap 'kill $executor 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.05; done
[ -s "$out" ] || die "the executor did not start (see above)"
echo "  $(cat "$out")"
address=$(sed 's/.*"address":"\([^"]*\)".*/\1/' "$out")

step "a client on cpu $client_cpu invokes the example functions"
taskset -c "$client_cpu" target/release/examples/demo "$address" 1

step "latency: the raw fabric ping-pong and an invocation of rafi.echo, 64 B each way"
pp=$("$rafi" bench pingpong --fabric shm --size 64 --iters "$ITERS" --cpus "$client_cpu,$worker_cpu" --json)
inv=$("$rafi" bench invoke --fabric shm --mode "$MODE" --size 64 --iters "$ITERS" --cpus "$client_cpu,$worker_cpu" --json 2>/dev/null)
python3 - "$pp" "$inv" <<'PY'
import json, sys
pp, inv = (json.loads(a) for a in sys.argv[1:3])
print(f"  raw WRITE_WITH_IMM ping-pong  p50 {pp['p50_ns']:>6} ns  p99 {pp['p99_ns']:>6} ns")
print(f"  rafi invocation, {inv['mode']:<4}     p50 {inv['p50_ns']:>6} ns  p99 {inv['p99_ns']:>6} ns")
print(f"  invocation / ping-pong (p50): {inv['p50_ns'] / pp['p50_ns']:.2f}x")
PY
