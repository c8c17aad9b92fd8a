"""The C++ API's transfer calls of llmdd.LlmDataDist between two real processes on 127.0.0.1:
LinkLlmClusters / UnlinkLlmClusters with ClusterInfo and IpInfo, PullKvCache / PullKvBlocks /
PushKvCache / PushKvBlocks with CacheIndex and KvCacheExtParam (docs/facts.md section 1), over Mooncake.

The test process is the decoder, an engine that does not listen; each prompt is an engine in a
peer process (tests/support/peer.py's engine side) listening on llm.ListenIpInfo.
"""
import gc

import numpy
import pytest
from support.network import free_port, listening, mooncake_missing
from support.patterns import cache_tensor as tensor
from support.patterns import pattern
from support.peer import Peer

import llmdd
from llmdd import CacheIndex, ClusterInfo, IpInfo, KvCacheExtParam

# The tests that link need Mooncake; the others run everywhere (the sanitizer build included).
needs_mooncake = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER, OTHER_PROMPT = 1, 2, 3
# The module's linked decoder keeps its links; an engine of a test's own is another decoder (a
# LINK claiming a linked cluster's id is refused).
SECOND_DECODER = 4
TENSORS, BATCH, BLOCK = 4, 8, 1024


def engine_peer(cluster_id, remote_accessible=False):
    return Peer.engine(cluster_id, remote_accessible)


@pytest.fixture(scope="module")
def prompt():
    peer = engine_peer(PROMPT)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def writable_prompt():
    peer = engine_peer(OTHER_PROMPT, remote_accessible=True)
    yield peer
    peer.close()


def cluster_of(peer, local_ip=None):
    local = [IpInfo(local_ip, 0)] if local_ip else []
    return ClusterInfo(peer.cluster_id, 0, local, [IpInfo("127.0.0.1", peer.port)])


@pytest.fixture
def engine():
    with llmdd.LlmDataDist(SECOND_DECODER, llmdd.LlmRole.kDecoder) as dd:
        assert dd.Initialize({"llm.SyncKvCacheWaitTime": "3000"}) == S.LLM_SUCCESS
        yield dd


@pytest.fixture(scope="module")
def linking_engine():
    """One decoder engine for the tests that want it linked: finalizing an engine that linked
    takes Mooncake ~2 s."""
    with llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as dd:
        assert dd.Initialize({"llm.SyncKvCacheWaitTime": "3000"}) == S.LLM_SUCCESS
        yield dd


@pytest.fixture
def linked(linking_engine, prompt, writable_prompt):
    """The decoder engine, freshly linked to both prompts: a test may have unlinked."""
    clusters = [cluster_of(prompt), cluster_of(writable_prompt)]
    assert linking_engine.UnlinkLlmClusters(clusters, [], 1000, True) == S.LLM_SUCCESS
    rets = []
    assert linking_engine.LinkLlmClusters(clusters, rets, 3000) == S.LLM_SUCCESS
    assert rets == [S.LLM_SUCCESS, S.LLM_SUCCESS]
    return linking_engine


def local_cache(engine, placement=llmdd.Placement.kDevice, tensors=TENSORS, batch=BATCH, block=BLOCK):
    cache = llmdd.Cache()
    desc = llmdd.CacheDesc(tensors, [batch, block], llmdd.DT_UINT8, placement)
    assert engine.AllocateCache(desc, cache) == S.LLM_SUCCESS
    for t in range(tensors):
        tensor(cache, t)[:] = 0
    return cache


def remote_tensor(peer, cache_id, index):
    return numpy.frombuffer(bytes.fromhex(peer.call("tensor", cache_id=cache_id, index=index)["hex"]), numpy.uint8)


def entries(array, block=BLOCK):
    return array.reshape(-1, block)


def remote_cache(peer):
    return peer.call("allocate", num_tensors=TENSORS, batch=BATCH, block_bytes=BLOCK)["cache_id"]


@needs_mooncake
def test_pull_kv_cache_reads_one_batch_entry_of_a_remote_cache_by_id(prompt, linked):
    src = remote_cache(prompt)
    dst = local_cache(linked)
    assert linked.PullKvCache(CacheIndex(PROMPT, src, 5), dst, 2) == S.LLM_SUCCESS
    for t in range(TENSORS):
        expected = entries(pattern(PROMPT, src, t, BATCH * BLOCK))
        got = entries(tensor(dst, t))
        assert numpy.array_equal(got[2], expected[5])
        assert not got[[0, 1, 3, 4, 5, 6, 7]].any()


@needs_mooncake
def test_pull_kv_cache_with_size_and_layer_ranges(prompt, linked):
    src = remote_cache(prompt)
    dst = local_cache(linked)
    # Layers of 2 tensors: remote layer 1 (tensors 2, 3) into local layer 0 (tensors 0, 1), 100 bytes.
    ext = KvCacheExtParam(src_layer_range=(1, 1), dst_layer_range=(0, 0), tensor_num_per_layer=2)
    assert linked.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, 100, ext) == S.LLM_SUCCESS
    for src_t, dst_t in ((2, 0), (3, 1)):
        got = tensor(dst, dst_t)
        assert numpy.array_equal(got[:100], pattern(PROMPT, src, src_t, BATCH * BLOCK)[:100])
        assert not got[100:].any()
    assert not tensor(dst, 2).any() and not tensor(dst, 3).any()


@needs_mooncake
def test_without_layer_ranges_tensor_num_per_layer_is_not_looked_at(prompt, linked):
    # As CANN: it only splits tensors into layers for the ranges; a 3-tensor cache pulls whole.
    src = prompt.call("allocate", num_tensors=3, batch=BATCH, block_bytes=BLOCK)["cache_id"]
    dst = local_cache(linked, tensors=3)
    assert linked.PullKvCache(CacheIndex(PROMPT, src, 1), dst, 0, -1, KvCacheExtParam(tensor_num_per_layer=2)) == \
        S.LLM_SUCCESS
    for t in range(3):
        assert numpy.array_equal(entries(tensor(dst, t))[0], entries(pattern(PROMPT, src, t, BATCH * BLOCK))[1])


@needs_mooncake
def test_pull_kv_blocks_reads_the_named_blocks(prompt, linked):
    src = remote_cache(prompt)
    dst = local_cache(linked)
    src_blocks, dst_blocks = [0, 1, 2, 6], [7, 3, 4, 0]
    assert linked.PullKvBlocks(CacheIndex(PROMPT, src, 0), dst, src_blocks, dst_blocks) == S.LLM_SUCCESS
    for t in range(TENSORS):
        expected = entries(pattern(PROMPT, src, t, BATCH * BLOCK))
        got = entries(tensor(dst, t))
        for s, d in zip(src_blocks, dst_blocks):
            assert numpy.array_equal(got[d], expected[s])
        assert not got[[1, 2, 5, 6]].any()


@needs_mooncake
def test_push_kv_cache_and_blocks_write_into_a_remote_accessible_engine(writable_prompt, linked):
    dst = remote_cache(writable_prompt)
    src = local_cache(linked)
    for t in range(TENSORS):
        tensor(src, t)[:] = pattern(DECODER, src.cache_id, t, BATCH * BLOCK)
    before = [entries(remote_tensor(writable_prompt, dst, t)) for t in range(TENSORS)]
    assert linked.PushKvCache(src, CacheIndex(OTHER_PROMPT, dst, 6), 1) == S.LLM_SUCCESS
    assert linked.PushKvBlocks(src, CacheIndex(OTHER_PROMPT, dst, 0), [3, 4], [0, 1]) == S.LLM_SUCCESS
    for t in range(TENSORS):
        sent = entries(pattern(DECODER, src.cache_id, t, BATCH * BLOCK))
        after = entries(remote_tensor(writable_prompt, dst, t))
        assert numpy.array_equal(after[6], sent[1])
        assert numpy.array_equal(after[0], sent[3]) and numpy.array_equal(after[1], sent[4])
        assert numpy.array_equal(after[2:6], before[t][2:6]) and numpy.array_equal(after[7], before[t][7])


@needs_mooncake
def test_push_into_an_engine_without_remote_cache_access_is_refused(prompt, linked):
    dst = remote_cache(prompt)
    before = remote_tensor(prompt, dst, 0)
    assert linked.PushKvCache(local_cache(linked), CacheIndex(PROMPT, dst, 0)) == S.LLM_PARAM_INVALID
    assert numpy.array_equal(remote_tensor(prompt, dst, 0), before)


@needs_mooncake
@pytest.mark.parametrize("call, expected", [
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, BATCH), dst), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, BATCH), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, 0), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, BLOCK + 1), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, -2), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, -1, KvCacheExtParam((1, 0), (1, 0))),
     S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, -1, KvCacheExtParam((0, 0), (0, 1))),
     S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, -1, KvCacheExtParam((0, 2), (0, 2))),
     S.LLM_PARAM_INVALID),   # 4 tensors are 2 layers of 2
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, src, 0), dst, 0, -1, KvCacheExtParam(
        (0, 0), (0, 0), tensor_num_per_layer=3)), S.LLM_PARAM_INVALID),   # 3 does not divide 4 tensors
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(PROMPT, 10**6, 0), dst), S.LLM_KV_CACHE_NOT_EXIST),
    (lambda dd, src, dst: dd.PullKvCache(CacheIndex(99, src, 0), dst), S.LLM_NOT_YET_LINK),
    (lambda dd, src, dst: dd.PullKvBlocks(CacheIndex(PROMPT, src, 1), dst, [0], [0]), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvBlocks(CacheIndex(PROMPT, src, 0), dst, [], []), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvBlocks(CacheIndex(PROMPT, src, 0), dst, [0, 1], [0]), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvBlocks(CacheIndex(PROMPT, src, 0), dst, [0, BATCH], [0, 1]), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PullKvBlocks(CacheIndex(PROMPT, src, 0), dst, [0, 1], [1, BATCH]), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PushKvCache(dst, CacheIndex(OTHER_PROMPT, 1, 0), 0, 16), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PushKvBlocks(dst, CacheIndex(OTHER_PROMPT, 1, 1), [0], [0]), S.LLM_PARAM_INVALID),
    (lambda dd, src, dst: dd.PushKvBlocks(dst, CacheIndex(OTHER_PROMPT, 1, 0), [0, 1], [0]), S.LLM_PARAM_INVALID),
])
def test_rejected_calls_answer_their_status_and_write_nothing(prompt, linked, call, expected):
    src = remote_cache(prompt)
    dst = local_cache(linked)
    assert call(linked, src, dst) == expected
    assert not any(tensor(dst, t).any() for t in range(TENSORS))


@needs_mooncake
def test_a_cache_this_engine_does_not_hold_takes_no_part(writable_prompt, linked):
    dst = remote_cache(writable_prompt)
    foreign = llmdd.Cache.create_cpu_cache(llmdd.CacheDesc(TENSORS, [BATCH, BLOCK], llmdd.DT_UINT8,
                                                           llmdd.Placement.kHost),
                                           [numpy.zeros(BATCH * BLOCK, numpy.uint8).ctypes.data] * TENSORS)
    assert linked.PullKvCache(CacheIndex(OTHER_PROMPT, dst, 0), foreign) == S.LLM_KV_CACHE_NOT_EXIST
    assert linked.PushKvCache(foreign, CacheIndex(OTHER_PROMPT, dst, 0)) == S.LLM_KV_CACHE_NOT_EXIST


@needs_mooncake
def test_push_from_a_host_cache_is_param_invalid(writable_prompt):
    with llmdd.LlmDataDist(SECOND_DECODER, llmdd.LlmRole.kDecoder) as dd:
        assert dd.Initialize({"llm.HostMemPoolConfig": '{"memory_size": 1048576}'}) == S.LLM_SUCCESS
        rets = []
        assert dd.LinkLlmClusters([cluster_of(writable_prompt)], rets) == S.LLM_SUCCESS
        dst = remote_cache(writable_prompt)
        before = remote_tensor(writable_prompt, dst, 0)
        host = local_cache(dd, placement=llmdd.Placement.kHost)
        assert dd.PushKvCache(host, CacheIndex(OTHER_PROMPT, dst, 0)) == S.LLM_PARAM_INVALID
        assert dd.PushKvBlocks(host, CacheIndex(OTHER_PROMPT, dst, 0), [0], [0]) == S.LLM_PARAM_INVALID
        assert numpy.array_equal(remote_tensor(writable_prompt, dst, 0), before)


@needs_mooncake
def test_link_rules(engine, prompt):
    rets = ["stale"]
    assert engine.LinkLlmClusters([cluster_of(prompt)], rets, 0) == S.LLM_PARAM_INVALID
    assert engine.LinkLlmClusters([cluster_of(prompt)] * 17, rets) == S.LLM_CLUSTER_NUM_EXCEED_LIMIT
    assert engine.LinkLlmClusters([cluster_of(prompt)], rets) == S.LLM_SUCCESS and rets == [S.LLM_SUCCESS]
    assert engine.LinkLlmClusters([cluster_of(prompt)], rets) == S.LLM_ALREADY_LINK
    assert rets == [S.LLM_ALREADY_LINK]
    no_listener = ClusterInfo(OTHER_PROMPT + 10, 0, [], [IpInfo("127.0.0.1", free_port())])
    assert engine.LinkLlmClusters([no_listener], rets, 1000) == S.LLM_LINK_FAILED and rets == [S.LLM_LINK_FAILED]
    two_remotes = ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", prompt.port)] * 2)
    assert engine.LinkLlmClusters([two_remotes], rets) == S.LLM_PARAM_INVALID
    assert engine.UnlinkLlmClusters([cluster_of(prompt)], rets, 1000) == S.LLM_SUCCESS and rets == [S.LLM_SUCCESS]
    # Ending a link that is not there succeeds, as in CANN (nothing to end).
    assert engine.UnlinkLlmClusters([cluster_of(prompt)], rets) == S.LLM_SUCCESS and rets == [S.LLM_SUCCESS]
    assert engine.LinkLlmClusters([], rets) == S.LLM_PARAM_INVALID and rets == []


@needs_mooncake
def test_unlink_then_pull_is_not_yet_link(prompt, engine):
    rets = []
    assert engine.LinkLlmClusters([cluster_of(prompt)], rets) == S.LLM_SUCCESS
    src = remote_cache(prompt)
    dst = local_cache(engine)
    assert engine.PullKvCache(CacheIndex(PROMPT, src, 0), dst) == S.LLM_SUCCESS
    assert engine.UnlinkLlmClusters([cluster_of(prompt)], rets) == S.LLM_SUCCESS
    assert engine.PullKvCache(CacheIndex(PROMPT, src, 0), dst) == S.LLM_NOT_YET_LINK


@needs_mooncake
def test_the_listening_side_may_link_and_pull_too(prompt, engine):
    """A listening engine links out too: the prompt links to a listening decoder and pulls from it."""
    with llmdd.LlmDataDist(DECODER + 10, llmdd.LlmRole.kDecoder) as listening:
        port = free_port()
        assert listening.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
        src = local_cache(listening)
        for t in range(TENSORS):
            tensor(src, t)[:] = pattern(DECODER + 10, src.cache_id, t, BATCH * BLOCK)
        assert prompt.call("link", cluster_id=DECODER + 10, ip="127.0.0.1", port=port)["status"] == S.LLM_SUCCESS
        dst = remote_cache(prompt)
        assert prompt.call("pull_cache", remote=DECODER + 10, remote_cache_id=src.cache_id,
                           cache_id=dst)["status"] == S.LLM_SUCCESS
        got = entries(remote_tensor(prompt, dst, 3))
        assert numpy.array_equal(got[0], entries(pattern(DECODER + 10, src.cache_id, 3, BATCH * BLOCK))[0])


@needs_mooncake
def test_the_side_that_listened_pulls_and_pushes_on_the_link_the_other_made(prompt):
    """One link serves both sides, as one CANN link does: the decoder links, the prompt pulls
    from it and pushes into it (the decoder opened its caches to remote access)."""
    with llmdd.LlmDataDist(DECODER + 20, llmdd.LlmRole.kDecoder) as dd:
        assert dd.Initialize({"llm.EnableRemoteCacheAccessible": "1"}) == S.LLM_SUCCESS
        cache = local_cache(dd)
        for t in range(TENSORS):
            tensor(cache, t)[:] = pattern(DECODER + 20, cache.cache_id, t, BATCH * BLOCK)
        rets = []
        assert dd.LinkLlmClusters([cluster_of(prompt)], rets) == S.LLM_SUCCESS
        prompt_cache = remote_cache(prompt)
        assert prompt.call("pull_cache", remote=DECODER + 20, remote_cache_id=cache.cache_id,
                           cache_id=prompt_cache)["status"] == S.LLM_SUCCESS
        for t in range(TENSORS):
            assert numpy.array_equal(entries(remote_tensor(prompt, prompt_cache, t))[0], entries(tensor(cache, t))[0])
        assert prompt.call("push_cache", remote=DECODER + 20, remote_cache_id=cache.cache_id, cache_id=prompt_cache,
                           remote_batch_index=7)["status"] == S.LLM_SUCCESS
        for t in range(TENSORS):
            assert numpy.array_equal(entries(tensor(cache, t))[7], entries(remote_tensor(prompt, prompt_cache, t))[0])
        assert dd.UnlinkLlmClusters([cluster_of(prompt)], rets) == S.LLM_SUCCESS
        assert prompt.call("pull_cache", remote=DECODER + 20, remote_cache_id=cache.cache_id,
                           cache_id=prompt_cache)["status"] == S.LLM_NOT_YET_LINK


class Deallocating:
    """An index whose __index__ deallocates a cache first: Python code running inside the call."""

    def __init__(self, engine, cache, value):
        self.engine, self.cache, self.value = engine, cache, value

    def __index__(self):
        assert self.engine.DeallocateCache(self.cache.cache_id) == S.LLM_SUCCESS
        return self.value


@needs_mooncake
def test_an_argument_that_deallocates_the_local_cache_leaves_the_call_refused(prompt, linked):
    src = remote_cache(prompt)
    for call in (lambda dst: linked.PullKvCache(CacheIndex(PROMPT, src, 0), dst, Deallocating(linked, dst, 0)),
                 lambda dst: linked.PullKvBlocks(CacheIndex(PROMPT, src, 0), dst, [Deallocating(linked, dst, 0)], [0])):
        dst = local_cache(linked)
        assert call(dst) == S.LLM_KV_CACHE_NOT_EXIST
        assert linked.memory_stats()["num_pending"] == 0   # nothing of it is held
    writable = remote_cache(prompt)
    before = remote_tensor(prompt, writable, 0)
    src_cache = local_cache(linked)
    assert linked.PushKvCache(src_cache, CacheIndex(PROMPT, writable, 0), Deallocating(linked, src_cache, 0)) == \
        S.LLM_KV_CACHE_NOT_EXIST
    assert numpy.array_equal(remote_tensor(prompt, writable, 0), before)


@needs_mooncake
def test_a_deallocated_remote_cache_is_gone(prompt, linked):
    src = remote_cache(prompt)
    assert prompt.call("deallocate", cache_id=src)["status"] == S.LLM_SUCCESS
    assert linked.PullKvCache(CacheIndex(PROMPT, src, 0), local_cache(linked)) == S.LLM_KV_CACHE_NOT_EXIST


@needs_mooncake
def test_a_finalized_prompt_fails_the_pull_in_bounded_time_and_the_decoder_stays_usable(engine):
    peer = engine_peer(OTHER_PROMPT + 20)
    try:
        rets = []
        assert engine.LinkLlmClusters([cluster_of(peer)], rets) == S.LLM_SUCCESS
        src = remote_cache(peer)
        peer.call("finalize")
        dst = local_cache(engine)
        assert engine.PullKvCache(CacheIndex(peer.cluster_id, src, 0), dst) in (S.LLM_LINK_FAILED, S.LLM_TIMEOUT)
        assert not tensor(dst, 0).any()
        assert engine.UnlinkLlmClusters([cluster_of(peer)], rets, 1000, True) == S.LLM_SUCCESS
        assert engine.DeallocateCache(dst.cache_id) == S.LLM_SUCCESS
    finally:
        peer.close()


@pytest.mark.parametrize("call, error", [
    (lambda dd, cache: dd.LinkLlmClusters([object()], []), TypeError),
    (lambda dd, cache: dd.LinkLlmClusters([ClusterInfo(1, 0, [], [("127.0.0.1", 1)])], []), TypeError),
    (lambda dd, cache: dd.LinkLlmClusters([ClusterInfo(-1, 0, [], [IpInfo("127.0.0.1", 1)])], []), ValueError),
    (lambda dd, cache: dd.LinkLlmClusters([ClusterInfo(1, 0, [], [IpInfo("127.0.0.1", 65536)])], []), ValueError),
    (lambda dd, cache: dd.LinkLlmClusters([], ()), TypeError),
    (lambda dd, cache: dd.UnlinkLlmClusters([], [], 1000, 1), TypeError),
    (lambda dd, cache: dd.PullKvCache((1, 1, 0), cache), TypeError),
    (lambda dd, cache: dd.PullKvCache(CacheIndex(1, "1", 0), cache), TypeError),
    (lambda dd, cache: dd.PullKvCache(CacheIndex(1, 1, -1), cache), ValueError),
    (lambda dd, cache: dd.PullKvCache(CacheIndex(1, 1, 0), cache, 2**32), ValueError),
    (lambda dd, cache: dd.PullKvCache(CacheIndex(1, 1, 0), cache, 0, -1, {"tensor_num_per_layer": 2}), TypeError),
    (lambda dd, cache: dd.PullKvCache(CacheIndex(1, 1, 0), cache, 0, -1, KvCacheExtParam((0, 0, 0))), ValueError),
    (lambda dd, cache: dd.PullKvCache(CacheIndex(1, 1, 0), cache, 0, -1, KvCacheExtParam(tensor_num_per_layer=256)),
     ValueError),
    (lambda dd, cache: dd.PullKvBlocks(CacheIndex(1, 1, 0), cache, [0.5], [0]), TypeError),
    (lambda dd, cache: dd.PushKvBlocks(cache, CacheIndex(1, 1, 0), [0], [-1]), ValueError),
])
def test_arguments_of_the_wrong_type_raise_before_anything_happens(engine, call, error):
    cache = local_cache(engine)
    with pytest.raises(error):
        call(engine, cache)
    assert not tensor(cache, 0).any()


def test_calls_before_initialize_answer_failed():
    dd = llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder)
    rets = []
    assert dd.LinkLlmClusters([ClusterInfo(1, 0, [], [IpInfo("127.0.0.1", 1)])], rets) == S.LLM_FAILED
    assert dd.PullKvCache(CacheIndex(1, 1, 0), llmdd.Cache()) == S.LLM_FAILED


def test_finalize_and_dropping_an_engine_stop_its_listener():
    port = free_port()
    dd = llmdd.LlmDataDist(PROMPT + 30, llmdd.LlmRole.kPrompt)
    assert dd.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
    assert listening(port)
    dd.Finalize()
    assert not listening(port)
    assert dd.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
    del dd
    gc.collect()
    assert not listening(port)


def test_the_transfer_structs_are_values_with_the_cpp_defaults():
    assert CacheIndex() == CacheIndex(0, -1, 0)
    assert KvCacheExtParam() == KvCacheExtParam((-1, -1), (-1, -1), 2)
    assert ClusterInfo().local_ip_infos == [] and ClusterInfo().remote_ip_infos == []
    assert IpInfo("1.2.3.4", 5) == IpInfo(ip="1.2.3.4", port=5) != IpInfo("1.2.3.4", 6)
    assert repr(CacheIndex(1, 2, 3)) == "CacheIndex(cluster_id=1, cache_id=2, batch_index=3)"
