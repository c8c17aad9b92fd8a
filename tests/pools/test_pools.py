"""Memory pools (llm.MemPoolConfig / llm.HostMemPoolConfig), alignment and memory_stats."""
import ctypes
import json
import pytest
from support.caches import allocate_until_failure, assert_disjoint, seed_desc
from support.workers import run_workers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmdd
import llmdd.sim
from llmdd import Cache, CacheDesc, CachePlacement, LlmDataDist, LlmRole

MiB = 1 << 20


def pool_option(memory_size, page_shift=None):
    config = {"memory_size": memory_size}
    if page_shift is not None:
        config["page_shift"] = page_shift
    return json.dumps(config)


def pooled_engine(memory_size=64 * MiB, page_shift=None, **extra):
    dd = LlmDataDist(0, LlmRole.kPrompt)
    options = {"llm.MemPoolConfig": pool_option(memory_size, page_shift), **extra}
    assert dd.Initialize(options) == llmdd.LLM_SUCCESS
    return dd


def pages_of(nbytes, page=1 << 16):
    return -(-nbytes // page) * page


def slab(desc, alignment=512):
    return -(-desc.size // alignment) * alignment * desc.num_tensors


@pytest.mark.parametrize("config", [
    "", "not json", "[]", "42", '{"page_shift": 16}', '{"memory_size": "1024"}', '{"memory_size": 1.5e9}',
    '{"memory_size": true}', '{"memory_size": 0}', '{"memory_size": -65536}', '{"memory_size": 1000}',
    '{"memory_size": 1048576, "page_shift": 9}', '{"memory_size": 1048576, "page_shift": 31}',
    '{"memory_size": 1048576, "page_shift": "16"}', '{"memory_size": 281474976710656, "page_shift": 16}',
])
@pytest.mark.parametrize("key", ["llm.MemPoolConfig", "llm.HostMemPoolConfig"])
def test_malformed_pool_configs_are_param_invalid(key, config):
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({key: config}) == llmdd.LLM_PARAM_INVALID
        assert not dd.initialized


@pytest.mark.sim_only
def test_largest_page_count_is_accepted(device_memory):
    device_memory("8TiB")
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        config = pool_option(((1 << 32) - 1) << 10, 10)  # 2**32 - 1 pages of 1 KiB
        assert dd.Initialize({"llm.MemPoolConfig": config}) == llmdd.LLM_SUCCESS
        assert dd.memory_stats()["pool_bytes"] == ((1 << 32) - 1) << 10


@pytest.mark.sim_only
def test_a_pool_the_device_cannot_hold_is_out_of_memory_with_nothing_held(device_memory):
    device_memory("1GiB")
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.MemPoolConfig": pool_option(2 << 30)}) == llmdd.LLM_DEVICE_OUT_OF_MEMORY
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        assert llmdd.sim.device_usage(0) == (0, 0)


@pytest.mark.sim_only
def test_a_failed_host_pool_gives_the_device_pool_back():
    llmdd.sim.inject_failure("aclrtMallocHost", 1, 200000)
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        options = {"llm.MemPoolConfig": pool_option(MiB), "llm.HostMemPoolConfig": pool_option(MiB)}
        assert dd.Initialize(options) == llmdd.LLM_DEVICE_OUT_OF_MEMORY
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        assert llmdd.sim.device_usage(0) == (0, 0)


@pytest.mark.sim_only
def test_pool_caches_make_no_runtime_call_and_finalize_returns_the_pool():
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.MemPoolConfig": pool_option(64 * MiB)}) == llmdd.LLM_SUCCESS
        usage = llmdd.sim.device_usage(0)
        assert usage[1] == 1
        mallocs, frees = llmdd.sim.call_count("aclrtMalloc"), llmdd.sim.call_count("aclrtFree")
        caches = [dd.allocate_cache(seed_desc()) for _ in range(20)]
        for cache in caches:
            dd.deallocate_cache(cache)
        assert (llmdd.sim.call_count("aclrtMalloc"), llmdd.sim.call_count("aclrtFree")) == (mallocs, frees)
        dd.Finalize()
        assert llmdd.sim.call_count("aclrtFree") == frees + 1


def test_pool_caches_are_page_rounded_inside_the_pool_and_writable():
    with pooled_engine(8 * MiB, 12) as dd:
        desc = CacheDesc(3, [5000], llmdd.DT_INT8)
        cache = dd.allocate_cache(desc)
        stats = dd.memory_stats()
        assert stats["bytes_in_use"] == pages_of(slab(desc), 4096)
        assert stats["pool_free_bytes"] == stats["pool_bytes"] - stats["bytes_in_use"]
        for index, address in enumerate(cache.tensor_addrs):
            assert address % 512 == 0
            ctypes.memset(address, index + 1, desc.size)
        assert [ctypes.string_at(a, desc.size) for a in cache.tensor_addrs] == [
            bytes([i + 1]) * desc.size for i in range(3)]


def test_exhaustion_is_device_out_of_memory_and_freeing_coalesces_everything():
    with pooled_engine(4 * MiB) as dd:
        desc = CacheDesc(2, [100_000], llmdd.DT_INT8)   # 2 x 100 KB -> 4 pages of 64 KiB
        caches, status, cache = allocate_until_failure(dd, desc)
        assert status == llmdd.LLM_DEVICE_OUT_OF_MEMORY and cache.cache_id == -1
        assert len(caches) == 16
        stats = dd.memory_stats()
        assert stats["num_failed_allocs"] == 1 and stats["pool_free_bytes"] == 0
        for cache in caches[::2] + caches[1::2]:
            dd.deallocate_cache(cache)
        stats = dd.memory_stats()
        assert stats["largest_free_block"] == stats["pool_free_bytes"] == stats["pool_bytes"] == 4 * MiB
        assert stats["bytes_in_use"] == 0 and stats["peak_bytes_in_use"] == 4 * MiB


@pytest.mark.parametrize("alignment,page_shift", [(2 * MiB, 16), (4096, 16), (512, 10), (1 << 30, 20)])
def test_tensor_alignment_with_a_pool(alignment, page_shift):
    # Tensors are strided by the alignment: with 1 GiB, each of these caches takes 2 GiB.
    with pooled_engine(64 * MiB if alignment < (1 << 30) else 8 << 30, page_shift,
                       **{"llmdd.TensorAlignment": str(alignment)}) as dd:
        caches = [dd.allocate_cache(CacheDesc(2, [size], llmdd.DT_INT8)) for size in (100, 5000, 70000)]
        assert all(address % alignment == 0 for cache in caches for address in cache.tensor_addrs)


def test_host_caches_need_a_host_pool():
    desc = CacheDesc(4, [1000], llmdd.DT_FLOAT16, CachePlacement.kHost)
    with pooled_engine() as dd:
        assert dd.AllocateCache(desc, Cache()) == llmdd.LLM_PARAM_INVALID
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.HostMemPoolConfig": pool_option(4 * MiB, 12)}) == llmdd.LLM_SUCCESS
        cache = dd.allocate_cache(desc)
        assert cache.cache_desc.placement is CachePlacement.kHost
        for address in cache.tensor_addrs:
            ctypes.memset(address, 0x5A, desc.size)
        stats = dd.memory_stats()
        assert stats["host_bytes_in_use"] == pages_of(slab(desc), 4096) and stats["bytes_in_use"] == 0
        assert stats["host_pool_free_bytes"] == 4 * MiB - stats["host_bytes_in_use"]
        device_cache = dd.allocate_cache(seed_desc())   # no device pool: a runtime allocation
        assert dd.memory_stats()["bytes_in_use"] == slab(seed_desc()) + 512 - 64
        dd.deallocate_cache(cache)
        dd.deallocate_cache(device_cache)
        assert dd.memory_stats()["host_pool_free_bytes"] == 4 * MiB


def test_stats_without_a_pool_are_exact(engine):
    descs = [seed_desc(), CacheDesc(3, [1000], llmdd.DT_INT32), CacheDesc(1, [1], llmdd.DT_INT8)]
    caches = [engine.allocate_cache(desc) for desc in descs]
    held = [slab(desc) + 512 - 64 for desc in descs]
    engine.AllocateCache(CacheDesc(0, [1], llmdd.DT_INT8), Cache())      # PARAM_INVALID: not counted
    stats = engine.memory_stats()
    assert stats == {"bytes_in_use": sum(held), "peak_bytes_in_use": sum(held), "host_bytes_in_use": 0,
                     "peak_host_bytes_in_use": 0, "num_caches": 3, "num_allocs": 3, "num_frees": 0,
                     "num_failed_allocs": 0, "pending_bytes": 0, "num_pending": 0}
    engine.deallocate_cache(caches[0])
    engine.reset_peak_memory_stats()
    stats = engine.memory_stats()
    assert stats["peak_bytes_in_use"] == stats["bytes_in_use"] == sum(held[1:])
    assert (stats["num_caches"], stats["num_frees"]) == (2, 1)


def test_stats_start_at_zero_and_count_finalize_frees():
    dd = LlmDataDist(0, LlmRole.kPrompt)
    assert dd.memory_stats()["num_allocs"] == 0 and "pool_bytes" not in dd.memory_stats()
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    for _ in range(3):
        dd.allocate_cache(seed_desc())
    dd.Finalize()
    stats = dd.memory_stats()
    assert (stats["num_caches"], stats["bytes_in_use"], stats["num_frees"]) == (0, 0, 3)
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    assert dd.memory_stats()["num_allocs"] == 0
    dd.Finalize()


operations = st.lists(st.one_of(
    st.tuples(st.just("allocate"), st.integers(1, 6), st.integers(1, 300_000)),
    st.tuples(st.just("free"), st.integers(0, 1000), st.just(0)),
), max_size=60)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, page_shift=st.sampled_from([10, 12, 16]))
def test_random_churn_keeps_caches_disjoint_and_stats_exact(ops, page_shift):
    pool_bytes = 4 * MiB
    with pooled_engine(pool_bytes, page_shift) as dd:
        live = {}
        for op, count, length in ops:
            if op == "allocate":
                desc = CacheDesc(count, [length], llmdd.DT_INT8)
                cache = Cache()
                status = dd.AllocateCache(desc, cache)
                if status == llmdd.LLM_SUCCESS:
                    live[cache.cache_id] = (cache.tensor_addrs[0], pages_of(slab(desc), 1 << page_shift))
                else:
                    assert status == llmdd.LLM_DEVICE_OUT_OF_MEMORY
                    assert pages_of(slab(desc), 1 << page_shift) > dd.memory_stats()["largest_free_block"]
            elif live:
                cache_id = sorted(live)[count % len(live)]
                assert dd.DeallocateCache(cache_id) == llmdd.LLM_SUCCESS
                del live[cache_id]
            assert_disjoint([(start, start + size) for start, size in live.values()])
            stats = dd.memory_stats()
            assert stats["bytes_in_use"] == sum(size for _, size in live.values())
            assert stats["pool_free_bytes"] == pool_bytes - stats["bytes_in_use"]
            assert stats["num_caches"] == len(live)
        for cache_id in list(live):
            dd.DeallocateCache(cache_id)
        assert dd.memory_stats()["largest_free_block"] == pool_bytes


@pytest.mark.parametrize("use_pool", [False, True])
def test_threads_allocating_writing_and_verifying_never_collide(use_pool):
    options = {"llm.MemPoolConfig": pool_option(256 * MiB)} if use_pool else {}
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS

        def worker(seed):
            for round_ in range(100):
                desc = CacheDesc(2, [512 + 97 * ((seed * 31 + round_) % 40)], llmdd.DT_INT8)
                cache = dd.allocate_cache(desc)
                pattern = bytes([(seed * 7 + round_) % 251 + 1]) * desc.size
                for address in cache.tensor_addrs:
                    ctypes.memmove(address, pattern, desc.size)
                for address in cache.tensor_addrs:
                    assert ctypes.string_at(address, desc.size) == pattern, (seed, round_)
                dd.deallocate_cache(cache)

        assert run_workers(worker, 6) == []
        stats = dd.memory_stats()
        assert (stats["num_allocs"], stats["num_frees"], stats["num_caches"], stats["bytes_in_use"]) == (600, 600, 0, 0)


def test_a_fitting_block_deep_in_its_size_class_is_found():
    # 16 free blocks of 64 pages sit before a free block of 65 pages in the same size class,
    # and no larger free block exists: a request for 65 pages must still be served.
    page = 4096
    pages = 65 + 1 + 16 * (64 + 1)
    with pooled_engine(pages * page, 12) as dd:
        def of_pages(count):
            return dd.allocate_cache(CacheDesc(1, [count * page], llmdd.DT_INT8))

        big, separators, blocks = of_pages(65), [], []
        separators.append(of_pages(1))
        for _ in range(16):
            blocks.append(of_pages(64))
            separators.append(of_pages(1))
        assert dd.memory_stats()["pool_free_bytes"] == 0
        dd.deallocate_cache(big)
        for block in blocks:
            dd.deallocate_cache(block)
        assert dd.memory_stats()["largest_free_block"] == 65 * page
        assert dd.allocate_cache(CacheDesc(1, [65 * page], llmdd.DT_INT8)).cache_id > 0
