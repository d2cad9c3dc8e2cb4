#!/usr/bin/env bash
# Tests scripts/slurm/ against a real Slurm that it starts itself (docs/slurm.md): a
# private munged, slurmctld and three slurmd "fake nodes" on this host, all under a temp
# dir, and a rafi resource manager. Then:
#   rafi-slurm discover lists the usable nodes (a drained one is left out);
#   rafi-slurm start runs managers on two nodes through sbatch/srun, with disjoint cores
#     and their own ports, and they register;
#   rafi invoke leases a core and invokes on each node;
#   rafi-slurm stop, while a client invokes in a loop: the managers end their executors
#     and exit 0, the client hears it, the resource manager sees the lease end, the job
#     completes;
#   a one-minute job drained by Slurm's own warning before its time limit completes.
# Needs root or CI=true (then sudo for the packages, and the cluster runs as this user);
# otherwise it prints why and skips. RAFI_BIN: the rafi binary [default: a debug build].
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" -ne 0 ] && [ "${CI:-}" != true ]; then
    echo "skipped: the Slurm test installs Debian packages and starts slurmctld/slurmd;" \
        "run it as root or with CI=true"
    exit 0
fi
ensure_debian_packages slurmctld slurmd slurm-client munge

if [ -z "${RAFI_BIN:-}" ]; then
    require_cargo
    cargo build --locked --bin rafi
    RAFI_BIN=$PWD/target/debug/rafi
fi
export RAFI_BIN
SLURM_HELPER=$PWD/scripts/slurm/rafi-slurm
started=$SECONDS

D=$(mktemp -d /tmp/rafi-slurm-test.XXXXXX)
# munged wants every directory above its socket searchable by all.
chmod 755 "$D"
export SLURM_CONF=$D/slurm.conf
pids=()
# Ports: the controller, three slurmd, the resource manager, then the managers. A base
# from the PID, so that two runs on one host do not collide (SLURM_TEST_PORT_BASE to pick).
# Below the kernel's ephemeral range (32768 and up), where an outgoing connection's local
# port could hold one of ours; and free right now (ss, from iproute2).
ports_free() {
    ! ss -Htan 2>/dev/null | awk -v lo="$1" -v hi="$(($1 + 9))" \
        '{ n = split($4, a, ":"); p = a[n] + 0; if (p >= lo && p <= hi) found = 1 } END { exit !found }'
}
base=${SLURM_TEST_PORT_BASE:-}
if [ -z "$base" ]; then
    for try in $(seq 0 99); do
        base=$((20000 + (($$ + try * 37) % 1200) * 10))
        ports_free "$base" && break
    done
fi
rm_addr=127.0.0.1:$((base + 5))
nodes=3

log() {
    printf '[%3ds] %s\n' "$((SECONDS - started))" "$*"
}

fail() {
    echo "FAIL: $*" >&2
    for f in "$D"/log/*.log "$D"/job-*.out "$D"/rm.log; do
        [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; } >&2
    done
    exit 1
}

# until_ok SECONDS WHAT COMMAND...: runs COMMAND every 50 ms until it succeeds; fails the
# test after SECONDS.
until_ok() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
        sleep 0.05
    done
}

# Jobs first (their processes outlive slurmd), then the daemons, newest first, by PID.
cleanup() {
    local status=$?
    if scontrol ping >/dev/null 2>&1; then
        scancel --full --signal=KILL --user="$(id -un)" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.05
        done
    fi
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        wait "${pids[i]}" 2>/dev/null || true
    done
    if [ "$status" -eq 0 ]; then
        rm -rf "$D"
    else
        echo "state kept in $D" >&2
    fi
}
trap cleanup EXIT

# ---- munge and Slurm ---------------------------------------------------------------------
mkdir -p "$D"/{munge,state,log}
for i in $(seq 1 "$nodes"); do mkdir -p "$D/spool/n$i"; done
mungekey -c -k "$D/munge/munge.key"
munged -F --key-file="$D/munge/munge.key" --socket="$D/munge/munge.sock" \
    --pid-file="$D/munge/munged.pid" --seed-file="$D/munge/munged.seed" \
    --log-file="$D/log/munged.log" >"$D/log/munged.log" 2>&1 &
pids+=($!)
until_ok 10 "munged" test -S "$D/munge/munge.sock"

host=$(hostname -s)
user=$(id -un)
cat >"$SLURM_CONF" <<EOF
ClusterName=rafitest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.sock
MailProg=/bin/true
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=2
Waittime=0
NodeName=n[1-$nodes] NodeHostname=$host NodeAddr=127.0.0.1 Port=[$((base + 1))-$((base + nodes))] CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -f "$SLURM_CONF" >"$D/log/slurmctld.out" 2>&1 &
pids+=($!)
# Not sinfo: it blocks about 9 s while the controller is not up; scontrol ping answers.
ctld_up() {
    scontrol ping >/dev/null 2>&1
}
until_ok 15 "slurmctld to answer" ctld_up
for i in $(seq 1 "$nodes"); do
    slurmd -D -f "$SLURM_CONF" -N "n$i" >"$D/log/slurmd-n$i.out" 2>&1 &
    pids+=($!)
done
all_idle() {
    [ "$(sinfo -h -N -o '%N %t' | awk '$2 == "idle"' | sort -u | wc -l)" -eq "$nodes" ]
}
until_ok 15 "$nodes idle nodes" all_idle
log "slurm up: $(sinfo -h -o '%N %t')"

# ---- discover: a drained node is not usable ----------------------------------------------
scontrol update nodename=n3 state=drain reason=rafi-test
discovered=$("$SLURM_HELPER" discover)
expected=$'n1 idle 2 2\nn2 idle 2 2'
[ "$discovered" = "$expected" ] || fail "discover printed [$discovered], expected [$expected]"
log "discover: $(tr '\n' ';' <<<"$discovered")"

# ---- the resource manager and the managers -----------------------------------------------
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$D/secret"
chmod 600 "$D/secret"
"$RAFI_BIN" resource-manager --listen "$rm_addr" --database "$D/rafi.db" \
    --secret-file "$D/secret" --client test:test-secret >"$D/rm.log" 2>&1 &
pids+=($!)
export RAFI_RESOURCE_MANAGER=$rm_addr RAFI_SECRET_FILE=$D/secret
export RAFI_MANAGER_ADDR=127.0.0.1 RAFI_MANAGER_PORT=$((base + 6))
# Fake nodes share this host's cores: give each its own.
export RAFI_SPARE_CORES="n1=0 n2=1"
# The three documents of `rafi status --json` (nodes, leases, usage), as the operator sees them.
status_json() {
    RAFI_SECRET=$(cat "$D/secret") "$RAFI_BIN" status --json
}
rm_up() {
    status_json >/dev/null 2>&1
}
until_ok 10 "the resource manager" rm_up

job=$("$SLURM_HELPER" start -N 2 --timeout 30 -- --time 5 --output "$D/job-%j.out") ||
    fail "rafi-slurm start failed"
log "managers registered (job $job)"
[ "$(squeue -h -j "$job" -o %T)" = RUNNING ] || fail "job $job is not running"
nodes_json=$(status_json | sed -n 1p)
# One node object per line, to check each one's fields.
node_line() {
    local split=${nodes_json//'},{'/$'}\n{'}
    grep "\"name\":\"$1\"" <<<"$split"
}
for n in 1 2; do
    line=$(node_line "n$n") || fail "n$n is not registered: $nodes_json"
    grep -q '"state":"up"' <<<"$line" || fail "n$n is not up: $line"
    grep -q "\"manager_address\":\"127.0.0.1:$((base + 5 + n))\"" <<<"$line" ||
        fail "n$n's manager is not on port $((base + 5 + n)): $line"
    grep -q "\"spare_cores\":\[$((n - 1))\]" <<<"$line" ||
        fail "n$n's spare cores are not [$((n - 1))]: $line"
done

# The managers run inside the job step, one per node.
# From /proc, not pgrep: procps may be missing from a CI image.
manager_pid() {
    local f cmd
    for f in /proc/[0-9]*/cmdline; do
        cmd=$(tr '\0' ' ' <"$f" 2>/dev/null) || continue
        if [[ $cmd == *"executor-manager --node $1 --listen"* ]]; then
            f=${f#/proc/}
            echo "${f%/cmdline}"
            return
        fi
    done
}
# children PID: its child processes (field 4 of /proc/*/stat; the name may hold spaces).
children() {
    local f stat
    for f in /proc/[0-9]*/stat; do
        # A process may end between the glob and the read.
        { stat=$(<"$f"); } 2>/dev/null || continue
        stat=${stat##*) }
        read -r _ ppid _ <<<"$stat"
        if [ "$ppid" = "$1" ]; then
            f=${f#/proc/}
            echo "${f%/stat}"
        fi
    done
}
m1=$(manager_pid n1)
m2=$(manager_pid n2)
if [ -z "$m1" ] || [ -z "$m2" ]; then
    fail "no manager processes found"
fi

# ---- invoke through a lease --------------------------------------------------------------
export RAFI_CLIENT=test RAFI_CLIENT_SECRET=test-secret
out=$("$RAFI_BIN" invoke rafi.echo "hello from slurm") || fail "rafi invoke failed"
[ "$out" = "hello from slurm" ] || fail "rafi invoke printed [$out]"
log "rafi invoke: $out"

executors() {
    children "$m1"
    children "$m2"
}
no_executor() {
    [ -z "$(executors)" ]
}
active_leases() {
    status_json | sed -n 2p | grep -o '"state":"active"' | wc -l
}
no_active_lease() {
    [ "$(active_leases)" -eq 0 ]
}
# That invocation's executor ends when its client does; its lease was released.
until_ok 10 "the first executor to end" no_executor
until_ok 10 "the first lease to end" no_active_lease

# A client in the middle of a long run of invocations when the drain comes (its lease
# lasts repeat x timeout, at most a day; 100 ms leaves room for a loaded host).
"$RAFI_BIN" invoke rafi.noop x --repeat 800000 --timeout-ms 100 >"$D/client.out" 2>&1 &
client=$!
leased_and_running() {
    [ "$(executors | wc -l)" -eq 1 ] && [ "$(active_leases)" -eq 1 ]
}
until_ok 15 "an executor and a lease for the client" leased_and_running
executor=$(executors)
log "client invoking on executor $executor"

# ---- drain -------------------------------------------------------------------------------
final=$("$SLURM_HELPER" stop "$job" --timeout 20) || fail "rafi-slurm stop: job $job: $final"
[ "$final" = COMPLETED ] || fail "job $job ended $final, expected COMPLETED (managers exit 0)"
log "job $job: $final"
gone() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 0
    [ "$state" = Z ] || [ "$state" = X ]
}
for p in "$m1" "$m2" "$executor"; do
    until_ok 5 "process $p to end" gone "$p"
done
client_status=0
wait "$client" || client_status=$?
[ "$client_status" -ne 0 ] || fail "the client's invocations did not fail when the executor ended"
log "client ended with status $client_status: $(tail -n 1 "$D/client.out")"
[ "$(grep -c 'shut down cleanly' "$D/job-$job.out")" -eq 2 ] ||
    fail "not both managers reported a clean shutdown"
[ "$(active_leases)" -eq 0 ] || fail "a lease is still active after the drain"
# The drained lease ended: `lost` when the manager's last heartbeat came first, `released`
# when the client, told that its executor ended, released it first.
leases=$(status_json | sed -n 2p)
lease=${leases##*\"lease\":}
lease=${lease%%,*}
grep -Eq '"lease":'"$lease"',.*"state":"(lost|released)"' <<<"${leases##*\},\{}" ||
    fail "lease $lease did not end as lost or released: $leases"
# Slurm signalled the executor too (every process of the step gets it); it waited for its
# manager to end it, after a last flush of its usage, and exited 0.
grep -q "lease $lease executor ended: the executor manager is shutting down (stopped: exit status: 0)" \
    "$D/job-$job.out" || fail "lease $lease's executor was not ended by its manager"
nodes_idle() {
    [ "$(sinfo -h -N -o '%N %t' -n n1,n2 | awk '$2 == "idle"' | sort -u | wc -l)" -eq 2 ]
}
until_ok 10 "the nodes to be idle again" nodes_idle

# ---- Slurm's own warning before the time limit ------------------------------------------
# A one-minute job whose managers Slurm itself signals 50 s before the limit
# (--signal=TERM@50; the controller looks at time limits about every 30 s, so the signal
# comes 10-40 s after the start): they drain on the batch system's warning, not on a
# scancel, and the job ends COMPLETED before the limit instead of TIMEOUT.
job=$("$SLURM_HELPER" start -N 2 --timeout 30 -- --time 1 --signal=TERM@50 \
    --output "$D/job-%j.out") || fail "rafi-slurm start (time-limited job) failed"
log "managers registered (job $job, time limit 1 minute, warned 50 s before)"
job_state() {
    scontrol show job -o "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'
}
job_over() {
    case $(job_state) in PENDING | CONFIGURING | RUNNING | COMPLETING) return 1 ;; esac
}
until_ok 58 "job $job to end on Slurm's warning signal, before its limit" job_over
[ "$(job_state)" = COMPLETED ] || fail "job $job ended $(job_state), expected COMPLETED"
[ "$(grep -c 'shut down cleanly' "$D/job-$job.out")" -eq 2 ] ||
    fail "not both managers of job $job reported a clean shutdown"
log "job $job: drained by Slurm's time-limit warning, COMPLETED"
until_ok 10 "the nodes to be idle again" nodes_idle
log "slurm test passed"
