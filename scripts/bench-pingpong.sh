#!/usr/bin/env bash
# Round-trip latency of rdma-mock (shm and tcp fabrics) next to latency floors measured by
# the same binary in the same run, printed as markdown tables.
#
# Usage: scripts/bench-pingpong.sh [--rounds N] [--quick] [--check]
#                                  [--client-cpu N] [--server-cpu N]
#   --rounds N      rounds of the 64-byte key pairs, interleaved (default 3); the median of
#                   the per-round ratios is reported, because cross-core latency on a shared
#                   2-vCPU host can triple for a while
#   --quick         a tenth of the iterations: a smoke test, not a measurement
#   --check         exit with status 2 when a target ratio is missed
#   --client-cpu N  core of the client process (default 0)
#   --server-cpu N  core of the responder process (default 1)
#
# The tables go to stdout, progress to stderr, and every raw JSON result (with a "key"
# naming the measurement) to $CARGO_TARGET_DIR/bench-pingpong/<UTC time>.jsonl.
# Takes about a minute (plus the build); see docs/performance.md.
set -euo pipefail

die() {
    echo "bench-pingpong: error: $*" >&2
    exit 1
}
note() { echo "bench-pingpong: $*" >&2; }

ROUNDS=3
SCALE_DIV=1
CHECK=0
CLIENT_CPU=0
SERVER_CPU=1
while (($#)); do
    case $1 in
    --rounds)
        [[ $# -ge 2 ]] || die "--rounds needs a value"
        ROUNDS=$2
        shift 2
        ;;
    --quick)
        SCALE_DIV=10
        shift
        ;;
    --check)
        CHECK=1
        shift
        ;;
    --client-cpu)
        [[ $# -ge 2 ]] || die "--client-cpu needs a value"
        CLIENT_CPU=$2
        shift 2
        ;;
    --server-cpu)
        [[ $# -ge 2 ]] || die "--server-cpu needs a value"
        SERVER_CPU=$2
        shift 2
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive integer, got '$ROUNDS'"
[[ $CLIENT_CPU =~ ^[0-9]+$ && $SERVER_CPU =~ ^[0-9]+$ ]] || die "cpu numbers must be integers"
[[ $CLIENT_CPU != "$SERVER_CPU" ]] || die "client and responder need different cores"

command -v cargo >/dev/null || die "cargo is not in PATH"
NCPU=$(nproc)
((CLIENT_CPU < NCPU && SERVER_CPU < NCPU)) ||
    die "this machine has $NCPU cpus; cores $CLIENT_CPU and $SERVER_CPU do not both exist"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/examples/pingpong

note "building the pingpong example (release)..."
cargo build --quiet --release -p rdma-mock --example pingpong ||
    die "cargo build --release -p rdma-mock --example pingpong failed"
[[ -x $BIN ]] || die "the built example is not at $BIN (is CARGO_TARGET_DIR set differently?)"

OUT_DIR=$TARGET_DIR/bench-pingpong
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
RAW=$OUT_DIR/$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$RAW" || die "cannot write $RAW"

# iters N: N scaled down by --quick, at least 100.
iters() {
    local n=$(($1 / SCALE_DIV))
    echo $((n < 100 ? 100 : n))
}

# field JSON NAME: the value of a top-level field of one flat JSON object.
field() {
    sed -E 's/.*"'"$2"'":"?([^,"}]*).*/\1/' <<<"$1"
}

declare -A P50
# run KEY ARGS...: one measurement; its p50 is kept under KEY and its JSON line saved.
run() {
    local key=$1 line status
    shift
    status=0
    line=$("$BIN" --json --client-cpu "$CLIENT_CPU" --server-cpu "$SERVER_CPU" "$@") || status=$?
    ((status == 0)) || die "'pingpong $*' failed with status $status (its message is above)"
    [[ $line == \{*\"p50_ns\"* ]] || die "'pingpong $*' printed no result: $line"
    printf '{"key":"%s",%s\n' "$key" "${line#\{}" >>"$RAW"
    P50[$key]=$(field "$line" p50_ns)
    note "  $(printf '%-22s' "$key") p50 ${P50[$key]} ns"
}

# ratio A B: A / B with two decimals.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'
}

# median X...: the median of numbers.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# verdict VALUE LIMIT: "met" or "missed".
verdict() {
    awk -v v="$1" -v l="$2" 'BEGIN { print (v != "n/a" && v <= l) ? "met" : "missed" }'
}

START=$(date +%s)
note "raw results: $RAW"

# ---- key pairs, interleaved: what the targets are about ------------------------------------
for ((r = 1; r <= ROUNDS; r++)); do
    note "round $r of $ROUNDS (64 B)"
    run "r$r/cacheline" --baseline cacheline --iters "$(iters 100000)"
    run "r$r/shm" --fabric shm --op write-imm --size 64 --iters "$(iters 100000)"
    run "r$r/tcp-floor" --baseline tcp --size 64 --iters "$(iters 20000)"
    run "r$r/tcp" --fabric tcp --op write-imm --size 64 --iters "$(iters 20000)"
    # Like for like: everybody sleeps, or everybody polls.
    run "r$r/tcp-block" --fabric tcp --op write-imm --size 64 --iters "$(iters 20000)" --wait block
    run "r$r/tcp-floor-poll" --baseline tcp --size 64 --iters "$(iters 20000)" --wait spin
done

# ---- size sweep ------------------------------------------------------------------------------
SIZES=(1 64 1024 65536 1048576)
for size in "${SIZES[@]}"; do
    case $size in
    65536) shm_iters=$(iters 20000) tcp_iters=$(iters 5000) warm=() ;;
    1048576) shm_iters=$(iters 2000) tcp_iters=$(iters 1000) warm=(--warmup "$(iters 200)") ;;
    *) shm_iters=$(iters 100000) tcp_iters=$(iters 20000) warm=() ;;
    esac
    note "sweep: $size B"
    run "s$size/cacheline" --baseline cacheline --iters "$(iters 100000)"
    run "s$size/memcpy" --baseline memcpy --size "$size" --iters "$shm_iters" "${warm[@]}"
    run "s$size/shm" --fabric shm --op write-imm --size "$size" --iters "$shm_iters" "${warm[@]}"
    run "s$size/tcp-floor" --baseline tcp --size "$size" --iters "$tcp_iters" "${warm[@]}"
    run "s$size/tcp" --fabric tcp --op write-imm --size "$size" --iters "$tcp_iters" "${warm[@]}"
done

# ---- tables ----------------------------------------------------------------------------------
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
quick=""
((SCALE_DIV == 1)) || quick="; --quick (a smoke test, not a measurement)"
if [[ $rev != unknown ]] && ! git diff --quiet HEAD 2>/dev/null; then
    rev="$rev (with local changes)"
fi
echo "## rdma-mock ping-pong, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "Machine: $NCPU cpus, ${cpu_model:-unknown cpu}, Linux $(uname -r); commit $rev;" \
    "client on cpu $CLIENT_CPU, responder on cpu $SERVER_CPU$quick."
echo "All values are round-trip p50 in ns; every ratio is taken between runs of the same round."
echo
echo "### Targets (64 B, WRITE_WITH_IMM, default waits: shm spin, tcp yield)"
echo
echo "| round | cache-line floor | shm write-imm | shm / cache line | tcp floor (blocking) | tcp write-imm | tcp / tcp floor |"
echo "|---|---:|---:|---:|---:|---:|---:|"
shm_ratios=() tcp_ratios=() block_ratios=() poll_ratios=()
for ((r = 1; r <= ROUNDS; r++)); do
    s=$(ratio "${P50[r$r/shm]}" "${P50[r$r/cacheline]}")
    t=$(ratio "${P50[r$r/tcp]}" "${P50[r$r/tcp-floor]}")
    shm_ratios+=("$s") tcp_ratios+=("$t")
    block_ratios+=("$(ratio "${P50[r$r/tcp-block]}" "${P50[r$r/tcp-floor]}")")
    poll_ratios+=("$(ratio "${P50[r$r/tcp]}" "${P50[r$r/tcp-floor-poll]}")")
    echo "| $r | ${P50[r$r/cacheline]} | ${P50[r$r/shm]} | $s | ${P50[r$r/tcp-floor]} | ${P50[r$r/tcp]} | $t |"
done
shm_med=$(median "${shm_ratios[@]}")
tcp_med=$(median "${tcp_ratios[@]}")
echo "| **median** | | | **$shm_med** | | | **$tcp_med** |"
echo
shm_verdict=$(verdict "$shm_med" 2.0)
tcp_verdict=$(verdict "$tcp_med" 1.3)
echo "- shm 64 B WRITE_WITH_IMM p50 <= 2 x cross-process cache-line ping-pong p50: **$shm_verdict** (median ratio $shm_med)"
echo "- tcp 64 B p50 <= 1.3 x plain TCP loopback 64 B p50 (blocking read/write): **$tcp_verdict** (median ratio $tcp_med)"
echo
echo "### tcp like for like (64 B): both sides sleep, or both sides poll"
echo
echo "| round | tcp floor (blocking) | tcp write-imm --wait block | ratio | tcp floor (busy-poll) | tcp write-imm (yield) | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for ((r = 1; r <= ROUNDS; r++)); do
    echo "| $r | ${P50[r$r/tcp-floor]} | ${P50[r$r/tcp-block]} | ${block_ratios[r - 1]} | ${P50[r$r/tcp-floor-poll]} | ${P50[r$r/tcp]} | ${poll_ratios[r - 1]} |"
done
echo "| **median** | | | **$(median "${block_ratios[@]}")** | | | **$(median "${poll_ratios[@]}")** |"
echo
echo "### Size sweep (WRITE_WITH_IMM, one run per cell, floors measured just before)"
echo
echo "| size (B) | cache-line floor | memcpy floor | shm | shm / cache line | shm / memcpy | tcp floor (blocking) | tcp | tcp / tcp floor |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for size in "${SIZES[@]}"; do
    k=s$size
    echo "| $size | ${P50[$k/cacheline]} | ${P50[$k/memcpy]} | ${P50[$k/shm]}" \
        "| $(ratio "${P50[$k/shm]}" "${P50[$k/cacheline]}") | $(ratio "${P50[$k/shm]}" "${P50[$k/memcpy]}")" \
        "| ${P50[$k/tcp-floor]} | ${P50[$k/tcp]} | $(ratio "${P50[$k/tcp]}" "${P50[$k/tcp-floor]}") |"
done
echo
echo "Raw results: \`${RAW#"$ROOT"/}\` ($(($(date +%s) - START)) s of measurement)."

if ((CHECK)) && [[ $shm_verdict != met || $tcp_verdict != met ]]; then
    note "a target was missed"
    exit 2
fi
