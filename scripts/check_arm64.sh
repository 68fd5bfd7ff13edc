#!/usr/bin/env bash
# ARM64 check of lantern-edge's runtime path, on an x86-64 Debian machine, under qemu user-mode
# emulation: Debian's arm64 CPython, the PyPI aarch64 wheels of numpy / onnxruntime /
# tokenizers, this repository installed as a wheel. It generates with the shipped model,
# compares fp32 tokens and the controller's trace with x86 (identical, or FAIL) on each
# emulated CPU, reports how close INT8 is, and runs the torch-free tests on aarch64.
#
#   sudo scripts/check_arm64.sh [WORK_DIR]          (default /tmp/lantern-arm64)
#   ARM64_CPUS="neoverse-n1 cortex-a72 neoverse-v1" ARM64_TOKENS=64 scripts/check_arm64.sh
#
# Needs root (apt, binfmt_misc) on Debian 12 or newer, with only deb.debian.org and PyPI
# reachable. About 6-8 minutes on 2 cores. Prints a PASS/FAIL line per step and a summary;
# exits 1 when any step fails. Nothing is written inside the repository.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-/tmp/lantern-arm64}
CPUS=${ARM64_CPUS:-"neoverse-n1 cortex-a72"}
TOKENS=${ARM64_TOKENS:-64}
# the tests that need no torch / onnx (the runtime path only)
TESTS="tests/test_default_model.py tests/test_runtime_units.py tests/test_tokenizer.py tests/test_corpus.py"
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
ROOT=$WORK/aarch64-root          # Debian's arm64 python, unpacked
X86=$WORK/x86-venv ARM=$WORK/arm-venv OUT=$WORK/out
# Debian's own python3 on both sides (a pyenv or venv python3 first on PATH may be a version
# Debian has no arm64 package for)
HOSTPY=/usr/bin/python3
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
export QEMU_LD_PREFIX=$ROOT      # where emulated binaries find ld-linux-aarch64 and libc
SUMMARY=() FAILED=0 STOP=0

# step NAME FUNCTION: run it in a subshell with -e; record PASS/FAIL and the time it took.
# A failed "hard" step (the setup) skips every later step; a failed comparison does not.
step() {
    local name=$1 kind=$2 fn=$3 began=$SECONDS rc=0
    if [ "$STOP" = 1 ]; then SUMMARY+=("SKIP  $name"); return; fi
    echo "=== $name"
    ( set -e; "$fn" ); rc=$?      # not `|| rc=`: that would switch set -e off inside
    local took=$((SECONDS - began))
    if [ "$rc" = 0 ]; then SUMMARY+=("PASS  $name (${took}s)")
    else
        SUMMARY+=("FAIL  $name (${took}s, exit $rc)"); FAILED=1
        [ "$kind" = hard ] && STOP=1
    fi
}

host_tools() {           # qemu >= 8 (emulated /proc/cpuinfo and the Neoverse CPU models), venv
    [ "$(id -u)" = 0 ] || { echo "run as root: apt-get and binfmt_misc need it" >&2; exit 1; }
    . /etc/os-release
    dpkg --add-architecture arm64
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then     # bookworm's own qemu is 7.2
        grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/ || printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            > /etc/apt/sources.list.d/lantern-arm64-backports.sources
        QEMU_FROM="-t bookworm-backports"
    fi
    apt-get update -qq
    apt-get install -y -qq ${QEMU_FROM:-} qemu-user-static >/dev/null
    apt-get install -y -qq python3-venv git >/dev/null
    qemu-aarch64-static --version | head -1
}

binfmt() {               # aarch64 ELF files run through qemu, so venvs, pip and subprocesses work
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    # an entry registered earlier may point at an older qemu: replace it. Flag F opens the
    # interpreter now, so it also works inside containers and chroots.
    [ -e "$entry" ] && echo -1 > "$entry"
    echo ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
        > /proc/sys/fs/binfmt_misc/register
    head -2 "$entry"
}

arm_python() {           # the host's Python minor version, from Debian's arm64 packages
    local v; v=$("$HOSTPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    mkdir -p "$WORK/debs" && cd "$WORK/debs"
    # the interpreter's runtime dependencies (Debian 12 names); unpacked, no maintainer scripts
    apt-get download -qq "python$v-minimal:arm64" "python$v:arm64" "libpython$v-minimal:arm64" \
        "libpython$v-stdlib:arm64" libc6:arm64 libgcc-s1:arm64 libstdc++6:arm64 gcc-12-base:arm64 \
        libexpat1:arm64 zlib1g:arm64 libffi8:arm64 libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 \
        libsqlite3-0:arm64 libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 libuuid1:arm64 \
        libcrypt1:arm64 libnsl2:arm64 libtirpc3:arm64 libdb5.3:arm64 libgssapi-krb5-2:arm64 \
        libkrb5-3:arm64 libk5crypto3:arm64 libkrb5support0:arm64 libkeyutils1:arm64 libcom-err2:arm64
    rm -rf "$ROOT" && for deb in ./*.deb; do dpkg -x "$deb" "$ROOT"; done
    ln -sf "python$v" "$ROOT/usr/bin/python3"
    "$ROOT/usr/bin/python3" -c 'import platform; print(platform.machine(), platform.python_version())'
}

x86_env() {              # the x86 reference: a venv with the runtime dependencies only, no torch
    rm -rf "$X86" && "$HOSTPY" -m venv "$X86"
    "$X86/bin/pip" install -q --upgrade pip
    "$X86/bin/pip" install -q numpy onnxruntime tokenizers pytest
    # the repository as a wheel, built from a copy of its tracked files (nothing written in it)
    rm -rf "$WORK/src" "$WORK/wheel" && mkdir -p "$WORK/src"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
    else
        cp -a "$REPO/." "$WORK/src" && rm -rf "$WORK/src/.venv" "$WORK/src/build"
    fi
    "$X86/bin/pip" wheel -q --no-deps "$WORK/src" -w "$WORK/wheel"
    "$X86/bin/pip" install -q --no-deps "$WORK"/wheel/lantern_edge-*.whl
    "$X86/bin/pip" freeze | grep -Ei '^(numpy|onnxruntime|tokenizers|pytest)==' > "$WORK/pins.txt"
    cat "$WORK/pins.txt"
}

arm_env() {              # the same versions as aarch64 wheels, installed under emulation
    rm -rf "$ARM" && "$ROOT/usr/bin/python3" -m venv --without-pip "$ARM"
    rm -rf "$WORK/pipwheel" && "$X86/bin/pip" download -q --no-deps --only-binary=:all: pip -d "$WORK/pipwheel"
    local pip_whl; pip_whl=$(ls "$WORK"/pipwheel/pip-*.whl)
    "$ARM/bin/python" "$pip_whl/pip" install -q --no-index --no-compile "$pip_whl"
    "$ARM/bin/pip" install -q --no-compile --only-binary=:all: -r "$WORK/pins.txt"
    "$ARM/bin/pip" install -q --no-compile --no-deps "$WORK"/wheel/lantern_edge-*.whl
    "$ARM/bin/python" -c 'import platform, lantern_edge, onnxruntime; print(platform.machine(), "lantern-edge", lantern_edge.__version__, "onnxruntime", onnxruntime.__version__)'
}

arm_generate() {         # the README's smoke test, on aarch64
    cd /tmp && NO_COLOR=1 QEMU_CPU=neoverse-n1 "$ARM/bin/lantern-edge" generate "def read_config(path):" --max-new-tokens 24 --trace
}

x86_traces() {
    mkdir -p "$OUT"
    for p in fp32 int8; do
        (cd /tmp && "$X86/bin/python" "$REPO/scripts/platform_trace.py" record $p "$TOKENS") > "$OUT/x86_$p.json"
    done
}

compare_cpu() {          # CPU: fp32 identical (else this step fails), INT8 reported
    local cpu=$1 rc=0
    rm -f "$OUT/compare_$cpu.txt"
    for p in fp32 int8; do
        (cd /tmp && QEMU_CPU=$cpu "$ARM/bin/python" "$REPO/scripts/platform_trace.py" record $p "$TOKENS") > "$OUT/arm_${cpu}_$p.json"
        "$X86/bin/python" "$REPO/scripts/platform_trace.py" compare "$OUT/x86_$p.json" "$OUT/arm_${cpu}_$p.json" \
            | sed "s/^/$cpu /" | tee -a "$OUT/compare_$cpu.txt" || rc=1
    done
    return $rc
}

tests_x86() { cd "$WORK/src" && "$X86/bin/python" -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -3; }
tests_arm() { cd "$WORK/src" && QEMU_CPU=neoverse-n1 "$ARM/bin/python" -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -3; }

step "host tools: qemu-user-static, python3-venv" hard host_tools
step "binfmt_misc: aarch64 through qemu" hard binfmt
step "aarch64 CPython from Debian arm64 packages" hard arm_python
step "x86 venv: runtime deps + this repository's wheel" hard x86_env
step "aarch64 venv: the same pins as aarch64 wheels" hard arm_env
step "aarch64: lantern-edge generate --trace" hard arm_generate
step "x86 reference traces (fp32, int8)" hard x86_traces
for cpu in $CPUS; do
    eval "compare_$(echo "$cpu" | tr -c 'a-z0-9\n' _)() { compare_cpu $cpu; }"
    step "$cpu: fp32 tokens + trace == x86" soft "compare_$(echo "$cpu" | tr -c 'a-z0-9\n' _)"
done
step "torch-free tests, x86 without torch" soft tests_x86
step "torch-free tests, aarch64 (neoverse-n1)" soft tests_arm

echo
echo "=== ARM64 check summary ($WORK)"
printf '%s\n' "${SUMMARY[@]}"
cat "$OUT"/compare_*.txt 2>/dev/null | sed 's/^/  /'
if [ "$FAILED" = 0 ]; then echo "ARM64 CHECK: PASS"; else echo "ARM64 CHECK: FAIL"; fi
exit "$FAILED"
