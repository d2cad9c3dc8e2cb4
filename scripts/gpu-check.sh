#!/usr/bin/env bash
# GPU functions end to end (docs/functions.md "GPU functions"): builds the CUDA example
# library (examples/functions/cuda), starts a resource manager and an executor manager that
# loads it and offers this host's GPUs (nvidia-smi -L), then leases a core and GPUs with
# `rafi invoke --gpus N` and checks what the executor sees and computes:
#   - gpu_count with 1 GPU leased is 1, with 2 (when the host has 2) is 2;
#   - with none leased CUDA sees no device: the function fails with -100 - cudaErrorNoDevice;
#   - saxpy on 2^16 floats (its 512 KiB input fits the 1 MiB slots an executor allows by
#     default) equals the CPU's a*x + y, and its p50 over 20 calls is printed.
#
#   scripts/gpu-check.sh                 on a host with an NVIDIA GPU and nvcc
#   scripts/gpu-check.sh --no-gpu        on a host without one: the manager is told of a GPU
#                                        "0" that is not there, and every CUDA call must come
#                                        back as a clear error code, never a crash
#
# Environment: RAFI (the rafi binary; default target/release/rafi, built when cargo is
# here), LIBRARY (a libsaxpy_cuda.so built already; else it is built with NVCC, default
# nvcc, for ARCH, default the first GPU's compute capability or sm_90), WORK (a directory
# for logs and data; default a temporary one). Needs python3 for the data and the check.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

no_gpu=false
case "${1:-}" in
--no-gpu) no_gpu=true ;;
"") ;;
*) die "usage: scripts/gpu-check.sh [--no-gpu]" ;;
esac

command -v python3 >/dev/null || die "python3 not found (it makes the input and checks the output)"
RAFI=${RAFI:-target/release/rafi}
if [ ! -x "$RAFI" ]; then
    require_cargo
    step "building rafi (release)"
    cargo build --release --locked -p rafi --bin rafi
fi
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"

if [ -z "${LIBRARY:-}" ]; then
    NVCC=${NVCC:-nvcc}
    command -v "$NVCC" >/dev/null ||
        die "nvcc not found: install the CUDA toolkit, or set NVCC, or LIBRARY to a built library"
    if [ -z "${ARCH:-}" ]; then
        cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)
        ARCH=sm_${cap//./}
        [ "$ARCH" = sm_ ] && ARCH=sm_90
    fi
    step "building examples/functions/cuda for $ARCH with $NVCC"
    make -C examples/functions/cuda NVCC="$NVCC" ARCH="$ARCH" OUT="$WORK"
    LIBRARY=$WORK/libsaxpy_cuda.so
fi
[ -f "$LIBRARY" ] || die "no library at $LIBRARY"

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_for_line FILE PATTERN PID: until FILE has a line matching PATTERN (10 s).
wait_for_line() {
    for _ in $(seq 100); do
        grep -q "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || { cat "$1" >&2; die "the process of $1 exited"; }
        sleep 0.1
    done
    cat "$1" >&2
    die "no '$2' in $1 after 10 s"
}

step "a resource manager and an executor manager with $LIBRARY"
"$RAFI" resource-manager --listen 127.0.0.1:0 --database "$WORK/rm.db" --secret gpu-check \
    --client gpu:check >"$WORK/rm.log" 2>&1 &
pids+=($!)
wait_for_line "$WORK/rm.log" "listening on" "${pids[-1]}"
rm_address=$(grep -o 'listening on [0-9.:]*' "$WORK/rm.log" | cut -d' ' -f3)
gpus=()
$no_gpu && gpus=(--gpus 0)
"$RAFI" executor-manager --resource-manager "$rm_address" --secret gpu-check \
    --listen 127.0.0.1:0 --spare-cores 0 --library "$LIBRARY" "${gpus[@]}" \
    >"$WORK/manager.log" 2>&1 &
pids+=($!)
wait_for_line "$WORK/manager.log" "registered as node" "${pids[-1]}"
grep -o 'GPUs \[[^]]*\]' "$WORK/manager.log" | head -1
offered=$(grep -o 'GPUs \[[^]]*\]' "$WORK/manager.log" | head -1 | grep -o '"' | wc -l)
offered=$((offered / 2))
[ "$offered" -gt 0 ] || die "the executor manager found no GPU (nvidia-smi -L lists none); use --no-gpu on a host without one"

invoke() {
    "$RAFI" invoke --resource-manager "$rm_address" --client gpu --secret check "$@"
}

# The input of saxpy: u64 n, f32 a, f32 x[n], f32 y[n] (little-endian).
python3 - "$WORK/saxpy.in" <<'EOF'
import struct, sys
from array import array
n, a = 1 << 16, 2.5
x = array("f", (i * 0.25 for i in range(n)))
y = array("f", (1.0 - i for i in range(n)))
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Qf", n, a)); x.tofile(f); y.tofile(f)
EOF

if $no_gpu; then
    step "no GPU here: each CUDA call must fail with a clear code"
    for f in gpu_count saxpy; do
        input=()
        [ $f = saxpy ] && input=(--input-file "$WORK/saxpy.in")
        if invoke "$f" "${input[@]}" --gpus 1 --output hex >"$WORK/$f.out" 2>"$WORK/$f.err"; then
            die "$f succeeded without a GPU: $(cat "$WORK/$f.out")"
        fi
        grep -Eq 'the function failed with error code -[0-9]{3}' "$WORK/$f.err" ||
            { cat "$WORK/$f.err" >&2; die "$f did not fail with a CUDA error code"; }
        echo "$f: $(grep -o 'error code -[0-9]*' "$WORK/$f.err") (-100 - the cudaError_t)"
    done
    step "passed: the CUDA library loads, and without a GPU every call is a clear error"
    exit 0
fi

step "what the executor sees"
for n in 1 2; do
    [ "$n" -le "$offered" ] || continue
    seen=$(invoke gpu_count --gpus "$n" --output hex) ||
        die "gpu_count with $n GPU(s) leased failed (its error is above)"
    # A little-endian u32.
    count=$((16#${seen:6:2}${seen:4:2}${seen:2:2}${seen:0:2}))
    echo "gpu_count with $n GPU(s) leased: $count"
    [ "$count" -eq "$n" ] || die "the executor sees $count GPU(s), not the $n leased"
done
if invoke gpu_count --gpus 0 >"$WORK/none.out" 2>"$WORK/none.err"; then
    die "with no GPU leased the executor still sees some: $(cat "$WORK/none.out")"
fi
grep -q 'error code -200' "$WORK/none.err" ||
    { cat "$WORK/none.err" >&2; die "with no GPU leased: not cudaErrorNoDevice (-200)"; }
echo "gpu_count with no GPU leased: cudaErrorNoDevice, as it should"

step "saxpy on 2^16 floats, 20 calls, checked against the CPU"
invoke saxpy --gpus 1 --input-file "$WORK/saxpy.in" --output raw --repeat 20 \
    --timeout-ms 60000 >"$WORK/saxpy.out" 2>"$WORK/saxpy.err" ||
    { cat "$WORK/saxpy.err" >&2; die "saxpy failed"; }
cat "$WORK/saxpy.err"
python3 - "$WORK/saxpy.in" "$WORK/saxpy.out" <<'EOF'
import struct, sys
from array import array
with open(sys.argv[1], "rb") as f:
    n, a = struct.unpack("<Qf", f.read(12))
    x = array("f"); x.fromfile(f, n)
    y = array("f"); y.fromfile(f, n)
out = array("f")
with open(sys.argv[2], "rb") as f:
    out.frombytes(f.read())
assert len(out) == n, f"{len(out)} floats back, not {n}"
bad = [i for i in range(n) if abs(out[i] - (a * x[i] + y[i])) > 1e-3 * max(1.0, abs(a * x[i] + y[i]))]
assert not bad, f"{len(bad)} wrong, first at {bad[0]}: {out[bad[0]]} != {a * x[bad[0]] + y[bad[0]]}"
print(f"saxpy: all {n} results equal a*x + y")
EOF
step "passed"
