#!/usr/bin/env bash
# Proves the runtime=acl build without an NPU.
#
# 1. A runtime=acl build with no CANN toolkit must stop with a message naming where it looked.
# 2. CANN's real ACL headers come from the torch-npu wheel on PyPI (pinned; nothing from it is
#    committed) and go into a temporary CANN-like prefix.
# 3. llmdd's own host runtime (src/llmdd/sim/acl_host.c) is compiled against those headers as
#    that prefix's lib64/libascendcl.so: the compiler checks it against CANN's prototypes.
# 4. llmdd is built with -Druntime=acl -Dacl_home=<prefix> in a venv of its own (the compiler
#    checks llmdd's ACL declarations against the real headers too), and the whole test suite
#    runs against it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
torch_npu_version="2.14.0"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
prefix="$work/cann"

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
pip install --quiet meson-python meson ninja Cython

echo "-- a runtime=acl build with no toolkit stops with a clear message"
if ASCEND_HOME_PATH= ASCEND_TOOLKIT_HOME= meson setup "$work/no-cann" -Druntime=acl -Dacl_home="$work/nowhere" \
        >"$work/no-cann.log" 2>&1; then
    echo "FAIL: meson setup succeeded without a CANN toolkit" >&2
    exit 1
fi
for expected in "no CANN toolkit found" "$work/nowhere" "/usr/local/Ascend/ascend-toolkit/latest" "-Dacl_home="; do
    grep -qF -- "$expected" "$work/no-cann.log" || { echo "FAIL: message lacks '$expected'" >&2; cat "$work/no-cann.log" >&2; exit 1; }
done
grep -F "ERROR:" "$work/no-cann.log"

echo "-- CANN's ACL headers from torch-npu==$torch_npu_version"
pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    "torch-npu==$torch_npu_version" -d "$work/wheel"
python - "$work/wheel" "$prefix/include" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("torch_npu-*.whl"))
include = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith("torch_npu/include/acl/") and name.endswith(".h"):
            target = include / name[len("torch_npu/include/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
print(f"{sum(1 for _ in include.rglob('*.h'))} headers from {wheel.name}")
PY

echo "-- llmdd's host runtime as $prefix/lib64/libascendcl.so, compiled against them"
mkdir -p "$prefix/lib64"
cc -std=c11 -O2 -fPIC -shared -Wall -Wextra -Werror=incompatible-pointer-types -Werror=implicit-function-declaration \
    -DLLMDD_HOST_RUNTIME_REAL_HEADERS -I"$prefix/include" \
    src/llmdd/sim/acl_host.c -o "$prefix/lib64/libascendcl.so" -lpthread

echo "-- llmdd with -Druntime=acl -Dacl_home=$prefix"
pip install --quiet "$repo[test]" -Csetup-args=-Druntime=acl -Csetup-args=-Dacl_home="$prefix" \
    -Cbuild-dir="$work/build"
export LD_LIBRARY_PATH="$prefix/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$work"
python -c "import llmdd; assert llmdd.BACKEND == 'acl' and not llmdd.SIMULATED, llmdd.BACKEND; print('llmdd.BACKEND =', llmdd.BACKEND)"
python -m llmdd info
cd "$repo"
# The whole suite, the slow tests too, as before they were marked.
pytest -m "slow or not slow"
