#!/usr/bin/env bash
# The MPI offload examples (examples/mpi/rust) on this host, in one command: builds them,
# starts a rafi cluster on the shm fabric in the background (`rafi up`: a resource manager
# and an executor manager owning the spare cores, executors loading the Rust Black-Scholes
# library), runs the applications under `mpirun -np $NP`, and stops the cluster.
#
#   scripts/mpi-offload.sh                                   both applications, default sizes
#   scripts/mpi-offload.sh blackscholes-offload --options 4000000 --threads 2
#   NP=4 SPARE_CORES=8-15 scripts/mpi-offload.sh small-tasks-overlap --tasks 5000
#
# Each rank leases --cores cores (default 1), so SPARE_CORES (default: every core) must
# hold NP x that many. On a 2-core machine the ranks, their local threads and the remote
# workers all share the same two cores: the figures show the method, not a speedup.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
ensure_debian_packages libopenmpi-dev openmpi-bin libclang-dev pkg-config

NP=${NP:-2}
SPARE_CORES=${SPARE_CORES:-0-$(($(nproc) - 1))}
apps=(blackscholes-offload small-tasks-overlap)
app_args=()
if [ $# -gt 0 ]; then
    case "$1" in
    blackscholes-offload | small-tasks-overlap) apps=("$1"); shift; app_args=("$@") ;;
    *) die "unknown application '$1' (blackscholes-offload or small-tasks-overlap)" ;;
    esac
fi

step "building rafi, the Rust function library and the MPI examples (release)"
cargo build --release --locked -p rafi --bin rafi
cargo build --release --locked -p rafi-example-functions -p rafi-mpi-examples

work=$(mktemp -d)
cluster_pid=
stop_cluster() {
    if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
        kill -TERM "$cluster_pid" 2>/dev/null || true
        wait "$cluster_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop_cluster EXIT

step "rafi up: a shm cluster on this host, spare cores $SPARE_CORES"
target/release/rafi up --fabric shm --spare-cores "$SPARE_CORES" \
    --library target/release/librafi_example_functions.so >"$work/up.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 100); do
    grep -q RAFI_RESOURCE_MANAGER= "$work/up.log" && break
    kill -0 "$cluster_pid" 2>/dev/null || { cat "$work/up.log" >&2; die "rafi up exited"; }
    sleep 0.1
done
cat "$work/up.log"
credentials=$(grep -o 'RAFI_RESOURCE_MANAGER=[^ ]* RAFI_CLIENT=[^ ]* RAFI_CLIENT_SECRET=[^ ]*' "$work/up.log") ||
    die "rafi up printed no client credential"
# shellcheck disable=SC2086 # three VAR=value words
export $credentials

mpirun=(mpirun -np "$NP" --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)
for app in "${apps[@]}"; do
    step "${mpirun[*]} target/release/$app ${app_args[*]}"
    "${mpirun[@]}" "target/release/$app" "${app_args[@]}"
done
