"""RegisterKvCache / UnregisterKvCache (LLM-DataDist v2): memory the caller owns becomes a
cache the engine knows by id, used in place, never allocated or freed by llmdd; and pin, which
holds a cache's memory for a transfer."""
import ctypes

import numpy
import pytest

import llmdd
import llmdd.sim
from llmdd import Cache, CacheDesc, CachePlacement

DESC = CacheDesc(2, [4, 16], llmdd.DT_INT8)


def caller_memory(fill=0):
    memory = numpy.full((2, 4, 16), fill, numpy.uint8)
    return memory, [int(memory[i].ctypes.data) for i in range(2)]


def test_a_registered_cache_is_the_callers_memory_by_id(engine):
    memory, addrs = caller_memory(fill=0x42)
    stats = engine.memory_stats()
    cache = Cache()
    assert engine.RegisterKvCache(DESC, addrs, cache) == llmdd.LLM_SUCCESS
    assert cache.cache_id > 0 and cache.tensor_addrs == addrs and cache.cache_desc == DESC
    assert engine.memory_stats() == stats                  # nothing allocated, nothing counted
    assert [row for row, _, _ in cache.to_descs()] == addrs
    with pytest.raises(ValueError, match="registered"):
        cache.region()
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_PARAM_INVALID
    assert engine.UnregisterKvCache(cache.cache_id) == llmdd.LLM_SUCCESS
    assert engine.UnregisterKvCache(cache.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST
    assert (memory == 0x42).all()


@pytest.mark.sim_only   # host memory stands for device memory only on the sim build
def test_registered_memory_is_viewed_and_copied_in_place(engine):
    memory, addrs = caller_memory()
    cache = Cache()
    assert engine.RegisterKvCache(DESC, addrs, cache) == llmdd.LLM_SUCCESS
    view = numpy.asarray(cache.tensor(1))
    view[0] = 9
    assert (memory[1, 0] == 9).all()
    other = engine.allocate_cache(DESC)
    engine.copy_blocks(cache, other, [0], [[3]])
    engine.copy_blocks(other, cache, [3], [[2]])
    assert (memory[1, 2] == 9).all() and (memory[0, 2] == 0).all()
    del view
    assert engine.UnregisterKvCache(cache.cache_id) == llmdd.LLM_SUCCESS
    assert engine.CopyKvBlocks(cache, other, [0], [[1]]) == llmdd.LLM_KV_CACHE_NOT_EXIST


def test_registration_refuses_what_it_cannot_use(engine):
    _, addrs = caller_memory()
    for desc, cache_addrs in [(DESC, addrs[:1]), (DESC, [addrs[0], 0]), (DESC, [2**64, addrs[1]]),
                              (CacheDesc(2, [], llmdd.DT_INT8), addrs), (CacheDesc(2, [4], 999), addrs),
                              (CacheDesc(2, [4, 16], llmdd.DT_INT8, 7), addrs)]:
        cache = Cache()
        assert engine.RegisterKvCache(desc, cache_addrs, cache) == llmdd.LLM_PARAM_INVALID
        assert cache.cache_id == -1
    with pytest.raises(TypeError):
        engine.RegisterKvCache(DESC, "addrs", Cache())
    with pytest.raises(TypeError):
        engine.RegisterKvCache(DESC, [1.5, 2.5], Cache())
    allocated = engine.allocate_cache(DESC)
    assert engine.UnregisterKvCache(allocated.cache_id) == llmdd.LLM_PARAM_INVALID


def test_registration_needs_an_initialized_engine():
    _, addrs = caller_memory()
    dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
    assert dd.RegisterKvCache(DESC, addrs, Cache()) == llmdd.LLM_FAILED
    assert dd.UnregisterKvCache(1) == llmdd.LLM_FAILED


def test_a_host_placement_cache_registers_too(engine):
    _, addrs = caller_memory()
    cache = Cache()
    desc = CacheDesc(2, [4, 16], llmdd.DT_INT8, CachePlacement.kHost)
    assert engine.RegisterKvCache(desc, addrs, cache) == llmdd.LLM_SUCCESS
    assert engine.UnregisterKvCache(cache.cache_id) == llmdd.LLM_SUCCESS


@pytest.mark.sim_only   # reads device memory from the host (ctypes)
def test_a_pin_holds_a_deallocated_caches_memory_until_it_goes(engine):
    cache = engine.allocate_cache(DESC)
    ctypes.memset(cache.tensor_addrs[0], 0x33, 64)
    pin = engine.pin(cache.cache_id)
    usage = llmdd.sim.device_usage(0)
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    assert llmdd.sim.device_usage(0) == usage              # still held
    assert ctypes.string_at(cache.tensor_addrs[0], 64) == b"\x33" * 64
    assert engine.memory_stats()["num_pending"] == 1
    del pin
    assert engine.memory_stats()["num_pending"] == 0
    assert llmdd.sim.device_usage(0)[1] == usage[1] - 1
    with pytest.raises(ValueError):
        engine.pin(cache.cache_id)
