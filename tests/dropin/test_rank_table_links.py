"""Rank-table links through the drop-in: LLMDataDist.link, query_register_mem_status and unlink
as vLLM-Ascend's LLMDataDistCMgrConnector, MindIE-LLM's separate deployment and omni-infer call
them, with CANN's checks, statuses and exceptions.

Each pattern runs between this process and drop-in peer processes (tests/support/peer.py), every
side of a comm on an address of its own on loopback (127.0.0.1, .2, .3: Linux's loopback takes
them all), all listening at one free port given as llmdd.RankTablePort (the default would do for
a single run); every pull is checked byte for byte. The clients' sources are cited by file:
vllm_ascend/distributed/llmdatadist_c_mgr_connector.py (vLLM-Ascend), mindie_llm/.../
separate_deployment_engine.py (MindIE), omni/accelerators/pd/llmdatadist_manager.py (omni-infer).
"""
import concurrent.futures
import json
import socket
import struct
import threading
import time

import numpy
import pytest
from support.dropin import hostile, locked_probe
from support.network import free_port, mooncake_missing
from support.patterns import memory, pattern
from support.peer import Peer

from llmdd.llm_datadist import (
    BlocksCacheKey,
    CacheDesc,
    DataType,
    LLMConfig,
    LLMDataDist,
    LLMException,
    LLMRole,
    LLMStatusCode,
    RegisterMemStatus,
)

pytestmark = [pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing())),
              pytest.mark.sim_only]   # numpy memory stands for device memory only on the sim build

LINK_SECONDS = 60   # a comm's links: Mooncake and a data-plane helper starting on each side, a busy machine
PREFILL, DECODE = 7, 8
MHA_SHAPE = [8, 4, 2, 16]   # [num_blocks, block_size, kv_heads, head_dim]
MLA_SHAPES = ([8, 4, 1, 32], [8, 4, 1, 8])   # k_normed, k_pe
LAYERS = 2


def device(rank, ip, device_id=0, **fields):
    return {"device_id": str(device_id), "device_ip": ip, "rank_id": str(rank), **fields}


def vllm_rank_table(prefill_ip, decode_ip):
    """The connector's table for two devices of one server (add_remote_agent): version 1.2, one
    server entry with both devices, rank 0 the prefill's."""
    return json.dumps({"version": "1.2", "server_count": "1", "status": "completed", "server_list": [
        {"device": [device(0, prefill_ip, super_device_id="0"), device(1, decode_ip, super_device_id="1")],
         "server_id": "127.0.0.1"}]})


def mindie_rank_table(devices):
    """MindIE's get_rank_table for two servers: version 1.0, one device each (its physical device
    id an int), listed by rank; `devices` is [(server id, device ip, physical device id)] by rank."""
    return json.dumps({"server_count": str(len(devices)), "status": "completed", "version": "1.0", "server_list": [
        {"device": [{"device_id": device_id, "device_ip": ip, "rank_id": str(rank)}], "server_id": server_id}
        for rank, (server_id, ip, device_id) in enumerate(devices)]})


def settings_snippet(role, cluster_id, port, settings):
    """A peer snippet that makes `datadist` and `manager` with these LLMConfig settings."""
    lines = ["config = LLMConfig()", "config.device_id = 0", f"config.ge_options = {rank_table_port(port)!r}"]
    lines += [f"config.{name} = {value!r}" for name, value in settings.items()]
    lines += [f"datadist = LLMDataDist(LLMRole.{role.name}, {cluster_id})", "datadist.init(config.generate_options())",
              "manager = datadist.cache_manager",
              # The clients' polling loop (vLLM-Ascend add_remote_agent, omni-infer check_register_status).
              "def wait_linked(comm_id):",
              "    import time",
              f"    deadline = time.monotonic() + {LINK_SECONDS}",
              "    while datadist.query_register_mem_status(comm_id) != RegisterMemStatus.OK:",
              "        if datadist.query_register_mem_status(comm_id) == RegisterMemStatus.FAILED:",
              "            raise RuntimeError(f'comm {comm_id} failed')",
              "        assert time.monotonic() < deadline, f'comm {comm_id} still PREPARING'",
              "        time.sleep(0.05)"]
    return "\n".join(lines)


def rank_table_port(port):
    return {"llmdd.RankTablePort": str(port)}


VLLM_SETTINGS = dict(sync_kv_timeout=20000, enable_switch_role=True, enable_cache_manager=True,
                     enable_remote_cache_accessible=True)
MINDIE_SETTINGS = dict(enable_cache_manager=True, enable_remote_cache_accessible=True, link_total_time=1080,
                       link_retry_count=80, sync_kv_timeout=1000)
OMNI_SETTINGS = dict(local_comm_res="", sync_kv_timeout=5000, enable_remote_cache_accessible=True)


def wait_linked(datadist, comm_id):
    """vLLM-Ascend's loop: query until OK; FAILED raises (bounded here)."""
    deadline = time.monotonic() + LINK_SECONDS
    while (status := datadist.query_register_mem_status(comm_id)) != RegisterMemStatus.OK:
        assert status == RegisterMemStatus.PREPARING, f"comm {comm_id}: {status}"
        assert time.monotonic() < deadline, f"comm {comm_id} still PREPARING after {LINK_SECONDS} s"
        time.sleep(0.05)


def patterned_caches(seed, shapes, layers):
    """Per shape, `layers` float16 arrays, each with its own pattern (seed, shape index, layer)."""
    caches = []
    for index, shape in enumerate(shapes):
        arrays = [numpy.zeros(shape, numpy.float16) for _ in range(layers)]
        for layer, array in enumerate(arrays):
            memory(array.ctypes.data, array.nbytes)[:] = pattern(seed, index, layer, array.nbytes)
        caches.append(arrays)
    return caches


def patterned_snippet(seed, shapes, layers, keys):
    """The peer's side of patterned_caches, each cache registered under its key (a BlocksCacheKey
    expression) with register_blocks_cache, as the clients register their KV tensors."""
    return "\n".join([
        "caches = []",
        f"for index, shape in enumerate({shapes!r}):",
        f"    arrays = [numpy.zeros(shape, numpy.float16) for _ in range({layers})]",
        "    for layer, array in enumerate(arrays):",
        f"        memory(array.ctypes.data, array.nbytes)[:] = pattern({seed}, index, layer, array.nbytes)",
        "    caches.append(arrays)",
        f"keys = [{', '.join(keys)}]",
        "registered = [manager.register_blocks_cache(CacheDesc(len(arrays), list(arrays[0].shape), "
        "DataType.DT_FLOAT16), [int(array.ctypes.data) for array in arrays], key) for arrays, key in zip(caches, keys)]"])


def expected_blocks(seed, shape_index, shape, layer, blocks):
    """The bytes of `blocks` of the peer's patterned array."""
    served = pattern(seed, shape_index, layer, int(numpy.prod(shape)) * 2).view(numpy.float16).reshape(shape)
    return served[blocks].tobytes()


@pytest.fixture
def sides():
    """sides() -> a started drop-in Peer; sides.local(role, cluster_id, options) -> this process's
    initialized LLMDataDist. Finalized here first, then the peers end and are checked."""
    peers, made = [], []

    def peer():
        peers.append(Peer.dropin())
        return peers[-1]

    def local(role, cluster_id, options):
        datadist = LLMDataDist(role, cluster_id)
        datadist.init(options)
        made.append(datadist)
        return datadist

    peer.local = local
    yield peer
    for datadist in made:
        datadist.finalize()
    for each in peers:
        each.end()
    for each in peers:
        each.close(check=True)


def options_of(port, **settings):
    config = LLMConfig()
    config.device_id = 0
    config.ge_options = rank_table_port(port)
    for name, value in settings.items():
        setattr(config, name, value)
    return config.generate_options()


# vLLM-Ascend's LLMDataDistCMgrConnector

@pytest.mark.parametrize("mla", [False, True], ids=["mha", "mla"])
def test_vllm_ascend_cmgr_connector_links_by_rank_table_and_pulls_from_threads(sides, mla):
    port = free_port()
    shapes = MLA_SHAPES if mla else (MHA_SHAPE,)
    # register_kv_caches: MHA one cache of each layer's K and V under BlocksCacheKey(cluster); MLA
    # a cache of the k_normed and one of the k_pe tensors, under model_id 0 and 1.
    layers = LAYERS if mla else 2 * LAYERS
    keys = [f"BlocksCacheKey(cluster_id={PREFILL}, model_id={model_id})" for model_id in range(len(shapes))]
    prefill = sides()
    prefill.run(settings_snippet(LLMRole.PROMPT, PREFILL, port, VLLM_SETTINGS))
    prefill.run(patterned_snippet(1, shapes, layers, keys))
    decode = sides.local(LLMRole.DECODER, DECODE, options_of(port, **VLLM_SETTINGS))
    local_caches = patterned_caches(2, shapes, layers)
    registered = [decode.cache_manager.register_blocks_cache(
        CacheDesc(len(arrays), list(arrays[0].shape), DataType.DT_FLOAT16), [int(a.ctypes.data) for a in arrays],
        BlocksCacheKey(cluster_id=DECODE, model_id=model_id)) for model_id, arrays in enumerate(local_caches)]

    # add_remote_agent on both sides: one comm name, {prefill: 0, decode: 1}, one table.
    comm_name, ranks = "pd_comm_127.0.0.1_127.0.0.2", {PREFILL: 0, DECODE: 1}
    table = vllm_rank_table("127.0.0.1", "127.0.0.2")
    decode_comm = decode.link(comm_name, ranks, table)
    prefill_comm = prefill.run(f"result = datadist.link({comm_name!r}, {ranks!r}, {table!r})")
    assert decode_comm == prefill_comm == 1
    wait_linked(decode, decode_comm)
    prefill.run(f"wait_linked({prefill_comm})")

    # _read_blocks from the worker's executor threads: each request its own remote and local blocks.
    requests = [([0, 1], [7, 6]), ([2, 3, 4], [5, 4, 3]), ([5], [0]), ([6, 7], [1, 2])]

    def read_blocks(remote_blocks, local_blocks):
        for model_id, cache in enumerate(registered):
            decode.cache_manager.pull_blocks(BlocksCacheKey(cluster_id=PREFILL, model_id=model_id), cache,
                                             remote_blocks, local_blocks)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as executor:
        for done in [executor.submit(read_blocks, *request) for request in requests]:
            done.result()
    for index, (shape, arrays) in enumerate(zip(shapes, local_caches)):
        for layer, array in enumerate(arrays):
            for remote_blocks, local_blocks in requests:
                assert array[local_blocks].tobytes() == expected_blocks(1, index, shape, layer, remote_blocks)

    decode.unlink(decode_comm)
    prefill.run(f"datadist.unlink({prefill_comm})")
    with pytest.raises(LLMException) as raised:
        decode.cache_manager.pull_blocks(BlocksCacheKey(cluster_id=PREFILL), registered[0], [0], [0])
    assert raised.value.status_code is LLMStatusCode.LLM_NOT_YET_LINK


# MindIE-LLM's SeparateDeploymentEngine

@pytest.mark.parametrize("prompt_role", [LLMRole.PROMPT, LLMRole.MIX])   # MindIE's roles of a prefill node
def test_mindie_links_by_a_v1_0_table_and_answers_already_link_by_status_code(sides, prompt_role):
    port = free_port()
    prompt_ip, decoder_ip = "127.0.0.2", "127.0.0.1"
    # get_cluster_rank_info: the lower device ip is rank 0, here the decoder's, so it listens.
    table = mindie_rank_table([(decoder_ip, decoder_ip, 1), (prompt_ip, prompt_ip, 0)])
    ranks = {DECODE: 0, PREFILL: 1}
    link_name = f"link{prompt_ip}:{decoder_ip}"
    raw = {"llm.RdmaServiceLevel": "4", "llm.RdmaTrafficClass": "132"}   # kv_rdma_sl, kv_rdma_tc
    prompt = sides()
    prompt.run(settings_snippet(prompt_role, PREFILL, port, MINDIE_SETTINGS).replace(
        "datadist.init(config.generate_options())", f"datadist.init({{**config.generate_options(), **{raw!r}}})"))
    # set_npu_cache: K under model_id 0, V under model_id 1.
    prompt.run(patterned_snippet(3, [MHA_SHAPE, MHA_SHAPE], LAYERS,
                                 [f"BlocksCacheKey(cluster_id={PREFILL}, model_id={m})" for m in (0, 1)]))
    decoder = sides.local(LLMRole.DECODER, DECODE, {**options_of(port, **MINDIE_SETTINGS), **raw})
    local_caches = patterned_caches(4, [MHA_SHAPE, MHA_SHAPE], LAYERS)
    npu_caches = [decoder.cache_manager.register_blocks_cache(
        CacheDesc(LAYERS, MHA_SHAPE, DataType.DT_FLOAT16), [int(a.ctypes.data) for a in arrays],
        BlocksCacheKey(cluster_id=DECODE, model_id=model_id)) for model_id, arrays in enumerate(local_caches)]

    comm_id = decoder.link(link_name, ranks, table)
    prompt_comm = prompt.run(f"result = datadist.link({link_name!r}, {ranks!r}, {table!r})")
    # SeparateDeploymentEngine.link: a second link of the pair is LLM_ALREADY_LINK, read from e.status_code.
    with pytest.raises(LLMException) as raised:
        decoder.link(link_name, ranks, table)
    assert raised.value.status_code == LLMStatusCode.LLM_ALREADY_LINK
    wait_linked(decoder, comm_id)
    prompt.run(f"wait_linked({prompt_comm})")

    # pull_kv: each model_id's blocks, by BlocksCacheKey(cluster_id=remote, model_id=...).
    for model_id, cache in enumerate(npu_caches):
        decoder.cache_manager.pull_blocks(BlocksCacheKey(cluster_id=PREFILL, model_id=model_id), cache, [3, 0], [1, 5])
    for model_id, arrays in enumerate(local_caches):
        for layer, array in enumerate(arrays):
            assert array[[1, 5]].tobytes() == expected_blocks(3, model_id, MHA_SHAPE, layer, [3, 0])
    decoder.unlink(comm_id)
    prompt.run(f"datadist.unlink({prompt_comm})\ndatadist.finalize()")


# omni-infer's LLMDataDistManager: a decode rank links one comm with each of two prompt ranks.

def ip_port_to_int(ip, port):
    """omni-infer's cluster ids: an IPv4 address and a port in one integer."""
    return (struct.unpack("!I", socket.inet_aton(ip))[0] << 16) | port


RETRYABLE_CODES = [LLMStatusCode.LLM_REPEAT_REQUEST, LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT,
                   LLMStatusCode.LLM_PROCESSING_LINK, LLMStatusCode.LLM_DEVICE_OUT_OF_MEMORY,
                   LLMStatusCode.LLM_TIMEOUT, LLMStatusCode.LLM_WAIT_PROCESS_TIMEOUT, LLMStatusCode.LLM_LINK_BUSY]


def test_omni_infer_links_a_comm_per_prompt_rank_and_pulls_with_retries(sides):
    port = free_port()
    decode_ip = "127.0.0.2"
    decode_id = ip_port_to_int(decode_ip, 9000)
    prompts = []
    for seed, prompt_ip in enumerate(("127.0.0.1", "127.0.0.3"), start=5):
        prompt_id = ip_port_to_int(prompt_ip, 9000)
        prompt = sides()
        prompt.run(settings_snippet(LLMRole.PROMPT, prompt_id, port, OMNI_SETTINGS))
        prompt.run(patterned_snippet(seed, [MHA_SHAPE, MHA_SHAPE], LAYERS,
                                     [f"BlocksCacheKey(prompt_cluster_id={prompt_id}, model_id={m})" for m in (0, 1)]))
        # prepare_ranktables: a table of the prompt rank and the decode rank, two servers.
        table = json.dumps({"version": "1.0", "server_count": "2", "status": "completed", "server_list": [
            {"server_id": prompt_ip, "device": [device(0, prompt_ip)]},
            {"server_id": decode_ip, "device": [device(1, decode_ip)]}]})
        ranks = {prompt_id: 0, decode_id: 1}
        comm_name = f"{prompt_ip}-{prompt_id}-{decode_ip}-{decode_id}-p0-d0-0"
        prompt_comm = prompt.run(f"result = datadist.link({comm_name!r}, {ranks!r}, {table!r})")
        prompts.append((prompt, prompt_id, seed, comm_name, ranks, table, prompt_comm))
    decoder = sides.local(LLMRole.DECODER, decode_id, options_of(port, **OMNI_SETTINGS))
    local_caches = patterned_caches(9, [MHA_SHAPE, MHA_SHAPE], LAYERS)
    kv_caches = [decoder.cache_manager.register_blocks_cache(
        CacheDesc(LAYERS, MHA_SHAPE, DataType.DT_FLOAT16), [int(a.ctypes.data) for a in arrays])
        for arrays in local_caches]
    comm_ids = {prompt_id: decoder.link(name, ranks, table) for _, prompt_id, _, name, ranks, table, _ in prompts}
    assert sorted(comm_ids.values()) == [1, 2]
    for comm_id in comm_ids.values():   # check_register_status
        wait_linked(decoder, comm_id)
    for prompt, *_, prompt_comm in prompts:
        prompt.run(f"wait_linked({prompt_comm})")

    def pull_kv(src_blocks, tgt_blocks, prompt_cluster_id):
        for model_id, kv_cache in enumerate(kv_caches):
            key = BlocksCacheKey(prompt_cluster_id=prompt_cluster_id, model_id=model_id)
            for attempt in range(3):   # _pull_blocks: retried on RETRYABLE_CODES only
                try:
                    decoder.cache_manager.pull_blocks(key, kv_cache, src_blocks, tgt_blocks)
                    break
                except LLMException as error:
                    assert error.status_code in RETRYABLE_CODES and attempt < 2, error

    for (_, prompt_id, seed, *_), (src_blocks, tgt_blocks) in zip(prompts, ([[1, 2], [3, 4]], [[6, 7], [0, 5]])):
        pull_kv(src_blocks, tgt_blocks, prompt_id)
        for model_id, arrays in enumerate(local_caches):
            for layer, array in enumerate(arrays):
                assert array[tgt_blocks].tobytes() == expected_blocks(seed, model_id, MHA_SHAPE, layer, src_blocks)
    for comm_id in comm_ids.values():
        decoder.unlink(comm_id)
    for prompt, *_, prompt_comm in prompts:
        prompt.run(f"datadist.unlink({prompt_comm})")


# Failures, as CANN answers them

def test_a_peer_that_never_links_fails_the_comm_after_link_total_time(sides):
    port = free_port()
    decoder = sides.local(LLMRole.DECODER, DECODE, options_of(port, enable_cache_manager=True, link_total_time=1))
    started = time.monotonic()
    comm_id = decoder.link("pd", {PREFILL: 0, DECODE: 1}, vllm_rank_table("127.0.0.1", "127.0.0.2"))
    assert decoder.query_register_mem_status(comm_id) is RegisterMemStatus.PREPARING
    while decoder.query_register_mem_status(comm_id) is RegisterMemStatus.PREPARING:
        assert time.monotonic() - started < 10
        time.sleep(0.05)
    assert decoder.query_register_mem_status(comm_id) is RegisterMemStatus.FAILED
    assert time.monotonic() - started >= 1
    decoder.unlink(comm_id)


@pytest.mark.parametrize("table,status", [
    ("not json", LLMStatusCode.LLM_LINK_FAILED),
    ('{"version": "1.2", "server_list": [{"device": [{}]}]}', LLMStatusCode.LLM_LINK_FAILED),
    (vllm_rank_table("127.0.0.1", "127.0.0.1"), LLMStatusCode.LLM_LINK_FAILED),
    ("{" * 2_000_000, LLMStatusCode.LLM_LINK_FAILED),
])
def test_a_table_llmdd_cannot_use_raises_link_failed(sides, table, status):
    decoder = sides.local(LLMRole.DECODER, DECODE, options_of(free_port(), enable_cache_manager=True))
    with pytest.raises(LLMException) as raised:
        decoder.link("pd", {PREFILL: 0, DECODE: 1}, table)
    assert raised.value.status_code is status


def test_link_query_and_unlink_answer_canns_statuses(sides):
    decoder = sides.local(LLMRole.DECODER, DECODE, options_of(free_port(), enable_cache_manager=True))
    table = vllm_rank_table("127.0.0.1", "127.0.0.2")
    with pytest.raises(LLMException) as raised:   # comm_link_manager.cc Link: the local cluster must be named
        decoder.link("pd", {PREFILL: 0, DECODE + 1: 1}, table)
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    for call in (decoder.query_register_mem_status, decoder.unlink):   # QueryRegisterMemStatus, Unlink
        with pytest.raises(LLMException) as raised:
            call(1)
        assert raised.value.status_code is LLMStatusCode.LLM_NOT_YET_LINK


def test_unlink_during_preparing_ends_it_at_once(sides):
    decoder = sides.local(LLMRole.DECODER, DECODE, options_of(free_port(), enable_cache_manager=True))
    comm_id = decoder.link("pd", {PREFILL: 0, DECODE: 1}, vllm_rank_table("127.0.0.1", "127.0.0.2"))
    time.sleep(0.3)
    assert decoder.query_register_mem_status(comm_id) is RegisterMemStatus.PREPARING
    started = time.monotonic()
    decoder.unlink(comm_id)
    assert time.monotonic() - started < 10   # not llm.LinkTotalTime's 30 s
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("llmdd-comm-")]
    with pytest.raises(LLMException) as raised:
        decoder.query_register_mem_status(comm_id)
    assert raised.value.status_code is LLMStatusCode.LLM_NOT_YET_LINK


def test_registration_is_restricted_after_link_as_cann_does(sides):
    decoder = sides.local(LLMRole.DECODER, DECODE, options_of(free_port(), enable_cache_manager=True,
                                                              enable_remote_cache_accessible=True))
    manager = decoder.cache_manager
    tensor = numpy.zeros(MHA_SHAPE, numpy.float16)
    desc = CacheDesc(1, MHA_SHAPE, DataType.DT_FLOAT16)
    before = manager.register_blocks_cache(desc, [int(tensor.ctypes.data)], remote_accessible=True)
    comm_id = decoder.link("pd", {PREFILL: 0, DECODE: 1}, vllm_rank_table("127.0.0.1", "127.0.0.2"))
    # cache_manager.py:329-330, :359-360: no remote-accessible cache after link (its default: none).
    # After link_clusters registrations stay as they were (test_cann_usage.py).
    registry = decoder._engine._registry()
    for register in (manager.register_cache, manager.register_blocks_cache):
        with pytest.raises(LLMException) as raised:
            register(desc, [int(tensor.ctypes.data)], remote_accessible=True)
        assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
        assert registry.entry(register(desc, [int(tensor.ctypes.data)]).cache_id).remote_accessible is False
    assert registry.entry(before.cache_id).remote_accessible is True
    decoder.unlink(comm_id)
    with pytest.raises(LLMException):   # still so after the unlink, as in CANN
        manager.register_blocks_cache(desc, [int(tensor.ctypes.data)], remote_accessible=True)


# The options CANN's link manager reads at init (comm_link_manager.cc Initialize)

@pytest.mark.parametrize("key,malformed,taken", [
    ("llm.LinkRetryCount", ["0", "101", "ten"], ["1", "100"]),
    ("llm.LinkTotalTime", ["4294967295", "1.5", ""], ["0", "-5", "2147483647"]),   # an int32; not positive: 30 s
    ("llm.RdmaTrafficClass", ["-1", "4294967296"], ["0", "4294967295"]),
    ("llm.RdmaServiceLevel", ["high"], ["7"]),
    ("llmdd.RankTablePort", ["0", "65536"], ["1", "65535"]),
])
def test_link_options_are_checked_at_init(key, malformed, taken):
    for value in malformed:
        datadist = LLMDataDist(LLMRole.PROMPT, PREFILL)
        try:
            with pytest.raises(LLMException) as raised:
                datadist.init({"ge.exec.deviceId": "0", "llm.EnableCacheManager": "1", key: value})
        finally:
            datadist.finalize()   # should it have initialized, the next one still may
        assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    for value in taken:
        datadist = LLMDataDist(LLMRole.PROMPT, PREFILL)
        datadist.init({"ge.exec.deviceId": "0", "llm.EnableCacheManager": "1", key: value})
        datadist.finalize()


def test_arguments_calling_back_into_the_engine_never_find_the_comms_locked(sides):
    # link, unlink and query_register_mem_status convert their arguments first: an int or str
    # subclass's __hash__ and __eq__ never run while the comms are locked (the same thread calling
    # back there would hang).
    decoder = sides.local(LLMRole.DECODER, DECODE, options_of(free_port(), enable_cache_manager=True))
    table = vllm_rank_table("127.0.0.1", "127.0.0.2")
    found_locked = []
    probe = locked_probe(lambda: decoder.query_register_mem_status(1), found_locked)
    first = decoder.link("pd", {hostile(int, probe)(PREFILL): 0, DECODE: 1}, table)
    second = decoder.link(hostile(str, probe)("pd again"), {PREFILL: 0, DECODE: 1}, table)
    assert decoder.query_register_mem_status(hostile(int, probe)(first)) is RegisterMemStatus.PREPARING
    for comm_id in (first, second):
        decoder.unlink(hostile(int, probe)(comm_id))
    assert found_locked and not any(found_locked)


def test_switch_role_is_refused_while_a_comm_is_being_linked(sides):
    # A comm still PREPARING is a link under way: switching the role (which makes the transfer
    # service anew) would drop it silently, its id then unknown. Refused as for a link that is up.
    decoder = sides.local(LLMRole.DECODER, DECODE, options_of(free_port(), enable_cache_manager=True))
    comm_id = decoder.link("pd", {PREFILL: 0, DECODE: 1}, vllm_rank_table("127.0.0.1", "127.0.0.2"))
    assert decoder.query_register_mem_status(comm_id) is RegisterMemStatus.PREPARING
    with pytest.raises(LLMException) as raised:
        decoder.switch_role(LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{free_port()}"})
    assert raised.value.status_code is LLMStatusCode.LLM_EXIST_LINK
    assert decoder.query_register_mem_status(comm_id) is RegisterMemStatus.PREPARING
    decoder.unlink(comm_id)
    decoder.switch_role(LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{free_port()}"})
    assert decoder.role is LLMRole.PROMPT
