"""Python code that runs inside an engine call: a block index's __index__, a shape's __len__
and __iter__. Every Python argument is converted and checked before the engine reads a cache's
addresses, so such code can change the caches, even deallocate them, without the call ever
writing through an address it read before."""
import ctypes

import pytest

import llmdd
from llmdd import Cache, CacheDesc

pytestmark = pytest.mark.sim_only   # the tests read device memory from the host (ctypes)

DESC = CacheDesc(1, [4, 64], llmdd.DT_INT8)
BLOCK = 64


class ReentrantIndex:
    """A block index whose __index__ runs `action` the first time it is converted."""

    def __init__(self, value, action):
        self.value = value
        self.action = action

    def __index__(self):
        action, self.action = self.action, None
        if action is not None:
            action()
        return self.value


class CountedIndex:
    def __init__(self, value, counter):
        self.value = value
        self.counter = counter

    def __index__(self):
        self.counter.append(self.value)
        return self.value


@pytest.fixture
def pooled():
    """An engine with a pool: a freed cache's pages go to the next allocation of that size."""
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.MemPoolConfig": '{"memory_size": 1048576}'}) == llmdd.LLM_SUCCESS
        yield dd


def filled(engine, byte):
    cache = engine.allocate_cache(DESC)
    ctypes.memset(cache.tensor_addrs[0], byte, DESC.size)
    return cache


def contents(cache):
    return ctypes.string_at(cache.tensor_addrs[0], DESC.size)


def test_a_block_index_that_reallocates_the_destination_copies_into_its_new_memory(pooled):
    src, dst = filled(pooled, 0x11), filled(pooled, 0x22)
    old_address = dst.tensor_addrs[0]
    bystanders = []

    def reallocate_destination():
        assert pooled.DeallocateCache(dst.cache_id) == llmdd.LLM_SUCCESS
        bystanders.append(filled(pooled, 0x77))             # takes dst's old pages
        assert pooled.AllocateCache(DESC, dst) == llmdd.LLM_SUCCESS
        ctypes.memset(dst.tensor_addrs[0], 0x22, DESC.size)

    status = pooled.CopyKvBlocks(src, dst, [0], [[ReentrantIndex(1, reallocate_destination)]])
    assert bystanders[0].tensor_addrs[0] == old_address     # the page reuse the test relies on
    assert contents(bystanders[0]) == b"\x77" * DESC.size    # never written through the old address
    assert status == llmdd.LLM_SUCCESS
    assert contents(dst) == b"\x22" * BLOCK + b"\x11" * BLOCK + b"\x22" * 2 * BLOCK


def test_a_block_index_that_detaches_the_destination_makes_the_copy_refuse(pooled):
    src, dst = filled(pooled, 0x11), filled(pooled, 0x22)
    bystanders = []

    def detach_destination():
        assert pooled.DeallocateCache(dst.cache_id) == llmdd.LLM_SUCCESS
        bystanders.append(filled(pooled, 0x77))
        dst.cache_id = 12345                                  # no longer the engine's cache

    status = pooled.CopyKvBlocks(src, dst, [ReentrantIndex(0, detach_destination)], [[1]])
    assert status == llmdd.LLM_KV_CACHE_NOT_EXIST
    assert contents(bystanders[0]) == b"\x77" * DESC.size


def test_a_block_index_that_deallocates_the_source_makes_the_copy_refuse(pooled):
    src, dst = filled(pooled, 0x11), filled(pooled, 0x22)
    status = pooled.CopyKvBlocks(src, dst, [ReentrantIndex(0, lambda: pooled.DeallocateCache(src.cache_id))], [[1]])
    assert status == llmdd.LLM_KV_CACHE_NOT_EXIST
    assert contents(dst) == b"\x22" * DESC.size


def test_a_block_table_longer_than_the_destination_is_refused_before_it_is_read(pooled):
    # 3,000 references to one 3,000-entry list for a destination of 4 blocks: refused from
    # the lengths alone, without converting (or copying) a single entry.
    src, dst = filled(pooled, 0x11), filled(pooled, 0x22)
    converted = []
    row = [CountedIndex(i % 4, converted) for i in range(3000)]
    assert pooled.CopyKvBlocks(src, dst, row, [row] * 3000) == llmdd.LLM_PARAM_INVALID
    assert pooled.CopyKvBlocks(src, dst, [CountedIndex(0, converted)] * 3, [[1, 2, 3]] * 2) == llmdd.LLM_PARAM_INVALID
    assert converted == []


class LyingList(list):
    def __len__(self):
        return 1


class LyingTuple(tuple):
    def __len__(self):
        return 1


@pytest.mark.parametrize("shape_type", [LyingList, LyingTuple])
@pytest.mark.parametrize("dims", [[2] * 100, []])
def test_a_shape_is_the_dims_it_holds_whatever_its_len_says(engine, shape_type, dims):
    desc = CacheDesc(1, shape_type(dims), llmdd.DT_INT8)
    assert desc.shape == dims
    assert engine.AllocateCache(desc, Cache()) == llmdd.LLM_PARAM_INVALID   # 100 dims, or none


def test_a_shape_whose_len_lies_low_stores_every_dim(engine):
    desc = CacheDesc(1, LyingList([2, 3, 4]), llmdd.DT_INT8)
    cache = engine.allocate_cache(desc)
    assert cache.cache_desc.shape == [2, 3, 4]
    assert desc.size == 24
    assert cache.tensor(0).shape == (2, 3, 4)
