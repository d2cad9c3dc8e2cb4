#!/usr/bin/env bash
# Installs rafi's C API into a prefix:
#   lib/librafi.so.<version> (soname librafi.so.0) with the librafi.so.0 and librafi.so
#   links, lib/librafi.a, include/rafi.h, include/rafi_function.h, include/rafi.f90 (the
#   Fortran module's source) and lib/pkgconfig/rafi.pc.
#
#   scripts/install-capi.sh --prefix DIR [--debug] [--no-build] [--from DIR] [--verbs]
#
# --debug installs the debug build (faster to build), --no-build installs what was built
# already, --from DIR installs the libraries cargo built into DIR (e.g. target/debug;
# implies --no-build; the tests use it), --verbs builds with the verbs backend
# (libibverbs-dev, librdmacm-dev and libclang-dev at build time). Then:
#   PKG_CONFIG_PATH=DIR/lib/pkgconfig mpicc app.c $(pkg-config --cflags --libs rafi)
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
. scripts/lib.sh

prefix= profile=release build=1 features=() from=
while [ $# -gt 0 ]; do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --debug) profile=debug; shift ;;
    --no-build) build=0; shift ;;
    --from) from=${2:?--from needs a directory}; build=0; shift 2 ;;
    --verbs) features=(--features verbs); shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$prefix" ] || die "--prefix DIR is required (see --help)"
# Paths given relative to where the script was called from.
[[ $prefix == /* ]] || prefix=$caller/$prefix
[[ -z $from || $from == /* ]] || from=$caller/$from

version=$(sed -n 's/^version = "\(.*\)"/\1/p' rafi-capi/Cargo.toml | head -n1)
major=${version%%.*}
target=${from:-${CARGO_TARGET_DIR:-target}/$profile}

if [ "$build" = 1 ]; then
    require_cargo
    step "building librafi ($profile)"
    flags=(--locked -p rafi-capi "${features[@]}")
    [ "$profile" = release ] && flags+=(--release)
    cargo build "${flags[@]}"
fi
for f in librafi_c.so librafi_c.a; do
    [ -f "$target/$f" ] || die "$target/$f is missing: build it (drop --no-build)"
done

step "installing into $prefix"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
prefix=$(cd "$prefix" && pwd)
install -m 0755 "$target/librafi_c.so" "$prefix/lib/librafi.so.$version"
ln -sfn "librafi.so.$version" "$prefix/lib/librafi.so.$major"
ln -sfn "librafi.so.$major" "$prefix/lib/librafi.so"
install -m 0644 "$target/librafi_c.a" "$prefix/lib/librafi.a"
install -m 0644 include/rafi.h include/rafi_function.h include/rafi.f90 "$prefix/include/"
# The rpath lets programs find librafi in a prefix outside the loader's path; the private
# libraries are what Rust's standard library needs when linking librafi.a statically.
cat >"$prefix/lib/pkgconfig/rafi.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: rafi
Description: RDMA-accelerated function invocation for HPC clusters (C API)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -lrafi
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
PC
echo "installed librafi $version into $prefix"
