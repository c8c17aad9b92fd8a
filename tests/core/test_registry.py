"""The cache registry as the transfer layer reads it: caches by key with the batch entry a key
names, their layout and the regions to register with a transfer engine, and pins."""
import numpy

import llmdd
from llmdd._registry import CacheRegistry
from llmdd.llm_datadist import BlocksCacheKey, CacheDesc, CacheKey, DataType

DESC = CacheDesc(4, [8, 32], DataType.DT_FLOAT16)       # 4 tensors, 8 entries of 64 bytes


def test_keys_find_their_cache_and_batch_entry(engine):
    registry = CacheRegistry(engine)
    keys = [CacheKey(3, req_id=10), CacheKey(3, req_id=11)]
    cache = llmdd.Cache()
    assert registry.allocate(DESC, cache, keys, is_blocks_cache=False) == llmdd.LLM_SUCCESS
    entry, batch_index = registry.find(keys[1])
    assert batch_index == 1 and entry is registry.entry(cache.cache_id)
    assert (entry.num_tensors, entry.tensor_bytes, entry.batch, entry.block_bytes) == (4, 512, 8, 64)
    assert entry.tensor_addrs == tuple(cache.tensor_addrs) and entry.placement == 1
    address, nbytes, _ = cache.region()
    assert entry.regions == ((address, nbytes),)          # one region for the whole slab
    assert registry.find(CacheKey(3, req_id=12)) is None
    assert registry.find(CacheKey(9, req_id=11)) == (entry, 1)   # within an engine the cluster id names no cache
    assert registry.release_key(keys[1]) == llmdd.LLM_SUCCESS
    assert registry.find(keys[1]) is None


def test_a_registered_cache_is_one_region_per_tensor(engine):
    memory = numpy.zeros((4, 512), numpy.uint8)
    addrs = [int(row.ctypes.data) for row in memory]
    registry = CacheRegistry(engine)
    cache = llmdd.Cache()
    key = BlocksCacheKey(3, 1)
    assert registry.register(DESC, addrs, cache, [key], is_blocks_cache=True,
                             remote_accessible=True) == llmdd.LLM_SUCCESS
    entry, batch_index = registry.find(key)
    assert batch_index == 0 and entry.is_blocks_cache and entry.remote_accessible and entry.registered
    assert entry.regions == tuple((address, 512) for address in addrs)
    assert registry.unregister(cache.cache_id) == llmdd.LLM_SUCCESS
    assert registry.find(key) is None and registry.entry(cache.cache_id) is None


def test_a_pinned_cache_outlives_its_last_reference_until_the_pin_ends(engine):
    registry = CacheRegistry(engine)
    cache = llmdd.Cache()
    assert registry.allocate(DESC, cache, is_blocks_cache=False) == llmdd.LLM_SUCCESS
    with registry.pin(cache.cache_id) as entry:
        assert entry.cache_id == cache.cache_id
        assert registry.deallocate(cache.cache_id) == llmdd.LLM_SUCCESS
        assert engine.memory_stats()["num_pending"] == 1
    assert engine.memory_stats()["num_pending"] == 0
    assert engine.memory_stats()["num_caches"] == 0


def test_memory_is_found_in_the_cache_whose_region_holds_it_whole(engine):
    memory = numpy.zeros((4, 1024), numpy.uint8)
    registry = CacheRegistry(engine)
    caches = [llmdd.Cache() for _ in range(3)]
    rows = [int(row.ctypes.data) for row in memory]
    # Registrations may overlap: a closed cache of 256-byte tensors 8 bytes into each row, and an
    # open one of 512-byte tensors from each row's start, reaching further.
    small = CacheDesc(4, [8, 16], DataType.DT_FLOAT16)
    assert registry.register(small, [row + 8 for row in rows], caches[0], is_blocks_cache=False,
                             remote_accessible=False) == llmdd.LLM_SUCCESS
    assert registry.register(DESC, rows, caches[1], is_blocks_cache=False,
                             remote_accessible=True) == llmdd.LLM_SUCCESS
    assert registry.allocate(DESC, caches[2], is_blocks_cache=False) == llmdd.LLM_SUCCESS
    closed, opened, allocated = (registry.entry(cache.cache_id) for cache in caches)
    slab, slab_bytes = allocated.regions[0]
    extents = [(rows[1] + 16, 100), (rows[1] + 300, 10), (rows[1] + 500, 20), (rows[1] - 1, 2),
               (slab + slab_bytes - 4, 4), (slab + slab_bytes - 4, 5)]
    found = registry.holding(extents)
    assert found[0] in (closed, opened) and found[1:] == [opened, None, None, allocated, None]
    assert registry.holding(extents, remote_accessible=True) == [opened, opened, None, None, None, None]
    for cache in caches[:2]:
        assert registry.unregister(cache.cache_id) == llmdd.LLM_SUCCESS
    assert registry.deallocate(caches[2].cache_id) == llmdd.LLM_SUCCESS
