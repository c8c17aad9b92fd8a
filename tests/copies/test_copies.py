"""Host caches and cache copies: CopyKvCache and CopyKvBlocks (docs/facts.md section 4), checked against
numpy, and the drop-in's copy_cache, copy_blocks and swap_blocks."""
import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmdd
import llmdd.sim
from llmdd import Cache, CacheDesc, CachePlacement, LlmDataDist, LlmRole

HOST = CachePlacement.kHost


class HostCache:
    """A caller-owned host cache: numpy memory wrapped with Cache.create_cpu_cache."""

    def __init__(self, num_tensors, shape, data_type=llmdd.DT_INT8, fill=0):
        self.desc = CacheDesc(num_tensors, shape, data_type, HOST)
        self.memory = numpy.full((num_tensors, self.desc.size), fill, numpy.uint8)
        self.cache = Cache.create_cpu_cache(self.desc, [row.ctypes.data for row in self.memory])

    def blocks(self, tensor):
        return self.memory[tensor].reshape(self.desc.shape[0], -1)


def fill_device(engine, desc, seed, cache=None):
    """A device cache (new, or `cache`) whose bytes are a pattern numbered by seed, copied in
    from the host."""
    cache = engine.allocate_cache(desc) if cache is None else cache
    host = HostCache(desc.num_tensors, desc.shape, desc.data_type)
    host.memory[:] = numpy.random.default_rng(seed).integers(0, 256, host.memory.shape, numpy.uint8)
    engine.copy_blocks(host.cache, cache, list(range(desc.shape[0])), [list(range(desc.shape[0]))])
    return cache, host.memory.copy()


def read_device(engine, cache, desc):
    host = HostCache(desc.num_tensors, desc.shape, desc.data_type)
    engine.copy_blocks(cache, host.cache, list(range(desc.shape[0])), [list(range(desc.shape[0]))])
    return host.memory


def test_create_cpu_cache_checks_what_it_can():
    desc = CacheDesc(2, [4], llmdd.DT_INT8, HOST)
    cache = Cache.create_cpu_cache(desc, [0x1000, 0x2000])
    assert cache.tensor_addrs == [0x1000, 0x2000] and cache.cache_desc == desc and cache.cache_id == -1
    with pytest.raises(ValueError, match="2 tensors"):
        Cache.create_cpu_cache(desc, [0x1000])
    with pytest.raises(ValueError, match="0"):
        Cache.create_cpu_cache(desc, [0x1000, 0])
    with pytest.raises(ValueError, match="kHost"):
        Cache.create_cpu_cache(CacheDesc(2, [4], llmdd.DT_INT8), [1, 2])
    with pytest.raises(TypeError):
        Cache.create_cpu_cache(desc, [1.0, 2.0])


def test_swap_out_and_in_restores_the_bytes_exactly(engine):
    desc = CacheDesc(4, [16, 8, 32], llmdd.DT_FLOAT16)
    cache, original = fill_device(engine, desc, seed=1)
    swap = HostCache(4, [16, 8, 32], llmdd.DT_FLOAT16)
    blocks = [3, 4, 5, 9, 15]
    engine.copy_blocks(cache, swap.cache, blocks, [[0, 1, 2, 3, 4]])          # swap out
    fresh, _ = fill_device(engine, desc, seed=2)
    engine.copy_blocks(swap.cache, fresh, [0, 1, 2, 3, 4], [blocks])          # swap in
    restored = read_device(engine, fresh, desc).reshape(4, 16, -1)
    assert numpy.array_equal(restored[:, blocks], original.reshape(4, 16, -1)[:, blocks])


block_cases = st.integers(2, 12).flatmap(lambda batch: st.tuples(
    st.just(batch),
    st.lists(st.integers(0, batch - 1), min_size=1, max_size=batch, unique=True),
    st.integers(1, 3),
    st.sampled_from(["d2d", "d2h", "h2d"]),
    st.integers(0, 2**32),
))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=block_cases)
def test_copy_kv_blocks_matches_numpy(engine, case):
    batch, dst_targets, copies, direction, seed = case
    rng = numpy.random.default_rng(seed)
    count = len(dst_targets)
    src_blocks = rng.integers(0, batch, count).tolist()
    # Destination lists: disjoint, as the rules ask.
    free = [block for block in range(batch)]
    rng.shuffle(free)
    copies = min(copies, batch // count)
    dst_lists = [free[k * count:(k + 1) * count] for k in range(copies)]
    desc = CacheDesc(3, [batch, 5, 7], llmdd.DT_INT16)
    if direction == "h2d":
        src = HostCache(3, [batch, 5, 7], llmdd.DT_INT16)
        src.memory[:] = rng.integers(0, 256, src.memory.shape, numpy.uint8)
        src_cache, src_bytes = src.cache, src.memory.copy()
    else:
        src_cache, src_bytes = fill_device(engine, desc, seed)
    if direction == "d2h":
        dst = HostCache(3, [batch, 5, 7], llmdd.DT_INT16)
        dst_cache = dst.cache
    else:
        dst_cache, _ = fill_device(engine, desc, seed + 1)
    expected = (dst.memory if direction == "d2h" else read_device(engine, dst_cache, desc)).reshape(3, batch, -1).copy()
    for dst_blocks in dst_lists:
        expected[:, dst_blocks] = src_bytes.reshape(3, batch, -1)[:, src_blocks]
    assert engine.CopyKvBlocks(src_cache, dst_cache, src_blocks, dst_lists) == llmdd.LLM_SUCCESS
    actual = dst.memory if direction == "d2h" else read_device(engine, dst_cache, desc)
    assert numpy.array_equal(actual.reshape(3, batch, -1), expected)
    for cache in (src_cache, dst_cache):
        if cache.cache_id != -1:
            engine.deallocate_cache(cache)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 6), data=st.data(), to_host=st.booleans())
def test_copy_kv_cache_matches_numpy(engine, batch, data, to_host):
    desc = CacheDesc(2, [batch, 40], llmdd.DT_INT8)
    src_index = data.draw(st.integers(0, batch - 1))
    dst_index = data.draw(st.integers(0, batch - 1))
    offset = data.draw(st.integers(0, 39))
    size = data.draw(st.sampled_from([-1]) | st.integers(1, 40 - offset))
    src, src_bytes = fill_device(engine, desc, seed=batch * 100 + offset)
    if to_host:
        dst = HostCache(2, [batch, 40])
        dst_cache = dst.cache
    else:
        dst_cache, _ = fill_device(engine, desc, seed=7)
    before = (dst.memory if to_host else read_device(engine, dst_cache, desc)).reshape(2, batch, 40).copy()
    assert engine.CopyKvCache(src, dst_cache, src_index, dst_index, offset, size) == llmdd.LLM_SUCCESS
    end = 40 if size == -1 else offset + size
    before[:, dst_index, offset:end] = src_bytes.reshape(2, batch, 40)[:, src_index, offset:end]
    after = dst.memory if to_host else read_device(engine, dst_cache, desc)
    assert numpy.array_equal(after.reshape(2, batch, 40), before)
    engine.deallocate_cache(src)
    if not to_host:
        engine.deallocate_cache(dst_cache)


@pytest.fixture
def pair(engine):
    desc = CacheDesc(2, [4, 64], llmdd.DT_INT8)
    return engine.allocate_cache(desc), engine.allocate_cache(desc)


def test_copy_kv_cache_directions(engine, pair):
    src, dst = pair
    host, other_host = HostCache(2, [4, 64]), HostCache(2, [4, 64])
    assert engine.CopyKvCache(src, dst) == llmdd.LLM_SUCCESS
    assert engine.CopyKvCache(src, host.cache) == llmdd.LLM_SUCCESS
    assert engine.CopyKvCache(host.cache, dst) == llmdd.LLM_PARAM_INVALID        # H2D: not for CopyKvCache
    assert engine.CopyKvCache(host.cache, other_host.cache) == llmdd.LLM_PARAM_INVALID


@pytest.mark.parametrize("arguments", [
    (4, 0, 0, -1), (0, 4, 0, -1), (0, 0, 64, -1), (0, 0, 0, 0), (0, 0, 0, -2), (0, 0, 0, 65), (0, 0, 60, 5),
])
def test_copy_kv_cache_out_of_range_is_param_invalid(engine, pair, arguments):
    assert engine.CopyKvCache(*pair, *arguments) == llmdd.LLM_PARAM_INVALID


def test_copy_kv_cache_of_different_tensor_counts_is_param_invalid(engine, pair):
    other = engine.allocate_cache(CacheDesc(3, [4, 64], llmdd.DT_INT8))
    assert engine.CopyKvCache(pair[0], other) == llmdd.LLM_PARAM_INVALID


def test_unknown_caches_are_kv_cache_not_exist(engine, pair):
    src, dst = pair
    gone = engine.allocate_cache(CacheDesc(2, [4, 64], llmdd.DT_INT8))
    engine.deallocate_cache(gone)
    never = Cache()
    never.cache_desc = CacheDesc(2, [4, 64], llmdd.DT_INT8)
    never.tensor_addrs = src.tensor_addrs
    with LlmDataDist(1, LlmRole.kDecoder) as other:
        assert other.Initialize({}) == llmdd.LLM_SUCCESS
        theirs = other.allocate_cache(CacheDesc(2, [4, 64], llmdd.DT_INT8))
        for unknown in (gone, never, theirs):
            assert engine.CopyKvCache(unknown, dst) == llmdd.LLM_KV_CACHE_NOT_EXIST
            assert engine.CopyKvCache(src, unknown) == llmdd.LLM_KV_CACHE_NOT_EXIST
            assert engine.CopyKvBlocks(unknown, dst, [0], [[1]]) == llmdd.LLM_KV_CACHE_NOT_EXIST


def test_copies_before_initialize_fail():
    dd = LlmDataDist(0, LlmRole.kPrompt)
    assert dd.CopyKvCache(Cache(), Cache()) == llmdd.LLM_FAILED
    assert dd.CopyKvBlocks(Cache(), Cache(), [0], [[0]]) == llmdd.LLM_FAILED


@pytest.mark.parametrize("src_blocks,dst_blocks_list", [
    ([0], [[4]]), ([4], [[0]]), ([-1], [[0]]), ([0, 1], [[2]]), ([0], [[1, 2]]), ([], [[]]), ([0], []),
    ([0, 1], [[2, 2]]), ([0, 1], [[2, 3], [3, 0]]),
])
def test_bad_block_lists_are_param_invalid(engine, pair, src_blocks, dst_blocks_list):
    assert engine.CopyKvBlocks(*pair, src_blocks, dst_blocks_list) == llmdd.LLM_PARAM_INVALID


def test_blocks_within_one_cache_must_not_overlap(engine, pair):
    cache = pair[0]
    assert engine.CopyKvBlocks(cache, cache, [0, 1], [[1, 2]]) == llmdd.LLM_PARAM_INVALID
    assert engine.CopyKvBlocks(cache, cache, [0, 1], [[2, 3]]) == llmdd.LLM_SUCCESS


def test_host_to_host_and_mismatched_blocks_are_param_invalid(engine, pair):
    host, other_host = HostCache(2, [4, 64]), HostCache(2, [4, 64])
    assert engine.CopyKvBlocks(host.cache, other_host.cache, [0], [[0]]) == llmdd.LLM_PARAM_INVALID
    wide = engine.allocate_cache(CacheDesc(2, [4, 128], llmdd.DT_INT8))
    assert engine.CopyKvBlocks(pair[0], wide, [0], [[0]]) == llmdd.LLM_PARAM_INVALID


def test_block_lists_of_the_wrong_type_raise_type_error(engine, pair):
    for src_blocks, dst_blocks_list in [("0", [[1]]), ([0], [1]), ([0.0], [[1]]), ([0], [["1"]]), ([0], None)]:
        with pytest.raises(TypeError):
            engine.CopyKvBlocks(*pair, src_blocks, dst_blocks_list)


def test_a_host_cache_with_a_wrong_address_count_is_param_invalid(engine, pair):
    broken = Cache()
    broken.cache_desc = CacheDesc(2, [4, 64], llmdd.DT_INT8, HOST)
    broken.tensor_addrs = [0x1000]
    assert engine.CopyKvBlocks(pair[0], broken, [0], [[0]]) == llmdd.LLM_PARAM_INVALID


@pytest.mark.sim_only
def test_runs_of_consecutive_blocks_are_one_runtime_copy(engine):
    desc = CacheDesc(8, [64, 256], llmdd.DT_INT8)
    src, dst = engine.allocate_cache(desc), engine.allocate_cache(desc)
    before = llmdd.sim.call_count("aclrtMemcpy")
    engine.copy_blocks(src, dst, list(range(10, 42)), [list(range(0, 32))])
    assert llmdd.sim.call_count("aclrtMemcpy") - before == 8          # one per tensor
    before = llmdd.sim.call_count("aclrtMemcpy")
    engine.copy_blocks(src, dst, [1, 2, 3, 9, 10], [[20, 21, 22, 40, 50]])
    assert llmdd.sim.call_count("aclrtMemcpy") - before == 8 * 3      # runs [1-3], [9], [10]


@pytest.mark.sim_only
def test_a_failed_runtime_copy_reports_and_stops(engine):
    desc = CacheDesc(4, [8, 16], llmdd.DT_INT8)
    src, _ = fill_device(engine, desc, seed=3)
    host = HostCache(4, [8, 16], fill=0xEE)
    llmdd.sim.inject_failure("aclrtMemcpy", 3, 507053)
    assert engine.CopyKvBlocks(src, host.cache, [0], [[0]]) == llmdd.LLM_FAILED
    copied = [not numpy.all(host.blocks(tensor)[0] == 0xEE) for tensor in range(4)]
    assert copied == [True, True, False, False]      # tensors 0 and 1 done, the rest untouched
    with pytest.raises(llmdd.LLMException, match="injected failure of aclrtMemcpy"):
        llmdd.sim.inject_failure("aclrtMemcpy", 1, 507053)
        engine.copy_blocks(src, host.cache, [0], [[0]])


def test_copies_between_pool_caches_and_other_caches():
    options = {"llm.MemPoolConfig": '{"memory_size": 16777216}', "llm.HostMemPoolConfig": '{"memory_size": 16777216}'}
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize(options) == llmdd.LLM_SUCCESS
        desc = CacheDesc(2, [8, 32], llmdd.DT_INT8)
        device, original = fill_device(dd, desc, seed=5)
        pooled_host = dd.allocate_cache(CacheDesc(2, [8, 32], llmdd.DT_INT8, HOST))
        dd.copy_blocks(device, pooled_host, list(range(8)), [list(range(8))])
        caller_host = HostCache(2, [8, 32])
        dd.copy_cache(device, caller_host.cache, 3, 3)
        assert numpy.array_equal(caller_host.blocks(1)[3], original.reshape(2, 8, 32)[1, 3])
        back = dd.allocate_cache(desc)
        dd.copy_blocks(pooled_host, back, list(range(8)), [list(range(8))])
        assert numpy.array_equal(read_device(dd, back, desc), original)


def test_drop_in_copy_cache_copy_blocks_and_swap_blocks():
    # v1 mode (kv_cache_manager): copies take any cache; v2's need blocks caches.
    import llmdd.llm_datadist as llm_datadist
    datadist = llm_datadist.LLMDataDist(llm_datadist.LLMRole.DECODER, 1)
    datadist.init({})
    try:
        manager = datadist.kv_cache_manager
        desc = llm_datadist.CacheDesc(2, [6, 16], llm_datadist.DataType.DT_INT8)
        engine_desc = CacheDesc(2, [6, 16], llmdd.DT_INT8)      # for the engine-level helpers
        cache, original = fill_device(datadist._engine, engine_desc, seed=9, cache=manager.allocate_cache(desc))
        manager.copy_blocks(cache, {0: [4, 5], 1: [3]})
        blocks = read_device(datadist._engine, cache, engine_desc).reshape(2, 6, 16)
        expected = original.reshape(2, 6, 16)
        assert numpy.array_equal(blocks[:, [4, 5, 3]], expected[:, [0, 0, 1]])
        host_desc = llm_datadist.CacheDesc(2, [6, 16], llm_datadist.DataType.DT_INT8, llm_datadist.Placement.HOST)
        memory = numpy.zeros((2, 96), numpy.uint8)
        host = llm_datadist.Cache.create_cpu_cache(host_desc, [row.ctypes.data for row in memory])
        manager.swap_blocks(cache, host, {2: 0, 3: 1})
        assert numpy.array_equal(memory.reshape(2, 6, 16)[:, [0, 1]], blocks[:, [2, 3]])
        other = manager.allocate_cache(desc)
        manager.copy_cache(other, cache, dst_batch_index=1, src_batch_index=2)
        assert numpy.array_equal(read_device(datadist._engine, other, engine_desc).reshape(2, 6, 16)[:, 1], blocks[:, 2])
        with pytest.raises(llm_datadist.LLMException) as raised:
            manager.copy_blocks(cache, {0: [0]})
        assert raised.value.status_code is llm_datadist.LLMStatusCode.LLM_PARAM_INVALID
        with pytest.raises(TypeError):
            manager.swap_blocks(cache, host, {0: [1]})
    finally:
        datadist.finalize()


def test_deallocating_a_cache_during_a_copy_from_another_thread_frees_it_after_the_copy(engine):
    import threading

    desc = CacheDesc(8, [16, 1 << 16], llmdd.DT_INT8)      # 8 MiB a cache: copies take a while
    host = HostCache(8, [16, 1 << 16])
    statuses, started = [], threading.Event()

    def copy_repeatedly(source):
        started.set()
        for _ in range(20):
            statuses.append(engine.CopyKvBlocks(source, host.cache, list(range(16)), [list(range(16))]))

    for _ in range(5):
        source = engine.allocate_cache(desc)
        started.clear()
        copier = threading.Thread(target=copy_repeatedly, args=(source,))
        copier.start()
        started.wait()
        assert engine.DeallocateCache(source.cache_id) == llmdd.LLM_SUCCESS
        copier.join()
    assert set(statuses) <= {llmdd.LLM_SUCCESS, llmdd.LLM_KV_CACHE_NOT_EXIST}
    stats = engine.memory_stats()
    assert (stats["num_caches"], stats["num_pending"], stats["pending_bytes"], stats["bytes_in_use"]) == (0, 0, 0, 0)


def test_block_lists_changed_by_index_while_being_read_are_read_as_they_were(engine, pair):
    # An item's __index__ empties the caller's list mid-read; the copy works from a snapshot
    # (before, it read past the end of the shrunken list).
    src_blocks = [0, 1, 2]

    class Shrinking:
        def __index__(self):
            del src_blocks[1:]
            return 3

    src_blocks.insert(1, Shrinking())
    assert engine.CopyKvBlocks(*pair, src_blocks, [[0, 1, 2, 3]]) == llmdd.LLM_SUCCESS
    assert src_blocks == [0]


@pytest.mark.sim_only   # reads device memory from the host (ctypes)
def test_a_host_cache_over_the_engines_pool_is_copied_as_device_memory():
    # CANN's own tests make CPU caches over device caches: the runtime must be asked for a
    # device copy then, or it refuses the kind.
    import ctypes
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.MemPoolConfig": '{"memory_size": 1048576}'}) == llmdd.LLM_SUCCESS
        desc = CacheDesc(2, [4, 64], llmdd.DT_INT8)
        device, backing = dd.allocate_cache(desc), dd.allocate_cache(desc)
        host = Cache.create_cpu_cache(CacheDesc(2, [4, 64], llmdd.DT_INT8, HOST), backing.tensor_addrs)
        ctypes.memset(device.tensor_addrs[1], 0x6D, 64)
        assert dd.CopyKvBlocks(device, host, [0], [[3]]) == llmdd.LLM_SUCCESS
        assert ctypes.string_at(backing.tensor_addrs[1] + 3 * 64, 64) == b"\x6d" * 64
        assert dd.CopyKvBlocks(host, device, [3], [[2]]) == llmdd.LLM_SUCCESS
        assert ctypes.string_at(device.tensor_addrs[1] + 2 * 64, 64) == b"\x6d" * 64
