#!/usr/bin/env bash
# Leak check: tools/leak_workload.py under valgrind memcheck, with CPython's own allocator off
# (PYTHONMALLOC=malloc) so that every allocation is seen. Fails on any definite leak whose
# allocation stack passes through llmdd's code, or on any invalid read or write in it.
# Run it with the python that has llmdd installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
    --num-callers=40 --log-file="$log" python tools/leak_workload.py
python - "$log" <<'PY'
import re, sys
report = open(sys.argv[1]).read()
records = re.split(r"\n==\d+== \n", report)
ours = re.compile(r"llmdd|_datadist|_desc\.|_tensor_view|acl_host|page_pool|u64_table")
leaks = [record for record in records if "definitely lost" in record and ours.search(record)]
# A memory error is llmdd's when its innermost frame is llmdd's code (CPython's own known
# valgrind reports during start-up also show llmdd's import further down the stack).
def innermost_frame(record):
    frame = re.search(r"(?:at|by) 0x[0-9A-F]+: .*", record)
    return frame.group(0) if frame else ""
errors = [record for record in records if re.search(r"Invalid (read|write|free)|uninitialised", record)
          and ours.search(innermost_frame(record))]
summary = re.search(r"LEAK SUMMARY:.*?(?=\n==\d+== \n|\Z)", report, re.S)
print(summary.group(0) if summary else "no leak summary (nothing leaked)")
for record in leaks + errors:
    print(record)
print(f"llmdd leak check: {len(leaks)} definite leaks and {len(errors)} memory errors in llmdd's code")
sys.exit(1 if leaks or errors else 0)
PY
