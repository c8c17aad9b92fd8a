"""Pulls and pushes between two real processes on 127.0.0.1 over Mooncake's Transfer Engine.

The test process is the decoder (a TransferAgent over a LocalRegistry); each prompt is a peer
process (tests/support/peer.py) with its own registry, agent and control listener on a free port.
"""
import contextlib
import time

import numpy
import pytest
from support.network import free_port, mooncake_missing
from support.patterns import pattern
from support.peer import Peer
from support.registries import Cluster, LocalRegistry

from llmdd import LLMException, LLMStatusCode
from llmdd.llm_datadist import BlocksCacheKey, CacheKey, CacheKeyByIdAndIndex
from llmdd.transfer import TransferAgent

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = LLMStatusCode
BLOCK = 4096
PROMPT, DECODER, OTHER_PROMPT = 1, 2, 3
# The module's decoder keeps its link; a test's own agent is another decoder (a LINK claiming a
# linked cluster's id is refused).
SECOND_DECODER = 4


def blocks_key(cluster_id, model_id=0):
    return {"kind": "blocks", "cluster_id": cluster_id, "model_id": model_id}


@pytest.fixture(scope="module", params=["local", "engine"])
def prompt(request):
    """The prompt process, serving from the test registry or from llmdd's engine and CacheRegistry."""
    peer = Peer.agent(PROMPT, registry=request.param)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def registry():
    """The decoder's registry; each test allocates its own caches in it."""
    return LocalRegistry()


@pytest.fixture(scope="module")
def decoder_agent(registry, prompt):
    """One decoder agent for the module: closing an agent that linked takes Mooncake ~2 s."""
    agent = TransferAgent(registry, DECODER)
    yield agent
    agent.close()


@pytest.fixture
def decoder(decoder_agent, prompt):
    """The decoder, freshly linked to the prompt: a test may have unlinked it."""
    decoder_agent.unlink([prompt.cluster()], 1000, force=True)
    status, statuses = decoder_agent.link([prompt.cluster()], 3000)
    assert (status, statuses) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
    return decoder_agent


def tensor_of(registry, entry, index):
    return registry.tensor(entry.cache_id, index)


def test_pull_blocks_moves_the_named_blocks_of_every_tensor(prompt, decoder, registry):
    src = prompt.call("allocate", num_tensors=4, batch=16, block_bytes=BLOCK, blocks=True, keys=[blocks_key(PROMPT, 7)])
    dst = registry.allocate(4, 16, BLOCK, blocks=True)
    src_blocks, dst_blocks = [3, 4, 5, 9, 0], [10, 11, 12, 1, 15]
    status = decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 7), dst, src_blocks, dst_blocks)
    assert status == S.LLM_SUCCESS
    for t in range(4):
        expected = pattern(PROMPT, src["cache_id"], t, 16 * BLOCK).reshape(16, BLOCK)
        got = tensor_of(registry, dst, t).reshape(16, BLOCK)
        for s, d in zip(src_blocks, dst_blocks):
            assert (got[d] == expected[s]).all()
        untouched = sorted(set(range(16)) - set(dst_blocks))
        assert (got[untouched] == 0).all()


def test_pull_blocks_layer_ranges_pick_tensors_by_tensor_num_per_layer(prompt, decoder, registry):
    # 3 layers of K and V on the prompt; the decoder holds 2 layers and takes prompt layers 1..2.
    src = prompt.call("allocate", num_tensors=6, batch=4, block_bytes=BLOCK, blocks=True, keys=[blocks_key(PROMPT, 8)])
    dst = registry.allocate(4, 4, BLOCK, blocks=True)
    status = decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 8), dst, [0, 1], [2, 3], src_layer_range=range(1, 3),
                                 dst_layer_range=range(0, 2), tensor_num_per_layer=2)
    assert status == S.LLM_SUCCESS
    for dst_tensor, src_tensor in enumerate([2, 3, 4, 5]):
        expected = pattern(PROMPT, src["cache_id"], src_tensor, 4 * BLOCK)
        assert (tensor_of(registry, dst, dst_tensor)[2 * BLOCK:] == expected[:2 * BLOCK]).all()


def test_pull_blocks_by_cache_key_cuts_the_entry_into_blocks(prompt, decoder, registry):
    key = {"kind": "cache", "cluster_id": PROMPT, "req_id": 40, "prefix_id": 2**64 - 1, "model_id": 0}
    src = prompt.call("allocate", num_tensors=2, batch=1, block_bytes=3 * BLOCK - 100, keys=[key])
    dst = registry.allocate(2, 8, BLOCK, blocks=True)
    assert decoder.pull_blocks(PROMPT, CacheKey(PROMPT, 40), dst, [], [5, 6, 1]) == S.LLM_SUCCESS
    for t in range(2):
        entry = pattern(PROMPT, src["cache_id"], t, 3 * BLOCK - 100)
        got = tensor_of(registry, dst, t).reshape(8, BLOCK)
        assert (got[5] == entry[:BLOCK]).all() and (got[6] == entry[BLOCK:2 * BLOCK]).all()
        assert (got[1][:BLOCK - 100] == entry[2 * BLOCK:]).all() and (got[1][BLOCK - 100:] == 0).all()


def test_pull_cache_by_cache_key_then_the_key_is_released(prompt, decoder, registry):
    keys = [{"kind": "cache", "cluster_id": PROMPT, "req_id": r, "prefix_id": 2**64 - 1, "model_id": 0}
            for r in (100, 101)]
    src = prompt.call("allocate", num_tensors=4, batch=2, block_bytes=8192, keys=keys)
    dst = registry.allocate(4, 3, 8192)
    assert decoder.pull_cache(PROMPT, CacheKey(PROMPT, 101), dst, batch_index=2) == S.LLM_SUCCESS
    for t in range(4):
        expected = pattern(PROMPT, src["cache_id"], t, 2 * 8192)[8192:]
        assert (tensor_of(registry, dst, t)[2 * 8192:] == expected).all()
        assert (tensor_of(registry, dst, t)[:2 * 8192] == 0).all()
    # The key is gone after the pull; its sibling key still names the cache.
    assert decoder.pull_cache(PROMPT, CacheKey(PROMPT, 101), dst) == S.LLM_KV_CACHE_NOT_EXIST
    assert decoder.pull_cache(PROMPT, CacheKey(PROMPT, 100), dst) == S.LLM_SUCCESS


def test_pull_cache_by_id_and_index_with_size_and_layers(prompt, decoder, registry):
    src = prompt.call("allocate", num_tensors=4, batch=2, block_bytes=8192)
    dst = registry.allocate(2, 1, 8192)
    status = decoder.pull_cache(PROMPT, CacheKeyByIdAndIndex(PROMPT, src["cache_id"], 1), dst, size=1000,
                                src_layer_range=range(3, 4), dst_layer_range=range(1, 2), tensor_num_per_layer=1)
    assert status == S.LLM_SUCCESS
    expected = pattern(PROMPT, src["cache_id"], 3, 2 * 8192)[8192:8192 + 1000]
    assert (tensor_of(registry, dst, 1)[:1000] == expected).all()
    assert (tensor_of(registry, dst, 1)[1000:] == 0).all() and (tensor_of(registry, dst, 0) == 0).all()
    # A pull by id releases nothing: the same pull again succeeds.
    assert decoder.pull_cache(PROMPT, CacheKeyByIdAndIndex(PROMPT, src["cache_id"], 1), dst, size=1000,
                              tensor_num_per_layer=1, src_layer_range=range(0, 2)) == S.LLM_SUCCESS


def test_a_deallocated_cache_held_by_a_key_is_readable_until_pulled_then_freed(prompt, decoder, registry):
    key = {"kind": "cache", "cluster_id": PROMPT, "req_id": 7, "prefix_id": 2**64 - 1, "model_id": 0}
    src = prompt.call("allocate", num_tensors=2, batch=1, block_bytes=4096, keys=[key])
    prompt.call("deallocate", cache_id=src["cache_id"])
    assert prompt.call("is_freed", cache_id=src["cache_id"]) == {"freed": False}
    dst = registry.allocate(2, 1, 4096)
    assert decoder.pull_cache(PROMPT, CacheKey(PROMPT, 7), dst) == S.LLM_SUCCESS
    assert (tensor_of(registry, dst, 1) == pattern(PROMPT, src["cache_id"], 1, 4096)).all()
    assert prompt.call("is_freed", cache_id=src["cache_id"]) == {"freed": True}


def test_one_decoder_links_two_prompts_in_one_call(prompt, registry):
    other = Peer.agent(OTHER_PROMPT)
    try:
        a = prompt.call("allocate", num_tensors=2, batch=4, block_bytes=BLOCK, blocks=True, keys=[blocks_key(PROMPT, 30)])
        b = other.call("allocate", num_tensors=2, batch=4, block_bytes=BLOCK, blocks=True,
                       keys=[blocks_key(OTHER_PROMPT, 30)])
        dst = registry.allocate(2, 4, BLOCK, blocks=True)
        with TransferAgent(registry, SECOND_DECODER) as agent:
            assert agent.link([prompt.cluster(), other.cluster()], 3000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS] * 2)
            assert agent.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 30), dst, [0], [0]) == S.LLM_SUCCESS
            assert agent.pull_blocks(OTHER_PROMPT, BlocksCacheKey(OTHER_PROMPT, 30), dst, [0], [1]) == S.LLM_SUCCESS
        got = tensor_of(registry, dst, 1).reshape(4, BLOCK)
        assert (got[0] == pattern(PROMPT, a["cache_id"], 1, BLOCK)).all()
        assert (got[1] == pattern(OTHER_PROMPT, b["cache_id"], 1, BLOCK)).all()
    finally:
        other.close()


def test_push_blocks_and_push_cache_write_into_remote_accessible_caches(prompt, decoder, registry):
    remote_blocks = prompt.call("allocate", num_tensors=2, batch=4, block_bytes=BLOCK, blocks=True,
                                keys=[blocks_key(PROMPT, 50)], remote_accessible=True)
    remote_cache = prompt.call("allocate", num_tensors=2, batch=2, block_bytes=BLOCK, remote_accessible=True)
    before = bytes.fromhex(prompt.call("tensor", cache_id=remote_blocks["cache_id"], index=1)["hex"])
    src = registry.allocate(2, 4, BLOCK, blocks=True)
    tensor_of(registry, src, 1)[:] = 9
    assert decoder.push_blocks(PROMPT, BlocksCacheKey(PROMPT, 50), src, [2, 3], [0, 1]) == S.LLM_SUCCESS
    after = bytes.fromhex(prompt.call("tensor", cache_id=remote_blocks["cache_id"], index=1)["hex"])
    assert after[:2 * BLOCK] == b"\x09" * (2 * BLOCK) and after[2 * BLOCK:] == before[2 * BLOCK:]

    whole = registry.allocate(2, 1, BLOCK)
    tensor_of(registry, whole, 0)[:] = 5
    key = CacheKeyByIdAndIndex(PROMPT, remote_cache["cache_id"], 1)
    assert decoder.push_cache(PROMPT, key, whole) == S.LLM_SUCCESS
    pushed = bytes.fromhex(prompt.call("tensor", cache_id=remote_cache["cache_id"], index=0)["hex"])
    assert pushed[BLOCK:] == b"\x05" * BLOCK


def test_push_into_a_cache_not_remote_accessible_is_refused(prompt, decoder, registry):
    remote = prompt.call("allocate", num_tensors=1, batch=2, block_bytes=BLOCK, blocks=True, keys=[blocks_key(PROMPT, 51)])
    before = prompt.call("tensor", cache_id=remote["cache_id"], index=0)
    src = registry.allocate(1, 2, BLOCK, blocks=True)
    assert decoder.push_blocks(PROMPT, BlocksCacheKey(PROMPT, 51), src, [0], [0]) == S.LLM_PARAM_INVALID
    assert prompt.call("tensor", cache_id=remote["cache_id"], index=0) == before


@pytest.fixture(scope="module")
def rejection_source(prompt):
    """A blocks cache (2 tensors x 4 blocks) under BlocksCacheKey(PROMPT, 60) for the rejections."""
    return prompt.call("allocate", num_tensors=2, batch=4, block_bytes=BLOCK, blocks=True,
                       keys=[blocks_key(PROMPT, 60)])


@pytest.mark.parametrize("call, expected", [
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [0, 1], [0]), S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [], []), S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [4], [0]), S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [0], [4]), S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [0], [0], src_layer_range=range(0, 2),
                                  tensor_num_per_layer=2), S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [0], [0], src_layer_range=range(0, 1),
                                  dst_layer_range=range(0, 2), tensor_num_per_layer=1), S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [0], [0], tensor_num_per_layer=3),
     S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 60), dst, [0], [0], src_layer_range=range(0, 1, 2),
                                  tensor_num_per_layer=1), S.LLM_PARAM_INVALID),
    (lambda a, dst: a.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 61), dst, [0], [0]), S.LLM_KV_CACHE_NOT_EXIST),
    (lambda a, dst: a.pull_blocks(OTHER_PROMPT, BlocksCacheKey(PROMPT, 60), dst, [0], [0]), S.LLM_NOT_YET_LINK),
    (lambda a, dst: a.pull_cache(PROMPT, CacheKey(PROMPT, 999), dst), S.LLM_PARAM_INVALID),
], ids=["unequal-blocks", "empty-dst-blocks", "src-block-out-of-range", "dst-block-out-of-range",
        "layer-range-past-the-end", "unequal-layer-spans", "tensor-num-not-dividing", "layer-step-2",
        "unknown-key", "not-linked", "pull-cache-into-blocks-cache"])
def test_rejected_pulls_answer_their_status_and_write_nothing(rejection_source, decoder, registry, call, expected):
    dst = registry.allocate(2, 4, BLOCK, blocks=True)
    assert call(decoder, dst) == expected
    assert all((tensor_of(registry, dst, t) == 0).all() for t in range(2))


def test_rejected_pull_cache_batch_index_and_size(prompt, decoder, registry):
    src = prompt.call("allocate", num_tensors=2, batch=2, block_bytes=BLOCK)
    dst = registry.allocate(2, 2, BLOCK)
    key = CacheKeyByIdAndIndex(PROMPT, src["cache_id"], 2)
    assert decoder.pull_cache(PROMPT, key, dst) == S.LLM_PARAM_INVALID
    key = CacheKeyByIdAndIndex(PROMPT, src["cache_id"], 1)
    assert decoder.pull_cache(PROMPT, key, dst, batch_index=2) == S.LLM_PARAM_INVALID
    assert decoder.pull_cache(PROMPT, key, dst, size=BLOCK + 1) == S.LLM_PARAM_INVALID
    assert decoder.pull_cache(PROMPT, key, dst, size=0) == S.LLM_PARAM_INVALID
    assert decoder.pull_cache(PROMPT, CacheKeyByIdAndIndex(PROMPT, 10**6, 0), dst) == S.LLM_KV_CACHE_NOT_EXIST
    assert all((tensor_of(registry, dst, t) == 0).all() for t in range(2))


def test_link_rules(prompt, registry):
    with TransferAgent(registry, SECOND_DECODER) as agent:
        with pytest.raises(LLMException) as raised:
            agent.link([prompt.cluster()], 0)
        assert raised.value.status_code == S.LLM_PARAM_INVALID
        too_many = [Cluster(100 + i, "127.0.0.1", prompt.port) for i in range(17)]
        assert agent.link(too_many, 1000)[0] == S.LLM_CLUSTER_NUM_EXCEED_LIMIT
        assert agent.linked_clusters() == []
        assert agent.link([prompt.cluster()], 3000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        assert agent.link([prompt.cluster()], 3000) == (S.LLM_ALREADY_LINK, [S.LLM_ALREADY_LINK])
        # A listener of another cluster id refuses; a closed port fails at once.
        wrong_id = Cluster(OTHER_PROMPT, "127.0.0.1", prompt.port)
        status, statuses = agent.link([wrong_id], 3000)
        assert statuses == [S.LLM_LINK_FAILED]
        started = time.monotonic()
        status, statuses = agent.link([Cluster(OTHER_PROMPT, "127.0.0.1", free_port())], 2000)
        assert statuses[0] in (S.LLM_LINK_FAILED, S.LLM_TIMEOUT) and time.monotonic() - started < 2.5
        assert agent.linked_clusters() == [PROMPT]


def test_unlink_then_pull_is_not_yet_link(prompt, decoder, registry):
    prompt.call("allocate", num_tensors=1, batch=2, block_bytes=BLOCK, blocks=True, keys=[blocks_key(PROMPT, 70)])
    dst = registry.allocate(1, 2, BLOCK, blocks=True)
    assert decoder.unlink([prompt.cluster()], 1000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
    assert decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 70), dst, [0], [0]) == S.LLM_NOT_YET_LINK
    assert decoder.unlink([prompt.cluster()], 1000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])   # nothing left to end
    assert (tensor_of(registry, dst, 0) == 0).all()


def test_a_prompt_killed_mid_session_fails_bounded_and_the_decoder_stays_usable(prompt, registry):
    doomed = Peer.agent(OTHER_PROMPT)
    try:
        doomed.call("allocate", num_tensors=2, batch=2, block_bytes=BLOCK, blocks=True,
                    keys=[blocks_key(OTHER_PROMPT, 80)])
        prompt.call("allocate", num_tensors=2, batch=2, block_bytes=BLOCK, blocks=True, keys=[blocks_key(PROMPT, 80)])
        dst = registry.allocate(2, 2, BLOCK, blocks=True)
        with TransferAgent(registry, SECOND_DECODER, sync_timeout_ms=1000) as agent:
            assert agent.link([prompt.cluster(), doomed.cluster()], 3000)[0] == S.LLM_SUCCESS
            assert agent.pull_blocks(OTHER_PROMPT, BlocksCacheKey(OTHER_PROMPT, 80), dst, [0], [0]) == S.LLM_SUCCESS
            doomed.kill()
            started = time.monotonic()
            status = agent.pull_blocks(OTHER_PROMPT, BlocksCacheKey(OTHER_PROMPT, 80), dst, [1], [1])
            assert status in (S.LLM_LINK_FAILED, S.LLM_TIMEOUT) and time.monotonic() - started < 2.0
            assert (tensor_of(registry, dst, 0)[BLOCK:] == 0).all()
            # The other link works, the dead one unlinks by force, and relinking a live one works.
            assert agent.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 80), dst, [1], [1]) == S.LLM_SUCCESS
            assert agent.unlink([doomed.cluster()], 1000)[0] == S.LLM_UNLINK_FAILED
            assert agent.unlink([doomed.cluster()], 1000, force=True)[0] == S.LLM_SUCCESS
            assert agent.linked_clusters() == [PROMPT]
    finally:
        doomed.close()


class DeallocatedWhilePinned(LocalRegistry):
    """A deallocate that arrives the moment a transfer has pinned its cache."""

    @contextlib.contextmanager
    def pin(self, cache_id):
        with super().pin(cache_id):
            self.deallocate(cache_id)
            assert not self.is_freed(cache_id)
            yield


def test_a_cache_deallocated_during_a_pull_is_freed_only_after_it(prompt):
    registry = DeallocatedWhilePinned()
    key = {"kind": "cache", "cluster_id": PROMPT, "req_id": 90, "prefix_id": 2**64 - 1, "model_id": 0}
    src = prompt.call("allocate", num_tensors=2, batch=1, block_bytes=1 << 20, keys=[key])
    dst = registry.allocate(2, 1, 1 << 20)
    memory = [registry.tensor(dst.cache_id, t) for t in range(2)]   # keeps the bytes readable after the free
    with TransferAgent(registry, SECOND_DECODER) as agent:
        assert agent.link([prompt.cluster()], 3000)[0] == S.LLM_SUCCESS
        assert agent.pull_cache(PROMPT, CacheKey(PROMPT, 90), dst) == S.LLM_SUCCESS
    assert registry.is_freed(dst.cache_id)
    assert all((memory[t] == pattern(PROMPT, src["cache_id"], t, 1 << 20)).all() for t in range(2))


def test_bytes_survive_a_scattered_block_table_across_many_tensors(prompt, decoder, registry):
    blocks = 64
    src = prompt.call("allocate", num_tensors=8, batch=blocks, block_bytes=1024, blocks=True,
                      keys=[blocks_key(PROMPT, 95)], per_tensor=True)
    dst = registry.allocate(8, blocks, 1024, blocks=True)
    rng = numpy.random.default_rng(5)
    src_blocks = [int(b) for b in rng.permutation(blocks)[:40]]
    dst_blocks = [int(b) for b in rng.permutation(blocks)[:40]]
    assert decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 95), dst, src_blocks, dst_blocks) == S.LLM_SUCCESS
    for t in range(8):
        expected = pattern(PROMPT, src["cache_id"], t, blocks * 1024).reshape(blocks, 1024)
        got = tensor_of(registry, dst, t).reshape(blocks, 1024)
        assert all((got[d] == expected[s]).all() for s, d in zip(src_blocks, dst_blocks))


def test_a_peer_that_never_answers_the_link_times_out_within_the_timeout(registry):
    # A socket that listens but never accepts: the connection opens, the LINK is never answered.
    import socket
    with socket.create_server(("127.0.0.1", 0)) as silent, TransferAgent(registry, DECODER) as agent:
        started = time.monotonic()
        status, statuses = agent.link([Cluster(OTHER_PROMPT, "127.0.0.1", silent.getsockname()[1])], 300)
        elapsed = time.monotonic() - started
    assert (status, statuses) == (S.LLM_TIMEOUT, [S.LLM_TIMEOUT])
    assert 0.25 < elapsed < 1.5


def wait_until_stopped(pid, seconds=5):
    """Until the kernel reports the process stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop in {seconds} s")


def test_a_stopped_prompt_answers_timeout_within_the_sync_wait(registry):
    import signal
    stopped = Peer.agent(OTHER_PROMPT)
    try:
        stopped.call("allocate", num_tensors=2, batch=2, block_bytes=BLOCK, blocks=True,
                     keys=[blocks_key(OTHER_PROMPT, 85)])
        dst = registry.allocate(2, 2, BLOCK, blocks=True)
        with TransferAgent(registry, DECODER, sync_timeout_ms=300) as agent:
            assert agent.link([stopped.cluster()], 3000)[0] == S.LLM_SUCCESS
            stopped.process.send_signal(signal.SIGSTOP)
            wait_until_stopped(stopped.process.pid)   # so the stop catches the control round trip
            try:
                started = time.monotonic()
                status = agent.pull_blocks(OTHER_PROMPT, BlocksCacheKey(OTHER_PROMPT, 85), dst, [0], [0])
                elapsed = time.monotonic() - started
            finally:
                stopped.process.send_signal(signal.SIGCONT)
            assert status == S.LLM_TIMEOUT and elapsed < 1.0
            # The link is broken for good (a late answer would desynchronize it): at once LINK_FAILED.
            assert agent.pull_blocks(OTHER_PROMPT, BlocksCacheKey(OTHER_PROMPT, 85), dst, [0], [0]) == \
                S.LLM_LINK_FAILED
            assert all((tensor_of(registry, dst, t) == 0).all() for t in range(2))
    finally:
        stopped.close()
