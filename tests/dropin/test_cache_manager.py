"""The drop-in's CacheDesc, Cache and cache managers: CANN's argument checks, allocation through
the engine, copies, the transfer types, and what is not implemented yet."""
import numpy
import pytest
from support.dropin import POOL, initialized, options

import llmdd
from llmdd.llm_datadist import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    CacheTask,
    DataType,
    KvCache,
    LayerSynchronizer,
    LLMException,
    LLMStatusCode,
    MemInfo,
    Memtype,
    Placement,
    TransferConfig,
    TransferWithCacheKeyConfig,
)

NOT_ENABLED = LLMStatusCode.LLM_FEATURE_NOT_ENABLED


def test_cache_desc_defaults_and_properties():
    desc = CacheDesc(4, [2, 16, 8, 128], DataType.DT_FLOAT16)
    assert desc.placement is Placement.DEVICE and desc.data_type is DataType.DT_FLOAT16
    assert (desc.batch_dim_index, desc.batch_dim, desc.batch_size, desc.seq_len_dim_index) == (0, 0, 2, -1)
    assert desc.size == 2 * 16 * 8 * 128 * 2 and desc.kv_tensor_format is None
    desc.update_dim(1, 32)
    assert desc.shape == [2, 32, 8, 128] and desc.size == 2 * 32 * 8 * 128 * 2
    assert CacheDesc(1, [1], DataType.DT_INT8, Placement.HOST, 0, -1, "ND").kv_tensor_format == "ND"


@pytest.mark.parametrize("arguments,error", [
    (("4", [1], DataType.DT_INT8), TypeError),
    ((4.0, [1], DataType.DT_INT8), TypeError),
    ((-1, [1], DataType.DT_INT8), ValueError),
    ((2**32, [1], DataType.DT_INT8), ValueError),
    ((1, "1", DataType.DT_INT8), TypeError),
    ((1, [1.0], DataType.DT_INT8), TypeError),
    ((1, [2**63], DataType.DT_INT8), ValueError),
    ((1, [1], 1), TypeError),
    ((1, [1], llmdd.DataType.DT_INT8), TypeError),
    ((1, [1], DataType.DT_INT8, 1), TypeError),
    ((1, [1], DataType.DT_INT8, Placement.DEVICE, 1), LLMException),
    ((1, [], DataType.DT_INT8), LLMException),
    ((1, [1, 2], DataType.DT_INT8, Placement.DEVICE, 0, 2), LLMException),
    ((1, [1, 2], DataType.DT_INT8, Placement.DEVICE, 0, -2), LLMException),
    ((1, [1, 2], DataType.DT_INT8, Placement.DEVICE, 0, 2**64 - 1), ValueError),
    ((1, [1], DataType.DT_INT8, Placement.DEVICE, 0, -1, 5), TypeError),
])
def test_cache_desc_argument_checks(arguments, error):
    with pytest.raises(error):
        CacheDesc(*arguments)


def test_v2_cache_manager_allocates_from_the_pool_and_frees(datadist_v2):
    desc = CacheDesc(8, [4, 16], DataType.DT_BF16)
    key = CacheKey(prompt_cluster_id=0, req_id=7)
    cache = datadist_v2.cache_manager.allocate_cache(desc, cache_keys=[key])
    assert type(cache) is Cache and len(cache.tensor_addrs) == 8 and not cache.is_blocks_cache
    assert cache.cache_desc is desc and cache.cache_id > 0
    datadist_v2.cache_manager.deallocate_cache(cache)
    datadist_v2.cache_manager.deallocate_cache(cache)     # v2: a no-op; the key still holds the cache
    assert datadist_v2._engine.memory_stats()["num_caches"] == 1
    datadist_v2.cache_manager.remove_cache_key(key)
    assert datadist_v2._engine.memory_stats()["num_caches"] == 0


def test_v2_allocation_needs_the_pool_of_its_placement():
    datadist = initialized(enable_cache_manager=True)
    try:
        with pytest.raises(LLMException, match="llm.MemPoolConfig"):
            datadist.cache_manager.allocate_cache(CacheDesc(1, [1], DataType.DT_INT8))
        with pytest.raises(LLMException, match="llm.HostMemPoolConfig"):
            datadist.cache_manager.allocate_cache(CacheDesc(1, [1], DataType.DT_INT8, Placement.HOST))
    finally:
        datadist.finalize()


def test_v1_kv_cache_manager_gives_per_device_addresses(datadist_v1):
    cache = datadist_v1.kv_cache_manager.allocate_cache(CacheDesc(2, [1, 8], DataType.DT_INT8))
    assert type(cache) is KvCache and cache.per_device_tensor_addrs == [cache.tensor_addrs]
    datadist_v1.kv_cache_manager.deallocate_cache(cache)


@pytest.mark.parametrize("call,error", [
    (lambda manager: manager.allocate_cache(CacheDesc(0, [1], DataType.DT_INT8)), LLMException),
    (lambda manager: manager.allocate_cache(CacheDesc(1, [1], DataType.DT_INT8), cache_keys=["key"]), TypeError),
    (lambda manager: manager.allocate_cache(CacheDesc(1, [1], DataType.DT_INT8), [BlocksCacheKey(0)]), TypeError),
    (lambda manager: manager.allocate_cache("desc"), TypeError),
    (lambda manager: manager.allocate_cache(llmdd.CacheDesc(1, [1], llmdd.DT_INT8)), TypeError),
    (lambda manager: manager.deallocate_cache(1), TypeError),
    (lambda manager: manager.copy_cache("dst", "src"), TypeError),
    (lambda manager: manager.copy_blocks("cache", {0: [1]}), TypeError),
    (lambda manager: manager.swap_blocks("src", "dst", {0: 1}), TypeError),
])
def test_cache_manager_argument_checks(datadist_v2, call, error):
    with pytest.raises(error):
        call(datadist_v2.cache_manager)


@pytest.mark.sim_only  # reads device memory from the host
def test_copy_cache_checks_then_copies(datadist_v2):
    manager = datadist_v2.cache_manager
    desc = CacheDesc(2, [2, 8], DataType.DT_INT8)
    src, dst = manager.allocate_cache(desc), manager.allocate_cache(desc)
    numpy.asarray(src.tensor(1))[1] = 7
    for arguments, error in (((-1,), ValueError), ((0, 0, 0, 0), LLMException), ((0, 0, -1), ValueError),
                             ((0, 0, 0, -1, 2**64), ValueError)):
        with pytest.raises(error):
            manager.copy_cache(dst, src, *arguments)
    manager.copy_cache(dst, src, 0, 1, req_id=5)
    assert list(numpy.asarray(dst.tensor(1))[0]) == [7] * 8
    manager.deallocate_cache(src)
    manager.deallocate_cache(dst)


def test_v2_block_operations_need_blocks_caches(datadist_v2):
    manager = datadist_v2.cache_manager
    cache = manager.allocate_cache(CacheDesc(1, [4, 8], DataType.DT_INT8))
    with pytest.raises(LLMException, match="blocks cache"):
        manager.copy_blocks(cache, {0: [1]})
    host = Cache.create_cpu_cache(CacheDesc(1, [4, 8], DataType.DT_INT8, Placement.HOST), [0x1000])
    assert host.is_blocks_cache  # CANN's CPU caches are blocks caches
    with pytest.raises(LLMException, match="blocks cache"):
        manager.swap_blocks(cache, host, {0: 0})
    with pytest.raises(LLMException, match="not be a blocks cache"):
        manager.deallocate_cache(host)
    manager.deallocate_cache(cache)


@pytest.mark.sim_only  # reads device memory from the host
def test_v1_copy_blocks_and_swap_blocks_work_on_allocated_caches(datadist_v1):
    manager = datadist_v1.kv_cache_manager
    cache = manager.allocate_cache(CacheDesc(1, [4, 8], DataType.DT_INT8))
    blocks = numpy.asarray(cache.tensor(0))
    blocks[0] = 3
    manager.copy_blocks(cache, {0: [1, 2]})
    assert blocks[1:3].tolist() == [[3] * 8] * 2
    with pytest.raises(TypeError):
        manager.copy_blocks(cache, {0: 1})
    host_memory = numpy.zeros((4, 8), numpy.int8)
    host = KvCache.create_cpu_cache(CacheDesc(1, [4, 8], DataType.DT_INT8, Placement.HOST),
                                    [host_memory.ctypes.data])
    manager.swap_blocks(cache, host, {2: 3})
    assert host_memory[3].tolist() == [3] * 8
    with pytest.raises(LLMException):
        manager.swap_blocks(cache, host, {4: 0})
    manager.deallocate_cache(cache)


def test_create_cpu_cache_checks_its_arguments():
    host_desc = CacheDesc(2, [4], DataType.DT_INT8, Placement.HOST)
    with pytest.raises(LLMException):
        Cache.create_cpu_cache(CacheDesc(2, [4], DataType.DT_INT8), [1, 2])
    with pytest.raises(LLMException):
        Cache.create_cpu_cache(host_desc, [1])
    with pytest.raises(TypeError):
        Cache.create_cpu_cache(host_desc, (1, 2))
    assert Cache.create_cpu_cache(host_desc, [0x1000, 0x2000]).tensor_addrs == [0x1000, 0x2000]


def test_a_finalized_llmdatadists_manager_refuses_every_call(datadist_v2):
    manager = datadist_v2.cache_manager
    cache = manager.allocate_cache(CacheDesc(1, [1], DataType.DT_INT8))
    datadist_v2.finalize()
    for call in (lambda: manager.allocate_cache(CacheDesc(1, [1], DataType.DT_INT8)),
                 lambda: manager.deallocate_cache(cache), lambda: manager.copy_cache(cache, cache),
                 lambda: manager.pull_cache(CacheKey(0, 1), cache)):
        with pytest.raises(LLMException, match="finalized") as raised:
            call()
        assert raised.value.status_code is LLMStatusCode.LLM_FAILED


V2_SETTINGS = {"enable_cache_manager": True, "mem_pool_cfg": POOL, "host_mem_pool_cfg": POOL}


def allocate_and_deallocate(manager, blocks):
    if blocks:
        return manager.allocate_blocks_cache, manager.deallocate_blocks_cache
    return manager.allocate_cache, manager.deallocate_cache


@pytest.mark.parametrize("blocks", [False, True])
def test_a_cache_of_an_earlier_initialization_names_no_cache_of_this_one(blocks):
    # v2 numbers each initialization's caches from 1: the old Cache's id would be the new cache's.
    desc = CacheDesc(1, [2, 8], DataType.DT_INT8)
    datadist = initialized(**V2_SETTINGS)
    try:
        allocate, _ = allocate_and_deallocate(datadist.cache_manager, blocks)
        stale = allocate(desc)
        datadist.finalize()
        datadist.init(options(**V2_SETTINGS))
        manager = datadist.cache_manager
        allocate, deallocate = allocate_and_deallocate(manager, blocks)
        current = allocate(desc)
        deallocate(stale)   # as for any cache that is not there: nothing happens, no exception
        assert datadist._engine.memory_stats()["num_caches"] == 1
        with pytest.raises(LLMException) as raised:
            if blocks:
                manager.pull_blocks(BlocksCacheKey(1), stale, [0], [0])
            else:
                manager.pull_cache(CacheKey(1, 1), stale)
        assert raised.value.status_code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        deallocate(current)
        assert datadist._engine.memory_stats()["num_caches"] == 0
    finally:
        datadist.finalize()


def test_a_cache_of_another_llmdatadist_names_no_cache_of_this_one():
    desc = CacheDesc(1, [2, 8], DataType.DT_INT8)
    first = initialized(**V2_SETTINGS)
    stale = first.cache_manager.allocate_cache(desc)
    first.finalize()
    second = initialized(**V2_SETTINGS)
    try:
        current = second.cache_manager.allocate_cache(desc)
        assert current.cache_id == stale.cache_id   # each LLMDataDist numbers its caches from 1
        second.cache_manager.deallocate_cache(stale)
        assert second._engine.memory_stats()["num_caches"] == 1
    finally:
        second.finalize()


class Synchronizer(LayerSynchronizer):
    def synchronize_layer(self, layer_index, timeout_in_millis):
        return True


@pytest.mark.parametrize("call,error", [
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2, prefix_id=3), cache), LLMException),
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2), cache, size=0), LLMException),
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2), blocks), LLMException),
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2), cache, tensor_num_per_layer=-1), ValueError),
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2), cache, tensor_num_per_layer=0), LLMException),
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2), cache, tensor_num_per_layer=1.0), TypeError),
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2), cache, src_layer_range=range(0, 4, 2)),
     LLMException),
    (lambda manager, cache, blocks: manager.pull_cache(CacheKey(1, 2), cache, layer_range=range(1)), TypeError),
    (lambda manager, cache, blocks: manager.pull_blocks(BlocksCacheKey(1), blocks, [], [0]), LLMException),
    (lambda manager, cache, blocks: manager.pull_blocks(CacheKey(1, 2), blocks, [0], [0]), LLMException),
    (lambda manager, cache, blocks: manager.pull_blocks(BlocksCacheKey(1), blocks, [0], []), LLMException),
    (lambda manager, cache, blocks: manager.pull_blocks(BlocksCacheKey(1), cache, [0], [0]), LLMException),
    (lambda manager, cache, blocks: manager.push_cache(CacheKeyByIdAndIndex(1, 1), cache), LLMException),
    (lambda manager, cache, blocks: manager.push_blocks(BlocksCacheKey(1), blocks, [0], [0]), LLMException),
    (lambda manager, cache, blocks: manager.transfer_cache_async(None, Synchronizer(), []), TypeError),
    (lambda manager, cache, blocks: manager.transfer_cache_async(cache, None, []), TypeError),
    (lambda manager, cache, blocks: manager.transfer_cache_async(blocks, Synchronizer(), []), LLMException),
    (lambda manager, cache, blocks: manager.transfer_cache_async(cache, Synchronizer(), [], [0], None), LLMException),
    (lambda manager, cache, blocks: manager.remap_registered_memory("some value"), TypeError),
    (lambda manager, cache, blocks: manager.remap_registered_memory(MemInfo(Memtype.MEM_TYPE_HOST, 1, 1)),
     LLMException),
    (lambda manager, cache, blocks: manager.remap_registered_memory([MemInfo(Memtype.MEM_TYPE_DEVICE, 0, 1)]),
     LLMException),
])
def test_transfer_calls_check_their_arguments_first(datadist_v2, call, error):
    manager = datadist_v2.cache_manager
    cache = manager.allocate_cache(CacheDesc(2, [2, 8], DataType.DT_INT8))
    blocks = Cache.create_cpu_cache(CacheDesc(2, [2, 8], DataType.DT_INT8, Placement.HOST), [0x1000, 0x2000])
    with pytest.raises(error) as raised:
        call(manager, cache, blocks)
    assert getattr(raised.value, "status_code", None) is not NOT_ENABLED
    manager.deallocate_cache(cache)


def test_transfer_configs_check_their_fields():
    config = TransferConfig(1, [0x1000, 0x2000], range(0, 2), 1)
    assert (config.dst_cluster_id, config.dst_addrs, config.src_layer_range, config.src_batch_index) == (
        1, [0x1000, 0x2000], range(0, 2), 1)
    with pytest.raises(ValueError):
        config.dst_cluster_id = -1
    with pytest.raises(LLMException):
        config.src_layer_range = range(2, 1)
    keyed = TransferWithCacheKeyConfig(CacheKeyByIdAndIndex(2, 5), range(0, 1), range(1, 2), 3)
    assert (keyed.dst_cluster_id, keyed.src_batch_index) == (2, 3)
    with pytest.raises(LLMException):
        TransferWithCacheKeyConfig(BlocksCacheKey(2), range(0, 1), range(0, 1), 1)
    with pytest.raises(LLMException):
        TransferWithCacheKeyConfig(BlocksCacheKey(2), range(0, 1), range(0, 2))
    with pytest.raises(TypeError):
        TransferWithCacheKeyConfig(CacheKey(2, 1), range(0, 1), range(0, 1))
    with pytest.raises(TypeError):
        TransferWithCacheKeyConfig(BlocksCacheKey(2), None, range(0, 1))


def test_mem_info_and_cache_task():
    info = MemInfo(Memtype.MEM_TYPE_DEVICE, 0x1000, 64)
    assert (info.mem_type, info.addr, info.size) == (Memtype.MEM_TYPE_DEVICE, 0x1000, 64)
    with pytest.raises(TypeError):
        MemInfo(0, 0x1000, 64)

    class Finished:
        def get(self, timeout):
            return LLMStatusCode.LLM_SUCCESS, timeout

        def get_results(self, timeout):
            return [timeout]

    task = CacheTask(Finished())
    assert task.synchronize(1500) == (LLMStatusCode.LLM_SUCCESS, 1.5) and task.get_results() == [None]
    with pytest.raises(ValueError):
        task.synchronize(-1)


def test_vllm_ascend_connector_allocation_flow(datadist_v1):
    # The allocation flow of vLLM-Ascend's original LLM-DataDist connector: one cache of
    # num_layers tensors of (1, num_tokens, kv_heads, head_dim) fp16 per request, viewed as
    # tensors, filled layer by layer, and freed.
    num_layers, num_tokens, kv_heads, head_dim = 4, 32, 8, 64
    desc = CacheDesc(num_layers, (1, num_tokens, kv_heads, head_dim), DataType.DT_FLOAT16, seq_len_dim_index=1)
    if not llmdd.SIMULATED:  # on an NPU build, view a host cache instead
        pytest.skip("device memory cannot be viewed from the host")
    cache = datadist_v1.kv_cache_manager.allocate_cache(desc, [CacheKey(0, req_id=42)])
    layers = [numpy.asarray(cache.tensor(layer)) for layer in range(num_layers)]
    for layer, kv in enumerate(layers):
        assert kv.shape == (1, num_tokens, kv_heads, head_dim) and kv.dtype == numpy.float16
        kv[:] = layer + 0.5
    assert [float(kv[0, num_tokens - 1, 0, 0]) for kv in layers] == [0.5, 1.5, 2.5, 3.5]
    del layers
    datadist_v1.kv_cache_manager.deallocate_cache(cache)
