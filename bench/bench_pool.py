"""The pool's round trip as live caches pile up, a 16 GiB cache, and fragmentation under a
serving-like churn."""
import math
import os
import random

import numpy
import pytest

import llmdd
from llmdd import Cache, CacheDesc

@pytest.fixture(scope="module")
def small_page_engine():
    """An engine whose 2 GiB pool has 4 KiB pages, room for 100k one-page caches and more."""
    options = {"llm.MemPoolConfig": '{"memory_size": 2147483648, "page_shift": 12}'}
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        yield dd


@pytest.mark.benchmark(group="scaling")
@pytest.mark.parametrize("live_caches", [1, 1_000, 100_000])
def test_pool_round_trip_with_live_caches(benchmark, small_page_engine, seed_round_trip, live_caches):
    dd = small_page_engine
    one_page = CacheDesc(1, [8], llmdd.DT_INT8)
    # Live caches of one page each, every other one freed again so that the free space is
    # split into as many holes as there are live caches.
    held = [dd.allocate_cache(one_page) for _ in range(2 * (live_caches - 1))]
    for cache in held[::2]:
        dd.deallocate_cache(cache)
    benchmark(seed_round_trip(dd))
    assert dd.memory_stats()["num_caches"] == live_caches - 1
    for cache in held[1::2]:
        dd.deallocate_cache(cache)


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.benchmark(group="large-cache")
def test_llmdd_16_gib_cache(benchmark, engine):
    desc = CacheDesc(16, [1 << 30], llmdd.DT_INT8)
    before = rss_bytes()

    def round_trip():
        cache = Cache()
        assert engine.AllocateCache(desc, cache) == llmdd.LLM_SUCCESS
        engine.DeallocateCache(cache.cache_id)

    benchmark.pedantic(round_trip, rounds=50, iterations=1)
    cache = engine.allocate_cache(desc)
    benchmark.extra_info["report"] = (f"16 GiB cache live: RSS grew by {(rss_bytes() - before) / 2**20:.1f} MiB "
                                      f"(runtime={llmdd.BACKEND})")
    engine.deallocate_cache(cache)


@pytest.mark.benchmark(group="large-cache")
def test_numpy_empty_16_gib(benchmark):
    benchmark.pedantic(lambda: numpy.empty(16 << 30, numpy.int8), rounds=50, iterations=1)


# A serving-like churn (docs/facts.md section 8): each request's cache is 2 * layers tensors of
# [n_blocks, 128, 8, 128] fp16 (256 KiB per block per tensor), n_blocks long-tailed.
CHURN = {"seed": 20261127, "layers": 4, "pool_gib": 8, "page_shift": 16, "median_blocks": 8,
         "sigma": 1.0, "max_blocks": 512, "free_probability": 0.45}


def churn_until_out_of_memory(seed, layers, pool_gib, page_shift, median_blocks, sigma, max_blocks,
                              free_probability):
    """Allocates lognormal-sized caches and frees random live ones until the first
    LLM_DEVICE_OUT_OF_MEMORY; returns (pool utilization then, requests made, live caches)."""
    rng = random.Random(seed)
    options = {"llm.MemPoolConfig": f'{{"memory_size": {pool_gib << 30}, "page_shift": {page_shift}}}'}
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        live = []
        requests = 0
        while True:
            if live and rng.random() < free_probability:
                dd.DeallocateCache(live.pop(rng.randrange(len(live))))
                continue
            blocks = min(max_blocks, max(1, round(rng.lognormvariate(math.log(median_blocks), sigma))))
            cache = Cache()
            requests += 1
            status = dd.AllocateCache(CacheDesc(2 * layers, [blocks, 128, 8, 128], llmdd.DT_FLOAT16), cache)
            if status == llmdd.LLM_DEVICE_OUT_OF_MEMORY:
                stats = dd.memory_stats()
                return stats["bytes_in_use"] / stats["pool_bytes"], requests, len(live)
            assert status == llmdd.LLM_SUCCESS
            live.append(cache.cache_id)


@pytest.mark.benchmark(group="fragmentation")
def test_pool_utilization_at_first_out_of_memory(benchmark):
    utilization, requests, live = benchmark.pedantic(churn_until_out_of_memory, kwargs=CHURN, rounds=1,
                                                     iterations=1)
    benchmark.extra_info["report"] = (f"pool utilization at the first out-of-memory: {utilization:.1%} "
                                      f"after {requests} requests, {live} caches live; trace {CHURN}")
    assert 0 < utilization <= 1
