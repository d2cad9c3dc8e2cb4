#!/usr/bin/env bash
# The whole comparison of docs/performance.md: the latency floors, the raw fabric
# ping-pong, rafi's scenarios (hot/warm/cold invocation, payload sweep, throughput,
# concurrent clients) and the peer baselines (Open MPI, TCP, gRPC), all on the same cores
# in interleaved rounds; then the tables with ratios (the median of each round's ratio)
# between the markers of docs/performance.md, and the SVG plots in docs/plots/.
#
# Usage: scripts/bench.sh [--quick] [--rounds N] [--cpus A,B] [--skip-baselines]
#                         [--output FILE.md] [--plots DIR]
#   --quick           a tenth of the iterations: a smoke test, not a measurement
#   --rounds N        interleaved rounds of the latency set (default 3)
#   --cpus A,B        client core and executor/responder core (default: the first two)
#   --skip-baselines  do not build or run benches/baselines (rafi-baselines); the peer
#                     columns then say so
#   --output FILE.md  the markdown file whose marked section is rewritten
#                     (default docs/performance.md)
#   --plots DIR       where the SVG plots go (default docs/plots)
#
# Raw JSON lines go to $CARGO_TARGET_DIR/bench/<UTC time>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ROUNDS=3
DIV=1
CPUS=
BASELINES=1
OUTPUT=docs/performance.md
PLOTS=docs/plots
OPTIONS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive number"
            ROUNDS=$2; shift 2 ;;
        --quick) DIV=10; shift ;;
        --cpus)
            [[ ${2:-} =~ ^[0-9]+,[0-9]+$ ]] || die "--cpus needs two core numbers, like 0,1"
            CPUS=$2; shift 2 ;;
        --skip-baselines) BASELINES=0; shift ;;
        --output) OUTPUT=${2:?--output needs a file}; shift 2 ;;
        --plots) PLOTS=${2:?--plots needs a directory}; shift 2 ;;
        *) die "unknown option $1 (see the header of $0)" ;;
    esac
done

# The cores this shell may use (its affinity list, as taskset and cpusets narrow it).
allowed=$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)
expand_cpus() {
    local part out=()
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then out+=($(seq "${part%-*}" "${part#*-}")); else out+=("$part"); fi
    done
    echo "${out[@]}"
}
read -ra CORES <<<"$(expand_cpus "$allowed")"
if [ -z "$CPUS" ]; then
    [ "${#CORES[@]}" -ge 2 ] || die "this needs two cores (this shell may use $allowed)"
    CPUS=${CORES[0]},${CORES[1]}
fi
CLIENT=${CPUS%,*}
SERVER=${CPUS#*,}

require_cargo
step "building rafi and the floors (release)"
cargo build --release --locked --bin rafi -p rafi
cargo build --release --locked -p rdma-mock --example pingpong
if [ "$BASELINES" = 1 ]; then
    step "building the peer baselines (rafi-baselines)"
    # Open MPI for the MPI baseline (the mpi crate runs bindgen, hence libclang).
    ensure_debian_packages libopenmpi-dev openmpi-bin libclang-dev pkg-config
    cargo build --release --locked -p rafi-baselines
    command -v mpirun >/dev/null || die "mpirun not found (install Open MPI, or pass --skip-baselines)"
fi
target=${CARGO_TARGET_DIR:-target}
rafi=$target/release/rafi
floor=$target/release/examples/pingpong
out_dir=$target/bench
mkdir -p "$out_dir"
results=$out_dir/$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$results"
mpirun_flags=()
[ "$(id -u)" = 0 ] && mpirun_flags=(--allow-run-as-root --oversubscribe)

# run KEY COMMAND...: one measurement; each JSON line it prints is tagged with "key" and
# the round. A failed measurement stops the script (its stderr is shown).
round=0
run() {
    local key=$1 err
    shift
    echo "  $key" >&2
    err=$(mktemp)
    if ! "$@" 2>"$err" | sed "s/^{/{\"key\":\"$key\",\"round\":$round,/" >>"$results"; then
        cat "$err" >&2
        rm -f "$err"
        die "$key failed: $*"
    fi
    rm -f "$err"
}
n() { local v=$(($1 / DIV)); [ "$v" -ge 1 ] || v=1; echo "$v"; }

# Throughput: one worker always; more where the client and N workers each have a core.
workers=1
for w in 2 4 8 14; do
    [ "${#CORES[@]}" -ge $((w + 1)) ] && workers=$workers,$w
done

for round in $(seq "$ROUNDS"); do
    step "round $round of $ROUNDS"
    run floor-cacheline "$floor" --baseline cacheline --iters "$(n 100000)" --client-cpu "$CLIENT" --server-cpu "$SERVER" --json
    run floor-wake "$floor" --baseline wake --iters "$(n 20000)" --client-cpu "$CLIENT" --server-cpu "$SERVER" --json
    for size in 1 8 64; do
        run pingpong "$rafi" bench pingpong --fabric shm --size "$size" --iters "$(n 100000)" --cpus "$CPUS" --json
    done
    run invoke-hot-noop "$rafi" bench invoke --fabric shm --mode hot --function rafi.noop --size 0 --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-hot "$rafi" bench invoke --fabric shm --mode hot --sizes 1,8,64 --iters "$(n 100000)" --cpus "$CPUS" --json
    run invoke-warm "$rafi" bench invoke --fabric shm --mode warm --size 64 --iters "$(n 20000)" --cpus "$CPUS" --json
    run throughput "$rafi" bench throughput --fabric shm --function rafi.noop --workers "$workers" --client-threads auto --depth 32 --iters "$(n 2000000)" --warmup "$(n 200000)" --json
    if [ "$BASELINES" = 1 ]; then
        run baseline-mpi taskset -c "$CPUS" mpirun -np 2 "${mpirun_flags[@]}" --bind-to none \
            "$target/release/baseline-mpi" --op pingpong --sizes 1,8,64 --iters "$(n 100000)" --json
        run baseline-tcp "$target/release/baseline-tcp" --sizes 1,8,64 --iters "$(n 20000)" --cpus "$CPUS" --json
        run baseline-grpc "$target/release/baseline-grpc" --sizes 1,8,64 --iters "$(n 5000)" --cpus "$CPUS" --json
    fi
done

# Once: the sweep beyond 64 B, clients, cold starts (round 1 of their own).
round=1
step "payload sweep, clients, cold start"
for size in 1K 4K 16K 64K 256K 1M 4M; do
    run pingpong "$rafi" bench pingpong --fabric shm --size "$size" --iters "$(n 20000)" --cpus "$CPUS" --json
done
run invoke-hot "$rafi" bench invoke --fabric shm --mode hot --sizes 1K,4K,16K,64K,256K,1M,4M --iters "$(n 20000)" --cpus "$CPUS" --json
run invoke-registered "$rafi" bench invoke --fabric shm --mode hot --registered --sizes 64,1K,4K,16K,64K,256K,1M,4M --iters "$(n 20000)" --cpus "$CPUS" --json
if [ "$BASELINES" = 1 ]; then
    big=1024,4096,16384,65536,262144,1048576,4194304
    run baseline-mpi taskset -c "$CPUS" mpirun -np 2 "${mpirun_flags[@]}" --bind-to none \
        "$target/release/baseline-mpi" --op pingpong --sizes "$big" --iters "$(n 20000)" --json
    run baseline-tcp "$target/release/baseline-tcp" --sizes "$big" --iters "$(n 5000)" --cpus "$CPUS" --json
    run baseline-grpc "$target/release/baseline-grpc" --sizes "$big" --iters "$(n 2000)" --cpus "$CPUS" --json
fi
run clients "$rafi" bench clients --fabric shm --clients 1,2,4,8 --iters "$(n 20000)" --client-cores "$CLIENT" --executor-cores "$SERVER" --json
run cold "$rafi" bench cold --fabric shm --iters "$(n 50)" --cpus "$CPUS" --json

# The machine line: what lscpu calls the CPU, cores, kernel, date, commit.
model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
[ -n "$model" ] || model=$(sed -n 's/^model name\t*: //p' /proc/cpuinfo | head -n1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with local changes)"
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
printf '{"key":"machine","cpu_model":%s,"cores":%s,"kernel":%s,"date":%s,"commit":%s,"cpus":%s,"options":%s}\n' \
    "$(json_str "${model:-unknown}")" "$(nproc)" "$(json_str "$(uname -sr)")" \
    "$(json_str "$(date -u '+%Y-%m-%d %H:%M')")" "$(json_str "$commit")" \
    "$(json_str "client $CLIENT, executor/responder $SERVER")" \
    "$(json_str "${OPTIONS:-(none)}")" >>"$results"

step "report: $OUTPUT, $PLOTS/*.svg (raw lines in $results)"
"$rafi" bench report --input "$results" --markdown "$OUTPUT" --plots "$PLOTS"
[ "$BASELINES" = 1 ] || echo "peer baselines (MPI, TCP, gRPC) skipped (--skip-baselines): their columns show —" >&2
