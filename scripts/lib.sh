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

# ensure_debian_packages PKG...: apt-get install whichever of PKG are missing.
# Uses sudo when not root. Does nothing when all are present.
ensure_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages ${missing[*]} and no apt-get to install them (this script expects Debian)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    step "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
