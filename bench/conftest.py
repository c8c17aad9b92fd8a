"""Benchmarks run side by side with their numpy/torch equivalents; the summary prints ratios.

Each benchmark group has one baseline (the numpy/torch/plain-Python equivalent, named in
BASELINES); after the run every other member of the group is reported as a multiple of it.
With --benchmark-disable (CI's smoke mode) each benchmark runs once and no ratio is printed.

Rows a group compares are timed the same way: `calibrate` picks iterations and rounds once,
on the group's baseline, and every row runs with them (`run_calibrated`). pytest-benchmark's
own calibration is per row, and a slow first call could leave one row at 1 iteration per round
and its neighbour at 24, so that the clock's cost, not the code, decided their ratio.
"""
import math
import platform
import time

import pytest

import llmdd

BASELINES = {
    "round-trip": "test_numpy_empty_and_release",
    "descriptor": "test_plain_python_object",
    "import": "test_import_numpy",
    "scaling": "test_pool_round_trip_with_live_caches[1]",
    "large-cache": "test_numpy_empty_16_gib",
    "copy-1GiB": "test_one_large_memcpy",
    "transfer-layerwise": "test_memcpy_of_a_layerwise_cache",
    "transfer-rank-table-link": "test_link_clusters_of_a_cache_manager",
}


# One round lasts at least this many clock reads, so a read's cost is at most 1% of a round
# (as --benchmark-calibration-precision=100 in pytest.ini asks of pytest-benchmark's calibration).
CLOCK_READS_PER_ROUND = 100
# A row's rounds add up to about this long at the baseline's speed (pytest-benchmark's max_time).
SECONDS_PER_ROW = 1.0


def _fastest_call_seconds(function, calls=1000, batches=5):
    fastest = math.inf
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        fastest = min(fastest, (time.perf_counter() - start) / calls)
    return fastest


def calibrate(baseline):
    """(iterations, rounds) for every row of a group, from its baseline: a round of `baseline`
    lasts CLOCK_READS_PER_ROUND clock reads, and its rounds together SECONDS_PER_ROW."""
    clock_read = _fastest_call_seconds(time.perf_counter)
    call = _fastest_call_seconds(baseline)
    iterations = max(1, math.ceil(CLOCK_READS_PER_ROUND * clock_read / call))
    rounds = max(5, round(SECONDS_PER_ROW / (iterations * call)))
    return iterations, rounds


def run_calibrated(benchmark, function, timing):
    """Times `function` with a group's (iterations, rounds) from calibrate."""
    iterations, rounds = timing
    return benchmark.pedantic(function, iterations=iterations, rounds=rounds, warmup_rounds=max(1, rounds // 100))


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
        medians.setdefault(bench.group, {})[bench.name] = (bench.name, median)
    write = terminalreporter.write_line
    write("")
    write(f"llmdd benchmark ratios (median vs the group's baseline); {platform.machine()}, "
          f"{platform.python_implementation()} {platform.python_version()}, runtime={llmdd.BACKEND}")
    for group, members in sorted(medians.items()):
        baseline = members.get(BASELINES.get(group, ""))
        for name, median in sorted(members.values(), key=lambda item: item[1]):
            ratio = f"{median / baseline[1]:6.2f}x {baseline[0]}" if baseline else ""
            write(f"  {group:<12} {name:<56} {median * 1e9:14.0f} ns  {ratio}")
    for bench in session.benchmarks:
        if "report" in bench.extra_info:
            write(f"  {bench.group:<12} {bench.name}: {bench.extra_info['report']}")


@pytest.fixture
def pooled_engine():
    """An engine with a 4 GiB device pool of 64 KiB pages."""
    options = {"llm.DeviceId": "0", "llm.MemPoolConfig": '{"memory_size": 4294967296, "page_shift": 16}'}
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        yield dd


@pytest.fixture
def seed_round_trip():
    """Makes the benchmarked call for an engine: Cache() + AllocateCache + DeallocateCache of
    the AllocateCache page's cache (80 x fp16 [1, 256])."""

    def make(engine):
        desc = llmdd.CacheDesc(80, [1, 256], llmdd.DT_FLOAT16)
        allocate, deallocate, new_cache = engine.AllocateCache, engine.DeallocateCache, llmdd.Cache

        def round_trip():
            cache = new_cache()
            allocate(desc, cache)
            deallocate(cache.cache_id)

        return round_trip

    return make
