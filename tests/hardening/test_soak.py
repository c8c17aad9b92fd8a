"""Long runs: threads allocating, writing, verifying and freeing against one engine, and a
million allocation round trips in bounded memory. The soak's length is LLMDD_SOAK_SECONDS
(short by default; CI's hardening step runs it longer)."""
import ctypes
import os
import random
import threading
import time

import pytest
from support.caches import assert_disjoint
from support.workers import run_workers

import llmdd
from llmdd import Cache, CacheDesc, LlmDataDist, LlmRole

SOAK_SECONDS = float(os.environ.get("LLMDD_SOAK_SECONDS", "1.0"))

pytestmark = pytest.mark.slow   # long runs: deselected by default, run by .ci/run


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.sim_only
@pytest.mark.parametrize("options", [{}, {"llm.MemPoolConfig": '{"memory_size": 268435456, "page_shift": 12}'}],
                         ids=["runtime", "pool"])
def test_concurrency_soak(options):
    lock, live = threading.Lock(), {}
    deadline = time.monotonic() + SOAK_SECONDS
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS

        def check_disjoint():
            with lock:
                spans = [span for spans in live.values() for span in spans]
            assert_disjoint(spans)

        def worker(seed):
            rng = random.Random(seed)
            held = []
            while time.monotonic() < deadline:
                desc = CacheDesc(rng.randint(1, 4), [rng.randint(1, 20000)], llmdd.DT_INT8)
                cache = dd.allocate_cache(desc)
                pattern = rng.randrange(1, 256)
                for address in cache.tensor_addrs:
                    ctypes.memset(address, pattern, desc.size)
                with lock:
                    live[cache.cache_id] = [(a, a + desc.size) for a in cache.tensor_addrs]
                held.append((cache, pattern, desc.size))
                if len(held) > 8 or rng.random() < 0.4:
                    old, old_pattern, size = held.pop(rng.randrange(len(held)))
                    for address in old.tensor_addrs:
                        assert ctypes.string_at(address, size) == bytes([old_pattern]) * size, "corrupted"
                    with lock:
                        del live[old.cache_id]
                    dd.deallocate_cache(old)
                if rng.random() < 0.05:
                    check_disjoint()
            for old, _, _ in held:
                with lock:
                    del live[old.cache_id]
                dd.deallocate_cache(old)

        assert run_workers(worker, 4) == []
        stats = dd.memory_stats()
        print(f"soak {options or 'runtime'}: {stats['num_allocs']} allocations in {SOAK_SECONDS:.0f} s")
        assert stats["num_allocs"] == stats["num_frees"] > 0
        assert stats["num_caches"] == stats["bytes_in_use"] == 0
        if options:
            assert stats["pool_free_bytes"] == stats["largest_free_block"] == stats["pool_bytes"]


def test_a_million_round_trips_keep_memory_flat(engine):
    desc = CacheDesc(80, [1, 256], llmdd.DT_FLOAT16)
    allocate, deallocate = engine.AllocateCache, engine.DeallocateCache
    for _ in range(10_000):   # warm the allocators up before the first reading
        cache = Cache()
        allocate(desc, cache)
        deallocate(cache.cache_id)
    before = rss_bytes()
    for _ in range(1_000_000):
        cache = Cache()
        allocate(desc, cache)
        deallocate(cache.cache_id)
    growth = rss_bytes() - before
    print(f"RSS after 1,000,000 AllocateCache/DeallocateCache round trips: {growth / 2**20:+.2f} MiB")
    assert growth < 8 << 20
    assert engine.memory_stats()["num_caches"] == 0
