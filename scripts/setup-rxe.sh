#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# setup-rxe.sh: create a soft-RoCE device (rdma_rxe) on a host whose kernel has rdma_rxe,
# check that it works, and print the GID index rafi should use. For hosts whose kernel has
# no rdma_rxe (such as rafi's CI machines), scripts/rxe-vm.sh runs commands in a VM instead.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/setup-rxe.sh [--device NAME] NETDEV
       scripts/setup-rxe.sh [--device NAME] --delete
       scripts/setup-rxe.sh --help

Creates the soft-RoCE device NAME (default rxe0) on the Ethernet netdev NETDEV (as
'rdma link add NAME type rxe netdev NETDEV'), checks with ibv_devinfo that its port is
ACTIVE, and prints its GID table and the GID index of RoCE v2 over IPv4, the one rafi needs
(RAFI_RDMA_GID_INDEX). Idempotent: NAME already on NETDEV is checked and reported again.
--delete removes NAME.

Needs root, and a kernel with rdma_rxe (most distribution kernels; not the Firecracker
kernels of rafi's CI machines: use scripts/rxe-vm.sh there). Loads rdma_rxe when needed
and installs the user-space tools (iproute2, ibverbs-utils, ibverbs-providers) with
apt-get on Debian. NETDEV needs an IPv4 address for a RoCE v2 IPv4 GID; any netdev works,
even a dummy one ('ip link add rxenet0 type dummy; ip addr add 10.77.0.1/24 dev rxenet0;
ip link set rxenet0 up') for loopback tests on one host.

Exit status: 0 when NAME is ACTIVE with an IPv4 RoCE v2 GID (or deleted), 1 on any
failure (the message says what is missing), 2 for a usage error.
EOF
}

fail() {
    echo "setup-rxe: error: $*" >&2
    exit 1
}

note() { echo "setup-rxe: $*" >&2; }

usage_error() {
    echo "setup-rxe: $*" >&2
    echo "usage: scripts/setup-rxe.sh [--device NAME] NETDEV | --delete | --help" >&2
    exit 2
}

# parse_args ARGS...: set DEVICE, NETDEV and ACTION (create or delete).
parse_args() {
    DEVICE=rxe0 NETDEV="" ACTION=create
    while [ $# -gt 0 ]; do
        case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --device)
            if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "--device needs a name"; fi
            DEVICE=$2
            shift
            ;;
        --delete) ACTION=delete ;;
        -*) usage_error "unknown option $1" ;;
        *)
            [ -z "$NETDEV" ] || usage_error "one NETDEV only (got '$NETDEV' and '$1')"
            NETDEV=$1
            ;;
        esac
        shift
    done
    if [ "$ACTION" = create ] && [ -z "$NETDEV" ]; then
        usage_error "which netdev? (one of: $(list_netdevs))"
    fi
    if [ "$ACTION" = delete ] && [ -n "$NETDEV" ]; then
        usage_error "--delete takes no NETDEV"
    fi
}

list_netdevs() {
    local dev names=()
    for dev in /sys/class/net/*; do [ -e "$dev" ] && names+=("${dev##*/}"); done
    echo "${names[*]}"
}

require_root() {
    [ "$(id -u)" -eq 0 ] ||
        fail "creating an RDMA device needs root: run 'sudo $0 $*'"
}

# require_netdev: NETDEV exists; warn when it is down or has no IPv4 address.
require_netdev() {
    [ -e "/sys/class/net/$NETDEV" ] ||
        fail "no netdev '$NETDEV'; this host has: $(list_netdevs)"
    if ! ip -4 -o addr show dev "$NETDEV" | grep -q inet; then
        note "warning: $NETDEV has no IPv4 address, so $DEVICE gets no RoCE v2 IPv4 GID;" \
            "add one (ip addr add ADDR/PREFIX dev $NETDEV)"
    fi
}

# ensure_tools: rdma (iproute2), ibv_devinfo (ibverbs-utils) and the rxe provider library
# (ibverbs-providers), without which libibverbs lists no rxe device.
ensure_tools() {
    [ -x /usr/bin/rdma ] || [ -x /sbin/rdma ] || [ -x /usr/sbin/rdma ] ||
        command -v rdma >/dev/null 2>&1 || need+=(iproute2)
    command -v ibv_devinfo >/dev/null 2>&1 || need+=(ibverbs-utils)
    [ -e /etc/libibverbs.d/rxe.driver ] || need+=(ibverbs-providers)
    [ ${#need[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 ||
        fail "missing ${need[*]} (Debian names; rdma-core and iproute2 elsewhere): install them"
    # shellcheck source=lib.sh
    . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
    apt_install_missing "${need[@]}" || fail "could not install ${need[*]}"
}

# ensure_rxe_module: rdma_rxe loaded (or built in), or a message that says why it cannot be.
ensure_rxe_module() {
    [ -d /sys/module/rdma_rxe ] && return 0
    local kver
    kver=$(uname -r)
    if [ ! -e /proc/modules ]; then
        fail "kernel $kver has no rdma_rxe and cannot load modules (no /proc/modules);" \
            "use scripts/rxe-vm.sh, which boots a kernel that has it in a VM"
    fi
    if [ "$(cat /proc/sys/kernel/modules_disabled 2>/dev/null || echo 0)" = 1 ]; then
        fail "kernel $kver has module loading disabled (kernel.modules_disabled=1);" \
            "use scripts/rxe-vm.sh"
    fi
    command -v modprobe >/dev/null 2>&1 || fail "no modprobe: install kmod"
    if ! modinfo rdma_rxe >/dev/null 2>&1; then
        fail "kernel $kver has no rdma_rxe module (/lib/modules/$kver has none);" \
            "install the kernel's extra modules (Ubuntu: linux-modules-extra-$kver)," \
            "boot a kernel built with CONFIG_RDMA_RXE, or use scripts/rxe-vm.sh"
    fi
    # crc32_generic too: rxe computes its ICRC with the crypto API's "crc32", and where
    # that is not loaded on demand, 'rdma link add' fails with ENOENT.
    modprobe -a rdma_rxe ib_uverbs rdma_ucm crc32_generic 2>/dev/null || modprobe rdma_rxe ||
        fail "modprobe rdma_rxe failed (see the kernel log: dmesg | tail)"
}

# current_netdev: print the netdev DEVICE is on, nothing when DEVICE does not exist.
current_netdev() {
    rdma link show 2>/dev/null |
        awk -v dev="$DEVICE" '$2 ~ "^" dev "/" { for (i = 1; i < NF; i++) if ($i == "netdev") print $(i + 1) }' |
        head -n 1
}

create_device() {
    local on
    on=$(current_netdev)
    if [ "$on" = "$NETDEV" ]; then
        note "$DEVICE already exists on $NETDEV; checking it"
        return 0
    fi
    [ -z "$on" ] ||
        fail "$DEVICE already exists on $on, not $NETDEV: remove it first" \
            "(scripts/setup-rxe.sh --device $DEVICE --delete), or pick another --device"
    rdma link add "$DEVICE" type rxe netdev "$NETDEV" ||
        fail "'rdma link add $DEVICE type rxe netdev $NETDEV' failed (ENOENT: modprobe" \
            "crc32_generic; EEXIST: $NETDEV has an rxe device already, see 'rdma link')"
    note "created $DEVICE on $NETDEV"
}

# wait_active: DEVICE's port 1 reaches PORT_ACTIVE within 5 s.
wait_active() {
    for _ in $(seq 50); do
        ibv_devinfo -d "$DEVICE" 2>/dev/null | grep -q 'state:.*PORT_ACTIVE' && return 0
        sleep 0.1
    done
    ibv_devinfo -d "$DEVICE" >&2 || true
    fail "$DEVICE's port is not ACTIVE after 5 s; is $NETDEV up? (ip link set $NETDEV up)." \
        "If ibv_devinfo lists no $DEVICE, the rxe provider is missing (ibverbs-providers)."
}

# print_gids: the non-empty GIDs of DEVICE's port 1, and the RoCE v2 IPv4 index to use.
print_gids() {
    local port=/sys/class/infiniband/$DEVICE/ports/1 idx gid type ndev v4=""
    local -a files=("$port"/gids/*)
    echo "GID table of $DEVICE port 1 (non-empty entries):"
    printf '  %-5s %-40s %-9s %s\n' index gid type netdev
    for ((idx = 0; idx < ${#files[@]}; idx++)); do
        read -r gid <"$port/gids/$idx" 2>/dev/null || continue
        [ "$gid" = 0000:0000:0000:0000:0000:0000:0000:0000 ] && continue
        read -r type <"$port/gid_attrs/types/$idx" 2>/dev/null || type="?"
        read -r ndev <"$port/gid_attrs/ndevs/$idx" 2>/dev/null || ndev="?"
        printf '  %-5s %-40s %-9s %s\n' "$idx" "$gid" "$type" "$ndev"
        # ::ffff:a.b.c.d, the IPv4-mapped GID that RoCE v2 over IPv4 sends from
        if [ -z "$v4" ] && [ "$type" = "RoCE v2" ] &&
            [[ $gid == 0000:0000:0000:0000:0000:ffff:* ]]; then
            v4=$idx
        fi
    done
    if [ -z "$v4" ]; then
        fail "$DEVICE has no RoCE v2 IPv4 GID: give $NETDEV an IPv4 address" \
            "(ip addr add ADDR/PREFIX dev $NETDEV) and run this again"
    fi
    echo
    echo "$DEVICE is ACTIVE on $NETDEV. RoCE v2 over IPv4 uses GID index $v4:"
    echo "  export RAFI_RDMA_DEVICE=$DEVICE RAFI_RDMA_GID_INDEX=$v4"
    echo "  (perftest: ib_write_lat -d $DEVICE -x $v4; ibv_rc_pingpong -d $DEVICE -g $v4)"
    if [ "$(ulimit -l)" != unlimited ]; then
        echo "Note: memory regions are pinned; users other than root need a large memlock" \
            "limit (ulimit -l is $(ulimit -l) KiB here; 'unlimited' in /etc/security/limits.conf)."
    fi
}

delete_device() {
    if [ -z "$(current_netdev)" ]; then
        note "no $DEVICE: nothing to delete"
        return 0
    fi
    rdma link delete "$DEVICE" || fail "'rdma link delete $DEVICE' failed"
    note "deleted $DEVICE"
}

main() {
    parse_args "$@"
    require_root "$@"
    need=()
    ensure_tools
    if [ "$ACTION" = delete ]; then
        delete_device
        return 0
    fi
    require_netdev
    ensure_rxe_module
    create_device
    wait_active
    print_gids
}

main "$@"
