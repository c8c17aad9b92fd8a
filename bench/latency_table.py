"""Prints bench_transfer.py's latency rows as a table: llmdd's p50 and p99 beside bare Mooncake's
from the same run, with their ratios and the load average each row recorded.

    pytest bench/bench_transfer.py -k latency --benchmark-json=latency.json
    python bench/latency_table.py latency.json [more.json ...]

One table per file, in Markdown (as bench/RESULTS.md quotes them).
"""
import json
import sys


def latency_rows(run):
    """{(blocks, wait): {path: extra_info}} of a pytest-benchmark JSON run's latency rows."""
    rows = {}
    for bench in run["benchmarks"]:
        info = bench["extra_info"]
        if "p50_s" in info:
            rows.setdefault((info["blocks"], info["wait"]), {})[info["path"]] = info
    return rows


def table(run):
    lines = [
        "| pull | wait | llmdd path | llmdd p50 | bare p50 | p50 ratio | llmdd p99 | bare p99 | p99 ratio | load (1 min) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (blocks, wait), paths in sorted(latency_rows(run).items()):
        bare = paths.get("bare-mooncake")
        for name, llmdd in sorted(paths.items()):
            if name != "bare-mooncake" and bare is not None:
                lines.append(_line(blocks, wait, name, llmdd, bare))
    return "\n".join(lines)


def _line(blocks, wait, name, llmdd, bare):
    """One llmdd path's row of a (blocks, wait) pair, beside bare Mooncake's."""
    cells = [f"{blocks} x 16 KiB", wait, name]
    for percentile in ("p50_s", "p99_s"):
        cells += [f"{llmdd[percentile] * 1e6:.0f} us", f"{bare[percentile] * 1e6:.0f} us",
                  f"{llmdd[percentile] / bare[percentile]:.2f}x"]
    cells.append(f"{llmdd['load_1min']:.2f} / {bare['load_1min']:.2f}")
    return "| " + " | ".join(cells) + " |"


def main(paths):
    for path in paths:
        with open(path) as run_file:
            run = json.load(run_file)
        print(f"{path} ({run.get('datetime', 'no date')}); load: after the llmdd row / after the bare Mooncake row")
        print(table(run))
        print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
