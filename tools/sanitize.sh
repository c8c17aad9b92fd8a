#!/usr/bin/env bash
# The whole test suite against llmdd built with AddressSanitizer and UndefinedBehaviorSanitizer,
# their runtimes preloaded into the ordinary CPython. Any report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
pip install --quiet meson-python meson ninja Cython pytest pytest-benchmark hypothesis numpy
pip install --quiet --no-build-isolation "$repo" -Cbuild-dir="$work/build" \
    -Csetup-args=-Db_sanitize=address,undefined -Csetup-args=-Db_lundef=false -Csetup-args=-Dbuildtype=debugoptimized

asan="$(cc -print-file-name=libasan.so)"
ubsan="$(cc -print-file-name=libubsan.so)"
# CPython's own allocations are not llmdd's: leak detection stays off here (tools/leak-check.sh
# looks for llmdd's leaks). Every other finding aborts the process and so fails pytest.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
cd "$repo"
LD_PRELOAD="$asan $ubsan" python - <<'PY'
import pathlib, llmdd, llmdd._datadist
binary = pathlib.Path(llmdd._datadist.__file__).read_bytes()
assert b"__asan_report" in binary and b"__ubsan_handle" in binary, "the extension is not instrumented"
print("instrumented build loaded:", llmdd.BACKEND)
PY
# Every test, the slow ones (stress, soak, fuzz) too: they are the ones most likely to find something.
LD_PRELOAD="$asan $ubsan" pytest -q -p no:cacheprovider -m "slow or not slow"
