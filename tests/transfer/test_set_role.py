"""llmdd.LlmDataDist.SetRole (docs/facts.md section 1): the role, and the listener on the options'
llm.ListenIpInfo that it starts, moves or stops, between two processes on 127.0.0.1. The peer is
an engine (tests/support/peer.py's engine side) that links to this one."""
import pytest
from support.network import free_port, listening, mooncake_missing
from support.patterns import cache_tensor, fill_pattern, pattern
from support.peer import Peer

import llmdd
from llmdd import ClusterInfo, IpInfo

S = llmdd.LLMStatusCode
LOCAL, PEER = 11, 12
TENSORS, BATCH, BLOCK = 2, 4, 256


@pytest.fixture
def engine():
    with llmdd.LlmDataDist(LOCAL, llmdd.LlmRole.kDecoder) as dd:
        assert dd.Initialize({"llm.SyncKvCacheWaitTime": "3000"}) == S.LLM_SUCCESS
        yield dd


def listen_at(port):
    return {"llm.ListenIpInfo": f"127.0.0.1:{port}"}


def test_set_role_before_initialize_is_llm_failed():
    dd = llmdd.LlmDataDist(LOCAL, llmdd.LlmRole.kDecoder)
    assert dd.SetRole(llmdd.LlmRole.kPrompt, listen_at(free_port())) == S.LLM_FAILED
    assert dd.role == llmdd.LlmRole.kDecoder


def test_set_role_checks_its_arguments(engine):
    with pytest.raises(ValueError):
        engine.SetRole(7)
    with pytest.raises(TypeError):
        engine.SetRole(llmdd.LlmRole.kPrompt, {"llm.ListenIpInfo": 26000})
    assert engine.SetRole(llmdd.LlmRole.kPrompt, {"llm.ListenIpInfo": "localhost:26000"}) == S.LLM_PARAM_INVALID
    with pytest.raises(llmdd.LLMException) as raised:
        engine.set_role(llmdd.LlmRole.kPrompt, {"llm.listenIpInfo": "127.0.0.1"})
    assert raised.value.status_code == S.LLM_PARAM_INVALID
    assert engine.role == llmdd.LlmRole.kDecoder


def test_the_listener_starts_moves_and_stops_with_the_listen_ip_info(engine):
    first, second = free_port(), free_port()
    assert engine.SetRole(llmdd.LlmRole.kPrompt, listen_at(first)) == S.LLM_SUCCESS
    assert engine.role == llmdd.LlmRole.kPrompt and listening(first)
    assert engine.SetRole(llmdd.LlmRole.kMix, {"llm.listenIpInfo": f"127.0.0.1:{second}"}) == S.LLM_SUCCESS
    assert engine.role == llmdd.LlmRole.kMix and listening(second) and not listening(first)
    engine.set_role(llmdd.LlmRole.kMix)
    assert not listening(second)


@pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))
def test_a_peer_links_to_the_started_listener_and_pulls_by_id_until_it_stops(engine):
    cache = llmdd.Cache()
    assert engine.AllocateCache(llmdd.CacheDesc(TENSORS, [BATCH, BLOCK], llmdd.DT_UINT8), cache) == S.LLM_SUCCESS
    for index in range(TENSORS):
        fill_pattern(cache_tensor(cache, index), LOCAL, index)
    # A transfer call makes the engine's transfer service, not listening: then SetRole starts the listener.
    rets = []
    assert engine.UnlinkLlmClusters([ClusterInfo(PEER, 0, [], [IpInfo("127.0.0.1", 1)])], rets) == S.LLM_SUCCESS
    port = free_port()
    assert engine.SetRole(llmdd.LlmRole.kPrompt, listen_at(port)) == S.LLM_SUCCESS
    peer = Peer.engine(PEER)
    try:
        assert peer.call("link", cluster_id=LOCAL, ip="127.0.0.1", port=port)["status"] == S.LLM_SUCCESS
        # A listening engine serves its caches by id (as at Initialize with llm.ListenIpInfo).
        own = peer.call("allocate", num_tensors=TENSORS, batch=BATCH, block_bytes=BLOCK)["cache_id"]
        assert peer.call("pull_cache", remote=LOCAL, remote_cache_id=cache.cache_id, cache_id=own)["status"] == 0
        for index in range(TENSORS):
            pulled = bytes.fromhex(peer.call("tensor", cache_id=own, index=index)["hex"])
            assert pulled[:BLOCK] == pattern(LOCAL, index, BATCH * BLOCK)[:BLOCK].tobytes()
        # docs/facts.md section 1: no SetRole while a link is up, whichever side made it.
        assert engine.SetRole(llmdd.LlmRole.kDecoder) == S.LLM_EXIST_LINK
        assert engine.role == llmdd.LlmRole.kPrompt and listening(port)
        peer_cluster = ClusterInfo(PEER, 0, [], [IpInfo("127.0.0.1", peer.port)])
        assert engine.UnlinkLlmClusters([peer_cluster], rets) == S.LLM_SUCCESS
        assert engine.SetRole(llmdd.LlmRole.kDecoder) == S.LLM_SUCCESS
        assert not listening(port)
        assert peer.call("link", cluster_id=LOCAL, ip="127.0.0.1", port=port)["status"] == S.LLM_LINK_FAILED
    finally:
        peer.close()


def test_an_address_calling_back_into_set_role_leaves_no_listener_after_finalize():
    # A str subclass's __eq__ that runs SetRole again, while SetRole compares the address: every
    # listener it started ends with the engine's Finalize.
    first, second = free_port(), free_port()

    class Address(str):
        calls = []
        __hash__ = str.__hash__

        def __eq__(self, other):
            if not self.calls:
                self.calls.append(dd.SetRole(llmdd.LlmRole.kPrompt, listen_at(second)))
            return str.__eq__(self, other)

    with llmdd.LlmDataDist(LOCAL, llmdd.LlmRole.kDecoder) as dd:
        assert dd.Initialize({}) == S.LLM_SUCCESS
        assert dd.SetRole(llmdd.LlmRole.kPrompt, {"llm.ListenIpInfo": Address(f"127.0.0.1:{first}")}) == S.LLM_SUCCESS
    assert not listening(first) and not listening(second)
