#!/usr/bin/env bash
# The measurements that need a machine of 16 or more cores, and the GPU check, in one run
# of a few minutes, on a machine with no Rust toolchain: it runs what
# scripts/device-bundle.sh put into .device/ (build that here first, then carry .device).
#
#   1. the floors on this machine: cache-line ping-pong, the raw shm ping-pong, a hot no-op
#      invocation (cores 0 and 1), so that its figures compare with the 2-core machine's;
#   2. throughput scaling: rafi.noop pipelined over 1 … 14 workers (as many as the cores
#      allow), with one client thread per worker while the cores last (--client-threads
#      auto), in interleaved rounds; and with a single client thread, for comparison;
#   3. concurrent clients: 1, 2, 4, 8 clients, each with a worker of its own, and all on
#      one shared worker;
#   4. GPU functions: scripts/gpu-check.sh (builds examples/functions/cuda with this
#      machine's nvcc unless .device/lib has it), skipped without nvidia-smi;
#   5. MPI offload (examples/mpi/rust) with the carried Open MPI: a `rafi up` cluster owns
#      the upper half of the cores, two ranks (pinned to the lower half) each price options
#      on their threads and on as many leased remote workers: blackscholes-offload, then
#      small-tasks-overlap.
#
# Usage: bash scripts/device-checks.sh [--quick] [--rounds N] [--skip-gpu]
# Results go to $OUT (the device tool's folder) or target/device-out: device.jsonl (the
# tagged JSON lines, as scripts/bench.sh writes them), report.md (`rafi bench report` of
# them: the throughput and clients tables), plots.tar, gpu.log, device.log (everything
# printed), mpi.log and summary.txt (each part's outcome, the scaling efficiency per round).
# A part that fails is reported and the others still run; the exit status is 1 if any
# failed.
set -uo pipefail
cd "$(dirname "$0")/.."

ROUNDS=2
SECONDS_PER_POINT=1
GPU=1
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) ROUNDS=1; SECONDS_PER_POINT=0.2; shift ;;
    --rounds)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a positive number" >&2; exit 2; }
        ROUNDS=$2; shift 2 ;;
    --skip-gpu) GPU=0; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

out=${OUT:-target/device-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rafi=$PWD/.device/bin/rafi
floor=$PWD/.device/bin/pingpong
for f in "$rafi" "$floor"; do
    [ -x "$f" ] || { echo "no $f: run scripts/device-bundle.sh where cargo is, and carry .device" >&2; exit 1; }
done
results=$out/device.jsonl
summary=$out/summary.txt
: >"$results"
: >"$summary"

allowed=$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)
cores=()
IFS=, read -ra parts <<<"$allowed"
for p in "${parts[@]}"; do
    if [[ $p == *-* ]]; then cores+=($(seq "${p%-*}" "${p#*-}")); else cores+=("$p"); fi
done
ncores=${#cores[@]}
c0=${cores[0]}
c1=${cores[1]:-${cores[0]}}
list() { local IFS=,; echo "$*"; }

failed=0
# part NAME COMMAND...: one part; its outcome goes to the summary.
part() {
    local name=$1
    shift
    printf '\n==> %s\n' "$name"
    local t0=$SECONDS
    if "$@"; then
        echo "PASS  $name ($((SECONDS - t0)) s)" >>"$summary"
    else
        echo "FAIL  $name ($((SECONDS - t0)) s, exit $?)" >>"$summary"
        failed=1
    fi
}

# run KEY COMMAND...: one measurement; its JSON lines are tagged with the key and round.
round=1
run() {
    local key=$1
    shift
    echo "  $key: $*"
    "$@" | sed "s/^{/{\"key\":\"$key\",\"round\":$round,/" | tee -a "$results"
    return "${PIPESTATUS[0]}"
}

machine() {
    local model
    model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
    echo "cpu: ${model:-unknown}, $ncores cores allowed ($allowed), $(uname -sr)"
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    printf '{"key":"machine","cpu_model":"%s","cores":%s,"kernel":"%s","date":"%s","commit":"%s","cpus":"client %s, executor/responder %s","options":"scripts/device-checks.sh %s"}\n' \
        "${model:-unknown}" "$ncores" "$(uname -sr)" "$(date -u '+%Y-%m-%d %H:%M')" \
        "$(cat .device/commit 2>/dev/null || echo unknown)" "$c0" "$c1" "rounds $ROUNDS" >>"$results"
}

floors() {
    run floor-cacheline "$floor" --baseline cacheline --iters 100000 --client-cpu "$c0" --server-cpu "$c1" --json &&
        run pingpong "$rafi" bench pingpong --fabric shm --size 64 --iters 100000 --cpus "$c0,$c1" --json &&
        run invoke-hot-noop "$rafi" bench invoke --fabric shm --mode hot --function rafi.noop --size 0 --iters 100000 --cpus "$c0,$c1" --json
}

throughput_sweep() {
    local workers=1 w
    for w in 2 4 6 8 10 12 14; do
        [ "$ncores" -ge $((w + 1)) ] && workers=$workers,$w
    done
    local ok=0
    for round in $(seq "$ROUNDS"); do
        run throughput "$rafi" bench throughput --fabric shm --function rafi.noop --workers "$workers" \
            --client-threads auto --depth 32 --seconds "$SECONDS_PER_POINT" --warmup 200000 --json || ok=1
    done
    round=1
    local single=1
    for w in 2 4; do [ "$ncores" -ge $((w + 1)) ] && single=$single,$w; done
    run throughput-one-client "$rafi" bench throughput --fabric shm --function rafi.noop --workers "$single" \
        --client-threads 1 --depth 32 --seconds "$SECONDS_PER_POINT" --warmup 200000 --json || ok=1
    return $ok
}

clients() {
    round=1
    local n=8
    [ "$ncores" -ge 16 ] || n=$((ncores / 2))
    [ "$n" -ge 1 ] || return 1
    local counts=1 c
    for c in 2 4 8; do [ "$c" -le "$n" ] && counts=$counts,$c; done
    run clients "$rafi" bench clients --fabric shm --clients "$counts" --iters 20000 \
        --client-cores "$(list "${cores[@]:0:n}")" --executor-cores "$(list "${cores[@]:n:n}")" --json &&
        run clients-one-worker "$rafi" bench clients --fabric shm --clients "$counts" --iters 20000 \
            --client-cores "$(list "${cores[@]:0:n}")" --executor-cores "${cores[n]}" --json
}

gpu() {
    local lib=()
    [ -f .device/lib/libsaxpy_cuda.so ] && lib=(LIBRARY="$PWD/.device/lib/libsaxpy_cuda.so")
    # The CUDA image puts nvcc here; it may not be on the PATH.
    [ -d /usr/local/cuda/bin ] && PATH=$PATH:/usr/local/cuda/bin
    env RAFI="$rafi" WORK=/tmp/rafi-gpu-check "${lib[@]}" bash scripts/gpu-check.sh 2>&1 | tee "$out/gpu.log"
    return "${PIPESTATUS[0]}"
}

# The carried Open MPI, unpacked under /tmp (never into /), in this shell's environment.
use_carried_mpi() {
    local root=/tmp/rafi-mpi f
    compgen -G ".device/debs/*.deb" >/dev/null || { echo "no .device/debs: rebuild the bundle"; return 1; }
    rm -rf "$root" && mkdir -p "$root" || return 1
    for f in .device/debs/*.deb; do dpkg -x "$f" "$root" || return 1; done
    # Open MPI and PMIx find their plugins and help files from these, not from /usr.
    export OPAL_PREFIX=$root/usr
    export PMIX_INSTALL_PREFIX=$root/usr/lib/x86_64-linux-gnu/pmix2
    export PMIX_MCA_mca_base_component_path=$PMIX_INSTALL_PREFIX/lib/pmix
    export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    mpirun=("$root/usr/bin/orterun" --bind-to none --oversubscribe)
    [ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)
    "${mpirun[@]}" -np 1 true || { echo "the carried mpirun does not run"; return 1; }
}

mpi_offload() (
    for f in .device/bin/blackscholes-offload .device/bin/small-tasks-overlap \
        .device/lib/librafi_example_functions.so; do
        [ -e "$f" ] || { echo "no $f: rebuild the bundle"; exit 1; }
    done
    use_carried_mpi || exit 1
    # Ranks and their threads on the lower half, the leased workers on the upper half.
    local half=$((ncores / 2)) np=2 mode=hot
    [ "$ncores" -ge 4 ] || { np=1; mode=warm; }
    local threads=$((half / np)) remote=$(((ncores - half) / np))
    [ "$threads" -ge 1 ] || threads=1
    local ranks_cores spare_cores
    ranks_cores=$(list "${cores[@]:0:half}")
    spare_cores=$(list "${cores[@]:half}")
    "$rafi" up --fabric shm --spare-cores "$spare_cores" \
        --library "$PWD/.device/lib/librafi_example_functions.so" >/tmp/rafi-mpi-up.log 2>&1 &
    local up=$!
    trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null' EXIT
    for _ in $(seq 100); do
        grep -q RAFI_CLIENT_SECRET= /tmp/rafi-mpi-up.log && break
        kill -0 "$up" 2>/dev/null || { cat /tmp/rafi-mpi-up.log; exit 1; }
        sleep 0.1
    done
    local credentials
    credentials=$(grep -o 'RAFI_RESOURCE_MANAGER=[^ ]* RAFI_CLIENT=[^ ]* RAFI_CLIENT_SECRET=[^ ]*' /tmp/rafi-mpi-up.log) ||
        { cat /tmp/rafi-mpi-up.log; exit 1; }
    # shellcheck disable=SC2086 # three VAR=value words
    export $credentials
    echo "ranks: $np on cores $ranks_cores, $threads thread(s) each; leased: $remote core(s) each of $spare_cores ($mode)"
    : >"$out/mpi.log"
    local ok=0 app
    for app in blackscholes-offload small-tasks-overlap; do
        local size=()
        [ $app = blackscholes-offload ] && size=(--options $((1000000 * threads)))
        taskset -c "$ranks_cores" "${mpirun[@]}" -np "$np" -x RAFI_RESOURCE_MANAGER \
            -x RAFI_CLIENT -x RAFI_CLIENT_SECRET ".device/bin/$app" --threads "$threads" \
            --cores "$remote" --mode "$mode" "${size[@]}" 2>&1 | tee -a "$out/mpi.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || ok=1
    done
    exit $ok
)

report() {
    "$rafi" bench report --input "$results" --markdown "$out/report.md" --plots /tmp/rafi-device-plots &&
        tar -C /tmp -cf "$out/plots.tar" rafi-device-plots
}

# Scaling per round: throughput(N) / (N × throughput(1)), the issue's target being ≥ 0.8 at
# 14 workers.
efficiency() {
    command -v python3 >/dev/null || { echo "(no python3: see report.md)"; return 0; }
    python3 - "$results" >>"$summary" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for key in ("throughput", "throughput-one-client"):
    by_round = {}
    for r in rows:
        if r.get("key") == key:
            by_round.setdefault(r["round"], {})[r["workers"]] = r
    for rnd, runs in sorted(by_round.items()):
        one = runs.get(1)
        if not one:
            continue
        cells = []
        for n, r in sorted(runs.items()):
            eff = r["throughput_ops"] / (n * one["throughput_ops"])
            cells.append(f"{n}w/{r['client_threads']}c {r['throughput_ops']/1e6:.2f} M/s ({eff:.2f})")
        print(f"{key} round {rnd}: " + ", ".join(cells))
EOF
}

main() {
    part "machine" machine
    part "floors on cores $c0,$c1" floors
    part "throughput scaling" throughput_sweep
    part "concurrent clients" clients
    if [ "$GPU" = 1 ] && command -v nvidia-smi >/dev/null; then
        part "GPU functions (scripts/gpu-check.sh)" gpu
    else
        echo "SKIP  GPU functions (no nvidia-smi, or --skip-gpu)" >>"$summary"
    fi
    part "MPI offload (examples/mpi/rust, carried Open MPI)" mpi_offload
    part "report" report
    efficiency
    printf '\n==> summary\n'
    cat "$summary"
    return $failed
}

main 2>&1 | tee "$out/device.log"
exit "${PIPESTATUS[0]}"
