"""Transfers in CANN's v1 mode (no llm.EnableCacheManager: datadist.kv_cache_manager), between real
processes with the bytes checked, and v1's argument rules.

The replay follows vLLM-Ascend's v0 LLMDataDistConnector (vllm-project/vllm-ascend,
vllm_ascend/distributed/llmdatadist_connector.py, cited as connector.<method>): a raw options dict,
one cluster id on both sides, caches allocated under CacheKeys and written through
per_device_tensor_addrs, pulled by CacheKeyByIdAndIndex. v1's rules are those of CANN's
llm_datadist_v1 (hicann/ge: api/python/llm_datadist_v1/*.py and dflow/llm_datadist/v1/, cited as
<file>:<line>).
"""
import json
import time

import pytest
from support.dropin import failure
from support.network import free_port, listening, mooncake_missing
from support.patterns import memory, pattern
from support.peer import Peer

from llmdd.llm_datadist import (
    BlocksCacheKey,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    DataType,
    KvCache,
    LLMClusterInfo,
    LLMConfig,
    LLMDataDist,
    LLMException,
    LLMRole,
    LLMStatusCode,
    Placement,
)

SUCCESS = LLMStatusCode.LLM_SUCCESS
INVALID = LLMStatusCode.LLM_PARAM_INVALID
LOCALHOST = "127.0.0.1"
CLUSTER_ID = 0              # connector KVTransferEngine.__init__: each side's cluster id is its local rank
LAYERS, TOKENS, HEADS, HEAD_SIZE, HIDDEN = 4, 16, 2, 8, 32
FAILED_LINK_SECONDS = 30    # a killed peer's link is seen broken at once; bounded for a busy machine

transfers = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))


def connector_descs(seq_len_dim_index):
    """connector.send_kv_caches_and_hidden_states (seq_len_dim_index 1) and
    .recv_kv_caches_and_hidden_states (-1): key, value, input tokens and hidden states, in the
    order of their model ids 1 to 4."""
    kv_shape, input_shape, hidden_shape = (1, TOKENS, HEADS, HEAD_SIZE), (1, TOKENS, 1, 1), (1, TOKENS, 1, HIDDEN)
    return [CacheDesc(LAYERS, kv_shape, DataType.DT_FLOAT16, seq_len_dim_index=seq_len_dim_index),
            CacheDesc(LAYERS, kv_shape, DataType.DT_FLOAT16, seq_len_dim_index=seq_len_dim_index),
            CacheDesc(1, input_shape, DataType.DT_INT32, seq_len_dim_index=-1),
            CacheDesc(1, hidden_shape, DataType.DT_FLOAT16, seq_len_dim_index=-1)]


def served(model_id, tensor, nbytes):
    """What the prompt writes into tensor `tensor` of the cache of `model_id`."""
    return pattern(model_id, tensor, nbytes)


def raw_options(listen_port=None):
    """connector.prepare_data_dist: the options dict the connector builds, without LLMConfig."""
    options = {"llm.SyncKvCacheWaitTime": "5000", "ge.exec.deviceId": "0"}
    if listen_port is not None:
        options["llm.listenIpInfo"] = f"{LOCALHOST}:{listen_port}"
    return options


def connector_cluster(port):
    """connector.make_cluster: the decoder names the prompt by its own cluster id, local port 0."""
    cluster = LLMClusterInfo()
    cluster.remote_cluster_id = CLUSTER_ID
    cluster.append_local_ip_info(LOCALHOST, 0)
    cluster.append_remote_ip_info(LOCALHOST, port)
    return cluster


@pytest.fixture
def prompt(ended_peers):
    """A drop-in peer initialized as the connector's prompt (connector.prepare_data_dist), its
    listen port in `listen_port`."""
    peer = Peer.dropin()
    ended_peers.append(peer)
    peer.listen_port = free_port()
    peer.run(f"datadist = LLMDataDist(LLMRole.PROMPT, {CLUSTER_ID})\n"
             f"datadist.init({raw_options(peer.listen_port)!r})\n"
             "kv_transfer = datadist.kv_cache_manager")
    yield peer
    peer.end()


@pytest.fixture
def made():
    """LLMDataDists made in this process, finalized afterwards."""
    datadists = []
    yield datadists
    for datadist in datadists:
        datadist.finalize()


@pytest.fixture
def decoder(made):
    datadist = LLMDataDist(LLMRole.DECODER, CLUSTER_ID)
    datadist.init(raw_options())
    made.append(datadist)
    return datadist


def serve_connector_caches(prompt):
    """connector.send_kv_caches_and_hidden_states: four caches under CacheKey(cluster, 0, model
    id), each tensor written through per_device_tensor_addrs[0]."""
    prompt.run("buffers = []\n"
               f"for model_id, desc in enumerate({connector_descs(1)!r}, start=1):\n"
               f"    cache = kv_transfer.allocate_cache(desc, [CacheKey({CLUSTER_ID}, 0, model_id)])\n"
               "    for tensor, addr in enumerate(cache.per_device_tensor_addrs[0]):\n"
               "        memory(addr, desc.size)[:] = pattern(model_id, tensor, desc.size)\n"
               "    buffers.append(cache)\n"
               "result = [cache.cache_id for cache in buffers]")


def assert_served(cache, model_id):
    size = cache.cache_desc.size
    for tensor, addr in enumerate(cache.per_device_tensor_addrs[0]):
        assert memory(addr, size).tobytes() == served(model_id, tensor, size).tobytes(), (model_id, tensor)


@transfers
@pytest.mark.sim_only   # the test reads 'device' memory from the host
def test_v0_connector_replay_moves_every_cache(prompt, decoder):
    serve_connector_caches(prompt)
    # connector.__init__: the decoder links at start-up and reads the per-cluster statuses.
    cluster = connector_cluster(prompt.listen_port)
    assert decoder.link_clusters([cluster], 20000) == (SUCCESS, [SUCCESS])
    # docs check_link_status: the client (decoder) checks its link before pulling; success returns None.
    assert decoder.check_link_status(CLUSTER_ID) is None

    kv_transfer = decoder.kv_cache_manager
    buffers = [kv_transfer.allocate_cache(desc) for desc in connector_descs(-1)]   # connector.recv_...
    for buffer, desc in zip(buffers, connector_descs(-1)):
        assert type(buffer) is KvCache and len(buffer.per_device_tensor_addrs) == 1
        assert len(buffer.per_device_tensor_addrs[0]) == desc.num_tensors
    # connector.recv_kv_caches_and_hidden_states: CacheKeyByIdAndIndex(remote cluster, cache id, 0); the
    # prompt's ids are 1 to 4 (v1's counter starts at 1 in each process).
    for model_id, buffer in enumerate(buffers, start=1):
        assert kv_transfer.pull_cache(CacheKeyByIdAndIndex(CLUSTER_ID, model_id, 0), buffer, 0) is None
        assert_served(buffer, model_id)

    # A pull by CacheKey (docs KvCacheManager.pull_cache) drops the key's reference on the prompt side
    # (kv_cache_manager.py:132-133): a second pull by it finds nothing, and the prompt's deallocate then
    # frees the cache, while a cache whose key was not pulled stays held by its key.
    again = kv_transfer.allocate_cache(connector_descs(-1)[0])
    kv_transfer.pull_cache(CacheKey(CLUSTER_ID, 0, 1), again)
    assert_served(again, 1)
    assert failure(kv_transfer.pull_cache, CacheKey(CLUSTER_ID, 0, 1), again) \
        is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    assert prompt.run("result = datadist._engine.memory_stats()['num_caches']") == 4
    assert prompt.run("kv_transfer.deallocate_cache(buffers[0])\nkv_transfer.deallocate_cache(buffers[1])\n"
                      "result = datadist._engine.memory_stats()['num_caches']") == 3

    # connector.close: unlink_clusters; the link is gone afterwards.
    assert decoder.unlink_clusters([cluster], 5000) == (SUCCESS, [SUCCESS])
    assert failure(decoder.check_link_status, CLUSTER_ID) is LLMStatusCode.LLM_NOT_YET_LINK
    assert failure(kv_transfer.pull_cache, CacheKeyByIdAndIndex(CLUSTER_ID, 3, 0), buffers[2]) \
        is LLMStatusCode.LLM_NOT_YET_LINK
    for buffer in [*buffers, again]:
        kv_transfer.deallocate_cache(buffer)


@transfers
@pytest.mark.sim_only
def test_v1_pull_blocks_moves_the_named_blocks(prompt, decoder):
    desc = "CacheDesc(2, [4, 64], DataType.DT_UINT8)"
    prompt.run(f"blocks = kv_transfer.allocate_blocks_cache({desc}, BlocksCacheKey({CLUSTER_ID}, 0))\n"
               "for tensor, addr in enumerate(blocks.per_device_tensor_addrs[0]):\n"
               "    memory(addr, 256)[:] = pattern(9, tensor, 256)")
    assert decoder.link_clusters([connector_cluster(prompt.listen_port)])[0] is SUCCESS
    kv_transfer = decoder.kv_cache_manager
    blocks = kv_transfer.allocate_blocks_cache(eval(desc))
    for addr in blocks.per_device_tensor_addrs[0]:
        memory(addr, 256)[:] = 0
    # kv_cache_manager.py:235-242: pull_blocks(prompt_cache_key, decoder_kv_cache, prompt_blocks, decoder_blocks).
    kv_transfer.pull_blocks(BlocksCacheKey(CLUSTER_ID, 0), blocks, [3, 0], [1, 2])
    for tensor, addr in enumerate(blocks.per_device_tensor_addrs[0]):
        rows, expected = memory(addr, 256).reshape(4, 64), served(9, tensor, 256).reshape(4, 64)
        assert rows[1].tobytes() == expected[3].tobytes() and rows[2].tobytes() == expected[0].tobytes()
        assert not rows[0].any() and not rows[3].any()
    assert decoder.unlink_clusters([connector_cluster(prompt.listen_port)]) == (SUCCESS, [SUCCESS])
    kv_transfer.deallocate_cache(blocks)


@transfers
def test_check_link_status_fails_once_the_prompt_is_gone(decoder):
    prompt = Peer.dropin()
    try:
        port = free_port()
        prompt.run(f"datadist = LLMDataDist(LLMRole.PROMPT, {CLUSTER_ID})\ndatadist.init({raw_options(port)!r})")
        cluster = connector_cluster(port)
        assert decoder.link_clusters([cluster], 5000) == (SUCCESS, [SUCCESS])
        decoder.check_link_status(CLUSTER_ID)
    finally:
        prompt.kill()
        prompt.close()
    # The decoder's side of the link breaks when the prompt's process ends (its socket closes).
    deadline = time.monotonic() + FAILED_LINK_SECONDS
    while True:
        try:
            decoder.check_link_status(CLUSTER_ID)
        except LLMException as error:
            assert error.status_code is LLMStatusCode.LLM_LINK_FAILED
            break
        assert time.monotonic() < deadline, "the link still looks up after its peer was killed"
        time.sleep(0.1)
    # A broken link stays until unlinked (force: the peer cannot be told), then it is not linked.
    assert decoder.unlink_clusters([cluster], 5000, force=True) == (SUCCESS, [SUCCESS])
    assert failure(decoder.check_link_status, CLUSTER_ID) is LLMStatusCode.LLM_NOT_YET_LINK


# v1's rules, one process

@transfers
def test_v1_unlink_of_a_cluster_not_linked_answers_not_yet_link_and_succeeds(decoder):
    # ge's v1 link_manager.cc UnlinkClusters: a cluster's LLM_NOT_YET_LINK does not fail the call.
    not_linked = LLMStatusCode.LLM_NOT_YET_LINK
    assert decoder.unlink_clusters([connector_cluster(free_port())], 1000) == (SUCCESS, [not_linked])
    assert decoder.unlink_clusters([connector_cluster(free_port())], 1000, force=True) == (SUCCESS, [not_linked])


def v1(made, role, **options):
    datadist = LLMDataDist(role, CLUSTER_ID)
    datadist.init({**raw_options(), **options})
    made.append(datadist)
    return datadist


def test_only_a_decoder_links_and_checks_links(made):
    prompt = v1(made, LLMRole.PROMPT)
    # llm_datadist.cc:136-137: LinkClusters is the decoder's, LLM_PARAM_INVALID as a status (rets cleared).
    assert prompt.link_clusters([connector_cluster(free_port())], 1000) == (INVALID, [])
    # llm_datadist.cc:125-126: so is CheckLinkStatus, raised by check_link_status.
    assert failure(prompt.check_link_status, CLUSTER_ID) is INVALID


def test_v1_link_clusters_checks_the_cluster_infos_as_a_status(decoder):
    # link_manager.cc:53-66: clusters not empty, each with one local and one remote ip info (one device).
    no_local = LLMClusterInfo()
    no_local.remote_cluster_id = CLUSTER_ID
    no_local.append_remote_ip_info(LOCALHOST, free_port())
    assert decoder.link_clusters([]) == (INVALID, [])
    assert decoder.link_clusters([no_local]) == (INVALID, [])
    assert decoder.unlink_clusters([no_local], force=True) == (INVALID, [])
    two_remotes = connector_cluster(free_port())
    two_remotes.append_remote_ip_info(LOCALHOST, free_port())
    assert decoder.link_clusters([two_remotes]) == (INVALID, [])
    other_local = LLMClusterInfo()
    other_local.remote_cluster_id = 1
    other_local.append_local_ip_info("127.0.0.2", 0)
    other_local.append_remote_ip_info(LOCALHOST, free_port())
    assert decoder.link_clusters([connector_cluster(free_port()), other_local]) == (INVALID, [])
    with pytest.raises(TypeError):
        decoder.link_clusters(connector_cluster(free_port()))


def test_check_link_status_checks_its_argument(decoder):
    with pytest.raises(TypeError):
        decoder.check_link_status("0")
    with pytest.raises(ValueError):
        decoder.check_link_status(-1)
    assert failure(decoder.check_link_status, 2**64 - 1) is LLMStatusCode.LLM_NOT_YET_LINK


def test_v1_pulls_follow_v1s_argument_rules(decoder):
    manager = decoder.kv_cache_manager
    cache = manager.allocate_cache(CacheDesc(2, [2, 8], DataType.DT_INT8))
    host = KvCache.create_cpu_cache(CacheDesc(2, [2, 8], DataType.DT_INT8, Placement.HOST), [0x1000, 0x2000])
    key = CacheKey(CLUSTER_ID, 1)
    for call, error in [
        # kv_cache_manager.py:349-372: pull_cache's checks, in order.
        (lambda: manager.pull_cache(BlocksCacheKey(CLUSTER_ID), cache), TypeError),
        (lambda: manager.pull_cache(key, "cache"), TypeError),
        (lambda: manager.pull_cache(key, host), LLMException),
        (lambda: manager.pull_cache(key, cache, size=1.5), TypeError),
        (lambda: manager.pull_cache(key, cache, batch_index=-1), ValueError),
        (lambda: manager.pull_cache(key, cache, size=0), LLMException),
        (lambda: manager.pull_cache(key, cache, src_cache_offset=-1), ValueError),
        (lambda: manager.pull_cache(key, cache, dst_cache_offset="0"), TypeError),
        (lambda: manager.pull_cache(CacheKey(CLUSTER_ID, 1, prefix_id=2), cache), LLMException),
        (lambda: manager.pull_cache(key, cache, tensor_num_per_layer=0), LLMException),
        (lambda: manager.pull_cache(key, cache, src_layer_range=range(0, 2, 2)), LLMException),
        # kv_cache_manager.py:258-268: pull_blocks takes a BlocksCacheKey and lists of blocks of one length.
        (lambda: manager.pull_blocks(CacheKey(CLUSTER_ID, 1), cache, [0], [0]), TypeError),
        (lambda: manager.pull_blocks(BlocksCacheKey(CLUSTER_ID), cache, (0,), [0]), TypeError),
        (lambda: manager.pull_blocks(BlocksCacheKey(CLUSTER_ID), host, [0], [0]), LLMException),
        (lambda: manager.pull_blocks(BlocksCacheKey(CLUSTER_ID), cache, [], [0]), LLMException),
        (lambda: manager.pull_blocks(BlocksCacheKey(CLUSTER_ID), cache, [0], []), LLMException),
        (lambda: manager.pull_blocks(BlocksCacheKey(CLUSTER_ID), cache, [0, 1], [0]), LLMException),
    ]:
        with pytest.raises(error) as raised:
            call()
        assert getattr(raised.value, "status_code", INVALID) is INVALID
    # Nothing is linked: a well-formed pull says so.
    assert failure(manager.pull_cache, key, cache) is LLMStatusCode.LLM_NOT_YET_LINK
    # llmdd does not move bytes at an offset yet: checked as v1 does, then refused as not enabled.
    assert failure(manager.pull_cache, key, cache, src_cache_offset=0) \
        is LLMStatusCode.LLM_FEATURE_NOT_ENABLED
    # v1's KvCacheManager has no push (kv_cache_manager.py): pushes need llm.EnableCacheManager.
    assert not hasattr(manager, "push_cache") and not hasattr(manager, "push_blocks")
    manager.deallocate_cache(cache)


def test_v1_roles_keep_their_calls(made):
    prompt = v1(made, LLMRole.PROMPT).kv_cache_manager
    cache = prompt.allocate_cache(CacheDesc(2, [2, 8], DataType.DT_INT8))
    # kv_cache_manager.py:349 and :258, llm_datadist.cc:170-180: pulls are the decoder's.
    assert failure(prompt.pull_cache, CacheKey(CLUSTER_ID, 1), cache) is INVALID
    assert failure(prompt.pull_blocks, BlocksCacheKey(CLUSTER_ID), cache, [0], [0]) is INVALID
    prompt.deallocate_cache(cache)
    made.pop().finalize()
    decoder = v1(made, LLMRole.DECODER).kv_cache_manager
    desc = CacheDesc(2, [2, 8], DataType.DT_INT8)
    # kv_cache_manager.py:184-188, :115-116 and :228: only a prompt keys its caches and removes keys.
    assert failure(decoder.allocate_cache, desc, [CacheKey(CLUSTER_ID, 1)]) is INVALID
    assert failure(decoder.allocate_blocks_cache, desc, BlocksCacheKey(CLUSTER_ID)) is INVALID
    assert failure(decoder.remove_cache_key, CacheKey(CLUSTER_ID, 1)) is INVALID
    assert made[0]._engine.memory_stats()["num_caches"] == 0


def test_per_device_tensor_addrs_empty_after_deallocate(made):
    manager = v1(made, LLMRole.PROMPT).kv_cache_manager
    cache = manager.allocate_cache(CacheDesc(2, [2, 8], DataType.DT_INT8), [CacheKey(CLUSTER_ID, 1)])
    addrs = cache.per_device_tensor_addrs
    assert len(addrs) == 1 and len(addrs[0]) == 2 and all(type(addr) is int and addr for addr in addrs[0])
    # kv_cache_manager.py:213: deallocate_cache empties them, though the key still holds the memory.
    manager.deallocate_cache(cache)
    assert cache.per_device_tensor_addrs == []
    manager.remove_cache_key(CacheKey(CLUSTER_ID, 1))


def test_v1_listen_ip_info_is_one_ip_port_per_device(made):
    # config.py:157-183 (gen_cluster_info_if_not_exist): a prompt's llm.listenIpInfo is one "ip:port" per device.
    port = free_port()
    for options in [{"llm.listenIpInfo": f"{LOCALHOST}:{port};{LOCALHOST}:{port + 1}"},
                    {"llm.listenIpInfo": LOCALHOST},
                    {"llm.listenIpInfo": f"{LOCALHOST}:{port}", "ge.exec.deviceId": "0;1"}]:
        datadist = LLMDataDist(LLMRole.PROMPT, CLUSTER_ID)
        with pytest.raises(LLMException) as raised:
            datadist.init({**raw_options(), **options})
        assert raised.value.status_code is INVALID


def test_a_v1_prompt_serves_from_init_where_v1_listens(made):
    port, other_port = free_port(), free_port()
    config = LLMConfig()
    config.device_id = 0
    config.listen_ip_info = f"{LOCALHOST}:{port}"
    v1(made, LLMRole.PROMPT, **config.generate_options())
    assert listening(port)
    made.pop().finalize()
    assert not listening(port)
    # Only a prompt listens in v1 (config.py:165: its cluster info alone gets listen_ip_info).
    v1(made, LLMRole.DECODER, **config.generate_options())
    assert not listening(port)
    made.pop().finalize()
    # With llm.ClusterInfo, v1 listens where its listen_ip_info says, and llm.listenIpInfo is not read
    # (config.py:158-159; flow_graph_manager.cc:109-121).
    config.cluster_info = json.dumps({"cluster_id": CLUSTER_ID, "logic_device_id": ["0:0:0:0"],
                                      "listen_ip_info": [{"ip": LOCALHOST, "port": other_port}]})
    v1(made, LLMRole.PROMPT, **config.generate_options())
    assert listening(other_port) and not listening(port)
    made.pop().finalize()
    with pytest.raises(LLMException) as raised:   # flow_graph_manager.cc:122: a prompt's cluster info needs one
        LLMDataDist(LLMRole.PROMPT, CLUSTER_ID).init({**raw_options(), "llm.ClusterInfo": '{"cluster_id": 0}'})
    assert raised.value.status_code is INVALID
