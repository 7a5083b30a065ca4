#!/bin/sh
# Checks that an installed spate is usable by a program outside the tree.
#
#  1. libspate.so exports only the public API: every dynamic symbol it
#     defines starts with sp_ and none with sp__ (internals).
#  2. `cmake --install` of the build tree into a temporary prefix.
#  3. The installed headers include only spate headers and C library
#     headers, so users need none of the libraries spate links (hwloc,
#     jemalloc, jansson, xxhash, lz4, zstd, isa-l); spate.h includes every
#     other public header.
#  4. tests/install/consumer is configured with find_package(spate) and
#     CMAKE_PREFIX_PATH=<prefix>, built, and run with LD_LIBRARY_PATH.
#  5. The same consumer.c is built with `cc $(pkg-config --cflags --libs
#     spate)`, pkg-config seeing only the prefix's .pc directory, and run.
#  6. The installed `spate` command runs and reports the same version.
#
# Any failing step fails the test. CTest (tests/install/CMakeLists.txt) sets:
#   SPATE_BINARY_DIR      build tree to install
#   SPATE_CONSUMER_DIR    tests/install/consumer
#   SPATE_INSTALL_LIBDIR  CMAKE_INSTALL_LIBDIR (lib, lib64, lib/<multiarch>)
#   SPATE_LIBRARY         the built libspate.so
#   SPATE_VERSION         the project version
#   SPATE_SANITIZE        sanitizers the library was built with, or empty
#   CMAKE, CC, PKG_CONFIG the tools the build used
set -eu

: "${SPATE_BINARY_DIR:?}" "${SPATE_CONSUMER_DIR:?}" "${SPATE_INSTALL_LIBDIR:?}"
: "${SPATE_LIBRARY:?}" "${SPATE_VERSION:?}"
SPATE_SANITIZE=${SPATE_SANITIZE:-}
CMAKE=${CMAKE:-cmake}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}

work=$(mktemp -d "${TMPDIR:-/tmp}/spate-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
libdir=$prefix/$SPATE_INSTALL_LIBDIR
san_flags=
if [ -n "$SPATE_SANITIZE" ]; then
    # An instrumented libspate.so needs its runtime linked into the program.
    san_flags="-fsanitize=$SPATE_SANITIZE"
fi

step() { printf '== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}
# Runs a command with its output in a log that is shown only on failure.
quiet() {
    log=$work/last.log
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        fail "$*"
    fi
}

step "symbols exported by $SPATE_LIBRARY"
nm -D --defined-only "$SPATE_LIBRARY" >"$work/symbols" || fail "nm -D $SPATE_LIBRARY"
# _init, _fini, _edata, _end and __bss_start are the linker's, on toolchains
# that export them; everything else must be public spate API.
awk '{ print $NF }' "$work/symbols" | sed 's/@.*//' |
    grep -v -x -E '_init|_fini|_edata|_end|__bss_start' >"$work/names" || true
bad=$(grep -v -E '^sp_' "$work/names" || true)
[ -z "$bad" ] || fail "libspate.so exports symbols outside the sp_ API:" "$(echo "$bad" | tr "\n" " ")"
bad=$(grep -E '^sp__' "$work/names" || true)
[ -z "$bad" ] || fail "libspate.so exports sp__ internals:" "$(echo "$bad" | tr "\n" " ")"
for sym in sp_version sp_status_str sp_conf_create sp_conf_destroy; do
    grep -q -x "$sym" "$work/names" || fail "libspate.so does not export $sym"
done
printf '%s sp_ symbols exported\n' "$(wc -l <"$work/names" | tr -d ' ')"

step "cmake --install $SPATE_BINARY_DIR --prefix $prefix"
(
    unset DESTDIR
    quiet "$CMAKE" --install "$SPATE_BINARY_DIR" --prefix "$prefix"
)
for f in "$libdir/libspate.so" "$prefix/include/spate/spate.h" \
    "$libdir/cmake/spate/spateConfig.cmake" "$libdir/pkgconfig/spate.pc"; do
    [ -e "$f" ] || fail "the install tree has no $f"
done

step "installed headers include only spate and C library headers"
std='assert|complex|ctype|errno|fenv|float|inttypes|iso646|limits|locale|math|setjmp|signal'
std="$std|stdalign|stdarg|stdatomic|stdbool|stddef|stdint|stdio|stdlib|stdnoreturn|string"
std="$std|tgmath|threads|time|uchar|wchar|wctype"
bad=$(grep -H -E '^[[:space:]]*#[[:space:]]*include' "$prefix"/include/spate/*.h |
    grep -v -E "<spate/[a-z_]+\.h>|<($std)\.h>" || true)
[ -z "$bad" ] || fail "installed headers include other headers: $bad"
for h in "$prefix"/include/spate/*.h; do
    h=${h##*/}
    [ "$h" = spate.h ] || grep -q -x "#include <spate/$h>" "$prefix/include/spate/spate.h" ||
        fail "spate.h does not include <spate/$h>"
done

run_consumer() {
    LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@" >"$work/out" 2>&1 ||
        {
            cat "$work/out" >&2
            fail "$1 failed"
        }
    cat "$work/out"
    grep -q -x "consumer: spate $SPATE_VERSION, SP_OK: success" "$work/out" ||
        fail "$1 printed an unexpected line"
    if command -v ldd >/dev/null 2>&1; then
        LD_LIBRARY_PATH="$libdir" ldd "$1" | grep -q "libspate\.so\.[0-9]* => $libdir/" ||
            fail "$1 does not load libspate from $libdir"
    fi
}

step "consumer with find_package(spate)"
quiet "$CMAKE" -S "$SPATE_CONSUMER_DIR" -B "$work/cmake-build" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$CC" -DCMAKE_C_FLAGS="$san_flags" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
found=$(sed -n 's/^spate_DIR:PATH=//p' "$work/cmake-build/CMakeCache.txt")
[ "$found" = "$libdir/cmake/spate" ] || fail "find_package found spate in '$found'"
quiet "$CMAKE" --build "$work/cmake-build"
run_consumer "$work/cmake-build/consumer"

step "consumer with pkg-config"
# Only the prefix's .pc directory is visible: spate.pc must not need others.
pc() { PKG_CONFIG_LIBDIR="$libdir/pkgconfig" PKG_CONFIG_PATH='' "$PKG_CONFIG" "$@"; }
version=$(pc --modversion spate) || fail "pkg-config cannot read spate.pc"
[ "$version" = "$SPATE_VERSION" ] || fail "spate.pc has version '$version'"
for var in includedir:include libdir:$SPATE_INSTALL_LIBDIR; do
    dir=$(pc --variable="${var%%:*}" spate)
    if ! [ -d "$dir" ] || [ "$(cd "$dir" && pwd -P)" != "$(cd "$prefix/${var#*:}" && pwd -P)" ]; then
        fail "spate.pc has ${var%%:*} '$dir', not $prefix/${var#*:}"
    fi
done
cflags=$(pc --cflags spate) || fail "pkg-config --cflags spate"
libs=$(pc --libs spate) || fail "pkg-config --libs spate"
printf 'cflags: %s\nlibs: %s\n' "$cflags" "$libs"
# Word splitting of the flags is intended, as in $(pkg-config ...).
# shellcheck disable=SC2086
quiet "$CC" -std=c11 -Wall -Wextra -Wpedantic -Werror $san_flags $cflags \
    "$SPATE_CONSUMER_DIR/consumer.c" -o "$work/consumer-pc" $libs
run_consumer "$work/consumer-pc"

step "installed spate command"
out=$("$prefix/bin/spate" --version) || fail "$prefix/bin/spate --version"
[ "$out" = "spate $SPATE_VERSION" ] || fail "spate --version printed '$out'"

step "ok"
