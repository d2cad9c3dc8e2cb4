#!/usr/bin/env bash
# rafi's main job on this host: `rafi up --demo` starts a cluster on the shm fabric (a
# resource manager and an executor manager owning the spare core), and a client leases the
# core, has the manager start an executor with the example function libraries (C), invokes
# them and prints what happened; then the latency of an invocation next to the raw fabric
# ping-pong measured in the same run.
#
#   scripts/demo.sh                 the executor's worker spins (hot polling)
#   MODE=warm scripts/demo.sh       the worker sleeps when idle
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
MODE=${MODE:-hot}
ITERS=${ITERS:-100000}
# The C examples need a compiler and make; python3 reads the JSON lines.
ensure_debian_packages gcc make python3

step "building rafi and the example function libraries (release)"
cargo build --release --locked --bin rafi
libs=target/demo-functions
make -s -C examples/functions/c OUT="$PWD/$libs"
rafi=target/release/rafi

# Two cores: the client on the first this process may use, the worker on the second (rafi up
# leaves the first core to its demo client and leases the others).
mapfile -t cpus < <(python3 - <<'PY' 2>/dev/null || echo 0
import os
for c in sorted(os.sched_getaffinity(0))[:2]: print(c)
PY
)
client_cpu=${cpus[0]}
worker_cpu=${cpus[1]:-${cpus[0]}}

step "rafi up --demo: a cluster on this host (a resource manager, an executor manager on the spare core), and a client leasing a core and invoking the example functions"
"$rafi" up --demo --mode "$MODE" \
    --library "$libs/libecho.so" --library "$libs/libblackscholes.so" \
    --library "$libs/libmatmul.so"

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
