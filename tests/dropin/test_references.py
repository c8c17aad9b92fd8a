"""The drop-in's cache registry (issue #11, item 5): caches held by their id and by keys,
caches registered over memory the caller owns, and blocks caches; memory_stats before and after."""
import numpy
import pytest

from llmdd.llm_datadist import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    DataType,
    LLMException,
    LLMStatusCode,
    Placement,
)

DESC = CacheDesc(2, [4, 64], DataType.DT_INT8)          # 2 tensors of 4 blocks of 64 bytes


def held(datadist):
    stats = datadist._engine.memory_stats()
    return stats["num_caches"], stats["bytes_in_use"]


def raises_status(status, call, *args):
    with pytest.raises(LLMException) as raised:
        call(*args)
    assert raised.value.status_code is status
    return raised.value


@pytest.mark.parametrize("order", ["id first", "keys first"])
def test_a_keyed_cache_is_freed_when_its_last_reference_goes(datadist_v2, order):
    manager = datadist_v2.cache_manager
    keys = [CacheKey(7, req_id=1), CacheKey(7, req_id=2)]
    cache = manager.allocate_cache(CacheDesc(2, [2, 64], DataType.DT_INT8), keys)
    one_cache = held(datadist_v2)
    assert one_cache[0] == 1 and one_cache[1] > 0
    drops = ([lambda: manager.deallocate_cache(cache)] + [lambda key=key: manager.remove_cache_key(key) for key in keys])
    if order == "keys first":
        drops.reverse()
    for drop in drops[:-1]:
        drop()
        assert held(datadist_v2) == one_cache            # still held by what is left
    drops[-1]()
    assert held(datadist_v2) == (0, 0)


def key_refused(call, *args):
    # v2's cache manager answers LLM_PARAM_INVALID for a key already bound, a key given twice
    # and more keys than batch entries.
    raises_status(LLMStatusCode.LLM_PARAM_INVALID, call, *args)


def test_a_key_names_one_cache_at_a_time(datadist_v2):
    manager = datadist_v2.cache_manager
    key = CacheKey(7, req_id=1)
    cache = manager.allocate_cache(DESC, [key])
    before = held(datadist_v2)
    key_refused(manager.allocate_cache, DESC, [key])
    key_refused(manager.allocate_cache, DESC, [CacheKey(8, req_id=1)])     # the cluster id names no local cache
    key_refused(manager.allocate_cache, DESC, [CacheKey(7, req_id=5), CacheKey(7, req_id=5)])
    key_refused(manager.allocate_cache, DESC, [CacheKey(7, req_id=n) for n in range(10, 15)])   # 5 keys, 4 entries
    other_model = CacheKey(7, req_id=1, model_id=1)
    manager.deallocate_cache(manager.allocate_cache(DESC, [other_model]))   # another model: another name
    manager.remove_cache_key(other_model)
    blocks_key = BlocksCacheKey(7, 0)
    blocks = manager.allocate_blocks_cache(DESC, blocks_key)
    key_refused(manager.allocate_blocks_cache, DESC, blocks_key)
    manager.deallocate_blocks_cache(blocks)               # a BlocksCacheKey is a name, not a reference
    assert held(datadist_v2) == before                    # the refusals allocated nothing
    manager.deallocate_blocks_cache(manager.allocate_blocks_cache(DESC, blocks_key))   # the name is free again
    manager.remove_cache_key(key)
    manager.allocate_cache(DESC, [key])                   # free again once removed
    manager.deallocate_cache(cache)


def test_releasing_what_is_gone_is_a_no_op(datadist_v2):
    # As in v2's cache manager: a second deallocate, an unknown key or id change nothing.
    manager = datadist_v2.cache_manager
    key, other = CacheKey(7, req_id=1), manager.allocate_cache(DESC)
    cache = manager.allocate_cache(DESC, [key])
    manager.deallocate_cache(cache)
    manager.deallocate_cache(cache)
    assert held(datadist_v2)[0] == 2                      # still held by its key
    manager.remove_cache_key(key)
    manager.remove_cache_key(key)
    manager.remove_cache_key(CacheKey(7, req_id=99))
    manager.unregister_cache(12345)
    assert held(datadist_v2)[0] == 1
    manager.deallocate_cache(other)
    assert held(datadist_v2) == (0, 0)


def test_blocks_caches_and_whole_caches_are_freed_by_their_own_calls(datadist_v2):
    manager = datadist_v2.cache_manager
    blocks, whole = manager.allocate_blocks_cache(DESC), manager.allocate_cache(DESC)
    assert blocks.is_blocks_cache and not whole.is_blocks_cache
    raises_status(LLMStatusCode.LLM_PARAM_INVALID, manager.deallocate_cache, blocks)
    raises_status(LLMStatusCode.LLM_PARAM_INVALID, manager.deallocate_blocks_cache, whole)
    manager.deallocate_blocks_cache(blocks)
    manager.deallocate_cache(whole)
    assert held(datadist_v2) == (0, 0)


def numpy_tensors(count=2, blocks=4, block_bytes=64, fill=0):
    memory = numpy.full((count, blocks, block_bytes), fill, numpy.uint8)
    return memory, [int(memory[i].ctypes.data) for i in range(count)]


@pytest.mark.sim_only  # host memory stands for device memory only on the sim build
def test_registered_numpy_memory_is_used_in_place_by_copies_and_swaps(datadist_v2):
    manager = datadist_v2.cache_manager
    memory, addrs = numpy_tensors()
    memory[:, 0] = numpy.arange(64, dtype=numpy.uint8)
    memory[:, 1] = 0xAB
    snapshot = memory.copy()
    cache = manager.register_blocks_cache(DESC, addrs, BlocksCacheKey(7, 0))
    assert cache.is_blocks_cache and cache.tensor_addrs == addrs
    assert numpy.array_equal(memory, snapshot)            # registering touches nothing
    assert held(datadist_v2) == (0, 0)                    # and allocates nothing
    manager.copy_blocks(cache, {0: [2, 3]})
    assert numpy.array_equal(memory[:, 2], snapshot[:, 0]) and numpy.array_equal(memory[:, 3], snapshot[:, 0])
    host_memory, host_addrs = numpy_tensors()
    host = Cache.create_cpu_cache(CacheDesc(2, [4, 64], DataType.DT_INT8, Placement.HOST), host_addrs)
    manager.swap_blocks(cache, host, {1: 0})              # out: device to host
    assert (host_memory[:, 0] == 0xAB).all()
    host_memory[:, 2] = 0x5C
    manager.swap_blocks(host, cache, {2: 0})              # in: host to device
    assert (memory[:, 0] == 0x5C).all()
    manager.unregister_cache(cache.cache_id)
    assert (memory[:, 0] == 0x5C).all() and (memory[:, 1] == 0xAB).all()   # unregistering frees nothing
    raises_status(LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, manager.copy_blocks, cache, {0: [1]})
    manager.register_blocks_cache(DESC, addrs, BlocksCacheKey(7, 0))       # its key went with it


@pytest.mark.sim_only  # host memory stands for device memory only on the sim build
def test_registered_and_allocated_caches_copy_into_each_other(datadist_v2):
    manager = datadist_v2.cache_manager
    memory, addrs = numpy_tensors(fill=0x11)
    registered = manager.register_cache(DESC, addrs, [CacheKey(7, req_id=1)])
    allocated = manager.allocate_cache(DESC)
    manager.copy_cache(allocated, registered, dst_batch_index=3, src_batch_index=1)
    memory[:] = 0
    manager.copy_cache(registered, allocated, dst_batch_index=0, src_batch_index=3)
    assert (memory[:, 0] == 0x11).all() and (memory[:, 1:] == 0).all()
    raises_status(LLMStatusCode.LLM_PARAM_INVALID, manager.unregister_cache, allocated.cache_id)
    manager.deallocate_cache(registered)                  # v2 leaves a registered cache alone
    manager.remove_cache_key(CacheKey(7, req_id=1))       # and its keys
    manager.copy_cache(registered, allocated, dst_batch_index=1, src_batch_index=3)
    manager.unregister_cache(registered.cache_id)
    manager.deallocate_cache(allocated)
    assert held(datadist_v2) == (0, 0)


def test_registration_checks_its_arguments(datadist_v2):
    manager = datadist_v2.cache_manager
    _, addrs = numpy_tensors()
    for call, error in [
        (lambda: manager.register_cache("desc", addrs), TypeError),
        (lambda: manager.register_cache(DESC, tuple(addrs)), TypeError),
        (lambda: manager.register_cache(DESC, addrs, [BlocksCacheKey(1)]), TypeError),
        (lambda: manager.register_cache(DESC, addrs, remote_accessible="yes"), TypeError),
        (lambda: manager.register_blocks_cache(DESC, addrs, CacheKey(1, 2)), TypeError),
        (lambda: manager.register_cache(DESC, [-1, 1]), ValueError),
        (lambda: manager.register_cache(DESC, []), LLMException),
        (lambda: manager.register_cache(DESC, addrs[:1]), LLMException),
        (lambda: manager.register_cache(DESC, [addrs[0], 0]), LLMException),
        (lambda: manager.unregister_cache("1"), TypeError),
        (lambda: manager.unregister_cache(2**63), ValueError),
        (lambda: manager.remove_cache_key(BlocksCacheKey(1)), TypeError),
        (lambda: manager.allocate_blocks_cache(DESC, CacheKey(1, 2)), TypeError),
        (lambda: manager.deallocate_blocks_cache("cache"), TypeError),
    ]:
        with pytest.raises(error):
            call()
    assert held(datadist_v2) == (0, 0)


def test_the_registry_methods_refuse_after_finalize(datadist_v2):
    manager = datadist_v2.cache_manager
    _, addrs = numpy_tensors()
    cache = manager.register_cache(DESC, addrs)
    datadist_v2.finalize()
    for call in (lambda: manager.register_cache(DESC, addrs), lambda: manager.unregister_cache(cache.cache_id),
                 lambda: manager.allocate_blocks_cache(DESC), lambda: manager.deallocate_blocks_cache(cache),
                 lambda: manager.remove_cache_key(CacheKey(1, 2))):
        raises_status(LLMStatusCode.LLM_FAILED, call)


def test_v1_kv_cache_manager_keeps_key_references_too(datadist_v1):
    manager = datadist_v1.kv_cache_manager
    key = CacheKey(7, req_id=1)
    cache = manager.allocate_cache(DESC, [key])
    manager.deallocate_cache(cache)
    assert held(datadist_v1)[0] == 1
    manager.remove_cache_key(key)
    assert held(datadist_v1) == (0, 0)
