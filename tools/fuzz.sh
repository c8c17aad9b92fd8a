#!/usr/bin/env bash
# Runs each atheris target of tools/fuzz.py for LLMDD_FUZZ_SECONDS (default 20) seconds.
# Run it with the python that has llmdd installed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${LLMDD_FUZZ_SECONDS:-20}"
pip install --quiet atheris
for target in options descriptors; do
    echo "-- fuzzing $target for $seconds s"
    python tools/fuzz.py "$target" -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 12
done
