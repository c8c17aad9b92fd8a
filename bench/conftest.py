"""Benchmarks run side by side with their numpy/torch equivalents; the summary prints ratios.

Each benchmark group has one baseline (the numpy/torch/plain-Python equivalent, named in
BASELINES); after the run every other member of the group is reported as a multiple of it.
With --benchmark-disable (CI's smoke mode) each benchmark runs once and no ratio is printed.
"""
import platform

import pytest

import llmdd

BASELINES = {
    "round-trip": "test_numpy_empty_and_release",
    "descriptor": "test_plain_python_object",
    "import": "test_import_numpy",
}


@pytest.fixture
def engine():
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.DeviceId": "0"}) == llmdd.LLM_SUCCESS
        yield dd


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    medians = {}
    for bench in session.benchmarks:
        if bench.has_error or not bench.stats:
            continue
        median = bench.extra_info.get("importtime_median_s", bench.stats.median)
        medians.setdefault(bench.group, {})[bench.name.split("[")[0]] = (bench.name, median)
    write = terminalreporter.write_line
    write("")
    write(f"llmdd benchmark ratios (median vs the group's baseline); {platform.machine()}, "
          f"{platform.python_implementation()} {platform.python_version()}, runtime={llmdd.BACKEND}")
    for group, members in sorted(medians.items()):
        baseline = members.get(BASELINES.get(group, ""))
        for short_name, (name, median) in sorted(members.items(), key=lambda item: item[1][1]):
            ratio = f"{median / baseline[1]:6.2f}x {baseline[0]}" if baseline else "no baseline"
            write(f"  {group:<12} {name:<48} {median * 1e9:12.0f} ns  {ratio}")
