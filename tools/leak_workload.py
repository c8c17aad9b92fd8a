"""A workload for the leak check (tools/leak-check.sh): every path that allocates host memory in
llmdd — engines, caches, pools, views, DLPack capsules, copies, failures, finalize with live
exports, re-initialization — run several times, ending with nothing alive."""
import ctypes
import gc

import llmdd
import llmdd.llm_datadist as llm_datadist
import llmdd.sim

POOLS = {"llm.MemPoolConfig": '{"memory_size": 16777216}', "llm.HostMemPoolConfig": '{"memory_size": 4194304}'}


def one_round(options):
    dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
    assert dd.Initialize(options) == llmdd.LLM_SUCCESS
    desc = llmdd.CacheDesc(4, [8, 64], llmdd.DT_FLOAT16)
    caches = [dd.allocate_cache(desc) for _ in range(20)]
    host_memory = ctypes.create_string_buffer(4 * desc.size)
    base = ctypes.addressof(host_memory)
    host = llmdd.Cache.create_cpu_cache(llmdd.CacheDesc(4, [8, 64], llmdd.DT_FLOAT16, llmdd.CachePlacement.kHost),
                                        [base + i * desc.size for i in range(4)])
    dd.copy_blocks(caches[0], host, [0, 1], [[0, 1]])
    dd.copy_blocks(host, caches[1], [0, 1], [[5, 6]])
    dd.copy_blocks(caches[0], caches[1], [0, 1, 5], [[2, 3, 4]])
    dd.copy_cache(caches[2], caches[3], 1, 2)
    views = [memoryview(cache.tensor(0)) for cache in caches[:5]]
    capsule = caches[5].tensor(1).__dlpack__()
    del capsule
    llmdd.sim.inject_failure("aclrtMemcpy", 2, 500000)
    dd.CopyKvBlocks(caches[0], caches[1], [0], [[6]])
    dd.AllocateCache(llmdd.CacheDesc(0, [1], llmdd.DT_INT8), llmdd.Cache())
    dd.DeallocateCache(123456789)
    for cache in caches[5:15]:
        dd.deallocate_cache(cache)
    dd.Finalize()                      # caches 0..4 are still exported: pending
    del views
    gc.collect()
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    dd.Finalize()
    del dd, caches, host, host_memory


def drop_in_round():
    # Cache-manager mode: keyed, blocks and registered caches through the registry.
    datadist = llm_datadist.LLMDataDist(llm_datadist.LLMRole.PROMPT, 0)
    config = llm_datadist.LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.mem_pool_cfg = '{"memory_size": 1048576}'
    datadist.init(config.generate_options())
    manager = datadist.cache_manager
    desc = llm_datadist.CacheDesc(2, [4, 8], llm_datadist.DataType.DT_INT8)
    key = llm_datadist.CacheKey(0, 1)
    cache = manager.allocate_cache(desc, [key])
    manager.deallocate_cache(cache)
    manager.remove_cache_key(key)
    blocks = manager.allocate_blocks_cache(desc, llm_datadist.BlocksCacheKey(0, 0))
    manager.copy_blocks(blocks, {0: [1]})
    memory = ctypes.create_string_buffer(2 * desc.size)
    registered = manager.register_blocks_cache(desc, [ctypes.addressof(memory), ctypes.addressof(memory) + desc.size])
    manager.copy_blocks(registered, {1: [2]})
    manager.unregister_cache(registered.cache_id)
    manager.allocate_cache(desc, [llm_datadist.CacheKey(0, 2)])    # left to finalize
    datadist.finalize()


for _ in range(5):
    one_round({})
    one_round(POOLS)
    drop_in_round()
engine = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)   # dropped without Finalize
engine.Initialize({})
engine.allocate_cache(llmdd.CacheDesc(1, [16], llmdd.DT_INT8))
del engine
gc.collect()
print("leak workload done")
