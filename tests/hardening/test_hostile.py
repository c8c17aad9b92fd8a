"""Hostile arguments to every public call: the only outcomes allowed are a status code or a
documented exception (TypeError, ValueError, OverflowError, IndexError, BufferError,
LLMException). Anything else — a crash, a SystemError, a MemoryError for a small input, state
left half-made — fails."""
import json
import os

import pytest
from support.caches import seed_desc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmdd
import llmdd.llm_datadist as llm_datadist
from llmdd import Cache, CacheDesc, LlmDataDist, LlmRole

DOCUMENTED = (TypeError, ValueError, OverflowError, IndexError, BufferError, llmdd.LLMException)
EDGE_INTEGERS = [0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63,
                 -2**63 - 1, 10**30]

integers = st.one_of(st.sampled_from(EDGE_INTEGERS), st.integers(-2**70, 2**70))
scalars = st.one_of(st.none(), st.booleans(), integers, st.floats(allow_nan=True), st.text(max_size=50),
                    st.binary(max_size=20), st.just(object()))
hostile = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=40), st.tuples(inner, inner), st.dictionaries(st.text(max_size=10), inner, max_size=5),
), max_leaves=60)
shapes = st.one_of(st.lists(integers, max_size=40), hostile)
statuses = set(llmdd.LLMStatusCode)


def outcome(call, *args, **kwargs):
    """The status a call returned, or the documented exception type it raised."""
    try:
        return call(*args, **kwargs)
    except DOCUMENTED as error:
        return type(error)


# A short run by default; CI's hardening step raises it (LLMDD_HOSTILE_EXAMPLES=1000).
lenient = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                   deadline=None, max_examples=int(os.environ.get("LLMDD_HOSTILE_EXAMPLES", "40")))


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(args=st.lists(hostile, max_size=4), kwargs=st.dictionaries(
    st.sampled_from(["num_tensors", "shape", "data_type", "placement"]), hostile, max_size=4))
def test_cache_desc_constructor(args, kwargs):
    result = outcome(CacheDesc, *args, **kwargs)
    assert isinstance(result, CacheDesc) or result in DOCUMENTED


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(field=st.sampled_from(["num_tensors", "shape", "data_type", "placement"]), value=hostile)
def test_cache_desc_fields_are_unchanged_by_a_refused_assignment(field, value):
    desc = seed_desc()
    result = outcome(setattr, desc, field, value)
    if result in DOCUMENTED:
        assert desc == seed_desc()


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(num_tensors=integers, shape=shapes, data_type=integers, placement=integers)
def test_allocate_cache_answers_with_a_status(engine, num_tensors, shape, data_type, placement):
    desc = outcome(CacheDesc, num_tensors, shape, data_type, placement)
    if not isinstance(desc, CacheDesc):
        return
    free_before = engine.device_memory_info()[0]
    cache = Cache()
    status = engine.AllocateCache(desc, cache)
    assert status in statuses
    if status == llmdd.LLM_SUCCESS:
        assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    else:
        assert cache.cache_id == -1
    assert engine.device_memory_info()[0] == free_before


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(cache_id=hostile)
def test_deallocate_cache_takes_anything(engine, cache_id):
    result = outcome(engine.DeallocateCache, cache_id)
    assert result in DOCUMENTED or result == llmdd.LLM_KV_CACHE_NOT_EXIST
    result = outcome(engine.deallocate_cache, cache_id)
    assert result in DOCUMENTED


option_keys = st.sampled_from(["llm.DeviceId", "ge.exec.deviceId", "llm.SyncKvCacheWaitTime", "llm.ListenIpInfo",
                               "llm.EnableSwitchRole", "llm.MemPoolConfig", "llm.HostMemPoolConfig",
                               "llm.BufPoolCfg", "llmdd.TensorAlignment", "llmdd.MallocPolicy"])
json_values = st.recursive(st.one_of(st.none(), st.booleans(), integers, st.floats(allow_nan=False), st.text(max_size=8)),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                               st.sampled_from(["memory_size", "page_shift", "x"]), inner, max_size=3),
                           max_leaves=10)
option_values = st.one_of(st.text(max_size=30), integers.map(str), json_values.map(json.dumps),
                          st.text(min_size=1000, max_size=5000))


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(options=st.one_of(st.dictionaries(option_keys, option_values, max_size=4), hostile))
def test_initialize_answers_with_a_status(options):
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        result = outcome(dd.Initialize, options)
        assert result in DOCUMENTED or result in statuses
        if result == llmdd.LLM_SUCCESS:
            cache = dd.allocate_cache(CacheDesc(2, [16], llmdd.DT_INT8))
            dd.deallocate_cache(cache)
        else:
            assert not dd.initialized


listen_addresses = st.one_of(option_values, st.builds("{}.{}.{}.{}:{}".format, *[st.integers(-1, 256)] * 4,
                                                       st.integers(-1, 70000)))


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(role=st.one_of(st.sampled_from(list(LlmRole)), hostile), options=st.one_of(
    st.dictionaries(st.sampled_from(["llm.ListenIpInfo", "llm.listenIpInfo", "llm.DeviceId"]), listen_addresses,
                    max_size=2), hostile))
def test_set_role_answers_with_a_status(engine, role, options):
    result = outcome(engine.SetRole, role, options)
    assert result in DOCUMENTED or result in statuses
    assert engine.SetRole(LlmRole.kDecoder) == llmdd.LLM_SUCCESS   # and nothing listens after it


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(cluster_id=hostile, role=hostile)
def test_engine_constructor(cluster_id, role):
    result = outcome(LlmDataDist, cluster_id, role)
    assert isinstance(result, LlmDataDist) or result in DOCUMENTED


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(arguments=st.lists(hostile, max_size=4), blocks=hostile, lists=hostile)
def test_copies_answer_with_a_status(engine, arguments, blocks, lists):
    desc = CacheDesc(2, [4, 16], llmdd.DT_INT8)
    src, dst = engine.allocate_cache(desc), engine.allocate_cache(desc)
    for result in (outcome(engine.CopyKvCache, src, dst, *arguments), outcome(engine.CopyKvBlocks, src, dst, blocks, lists)):
        assert result in DOCUMENTED or result in statuses
    engine.deallocate_cache(src)
    engine.deallocate_cache(dst)


transfer_structs = st.one_of(
    hostile,
    st.builds(llmdd.CacheIndex, hostile, hostile, hostile),
    st.builds(llmdd.CacheIndex, integers, integers, integers),
    st.builds(llmdd.KvCacheExtParam, hostile, hostile, hostile),
    st.builds(llmdd.KvCacheExtParam, st.tuples(integers, integers), st.tuples(integers, integers), integers),
    st.builds(llmdd.ClusterInfo, hostile, hostile, hostile, hostile),
    st.lists(st.builds(llmdd.ClusterInfo, integers, integers, hostile, st.lists(st.builds(llmdd.IpInfo, hostile,
                                                                                             hostile))), max_size=3),
)


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(arguments=st.lists(transfer_structs, max_size=5))
def test_transfer_calls_answer_with_a_status(engine, arguments):
    """No link is ever made here: every call is refused before a peer is reached."""
    cache = engine.allocate_cache(CacheDesc(2, [4, 16], llmdd.DT_INT8))
    for call in (engine.LinkLlmClusters, engine.UnlinkLlmClusters):
        assert outcome(call, *arguments) in DOCUMENTED or outcome(call, *arguments) in statuses
    for call in (engine.PullKvCache, engine.PullKvBlocks):
        result = outcome(call, *arguments[:1], cache, *arguments[1:])
        assert result in DOCUMENTED or result in statuses
    for call in (engine.PushKvCache, engine.PushKvBlocks):
        result = outcome(call, cache, *arguments)
        assert result in DOCUMENTED or result in statuses
    assert engine.memory_stats()["num_caches"] == 1
    engine.deallocate_cache(cache)


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(index=hostile, cache_id=hostile, addrs=hostile, desc=hostile)
def test_cache_fields_and_views(engine, index, cache_id, addrs, desc):
    cache = engine.allocate_cache(seed_desc())
    result = outcome(cache.tensor, index)
    assert isinstance(result, llmdd.TensorView) or result in DOCUMENTED
    for field, value in (("cache_id", cache_id), ("tensor_addrs", addrs), ("cache_desc", desc)):
        assert outcome(setattr, Cache(), field, value) in (None, *DOCUMENTED)
    host = outcome(Cache.create_cpu_cache, CacheDesc(1, [1], llmdd.DT_INT8, llmdd.CachePlacement.kHost), addrs)
    assert isinstance(host, Cache) or host in DOCUMENTED
    engine.deallocate_cache(cache)


def test_stale_and_foreign_caches_and_calls_after_finalize():
    first, second = LlmDataDist(0, LlmRole.kPrompt), LlmDataDist(1, LlmRole.kDecoder)
    assert first.Initialize({}) == llmdd.LLM_SUCCESS and second.Initialize({}) == llmdd.LLM_SUCCESS
    theirs = second.allocate_cache(seed_desc())
    assert first.DeallocateCache(theirs.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST
    assert first.CopyKvCache(theirs, theirs) == llmdd.LLM_KV_CACHE_NOT_EXIST
    second.Finalize()
    for call in (lambda: theirs.tensor(0), theirs.to_descs, theirs.region):
        with pytest.raises(ValueError):
            call()
    assert second.AllocateCache(seed_desc(), Cache()) == llmdd.LLM_FAILED
    assert second.DeallocateCache(theirs.cache_id) == llmdd.LLM_FAILED
    assert second.CopyKvBlocks(theirs, theirs, [0], [[0]]) == llmdd.LLM_FAILED
    with pytest.raises(llmdd.LLMException):
        second.device_memory_info()
    assert second.memory_stats()["num_caches"] == 0
    first.Finalize()


@pytest.mark.slow   # a fuzz run: deselected by default, run by .ci/run
@lenient
@given(args=st.lists(hostile, max_size=6))
def test_drop_in_cache_desc(args):
    result = outcome(llm_datadist.CacheDesc, *args)
    assert isinstance(result, llm_datadist.CacheDesc) or result in DOCUMENTED
