# Shared helpers for rafi's scripts. Source it; do not run it.

# die MESSAGE...: print to stderr and exit 1.
die() {
    echo "error: $*" >&2
    exit 1
}

# step MESSAGE...: announce a phase of a long script.
step() {
    printf '\n==> %s\n' "$*"
}

# require_cargo: the Rust toolchain is the one thing the scripts cannot install.
require_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install the Rust toolchain (https://rustup.rs), then run this again"
}

# ensure_debian_packages PKG...: apt-get install whichever of PKG are missing, or exit.
# Uses sudo when not root. Does nothing when all are present. (apt_install_missing below.)
ensure_debian_packages() {
    apt_install_missing "$@" || die "could not install the packages this script needs: $*"
}

# missing_debian_packages PKG...: print those of PKG that are not installed, one a line.
# One dpkg-query call for all of them: it is on the path of every run of some scripts.
missing_debian_packages() {
    local installed
    installed=$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "$@" 2>/dev/null |
        awk '$1 == "installed" { print $2 }') || true
    local pkg
    for pkg in "$@"; do
        grep -qxF "$pkg" <<<"$installed" || echo "$pkg"
    done
}

# apt_install_missing PKG...: like ensure_debian_packages, for scripts whose stdout is data:
# everything goes to stderr; it returns non-zero instead of exiting, so the caller chooses
# its exit status; it waits (up to 10 minutes) for another apt or dpkg run to release its
# lock instead of failing at once, and retries a few times in case that run held the lock of
# the package lists; and it runs apt-get update only when the install fails without it
# (package lists missing or stale), which saves a minute when the lists are current.
apt_install_missing() {
    local missing
    mapfile -t missing < <(missing_debian_packages "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: missing packages ${missing[*]}, and no apt-get to install them" \
            "(these scripts expect Debian); install them by hand" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: missing packages ${missing[*]}; run as root, or install sudo," \
                "or install them by hand: apt-get install ${missing[*]}" >&2
            return 1
        fi
        sudo=(sudo)
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y
        -o DPkg::Lock::Timeout=600 -o APT::Get::Update::SourceListWarnings=false)
    local install=("${apt[@]}" install --no-install-recommends --no-upgrade "${missing[@]}")
    echo "==> installing ${missing[*]}" >&2
    local attempt
    for attempt in 1 2 3; do
        if "${install[@]}" >&2 || { "${apt[@]}" update >&2 && "${install[@]}" >&2; }; then
            return 0
        fi
        if [ "$attempt" -lt 3 ]; then
            echo "apt-get failed (attempt $attempt of 3); retrying in 10 s" >&2
            sleep 10
        fi
    done
    echo "error: could not install ${missing[*]} (apt-get output above)" >&2
    return 1
}
