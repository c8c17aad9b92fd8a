"""How links begin and end: both sides of one link, unlinks that race each other or a transfer,
agents closed under a link or a transfer, engines finalized or dropped, forks. Two agents (or
engines) in this process over 127.0.0.1; Mooncake moves the bytes."""
import gc
import os
import threading
import time
import types

import numpy
import pytest
from support.network import free_port, listening, mooncake_missing, socket_inodes, sockets_on_port
from support.registries import LocalRegistry

import llmdd
from llmdd import CacheIndex, ClusterInfo, IpInfo
from llmdd.transfer import TransferAgent, _plan

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER = 1, 2
CHILD_EXIT_SECONDS = 20


def cluster(cluster_id, port):
    return types.SimpleNamespace(remote_cluster_id=cluster_id, remote_role_type=0,
                                 remote_ip_infos=[("127.0.0.1", port)], local_ip_infos=[])


def by_id(cluster_id):
    return types.SimpleNamespace(remote_cluster_id=cluster_id)


@pytest.fixture
def prompt():
    registry = LocalRegistry()
    agent = TransferAgent(registry, PROMPT, "127.0.0.1:0", sync_timeout_ms=3000)
    yield agent, registry
    agent.close()


@pytest.fixture
def decoder(prompt):
    registry = LocalRegistry()
    agent = TransferAgent(registry, DECODER, sync_timeout_ms=3000)
    assert agent.link([cluster(PROMPT, prompt[0].listen_address[1])], 3000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
    yield agent, registry
    agent.close()


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def blocks_of(registry, remote_accessible=False):
    from llmdd.llm_datadist import BlocksCacheKey
    entry = registry.allocate(2, 8, 4096, blocks=True, keys=[BlocksCacheKey(PROMPT, 0)],
                              remote_accessible=remote_accessible)
    for t in range(2):
        registry.tensor(entry.cache_id, t)[:] = numpy.arange(8 * 4096, dtype=numpy.uint32).astype(numpy.uint8) + t
    return entry


def test_both_sides_unlinking_at_once_both_succeed(prompt, decoder):
    assert wait_until(lambda: prompt[0].linked_clusters() == [DECODER])
    results = {}
    barrier = threading.Barrier(2)

    def unlink(name, agent, other):
        barrier.wait()
        results[name] = agent.unlink([by_id(other)], 3000, by_id=True)
    threads = [threading.Thread(target=unlink, args=("prompt", prompt[0], DECODER)),
               threading.Thread(target=unlink, args=("decoder", decoder[0], PROMPT))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {"prompt": (S.LLM_SUCCESS, [S.LLM_SUCCESS]), "decoder": (S.LLM_SUCCESS, [S.LLM_SUCCESS])}
    assert prompt[0].linked_clusters() == [] and decoder[0].linked_clusters() == []


def test_a_closed_agent_makes_no_link():
    with TransferAgent(LocalRegistry(), PROMPT, "127.0.0.1:0") as listening:
        agent = TransferAgent(LocalRegistry(), DECODER)
        agent.close()
        assert agent.link([cluster(PROMPT, listening.listen_address[1])], 3000) == (S.LLM_FAILED, [S.LLM_FAILED])
        assert agent.linked_clusters() == [] and listening.linked_clusters() == []
        assert not [t for t in threading.enumerate() if t.name == f"llmdd-link-{PROMPT}"]


def slowed_plan(monkeypatch, started, after=lambda: None):
    """Each transfer plans 0.5 s long, after the serving side pinned its cache (a window), then
    calls after() just before its bytes move."""
    coalesce = _plan.coalesce

    def slow(*arguments):
        started.set()
        time.sleep(0.5)
        after()
        return coalesce(*arguments)
    monkeypatch.setattr(_plan, "coalesce", slow)


def test_an_unlink_from_the_peer_waits_for_the_transfer_under_way(prompt, decoder, monkeypatch):
    from llmdd.llm_datadist import BlocksCacheKey
    source = blocks_of(prompt[1])
    destination = decoder[1].allocate(2, 8, 4096, blocks=True)
    started, result, pins_when_moving = threading.Event(), {}, []
    slowed_plan(monkeypatch, started, lambda: pins_when_moving.append(prompt[1].pin_count(source.cache_id)))
    puller = threading.Thread(target=lambda: result.setdefault("pull", decoder[0].pull_blocks(
        PROMPT, BlocksCacheKey(PROMPT, 0), destination, [1, 2], [3, 4])))
    puller.start()
    assert started.wait(10)
    # The prompt ends the link while the decoder's transfer holds its pin there.
    assert prompt[0].unlink([by_id(DECODER)], 3000, by_id=True) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
    puller.join(30)
    assert result["pull"] == S.LLM_SUCCESS
    assert pins_when_moving == [1]   # the prompt still held the cache for the decoder as its bytes moved
    for t in range(2):
        assert numpy.array_equal(decoder[1].tensor(destination.cache_id, t).reshape(8, 4096)[3:5],
                                 prompt[1].tensor(source.cache_id, t).reshape(8, 4096)[1:3])
    assert prompt[1].pin_count(source.cache_id) == 0
    assert wait_until(lambda: decoder[0].linked_clusters() == [])


def test_closing_an_agent_during_a_transfer_lets_it_finish_first(prompt, decoder, monkeypatch):
    from llmdd.llm_datadist import BlocksCacheKey
    blocks_of(prompt[1])
    destination = decoder[1].allocate(2, 8, 4096, blocks=True)
    started, result = threading.Event(), {}
    slowed_plan(monkeypatch, started)
    puller = threading.Thread(target=lambda: result.setdefault("pull", decoder[0].pull_blocks(
        PROMPT, BlocksCacheKey(PROMPT, 0), destination, [0], [0])))
    puller.start()
    assert started.wait(10)
    decoder[0].close()
    puller.join(30)
    assert result["pull"] == S.LLM_SUCCESS
    assert decoder[0].pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [0], [0]) == S.LLM_NOT_YET_LINK


def test_the_side_that_listened_pushes_on_the_link_and_unlinks_it(prompt, decoder):
    from llmdd.llm_datadist import BlocksCacheKey
    source = blocks_of(prompt[1])
    decoder_blocks = decoder[1].allocate(2, 8, 4096, blocks=True, keys=[BlocksCacheKey(DECODER, 0)],
                                         remote_accessible=True)
    assert wait_until(lambda: prompt[0].linked_clusters() == [DECODER])
    assert prompt[0].push_blocks(DECODER, BlocksCacheKey(DECODER, 0), source, [5], [6]) == S.LLM_SUCCESS
    assert numpy.array_equal(decoder[1].tensor(decoder_blocks.cache_id, 1).reshape(8, 4096)[6],
                             prompt[1].tensor(source.cache_id, 1).reshape(8, 4096)[5])
    assert prompt[0].unlink([cluster(DECODER, 0)], 3000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
    assert wait_until(lambda: decoder[0].linked_clusters() == [])


# The engine: finalized or dropped with links, and forked.

class FinalizingIndex:
    def __init__(self, engine):
        self.engine = engine

    def __index__(self):
        self.engine.Finalize()
        return 0


def test_an_argument_that_finalizes_the_engine_leaves_no_link_behind():
    port = free_port()
    with llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt) as prompt_engine, \
            llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as decoder_engine:
        assert prompt_engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
        assert decoder_engine.Initialize({}) == S.LLM_SUCCESS
        rets = []
        hostile = ClusterInfo(PROMPT, FinalizingIndex(decoder_engine), [], [IpInfo("127.0.0.1", port)])
        assert decoder_engine.LinkLlmClusters([hostile], rets) == S.LLM_FAILED
        assert not [t for t in threading.enumerate() if t.name == f"llmdd-link-{PROMPT}"]
        assert decoder_engine.Initialize({}) == S.LLM_SUCCESS
        assert decoder_engine.LinkLlmClusters([ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", port)])], rets) == \
            S.LLM_SUCCESS


def test_a_dropped_listening_engine_with_caches_frees_its_port_at_once():
    port = free_port()
    engine = llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt)
    assert engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
    cache = engine.allocate_cache(llmdd.CacheDesc(2, [4, 64], llmdd.DT_UINT8))
    assert listening(port)
    gc.disable()   # no collection may do it for the engine
    try:
        del engine, cache
        assert not listening(port)
    finally:
        gc.enable()


def test_a_re_initialized_engine_listens_where_its_new_options_say():
    first, second = free_port(), free_port()
    with llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt) as engine:
        assert engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{first}"}) == S.LLM_SUCCESS
        engine.Finalize()
        assert engine.LinkLlmClusters([], []) == S.LLM_FAILED   # makes no service after Finalize
        assert engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{second}"}) == S.LLM_SUCCESS
        assert listening(second) and not listening(first)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_leaves_the_parents_links_alone():
    port = free_port()
    with llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt) as prompt_engine, \
            llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as decoder_engine:
        assert prompt_engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
        assert decoder_engine.Initialize({}) == S.LLM_SUCCESS
        source = prompt_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        destination = decoder_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        assert decoder_engine.LinkLlmClusters([ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", port)])], []) == \
            S.LLM_SUCCESS
        pull = lambda: decoder_engine.PullKvCache(CacheIndex(PROMPT, source.cache_id, 0), destination)  # noqa: E731
        assert pull() == S.LLM_SUCCESS
        child = os.fork()
        if child == 0:   # the child exits as a process does, running its exit handlers
            import atexit
            atexit._run_exitfuncs()
            os._exit(0)
        deadline = time.monotonic() + CHILD_EXIT_SECONDS
        while os.waitpid(child, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(child, 9)
                os.waitpid(child, 0)
                pytest.fail(f"the forked child did not exit in {CHILD_EXIT_SECONDS} s")
            time.sleep(0.05)
        assert pull() == S.LLM_SUCCESS


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs os.fork and /proc/self/fd")
def test_a_forked_child_keeps_no_copy_of_the_parents_control_sockets():
    # A copy would keep what the parent closes without a shutdown open, and (were the listener
    # not shut down) its port bound: the parent could not listen on it again.
    port = free_port()
    to_prompt = [ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", port)])]
    with llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt) as prompt_engine, \
            llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as decoder_engine:
        assert prompt_engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
        assert decoder_engine.Initialize({}) == S.LLM_SUCCESS
        assert decoder_engine.LinkLlmClusters(to_prompt, []) == S.LLM_SUCCESS
        control = sockets_on_port(port)   # the listener and both ends of the link
        forked, ready = os.pipe()
        child = os.fork()
        if child == 0:   # outlives what the parent does next; killed at the end
            os.write(ready, b"1")   # its fork handlers have run
            time.sleep(CHILD_EXIT_SECONDS)
            os._exit(0)
        os.close(ready)
        try:
            assert os.read(forked, 1) == b"1"
            assert len(control) >= 3 and not control & socket_inodes(child)
            prompt_engine.Finalize()
            assert not listening(port)
            assert prompt_engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
            source = prompt_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
            destination = decoder_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
            assert decoder_engine.UnlinkLlmClusters(to_prompt, [], force_flag=True) == S.LLM_SUCCESS
            assert decoder_engine.LinkLlmClusters(to_prompt, [], 3000) == S.LLM_SUCCESS
            assert decoder_engine.PullKvCache(CacheIndex(PROMPT, source.cache_id, 0), destination) == S.LLM_SUCCESS
        finally:
            os.close(forked)
            os.kill(child, 9)
            os.waitpid(child, 0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs os.fork and /proc/self/fd")
def test_a_forked_child_keeps_no_copy_of_mooncakes_handshake_listeners(monkeypatch):
    from llmdd.transfer import _mooncake
    monkeypatch.setenv(_mooncake.ENGINES_VARIABLE, "1")   # stopping each takes 1 s
    engines = _mooncake.MooncakeEngines("127.0.0.1", "tcp", "")
    ports = list(engines.handshake_ports)
    child = os.fork()
    if child == 0:   # outlives what the parent does next; killed at the end
        time.sleep(CHILD_EXIT_SECONDS)
        os._exit(0)
    try:
        engines.close()
        assert not [port for port in ports if listening(port)]
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_the_listening_side_may_pull_as_soon_as_the_linking_side_has_its_answer(monkeypatch):
    # The listener makes an accepted link usable only after its answer went out; a transfer from the
    # listening side in that window waits for the link instead of answering LLM_NOT_YET_LINK.
    from llmdd.llm_datadist import BlocksCacheKey
    activate = TransferAgent._activate

    def slow_activate(agent, channel):
        time.sleep(0.5)
        activate(agent, channel)
    monkeypatch.setattr(TransferAgent, "_activate", slow_activate)
    decoder_registry = LocalRegistry()
    source = decoder_registry.allocate(2, 8, 4096, blocks=True, keys=[BlocksCacheKey(DECODER, 0)])
    decoder_registry.tensor(source.cache_id, 1)[:] = 7
    with TransferAgent(LocalRegistry(), PROMPT, "127.0.0.1:0", sync_timeout_ms=3000) as listening, \
            TransferAgent(decoder_registry, DECODER, sync_timeout_ms=3000) as linking:
        destination = listening._registry.allocate(2, 8, 4096, blocks=True)
        assert linking.link([cluster(PROMPT, listening.listen_address[1])], 3000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        assert listening.pull_blocks(DECODER, BlocksCacheKey(DECODER, 0), destination, [0, 1], [2, 3]) == \
            S.LLM_SUCCESS
        assert (listening._registry.tensor(destination.cache_id, 1)[3 * 4096:4 * 4096] == 7).all()


def test_a_closed_agent_hands_its_mooncake_engines_back_unregistered_and_the_next_agent_takes_them():
    # Stopping a Mooncake engine takes about a second holding the GIL: a Finalize hands its engines
    # back idle, with no region left for a peer to read, and the next initialization reuses them.
    from llmdd.llm_datadist import BlocksCacheKey
    from llmdd.transfer import _engines
    with TransferAgent(LocalRegistry(), PROMPT, "127.0.0.1:0", sync_timeout_ms=3000) as first:
        source = blocks_of(first._registry)
        with TransferAgent(LocalRegistry(), DECODER, sync_timeout_ms=3000) as puller:
            destination = puller._registry.allocate(2, 8, 4096, blocks=True)
            assert puller.link([cluster(PROMPT, first.listen_address[1])], 3000)[0] == S.LLM_SUCCESS
            assert puller.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [0], [1]) == S.LLM_SUCCESS
        engines = first._mooncake
        assert engines is not None and source.regions
    assert first._mooncake is None
    assert engines in _engines._idle[engines.kind] and engines._exposed == {}
    with TransferAgent(LocalRegistry(), PROMPT, "127.0.0.1:0", sync_timeout_ms=3000) as second, \
            TransferAgent(LocalRegistry(), DECODER, sync_timeout_ms=3000) as linking:
        assert linking.link([cluster(PROMPT, second.listen_address[1])], 3000)[0] == S.LLM_SUCCESS
        assert engines in (second._mooncake, linking._mooncake)
        assert engines not in _engines._idle.get(engines.kind, [])


def test_an_engine_that_neither_listens_nor_opened_remote_access_serves_no_cache_by_id():
    # A linked peer may name a cache by id only on an engine that serves its caches: one that
    # listens (llm.ListenIpInfo) or opened them to remote access (llm.EnableRemoteCacheAccessible).
    port = free_port()
    with llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt) as prompt_engine, \
            llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as decoder_engine:
        assert prompt_engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}"}) == S.LLM_SUCCESS
        assert decoder_engine.Initialize({}) == S.LLM_SUCCESS
        served = prompt_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        private = decoder_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        destination = prompt_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        own = decoder_engine.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        assert decoder_engine.LinkLlmClusters([ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", port)])], []) == \
            S.LLM_SUCCESS
        assert decoder_engine.PullKvCache(CacheIndex(PROMPT, served.cache_id, 0), own) == S.LLM_SUCCESS
        assert prompt_engine.PullKvCache(CacheIndex(DECODER, private.cache_id, 0), destination) == \
            S.LLM_KV_CACHE_NOT_EXIST
