#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# rxe-vm.sh: run a command inside a throw-away qemu guest that has a soft-RoCE device, rxe0.
#
# The kernels of rafi's CI machines have no rdma_rxe and cannot load modules, so this boots
# Debian's own kernel under qemu, loads rdma_rxe there, creates rxe0, and runs the command in
# a guest that sees the host's files: the host's / read-only (same binaries, same libraries,
# same paths) and the current directory read-write at the same path. docs/soft-roce.md has
# the background, the timings and the pitfalls.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/rxe-vm.sh [--] COMMAND [ARGS...]
       scripts/rxe-vm.sh --selftest
       scripts/rxe-vm.sh --help

Runs COMMAND as root inside a qemu guest (Debian's kernel, software emulation) in which the
soft-RoCE device rxe0 is up, in the current directory, with the caller's environment.
COMMAND's stdout and stderr arrive byte for byte on this script's stdout and stderr, and
the script exits with COMMAND's exit status. COMMAND's stdin is /dev/null.

  --selftest   check rxe0 (ibv_devices, rdma link, ibv_devinfo) and run a short
               ibv_rc_pingpong and ib_write_lat over it
  --help       this text

The guest sees the host's / read-only and cached (files changed on the host during a run
may look stale), and these directories read-write and uncached, at the same paths: the
current directory, Cargo's target directory ($CARGO_TARGET_DIR, or target/ beside the
nearest Cargo.toml above the current directory), and those in RXE_VM_RW. /tmp, /run and
/dev/shm are empty tmpfs. There is no network besides lo and rxe0's netdev.

In the guest, COMMAND's environment also has:
  RAFI_RXE_VM=1              marker: running inside this VM
  RAFI_RDMA_DEVICE=rxe0      the RDMA device to use
  RAFI_RDMA_PORT=1           its port
  RAFI_RDMA_GID_INDEX=1      GID index of RoCE v2 over IPv4 (::ffff:RAFI_RDMA_IP)
  RAFI_RDMA_IP=10.77.0.1     IPv4 address of rxe0's netdev
  RAFI_RDMA_NETDEV=rxenet0   rxe0's netdev (a dummy device)
Processes in the guest reach each other over TCP on 127.0.0.1 or RAFI_RDMA_IP.

Environment (all optional):
  RXE_VM_TIMEOUT=900       seconds before the VM is killed (exit status 124)
  RXE_VM_RW=DIR:DIR...     more directories the guest may write to
  RXE_VM_CPUS=2            guest vCPUs (two busy-polling processes need two)
  RXE_VM_MEM=1024          guest RAM in MiB (untouched RAM costs nothing)
  RXE_VM_HUGEPAGES=0       2 MiB huge pages to reserve in the guest (hugetlbfs on
                           /dev/hugepages)
  RXE_VM_NETDEV=dummy      dummy | lo: the netdev rxe0 is created on (lo: RAFI_RDMA_IP is
                           127.0.0.1)
  RXE_VM_CACHE=/var/tmp/rafi-rxe-vm-UID   where the kernel and initramfs are cached
  RXE_VM_KERNEL=VERSION    Debian kernel to boot (default: newest installed with rdma_rxe)
  RXE_VM_ACCEL=auto        auto | tcg | kvm (auto: kvm only with kvm_intel or kvm_amd)
  RXE_VM_DEBUG=0           1: show the guest console and boot timings after the run

Exit status: COMMAND's own; 124 when RXE_VM_TIMEOUT expired; 125 when the VM or the rxe0
setup failed (the guest console is shown then); 2 for a usage error. A COMMAND that itself
exits with 124 or 125 is indistinguishable from these: check stderr.

Installs what it needs with apt-get (sudo when not root) on first use: qemu, Debian's
kernel package (only /boot/vmlinuz-* and /lib/modules/* are used; the host keeps booting
its own kernel), busybox-static, rdma userspace (ibverbs-utils, perftest).
EOF
}

# This script (the host never changes directory, so a relative path stays valid).
readonly SELF=${BASH_SOURCE[0]}

# The statuses a caller can tell apart from the command's own.
readonly EXIT_USAGE=2 EXIT_TIMEOUT=124 EXIT_VM_FAILED=125

# The guest's fixed facts. On a fresh rxe0, GID index 1 is the IPv4-mapped GID
# (::ffff:10.77.0.1) that RoCE v2 over IPv4 needs; index 0 is the fe80:: link-local one.
readonly GUEST_DEVICE=rxe0 GUEST_PORT=1 GUEST_NETDEV=rxenet0 GUEST_IP=10.77.0.1
# Where the guest mounts the per-run control directory (the host's is a mktemp dir).
readonly GUEST_CTL=/run/rxe-vm

# Modules the guest loads, with their dependencies (resolved by modprobe when the
# initramfs is built): virtio-9p for the file shares, rdma_rxe and rdma_ucm (rdma_cm from
# user space) for RDMA, dummy for the netdev. crc32_generic is listed on its own because
# rxe's ICRC asks the crypto API for "crc32", and the kernel's on-demand module load cannot
# find it from a bare initramfs: without it, 'rdma link add' fails with ENOENT.
readonly GUEST_MODULES="virtio_pci 9pnet_virtio 9p crc32_generic rdma_rxe rdma_ucm dummy"

# Debian packages the host needs, and a file (pattern) each one provides: checked on every
# run, and a stat is cheaper than asking dpkg. Not /usr/share/doc: images may leave it out.
readonly -a HOST_PACKAGES=(
    qemu-system-x86:/usr/bin/qemu-system-x86_64
    qemu-system-data:/usr/share/qemu/qboot.rom
    linux-image-amd64:/lib/modules/*/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko*
    busybox-static:/bin/busybox
    kmod:/usr/bin/kmod
    cpio:/usr/bin/cpio
    xz-utils:/usr/bin/xz
    iproute2:/usr/bin/rdma
    ibverbs-providers:/etc/libibverbs.d/rxe.driver
    ibverbs-utils:/usr/bin/ibv_rc_pingpong
    perftest:/usr/bin/ib_write_lat
)

# vm_fail MESSAGE...: the VM could not be made or run: say why and exit 125.
vm_fail() {
    echo "rxe-vm: error: $*" >&2
    exit "$EXIT_VM_FAILED"
}

note() { echo "rxe-vm: $*" >&2; }

# --------------------------------------------------------------------------- host side --

# ensure_host_packages: install whichever of HOST_PACKAGES are missing.
ensure_host_packages() {
    local entry missing=()
    for entry in "${HOST_PACKAGES[@]}"; do
        compgen -G "${entry#*:}" >/dev/null || missing+=("${entry%%:*}")
    done
    # Package busybox has a dynamically linked one, which finds no libc in the initramfs.
    if ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi
    [ ${#missing[@]} -eq 0 ] && return 0
    # shellcheck source=lib.sh
    . "$(dirname "$SELF")/lib.sh"
    apt_install_missing "${missing[@]}" ||
        vm_fail "could not install ${missing[*]}; install them by hand (apt-get install" \
            "${missing[*]}) and run this again"
}

# pick_kernel: print the version of the Debian kernel to boot: RXE_VM_KERNEL, or the newest
# one that has both an image in /boot and rdma_rxe among its modules.
pick_kernel() {
    local kver
    if [ -n "${RXE_VM_KERNEL:-}" ]; then
        kver=$RXE_VM_KERNEL
    else
        kver=$(for dir in /lib/modules/*/kernel/drivers/infiniband/sw/rxe; do
            compgen -G "$dir/rdma_rxe.ko*" >/dev/null || continue
            local k=${dir#/lib/modules/}
            k=${k%%/*}
            [ -r "/boot/vmlinuz-$k" ] && echo "$k"
        done | sort -V | tail -n 1)
    fi
    if [ -z "$kver" ] || [ ! -r "/boot/vmlinuz-$kver" ]; then
        vm_fail "no readable /boot/vmlinuz-* whose modules include rdma_rxe" \
            "${RXE_VM_KERNEL:+(RXE_VM_KERNEL=$RXE_VM_KERNEL)}; install one with" \
            "'apt-get install linux-image-amd64'"
    fi
    echo "$kver"
}

# extract_vmlinux BZIMAGE OUT: unpack the ELF kernel inside a bzImage. qemu boots it
# through its PVH entry point, which skips the in-guest XZ decompression: about 3 s under
# software emulation. Fails (status 1) when the image is not XZ-compressed.
extract_vmlinux() {
    local bzimage=$1 out=$2 offset
    # The XZ stream starts with FD 37 7A 58 5A 00; try each match until one unpacks to ELF.
    local -a offsets
    mapfile -t offsets < <(LC_ALL=C grep -aboF $'\xfd7zXZ' "$bzimage" | cut -d: -f1)
    for offset in "${offsets[@]}"; do
        # xz stops at the stream's end, so a pipe from tail would end in SIGPIPE (pipefail).
        if xz -dcq --single-stream <(tail -c "+$((offset + 1))" "$bzimage") >"$out" 2>/dev/null &&
            [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
            return 0
        fi
    done
    return 1
}

# write_guest_init FILE: the initramfs's /init, stage 1 of the guest. It does everything
# that busybox can do, because every program run from the host's / costs 0.1-0.3 s under
# emulation (each file it opens is several 9p round trips): load the modules, mount the
# host's / and the shares, create rxe0 and wait until it is usable, then run stage 2 (this
# script, run by the host's bash in a chroot into the host's /) and power off. Settings come
# from the control directory's init.conf; its output goes to the console (ttyS0).
write_guest_init() {
    cat >"$1" <<'EOF'
#!/bin/busybox sh
# shellcheck shell=dash disable=SC2015 # A && B || fail: fail exits
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { read -r up _ </proc/uptime; echo "rxe-vm init [$up s]: $*"; }
fail() { log "error: $*"; sync; poweroff -f; }
log "stage 1"
while read -r m; do insmod "/lib/modules/$m.ko" || log "insmod $m failed"; done </modules.list
# Modules the kernel asks for later are loaded by the host's modprobe from the host's
# /lib/modules (same kernel version), through a wrapper that chroots into the host root.
echo /sbin/modprobe-host >/proc/sys/kernel/modprobe
# The kernel booted with maxcpus=1: bringing up the others here is 1.5 s faster under TCG.
for c in /sys/devices/system/cpu/cpu*/online; do echo 1 >"$c"; done
log "modules loaded; cpus online: $(cat /sys/devices/system/cpu/online)"

# The host's / read-only and cached; the control directory and the read-write shares
# uncached, so that host and guest see each other's writes.
R=/newroot C=/newroot/run/rxe-vm
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" hostroot $R || fail "cannot mount the host's / over 9p"
mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys &&
    mount -t devtmpfs devtmpfs $R/dev && mount -t tmpfs -o mode=755 tmpfs $R/run &&
    mkdir -p $C && mount -t 9p -o "$opts" rxevmctl $C || fail "cannot mount /proc, /sys, /dev, /run"
while IFS='=' read -r key value; do
    case $key in
    device) device=$value ;;
    port) port=$value ;;
    netdev_kind) netdev_kind=$value ;;
    netdev) netdev=$value ;;
    ip) ip=$value ;;
    hugepages) hugepages=$value ;;
    esac
done <$C/init.conf
# Empty tmpfs where the host's content must not show or be written; /dev/fd and friends,
# which devtmpfs lacks and bash's <(...) needs; hugetlbfs for huge-page memory regions.
mkdir -p $R/dev/shm $R/dev/pts $R/dev/hugepages &&
    mount -t tmpfs -o mode=1777 tmpfs $R/tmp && mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm &&
    mount -t devpts devpts $R/dev/pts && mount -t hugetlbfs hugetlbfs $R/dev/hugepages &&
    ln -s /proc/self/fd $R/dev/fd && ln -s fd/0 $R/dev/stdin && ln -s fd/1 $R/dev/stdout &&
    ln -s fd/2 $R/dev/stderr || fail "cannot mount the tmpfs file systems"
[ "$hugepages" -gt 0 ] && echo "$hugepages" >/proc/sys/vm/nr_hugepages
# After the tmpfs mounts, in case a share lies under /tmp.
while read -r tag dir; do
    [ -n "$tag" ] || continue
    mkdir -p "$R$dir" 2>/dev/null
    mount -t 9p -o "$opts" "$tag" "$R$dir" || fail "cannot mount the read-write share $dir"
done <$C/rw.list
log "file systems mounted"

# A host name that resolves (the kernel's default is "(none)", which Open MPI's mpirun
# refuses as a node name): the host's /etc/hosts, seen read-only, knows localhost.
echo localhost >/proc/sys/kernel/hostname || fail "cannot set the host name"

# rxe0 on a dummy netdev (or lo). The GID of IPv4 a.b.c.d is ::ffff:a.b.c.d: in sysfs
# 0000:0000:0000:0000:0000:ffff:aabb:ccdd; usually index 1 (0 is the fe80:: one).
ip link set lo up || fail "ip link set lo up failed"
if [ "$netdev_kind" != lo ]; then
    ip link add "$netdev" type dummy && ip addr add "$ip/24" dev "$netdev" &&
        ip link set "$netdev" up || fail "cannot create the dummy netdev $netdev"
fi
chroot $R rdma link add "$device" type rxe netdev "$netdev" ||
    fail "'rdma link add $device type rxe netdev $netdev' failed"
sysport=/sys/class/infiniband/$device/ports/$port
# shellcheck disable=SC2086 # split at the dots
want=$(IFS=.; set -- $ip; printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$@")
gid_index=
for _ in $(seq 100); do
    read -r state <"$sysport/state"
    if [ "$state" = "4: ACTIVE" ]; then
        for f in "$sysport/gids/1" "$sysport"/gids/*; do
            read -r gid <"$f"
            [ "$gid" = "$want" ] || continue
            read -r type <"$sysport/gid_attrs/types/${f##*/}"
            [ "$type" = "RoCE v2" ] && gid_index=${f##*/} && break 2
        done
    fi
    usleep 50000
done
if [ -z "$gid_index" ]; then
    log "$device/$port: state '$state', no RoCE v2 GID $want; GID table:"
    grep -H . "$sysport"/gids/* "$sysport"/gid_attrs/types/* 2>/dev/null |
        grep -v ':0000:0000:0000:0000:0000:0000:0000:0000$'
    fail "$device did not become usable"
fi
[ -e /dev/infiniband/uverbs0 ] || fail "/dev/infiniband/uverbs0 is missing"
printf 'RAFI_RDMA_GID_INDEX=%s\n' "$gid_index" >$C/rdma.env
log "$device ACTIVE on $netdev ($ip), RoCE v2 IPv4 GID index $gid_index"

# The command's stdout and stderr are pipes (FIFOs), as they would be in CI: with the ttys
# themselves, programs would see a terminal, colour their output and buffer it by line.
# Two cats copy them to ttyS1 and ttyS2, which are raw, so that every byte arrives
# unchanged (no \n to \r\n).
stty -F /dev/ttyS1 raw -echo && stty -F /dev/ttyS2 raw -echo || fail "stty failed"
mkdir -p $R/run/rxe-vm-io && mkfifo $R/run/rxe-vm-io/stdout $R/run/rxe-vm-io/stderr ||
    fail "mkfifo failed"
cat $R/run/rxe-vm-io/stdout >/dev/ttyS1 &
out=$!
cat $R/run/rxe-vm-io/stderr >/dev/ttyS2 &
err=$!
: >$C/setup-done
chroot $R /bin/bash /run/rxe-vm/rxe-vm.sh --guest-stage2 </dev/null ||
    log "stage 2 failed with status $?"
# The cats end when the last writer is gone; each one's close of its tty waits until the
# UART has sent all it queued, so the output is complete before the power goes. A
# background process of the command that still holds a pipe gets 2 s, then is cut off.
for _ in $(seq 100); do
    kill -0 $out 2>/dev/null || kill -0 $err 2>/dev/null || break
    usleep 20000
done
sync
poweroff -f
EOF
    chmod 755 "$1"
}

# build_initramfs KVER DIR OUT: an uncompressed cpio (the guest unpacks it faster than it
# would decompress it) with a static busybox, /init, and the modules of GUEST_MODULES and
# their dependencies, in load order.
build_initramfs() {
    local kver=$1 dir=$2 out=$3
    mkdir -p "$dir/bin" "$dir/sbin" "$dir/lib/modules" "$dir/newroot" "$dir/proc" "$dir/sys" "$dir/dev"
    cp /bin/busybox "$dir/bin/busybox"
    write_guest_init "$dir/init"
    printf '#!/bin/busybox sh\nexec chroot /newroot /sbin/modprobe "$@"\n' >"$dir/sbin/modprobe-host"
    chmod 755 "$dir/sbin/modprobe-host"

    local mod path name
    local -a paths
    # shellcheck disable=SC2086 # GUEST_MODULES is a word list
    mapfile -t paths < <(for mod in $GUEST_MODULES; do
        modprobe -S "$kver" --show-depends "$mod" ||
            echo "error: modprobe cannot resolve $mod for kernel $kver" >&2
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }')
    [ ${#paths[@]} -gt 0 ] || vm_fail "no modules found for kernel $kver (is /lib/modules/$kver complete?)"
    for path in "${paths[@]}"; do
        name=$(basename "$path")
        name=${name%.ko*}
        # Newer Debian kernels ship compressed modules; busybox's insmod may not unpack them.
        case $path in
        *.ko) cp "$path" "$dir/lib/modules/$name.ko" ;;
        *.ko.xz) xz -dc "$path" >"$dir/lib/modules/$name.ko" ;;
        *.ko.zst) zstd -qdc "$path" >"$dir/lib/modules/$name.ko" ;;
        *.ko.gz) gzip -dc "$path" >"$dir/lib/modules/$name.ko" ;;
        *) vm_fail "unknown module format: $path" ;;
        esac
        echo "$name"
    done >"$dir/modules.list"
    (cd "$dir" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$out"
}

# ensure_boot_artifacts KVER: print the cache directory holding vmlinux (or the bzImage
# when it cannot be unpacked) and initramfs.cpio for KVER, building them when missing
# (about a second). The key holds the kernel version and a hash of this script, which holds
# the guest's /init and module list; the kernel image's size and time are in the hash too,
# in case a package update replaced it under the same version.
ensure_boot_artifacts() {
    local kver=$1 cache=${RXE_VM_CACHE:-/var/tmp/rafi-rxe-vm-$(id -u)} key
    key=$(
        cat "$SELF"
        stat -c '%s %Y' "/boot/vmlinuz-$kver"
    )
    key=$kver-$(sha256sum <<<"$key" | cut -c1-12)
    local dir=$cache/$key
    if [ -r "$dir/initramfs.cpio" ]; then
        touch "$dir" 2>/dev/null || true # last use, for the eviction below
        echo "$dir"
        return 0
    fi
    mkdir -p "$cache" || vm_fail "cannot create the cache directory $cache (set RXE_VM_CACHE)"
    local build
    build=$(mktemp -d "$cache/.build.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this build's directory
    trap "rm -rf '$build'" EXIT
    note "building the guest's kernel and initramfs for $kver in $dir"
    extract_vmlinux "/boot/vmlinuz-$kver" "$build/vmlinux" || {
        note "could not unpack vmlinux (not XZ?); booting the bzImage, about 3 s slower"
        cp "/boot/vmlinuz-$kver" "$build/vmlinux"
    }
    build_initramfs "$kver" "$build/root" "$build/initramfs.cpio"
    rm -rf "$build/root"
    chmod 755 "$build"
    # Atomic: a concurrent run building the same key either wins or finds it done.
    mv -T "$build" "$dir" 2>/dev/null || rm -rf "$build"
    trap - EXIT
    # Keys of other script versions or kernels: kept while in use (checkouts of two
    # versions would otherwise evict each other's), removed after two idle days.
    find "$cache" -mindepth 1 -maxdepth 1 -mtime +2 -exec rm -rf {} + 2>/dev/null || true
    echo "$dir"
}

# rw_dirs: print the host directories the guest may write to, one a line, physical paths,
# without duplicates or directories inside another one of the list.
rw_dirs() {
    local -a dirs=("$PWD")
    # Cargo's target directory, so that 'cargo test' and target/debug/deps/x-HASH work from
    # a member crate's directory too.
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        dirs+=("$CARGO_TARGET_DIR")
    else
        local d=$PWD
        while [ "$d" != / ]; do
            [ -f "$d/Cargo.toml" ] && [ -d "$d/target" ] && dirs+=("$d/target")
            d=$(dirname "$d")
        done
    fi
    local extra
    IFS=: read -r -a extra <<<"${RXE_VM_RW:-}"
    dirs+=("${extra[@]}")
    local dir
    for dir in "${dirs[@]}"; do
        [ -n "$dir" ] || continue
        [ -d "$dir" ] || vm_fail "read-write directory $dir does not exist (RXE_VM_RW?)"
        dir=$(cd "$dir" && pwd -P)
        case $dir in
        /) note "not sharing / read-write (run from a project directory)" && continue ;;
        *$'\n'*) vm_fail "cannot share a path with a newline: $dir" ;;
        esac
        echo "$dir"
    done | LC_ALL=C sort -u | awk '
        # sorted, so a directory comes before those inside it
        { for (i = 1; i <= n; i++) if (index($0, kept[i] "/") == 1) next; kept[++n] = $0; print }'
}

# qemu_path PATH: PATH escaped for a qemu option value (a comma is written twice).
qemu_path() { printf '%s' "${1//,/,,}"; }

# write_control_dir CTL CMD...: everything the guest needs: the settings of stage 1
# (init.conf: simple values that busybox reads), this script (stage 2), and for stage 2 the
# command, the environment and the directory (NUL-separated: any byte but NUL survives).
write_control_dir() {
    local ctl=$1
    shift
    local kind=${RXE_VM_NETDEV:-dummy} hugepages=${RXE_VM_HUGEPAGES:-0} netdev ip
    case $kind in
    dummy) netdev=$GUEST_NETDEV ip=$GUEST_IP ;;
    lo) netdev=lo ip=127.0.0.1 ;;
    *) vm_fail "RXE_VM_NETDEV must be dummy or lo, not '$kind'" ;;
    esac
    [[ $hugepages =~ ^[0-9]+$ ]] || vm_fail "RXE_VM_HUGEPAGES must be a number, not '$hugepages'"
    printf '%s\n' "device=$GUEST_DEVICE" "port=$GUEST_PORT" "netdev_kind=$kind" \
        "netdev=$netdev" "ip=$ip" "hugepages=$hugepages" >"$ctl/init.conf"
    printf '%s\n' "RAFI_RXE_VM=1" "RAFI_RDMA_DEVICE=$GUEST_DEVICE" "RAFI_RDMA_PORT=$GUEST_PORT" \
        "RAFI_RDMA_IP=$ip" "RAFI_RDMA_NETDEV=$netdev" >"$ctl/rafi.env"
    cp "$SELF" "$ctl/rxe-vm.sh"
    printf '%s\0' "$@" >"$ctl/argv"
    env -0 >"$ctl/environ"
    printf '%s\0' "$PWD" >"$ctl/cwd"
}

# qemu_accel_args: the accelerator and CPU model. KVM only where a real one is loaded: the
# kvm_pvm module of some sandboxes offers /dev/kvm but cannot run a stock kernel.
qemu_accel_args() {
    local accel=${RXE_VM_ACCEL:-auto}
    if [ "$accel" = auto ]; then
        accel=tcg
        if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
            accel=kvm
        fi
    fi
    case $accel in
    tcg) echo "-accel tcg,thread=multi -cpu max" ;;
    kvm) echo "-accel kvm -cpu host" ;;
    *) vm_fail "RXE_VM_ACCEL must be auto, tcg or kvm, not '$accel'" ;;
    esac
}

# run_vm CMD...: boot the guest, run CMD in it, exit with its status (or 124, 125).
run_vm() {
    local cpus=${RXE_VM_CPUS:-2} mem=${RXE_VM_MEM:-1024} timeout=${RXE_VM_TIMEOUT:-900}
    [[ $timeout =~ ^[1-9][0-9]*$ ]] || vm_fail "RXE_VM_TIMEOUT must be a number of seconds, not '$timeout'"
    [[ $cpus =~ ^[1-9][0-9]*$ ]] || vm_fail "RXE_VM_CPUS must be a number, not '$cpus'"
    [[ $mem =~ ^[1-9][0-9]*$ ]] || vm_fail "RXE_VM_MEM must be a number of MiB, not '$mem'"

    ensure_host_packages
    local kver artifacts
    kver=$(pick_kernel)
    artifacts=$(ensure_boot_artifacts "$kver")

    # Per-run directory: ctl/ is shared with the guest; the rest stays on the host.
    local run
    run=$(mktemp -d "${TMPDIR:-/tmp}/rafi-rxe-vm.XXXXXX")
    QEMU_PID="" OUT_PID="" ERR_PID=""
    # shellcheck disable=SC2064 # expand now: this run's directory
    trap "cleanup_run '$run'" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir "$run/ctl"
    write_control_dir "$run/ctl" "$@"

    local -a shares=() mounts=() dirs
    local i=0 dir rw
    rw=$(rw_dirs) # not in <(...): there, its errors would not stop us
    mapfile -t dirs <<<"$rw"
    for dir in "${dirs[@]}"; do
        [ -n "$dir" ] || continue
        shares+=(-fsdev "local,id=rw$i,path=$(qemu_path "$dir"),security_model=none,multidevs=remap"
            -device "virtio-9p-pci,fsdev=rw$i,mount_tag=rw$i")
        mounts+=("rw$i $dir")
        i=$((i + 1))
    done
    printf '%s\n' "${mounts[@]}" >"$run/ctl/rw.list"

    local -a accel
    read -r -a accel <<<"$(qemu_accel_args)"
    local loglevel=4 smp_boot=""
    [ "${RXE_VM_DEBUG:-0}" = 1 ] && loglevel=7
    [ "$cpus" -gt 1 ] && smp_boot=maxcpus=1

    # The guest's ttyS1 and ttyS2 carry the command's stdout and stderr, each through a FIFO
    # and a cat to ours: qemu never writes to our file descriptors itself, so a caller that
    # sends both to one file gets no output overwritten (two chardevs writing one file
    # would each keep their own offset). We hold the FIFOs' write ends too, so that the cats
    # see EOF only after qemu is gone, even when qemu never opened them.
    mkfifo "$run/stdout" "$run/stderr"
    cat "$run/stdout" &
    OUT_PID=$!
    cat "$run/stderr" >&2 &
    ERR_PID=$!
    exec {out_fd}>"$run/stdout" {err_fd}>"$run/stderr"

    timeout -k 5 "$timeout" qemu-system-x86_64 "${accel[@]}" -M pc -smp "$cpus" -m "$mem" \
        -nodefaults -no-user-config -display none -no-reboot \
        -bios /usr/share/qemu/qboot.rom \
        -kernel "$artifacts/vmlinux" -initrd "$artifacts/initramfs.cpio" \
        -append "console=ttyS0 loglevel=$loglevel panic=-1 edd=off mitigations=off cryptomgr.notests $smp_boot" \
        -chardev "file,id=console,path=$(qemu_path "$run/console.log")" -serial chardev:console \
        -chardev "file,id=stdout,path=$(qemu_path "$run/stdout"),append=on" -serial chardev:stdout \
        -chardev "file,id=stderr,path=$(qemu_path "$run/stderr"),append=on" -serial chardev:stderr \
        -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" \
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
        -fsdev "local,id=ctl,path=$(qemu_path "$run/ctl"),security_model=none" \
        -device virtio-9p-pci,fsdev=ctl,mount_tag=rxevmctl \
        "${shares[@]}" </dev/null >"$run/qemu.log" 2>&1 &
    QEMU_PID=$!
    local qemu_status=0
    wait "$QEMU_PID" || qemu_status=$?
    QEMU_PID=""
    exec {out_fd}>&- {err_fd}>&-
    wait "$OUT_PID" "$ERR_PID" || true
    OUT_PID="" ERR_PID=""

    report_result "$run" "$qemu_status" "$kver" "$timeout"
}

# cleanup_run RUN: on any exit, stop what this run started (QEMU_PID, OUT_PID, ERR_PID)
# and remove RUN. Every command here must succeed: under set -e a failure in an EXIT trap
# replaces the exit status the script chose.
cleanup_run() {
    local pid
    for pid in "${QEMU_PID:-}" "${OUT_PID:-}" "${ERR_PID:-}"; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$1" || true
}

# report_result RUN QEMU_STATUS KVER TIMEOUT: exit with the command's status, or explain
# why there is none.
report_result() {
    local run=$1 qemu_status=$2 kver=$3 timeout=$4
    if [ "${RXE_VM_DEBUG:-0}" = 1 ]; then
        echo "----- rxe-vm: kernel $kver, qemu status $qemu_status; qemu log and guest console:" >&2
        cat "$run/qemu.log" "$run/console.log" >&2 2>/dev/null || true
        echo "-----" >&2
    fi
    if [ -s "$run/ctl/status" ]; then
        exit "$(cat "$run/ctl/status")"
    fi
    if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
        note "timed out after ${timeout} s (RXE_VM_TIMEOUT); the guest console's last lines:"
        tail -n 30 "$run/console.log" >&2 2>/dev/null || true
        exit "$EXIT_TIMEOUT"
    fi
    if [ -e "$run/ctl/setup-done" ]; then
        note "the command's exit status never came back (qemu status $qemu_status); guest console:"
    elif [ "$qemu_status" = 0 ]; then
        note "the guest could not set up rxe0 or run the command; guest console:"
    else
        note "qemu failed (status $qemu_status); qemu's output and the guest console:"
        cat "$run/qemu.log" >&2 2>/dev/null || true
    fi
    if [ -s "$run/console.log" ]; then
        cat "$run/console.log" >&2
    else
        note "(the guest printed nothing: too little RXE_VM_MEM? RXE_VM_DEBUG=1 shows more)"
    fi
    exit "$EXIT_VM_FAILED"
}

# -------------------------------------------------------------------------- guest side --

# guest_stage2: run in the guest by stage 1, as root, in a chroot into the host's /, with
# everything set up: run the command there, with the caller's environment and the RAFI_*
# variables, its stdout and stderr into stage 1's pipes, and leave its status in the control
# directory. Builtins only until the command: each program from the host's / costs.
guest_stage2() {
    local ctl=$GUEST_CTL cwd line name status=0
    local -a argv environ
    mapfile -d '' -t argv <"$ctl/argv"
    mapfile -d '' -t environ <"$ctl/environ"
    mapfile -d '' -t cwd <"$ctl/cwd"
    cd "${cwd[0]}" || return 1
    (
        # The caller's environment exactly, as 'env -i' would, but without running env:
        # drop what the guest's init passed, then export the caller's. Names that are no
        # shell identifier (exported bash functions, say) cannot pass this way.
        for name in $(compgen -e); do unset "$name" 2>/dev/null || true; done
        for line in "${environ[@]}"; do
            name=${line%%=*}
            case $name in
            BASHOPTS | SHELLOPTS | BASH_* | SHLVL | _) continue ;;
            esac
            if [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
                export "${line?}" 2>/dev/null || true
            fi
        done
        while IFS= read -r line; do export "${line?}"; done <"$ctl/rafi.env"
        while IFS= read -r line; do export "${line?}"; done <"$ctl/rdma.env"
        # Root pins memory regardless (CAP_IPC_LOCK); the limit matches a tuned host's.
        ulimit -l unlimited
        exec "${argv[@]}"
    ) </dev/null >/run/rxe-vm-io/stdout 2>/run/rxe-vm-io/stderr || status=$?
    echo "$status" >"$ctl/status"
}

# step TITLE: a heading for the selftest's next step, with the guest's clock.
step() {
    local uptime
    read -r uptime _ </proc/uptime
    echo "== [$uptime s] $*"
}

# guest_selftest: the body of --selftest, run in the guest as the command.
guest_selftest() {
    local dev=$RAFI_RDMA_DEVICE gid=$RAFI_RDMA_GID_INDEX
    step "ibv_devices"
    ibv_devices | tee /tmp/devices
    grep -qw "$dev" /tmp/devices || { echo "FAIL: ibv_devices does not list $dev" >&2; return 1; }
    step "rdma link"
    rdma link show | tee /tmp/link
    grep -q "link $dev/1 state ACTIVE" /tmp/link || { echo "FAIL: $dev/1 is not ACTIVE" >&2; return 1; }
    step "ibv_devinfo -d $dev"
    ibv_devinfo -d "$dev" | grep -E 'hca_id|transport|state|active_mtu|link_layer'
    echo "GID[$gid] = $(cat "/sys/class/infiniband/$dev/ports/1/gids/$gid")" \
        "($(cat "/sys/class/infiniband/$dev/ports/1/gid_attrs/types/$gid"))"
    step "ibv_rc_pingpong over $dev, GID index $gid"
    selftest_pair 18515 ibv_rc_pingpong -d "$dev" -g "$gid" -n 200 -p 18515
    step "ib_write_lat over $dev, GID index $gid (an emulator: not a performance figure)"
    selftest_pair 18516 ib_write_lat -d "$dev" -x "$gid" -n 500 -p 18516
    step "selftest passed"
}

# selftest_pair PORT CMD...: run CMD as a server, then as a client of it over 127.0.0.1.
selftest_pair() {
    local port=$1
    shift
    "$@" >/tmp/server.log 2>&1 &
    local server=$! i
    # Wait for the listener: the first exec over 9p is slow, so a fixed sleep races.
    for i in $(seq 200); do
        ss -ltn | grep -q ":$port " && break
        sleep 0.05
    done
    if ! "$@" 127.0.0.1; then
        echo "FAIL: client '$*' failed; server's output:" >&2
        cat /tmp/server.log >&2
        return 1
    fi
    wait "$server" || {
        echo "FAIL: server '$*' failed:" >&2
        cat /tmp/server.log >&2
        return 1
    }
}

# --------------------------------------------------------------------------------- main --

main() {
    case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    "")
        usage >&2
        exit "$EXIT_USAGE"
        ;;
    --selftest)
        [ $# -eq 1 ] || { usage >&2 && exit "$EXIT_USAGE"; }
        run_vm bash "$GUEST_CTL/rxe-vm.sh" --guest-selftest
        ;;
    --guest-stage2)
        guest_stage2
        ;;
    --guest-selftest)
        guest_selftest
        ;;
    --)
        shift
        [ $# -gt 0 ] || { usage >&2 && exit "$EXIT_USAGE"; }
        run_vm "$@"
        ;;
    -*)
        echo "rxe-vm: unknown option $1 (put -- before a command that starts with -)" >&2
        exit "$EXIT_USAGE"
        ;;
    *)
        run_vm "$@"
        ;;
    esac
}

main "$@"
