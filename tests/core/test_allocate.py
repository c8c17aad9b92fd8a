"""AllocateCache and DeallocateCache: LLM-DataDist v1's rules and status codes (docs/facts.md section 4)."""
import ctypes

import pytest
from support.caches import INT64_MAX, assert_disjoint, seed_desc

import llmdd
from llmdd import Cache, CacheDesc, LlmDataDist, LlmRole


def test_seed_example(engine):
    kv_desc = CacheDesc()
    kv_desc.num_tensors = 80
    kv_desc.data_type = llmdd.DT_FLOAT16
    kv_desc.shape = [1, 256]
    cache = Cache()
    ret = engine.AllocateCache(kv_desc, cache)
    assert ret == llmdd.LLM_SUCCESS and ret is llmdd.LLMStatusCode.LLM_SUCCESS
    assert cache.cache_id >= 1
    assert len(cache.tensor_addrs) == 80
    assert cache.cache_desc == kv_desc
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS


def test_a_new_cache_is_empty():
    cache = Cache()
    assert cache.cache_id == -1 and cache.tensor_addrs == [] and cache.cache_desc == CacheDesc()


def test_cache_desc_is_a_copy(engine):
    desc = seed_desc()
    cache = Cache()
    engine.AllocateCache(desc, cache)
    desc.num_tensors = 1
    desc.shape = [7]
    assert cache.cache_desc == seed_desc()
    assert len(cache.tensor_addrs) == 80


def test_ids_start_at_one_and_increase_across_engines():
    ids = []
    for _ in range(2):
        with llmdd.LlmDataDist(1, llmdd.LlmRole.kDecoder) as dd:
            assert dd.Initialize({}) == llmdd.LLM_SUCCESS
            for _ in range(3):
                ids.append(dd.allocate_cache(seed_desc()).cache_id)
    assert ids[0] >= 1
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_ids_are_not_reused_after_deallocation(engine):
    first = engine.allocate_cache(seed_desc())
    engine.deallocate_cache(first)
    second = engine.allocate_cache(seed_desc())
    assert second.cache_id > first.cache_id


@pytest.mark.parametrize("shape,data_type", [
    ([1, 256], llmdd.DT_FLOAT16), ([3], llmdd.DT_INT8), ([5, 7], llmdd.DT_INT4), ([1000], llmdd.DT_DOUBLE),
])
def test_tensors_are_aligned_disjoint_sized_and_writable(engine, shape, data_type):
    desc = CacheDesc(16, shape, data_type)
    cache = engine.allocate_cache(desc)
    addrs = cache.tensor_addrs
    size = desc.size
    assert len(addrs) == 16
    assert all(address % 512 == 0 for address in addrs)
    assert_disjoint([(address, address + size) for address in addrs])
    for index, address in enumerate(addrs):
        ctypes.memset(address, index + 1, size)
    for index, address in enumerate(addrs):
        assert ctypes.string_at(address, size) == bytes([index + 1]) * size


def test_caches_do_not_overlap_each_other(engine):
    spans = []
    for tensors, length in [(4, 100), (80, 256), (2, 4096), (7, 1)]:
        desc = CacheDesc(tensors, [length], llmdd.DT_FLOAT)
        cache = engine.allocate_cache(desc)
        spans += [(address, address + desc.size) for address in cache.tensor_addrs]
    assert_disjoint(spans)


def test_not_initialized_is_failed():
    dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
    cache = Cache()
    assert dd.AllocateCache(seed_desc(), cache) == llmdd.LLM_FAILED
    assert cache.cache_id == -1 and cache.tensor_addrs == []
    assert dd.DeallocateCache(1) == llmdd.LLM_FAILED


def test_after_finalize_is_failed():
    dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    cache = dd.allocate_cache(seed_desc())
    dd.Finalize()
    assert dd.AllocateCache(seed_desc(), Cache()) == llmdd.LLM_FAILED
    assert dd.DeallocateCache(cache.cache_id) == llmdd.LLM_FAILED


def assert_param_invalid(engine, desc):
    cache = Cache()
    assert engine.AllocateCache(desc, cache) == llmdd.LLM_PARAM_INVALID
    assert cache.cache_id == -1 and cache.tensor_addrs == []


def test_zero_tensors_is_param_invalid(engine):
    assert_param_invalid(engine, CacheDesc(0, [1, 256], llmdd.DT_FLOAT16))


@pytest.mark.parametrize("placement", [llmdd.CachePlacement.kHost, 2, 2**32 - 1])
def test_placement_other_than_device_is_param_invalid(engine, placement):
    assert_param_invalid(engine, CacheDesc(80, [1, 256], llmdd.DT_FLOAT16, placement))


def test_empty_shape_is_param_invalid(engine):
    assert_param_invalid(engine, CacheDesc(80, [], llmdd.DT_FLOAT16))


def test_32_or_more_dims_is_param_invalid(engine):
    assert engine.AllocateCache(CacheDesc(1, [1] * 31, llmdd.DT_FLOAT16), Cache()) == llmdd.LLM_SUCCESS
    assert_param_invalid(engine, CacheDesc(1, [1] * 32, llmdd.DT_FLOAT16))
    assert_param_invalid(engine, CacheDesc(1, [1] * 100, llmdd.DT_FLOAT16))


@pytest.mark.parametrize("shape", [[0], [1, 0], [-1, 256], [256, -INT64_MAX - 1]])
def test_non_positive_dim_is_param_invalid(engine, shape):
    assert_param_invalid(engine, CacheDesc(80, shape, llmdd.DT_FLOAT16))


@pytest.mark.parametrize("data_type", [
    llmdd.DT_UNDEFINED, llmdd.DT_RESOURCE, llmdd.DT_VARIANT, llmdd.DT_DUAL, llmdd.DT_QINT8, 5, 43, -1, 1000,
])
def test_type_without_a_size_is_param_invalid(engine, data_type):
    assert_param_invalid(engine, CacheDesc(80, [1, 256], data_type))


@pytest.mark.parametrize("num_tensors,shape,data_type", [
    (1, [2**62, 2], llmdd.DT_FLOAT),          # elements fit uint64, bytes overflow int64
    (1, [2**32, 2**32], llmdd.DT_INT8),       # elements overflow uint64
    (1, [INT64_MAX, INT64_MAX, 2], llmdd.DT_INT8),
    (4, [2**61], llmdd.DT_INT8),              # each tensor fits, the cache does not
    (2**32 - 1, [2**32], llmdd.DT_INT8),
])
def test_byte_size_overflow_is_param_invalid(engine, num_tensors, shape, data_type):
    assert_param_invalid(engine, CacheDesc(num_tensors, shape, data_type))


def test_deallocate_unknown_id_is_kv_cache_not_exist(engine):
    for cache_id in (-1, 0, 1 << 40, INT64_MAX, -INT64_MAX - 1):
        assert engine.DeallocateCache(cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST


def test_deallocate_twice_is_kv_cache_not_exist(engine):
    cache = engine.allocate_cache(seed_desc())
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST


def test_deallocate_of_another_engines_cache_is_kv_cache_not_exist(engine):
    with llmdd.LlmDataDist(2, llmdd.LlmRole.kDecoder) as other:
        assert other.Initialize({"llm.DeviceId": "1"}) == llmdd.LLM_SUCCESS
        theirs = other.allocate_cache(seed_desc())
        assert engine.DeallocateCache(theirs.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST
        assert other.DeallocateCache(theirs.cache_id) == llmdd.LLM_SUCCESS


def test_a_cache_object_can_be_reused(engine):
    cache = Cache()
    assert engine.AllocateCache(seed_desc(), cache) == llmdd.LLM_SUCCESS
    first_id = cache.cache_id
    small = CacheDesc(2, [8], llmdd.DT_INT8)
    assert engine.AllocateCache(small, cache) == llmdd.LLM_SUCCESS
    assert cache.cache_id > first_id and len(cache.tensor_addrs) == 2 and cache.cache_desc == small
    assert engine.DeallocateCache(first_id) == llmdd.LLM_SUCCESS


def test_wrong_argument_types_raise_type_error(engine):
    with pytest.raises(TypeError):
        engine.AllocateCache(None, Cache())
    with pytest.raises(TypeError):
        engine.AllocateCache(seed_desc(), None)
    with pytest.raises(TypeError):
        engine.AllocateCache(Cache(), seed_desc())
    with pytest.raises(TypeError):
        engine.DeallocateCache("1")
    with pytest.raises(OverflowError):
        engine.DeallocateCache(2**63)


def test_caller_set_fields_of_a_cache():
    cache = Cache()
    cache.cache_id = 5
    cache.tensor_addrs = [0x1000, 0x2000]
    cache.cache_desc = CacheDesc(2, [16], llmdd.DT_INT8, llmdd.CachePlacement.kHost)
    assert cache.cache_id == 5 and cache.tensor_addrs == [0x1000, 0x2000]
    with pytest.raises(TypeError):
        cache.tensor_addrs = [1.5]
    with pytest.raises(ValueError):
        cache.tensor_addrs = [-1]
    with pytest.raises(TypeError):
        cache.cache_desc = {"num_tensors": 2}
    with pytest.raises(ValueError):
        cache.cache_id = 2**63
    assert cache.tensor_addrs == [0x1000, 0x2000]


def test_cache_manager_mode_numbers_each_engines_caches_from_one():
    # LLM-DataDist v2's cache engine counts cache ids per engine; v1's counter is process-wide.
    desc = CacheDesc(1, [1], llmdd.DT_INT8)
    with LlmDataDist(0, LlmRole.kPrompt) as first, LlmDataDist(1, LlmRole.kDecoder) as second:
        for engine in (first, second):
            assert engine.Initialize({"llm.EnableCacheManager": "1"}) == llmdd.LLM_SUCCESS
        assert [first.allocate_cache(desc).cache_id for _ in range(2)] == [1, 2]
        registered = Cache()
        assert second.RegisterKvCache(desc, [0x1000], registered) == llmdd.LLM_SUCCESS
        assert [registered.cache_id, second.allocate_cache(desc).cache_id] == [1, 2]
        first.Finalize()
        assert first.Initialize({"llm.EnableCacheManager": "1"}) == llmdd.LLM_SUCCESS
        assert first.allocate_cache(desc).cache_id == 3   # goes on: v2 would start again at 1
    with LlmDataDist(0, LlmRole.kPrompt) as v1, LlmDataDist(1, LlmRole.kPrompt) as v2:
        assert v1.Initialize({"llm.EnableCacheManager": "0"}) == llmdd.LLM_SUCCESS
        assert v2.Initialize({"llm.EnableCacheManager": "1"}) == llmdd.LLM_SUCCESS
        before = v1.allocate_cache(desc).cache_id
        assert v2.allocate_cache(desc).cache_id == 1        # takes nothing from the process's counter
        assert v1.allocate_cache(desc).cache_id == before + 1


def test_an_id_of_an_earlier_initialization_names_no_cache_of_this_one():
    # In cache-manager mode v2 numbers each initialization's caches from 1, so the id of a cache
    # kept from before a re-Initialize would name (and free) the new cache 1.
    desc = CacheDesc(1, [1], llmdd.DT_INT8)
    options = {"llm.EnableCacheManager": "1"}
    with LlmDataDist(0, LlmRole.kPrompt) as engine:
        assert engine.Initialize(options) == llmdd.LLM_SUCCESS
        allocated, registered = engine.allocate_cache(desc), Cache()
        assert engine.RegisterKvCache(desc, [0x1000], registered) == llmdd.LLM_SUCCESS
        engine.Finalize()
        assert engine.Initialize(options) == llmdd.LLM_SUCCESS
        current = [engine.allocate_cache(desc), Cache()]
        assert engine.RegisterKvCache(desc, [0x2000], current[1]) == llmdd.LLM_SUCCESS
        assert engine.DeallocateCache(allocated.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST
        assert engine.UnregisterKvCache(registered.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST
        with pytest.raises(llmdd.LLMException) as raised:
            engine.deallocate_cache(allocated)
        assert raised.value.status_code == llmdd.LLM_KV_CACHE_NOT_EXIST
        assert engine.memory_stats()["num_caches"] == 1
        assert engine.CopyKvCache(current[0], current[0]) == llmdd.LLM_SUCCESS
        assert engine.UnregisterKvCache(current[1].cache_id) == llmdd.LLM_SUCCESS


def test_an_engine_never_issues_a_cache_id_twice_when_its_mode_changes():
    desc = CacheDesc(1, [1], llmdd.DT_INT8)
    with LlmDataDist(0, LlmRole.kPrompt) as engine:
        assert engine.Initialize({"llm.EnableCacheManager": "0"}) == llmdd.LLM_SUCCESS
        from_the_process = engine.allocate_cache(desc).cache_id
        engine.Finalize()
        assert engine.Initialize({"llm.EnableCacheManager": "1"}) == llmdd.LLM_SUCCESS
        own = [engine.allocate_cache(desc).cache_id for _ in range(2)]
        assert own[0] > from_the_process
        engine.Finalize()
        assert engine.Initialize({"llm.EnableCacheManager": "0"}) == llmdd.LLM_SUCCESS
        assert engine.allocate_cache(desc).cache_id > own[1]


def test_a_cache_of_another_engine_names_none_of_this_ones():
    # Both count their own ids from 1: the other's Cache carries this one's id.
    desc = CacheDesc(1, [1], llmdd.DT_INT8)
    with LlmDataDist(0, LlmRole.kPrompt) as engine, LlmDataDist(1, LlmRole.kPrompt) as other:
        for each in (engine, other):
            assert each.Initialize({"llm.EnableCacheManager": "1"}) == llmdd.LLM_SUCCESS
        mine, theirs = engine.allocate_cache(desc), other.allocate_cache(desc)
        assert mine.cache_id == theirs.cache_id
        with pytest.raises(llmdd.LLMException) as raised:
            engine.deallocate_cache(theirs)
        assert raised.value.status_code == llmdd.LLM_KV_CACHE_NOT_EXIST
        assert engine.memory_stats()["num_caches"] == other.memory_stats()["num_caches"] == 1
        engine.deallocate_cache(mine)
