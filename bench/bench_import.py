"""Import cost of llmdd in a fresh interpreter, from python -X importtime, against numpy's.

Serving engines always have the standard library's enum loaded before llmdd (torch, logging,
re and argparse all import it), so llmdd's own cost is measured with enum imported first;
`test_import_llmdd_cold` also counts whatever llmdd imports of the standard library.

Measure a regular install: an editable install's loader checks the build on every import of
llmdd, and that check is counted in llmdd's line. LLMDD_BENCH_PYTHON names the interpreter
to measure (default: this one), for example a venv with `pip install --no-build-isolation .`
and numpy."""
import os
import statistics
import subprocess
import sys

import pytest

RUNS = 15
PYTHON = os.environ.get("LLMDD_BENCH_PYTHON", sys.executable)


def cumulative_import_seconds(module, prelude, runs):
    """Median over fresh interpreters of `module`'s cumulative time in -X importtime."""
    samples = []
    for _ in range(runs):
        result = subprocess.run([PYTHON, "-X", "importtime", "-c", f"{prelude}import {module}"],
                                capture_output=True, text=True, check=True)
        for line in result.stderr.splitlines():
            fields = [field.strip() for field in line.split("|")]
            if len(fields) == 3 and fields[2] == module:
                samples.append(int(fields[1]) / 1e6)
    return statistics.median(samples)


def is_editable_install():
    check = "import sys, llmdd; print('_llmdd_editable_loader' in sys.modules)"
    return subprocess.run([PYTHON, "-c", check], capture_output=True, text=True, check=True).stdout.strip() == "True"


def record(benchmark, module, prelude=""):
    """Times the whole measurement once; the figure reported is the importtime median, kept in
    extra_info (bench/conftest.py prints it in place of the wall time)."""
    runs = 1 if benchmark.disabled else RUNS
    seconds = benchmark.pedantic(cumulative_import_seconds, args=(module, prelude, runs), rounds=1, iterations=1)
    benchmark.extra_info["importtime_median_s"] = seconds
    if module.startswith("llmdd") and is_editable_install():
        benchmark.extra_info["report"] = f"{PYTHON} has an editable install: its loader's build check is counted"
    return seconds


@pytest.mark.benchmark(group="import")
def test_import_llmdd(benchmark):
    assert record(benchmark, "llmdd", prelude="import enum; ") > 0


@pytest.mark.benchmark(group="import")
def test_import_llmdd_cold(benchmark):
    assert record(benchmark, "llmdd") > 0


@pytest.mark.benchmark(group="import")
def test_import_llm_datadist_drop_in(benchmark):
    assert record(benchmark, "llmdd.llm_datadist", prelude="import enum; ") > 0


@pytest.mark.benchmark(group="import")
def test_import_numpy(benchmark):
    assert record(benchmark, "numpy", prelude="import enum; ") > 0
