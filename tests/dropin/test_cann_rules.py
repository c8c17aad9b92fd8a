"""CANN's rules a client meets between processes: a second registration under a key (SGLang's KV pool
and aux buffer under one BlocksCacheKey), which caches remote-accessible mode moves, and the
LLMDataDist finalized at exit.

Sources are cited as <file>:<line> of the hixl repository (src/llm_datadist/ for the C++).
"""
import json
import subprocess
import sys

import numpy
import pytest
from support.dropin import LOCALHOST, POOL, cluster_info, failure
from support.network import free_port, listening, mooncake_missing
from support.patterns import memory, pattern
from support.peer import Peer

from llmdd.llm_datadist import (
    BlocksCacheKey,
    CacheDesc,
    CacheKey,
    DataType,
    LLMDataDist,
    LLMException,
    LLMRole,
    LLMStatusCode,
    Placement,
)

pytestmark = [pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing())),
              pytest.mark.sim_only]   # numpy memory stands for device memory only on the sim build

SUCCESS = LLMStatusCode.LLM_SUCCESS
PROMPT_ID, DECODER_ID = 7, 8


def prompt_cluster(port):
    """The prompt at `port`, linked from any local port."""
    return cluster_info(PROMPT_ID, port, local_port=0)


def numpy_cache(manager, shape, register, **arguments):
    """register(desc, addrs, **arguments) over zeroed numpy tensors: (cache, tensors)."""
    count, *tensor_shape = shape
    tensors = [numpy.zeros(tensor_shape, numpy.uint8) for _ in range(count)]
    desc = CacheDesc(num_tensors=count, shape=tensor_shape, data_type=DataType.DT_UINT8, placement=Placement.DEVICE)
    return register(desc, [int(t.ctypes.data) for t in tensors], **arguments), tensors


@pytest.fixture
def prompt():
    """A drop-in peer listening at prompt.listen_port: prompt.start(**LLMConfig settings) initializes
    its `datadist` (a PROMPT of cluster PROMPT_ID unless role and cluster_id say otherwise) and `manager`,
    and patterned(count, shape, seed) makes (desc, tensors, addrs) of patterned numpy tensors there."""
    peer = Peer.dropin()
    peer.listen_port = free_port()

    def start(role=LLMRole.PROMPT, cluster_id=PROMPT_ID, **settings):
        lines = ["config = LLMConfig()", "config.device_id = 0",
                 f"config.listen_ip_info = '{LOCALHOST}:{peer.listen_port}'"]
        lines += [f"config.{name} = {value!r}" for name, value in settings.items()]
        lines += [f"datadist = LLMDataDist(LLMRole.{role.name}, {cluster_id})",
                  "datadist.init(config.generate_options())",
                  "manager = datadist.cache_manager",
                  "def patterned(count, shape, seed):",
                  "    tensors = [numpy.zeros(shape, numpy.uint8) for _ in range(count)]",
                  "    for index, tensor in enumerate(tensors):",
                  "        memory(tensor.ctypes.data, tensor.nbytes)[:] = pattern(seed + index, tensor.nbytes)",
                  "    desc = CacheDesc(num_tensors=count, shape=list(shape), data_type=DataType.DT_UINT8, "
                  "placement=Placement.DEVICE)",
                  "    return desc, tensors, [int(tensor.ctypes.data) for tensor in tensors]"]
        peer.run("\n".join(lines))
    peer.start = start
    yield peer
    peer.close(check=True)


def test_sglangs_aux_buffer_registered_second_under_the_kv_pools_key_is_what_the_key_names(local, prompt):
    # cache_manager.cc:138-149: RegisterCacheEntry never checks keys (only Allocate does, :199) and
    # AddCacheIndices overwrites a blocks cache's key (:262-263): the key names the cache registered last.
    prompt.start(enable_cache_manager=True)
    prompt.run("kv_desc, kv, kv_addrs = patterned(2, (4, 64), 10)\n"
               "aux_desc, aux, aux_addrs = patterned(1, (4, 16), 20)\n"
               f"kv_cache = manager.register_blocks_cache(kv_desc, kv_addrs, BlocksCacheKey({PROMPT_ID}, 0))\n"
               f"aux_cache = manager.register_blocks_cache(aux_desc, aux_addrs, BlocksCacheKey({PROMPT_ID}, 0))")
    decoder = local(LLMRole.DECODER, DECODER_ID, enable_cache_manager=True)
    manager = decoder.cache_manager
    cache, (tensor,) = numpy_cache(manager, (1, 4, 16), manager.register_blocks_cache)
    assert decoder.link_clusters([prompt_cluster(prompt.listen_port)], 5000) == (SUCCESS, [SUCCESS])
    manager.pull_blocks(BlocksCacheKey(PROMPT_ID, 0), cache, src_blocks=[0, 1, 2, 3], dst_blocks=[3, 2, 1, 0])
    aux_bytes = pattern(20, 64).reshape(4, 16)
    assert numpy.array_equal(tensor, aux_bytes[::-1])

    # The KV pool is still held by its id: a copy within it works, and it unregisters; the key stays the aux's.
    assert prompt.run("manager.copy_blocks(kv_cache, {0: [3]})\n"
                      "result = [bool((tensor[3] == tensor[0]).all()) for tensor in kv]") == [True, True]
    prompt.run("manager.unregister_cache(kv_cache.cache_id)")
    tensor[...] = 0
    manager.pull_blocks(BlocksCacheKey(PROMPT_ID, 0), cache, src_blocks=[1], dst_blocks=[0])
    assert numpy.array_equal(tensor[0], aux_bytes[1]) and not tensor[1:].any()
    # Unregistering the aux buffer takes the key with it (cache_manager.cc:287-293): nothing is named now.
    prompt.run("manager.unregister_cache(aux_cache.cache_id)")
    assert failure(manager.pull_blocks, BlocksCacheKey(PROMPT_ID, 0), cache, src_blocks=[0], dst_blocks=[0]) \
        is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    assert decoder.unlink_clusters([prompt_cluster(prompt.listen_port)], 5000)[0] is SUCCESS


def test_a_cache_key_registered_again_keeps_naming_its_first_cache(local, prompt):
    # cache_manager.cc:265: a CacheKey's name is emplaced, so a second registration leaves it where it was.
    prompt.start(enable_cache_manager=True)
    prompt.run(f"first_desc, first, first_addrs = patterned(1, (2, 32), 30)\n"
               f"second_desc, second, second_addrs = patterned(1, (2, 32), 40)\n"
               f"key = CacheKey({PROMPT_ID}, req_id=1)\n"
               "first_cache = manager.register_cache(first_desc, first_addrs, [key])\n"
               "second_cache = manager.register_cache(second_desc, second_addrs, [key])")
    decoder = local(LLMRole.DECODER, DECODER_ID, enable_cache_manager=True)
    manager = decoder.cache_manager
    cache, (tensor,) = numpy_cache(manager, (1, 2, 32), manager.register_cache)
    assert decoder.link_clusters([prompt_cluster(prompt.listen_port)], 5000) == (SUCCESS, [SUCCESS])
    manager.pull_cache(CacheKey(PROMPT_ID, req_id=1), cache, batch_index=1)
    assert tensor[1].tobytes() == pattern(30, 64)[:32].tobytes() and not tensor[0].any()
    prompt.run("manager.unregister_cache(second_cache.cache_id)")
    manager.pull_cache(CacheKey(PROMPT_ID, req_id=1), cache, batch_index=0)   # a registered cache's key stays
    assert tensor[0].tobytes() == pattern(30, 64)[:32].tobytes()
    prompt.run("manager.unregister_cache(first_cache.cache_id)")
    assert failure(manager.pull_cache, CacheKey(PROMPT_ID, req_id=1), cache) is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    assert decoder.unlink_clusters([prompt_cluster(prompt.listen_port)], 5000)[0] is SUCCESS


def test_allocation_still_refuses_a_key_that_names_a_cache(local):
    # cache_manager.cc:199 (CheckCacheKeys): Allocate alone checks keys, against registered caches too.
    datadist = local(LLMRole.PROMPT, PROMPT_ID, enable_cache_manager=True, mem_pool_cfg=POOL)
    manager = datadist.cache_manager
    cache, _ = numpy_cache(manager, (1, 4, 16), manager.register_blocks_cache, blocks_cache_key=BlocksCacheKey(0, 0))
    desc = CacheDesc(num_tensors=1, shape=[4, 16], data_type=DataType.DT_UINT8)
    assert failure(manager.allocate_blocks_cache, desc, BlocksCacheKey(0, 0)) is LLMStatusCode.LLM_PARAM_INVALID
    # A registration takes the name over from an allocated blocks cache, which its id still holds.
    allocated = manager.allocate_blocks_cache(desc, BlocksCacheKey(0, 1))
    other, _ = numpy_cache(manager, (1, 4, 16), manager.register_blocks_cache, blocks_cache_key=BlocksCacheKey(0, 1))
    manager.deallocate_blocks_cache(allocated)
    assert failure(manager.allocate_blocks_cache, desc, BlocksCacheKey(0, 1)) is LLMStatusCode.LLM_PARAM_INVALID
    for registered in (cache, other):
        manager.unregister_cache(registered.cache_id)
    manager.deallocate_blocks_cache(manager.allocate_blocks_cache(desc, BlocksCacheKey(0, 1)))   # free again


def test_remote_access_mode_moves_only_remote_accessible_local_caches(local, prompt):
    # data_transfer_client.cc:232-233 (a pull) and layer_wise_transfer_job.cc:249-250 (a push): with
    # llm.EnableRemoteCacheAccessible the local cache must be remote-accessible, else LLM_PARAM_INVALID.
    prompt.start(local_comm_res="")
    prompt.run(f"desc, tensors, addrs = patterned(1, (4, 16), 50)\n"
               f"cache = manager.register_blocks_cache(desc, addrs, BlocksCacheKey({PROMPT_ID}, 0))")
    decoder = local(LLMRole.DECODER, DECODER_ID, local_comm_res="")
    manager = decoder.cache_manager
    closed, (closed_tensor,) = numpy_cache(manager, (1, 4, 16), manager.register_blocks_cache, remote_accessible=False)
    opened, (opened_tensor,) = numpy_cache(manager, (1, 4, 16), manager.register_blocks_cache)
    assert decoder.link_clusters([prompt_cluster(prompt.listen_port)], 5000) == (SUCCESS, [SUCCESS])
    assert failure(manager.pull_blocks, BlocksCacheKey(PROMPT_ID, 0), closed, src_blocks=[0], dst_blocks=[0]) \
        is LLMStatusCode.LLM_PARAM_INVALID
    assert failure(manager.push_blocks, BlocksCacheKey(PROMPT_ID, 0), closed, src_blocks=[0], dst_blocks=[0]) \
        is LLMStatusCode.LLM_PARAM_INVALID
    assert not closed_tensor.any()
    assert prompt.run("result = tensors[0].tobytes().hex()") == pattern(50, 64).tobytes().hex()   # nothing pushed
    manager.pull_blocks(BlocksCacheKey(PROMPT_ID, 0), opened, src_blocks=[0, 1, 2, 3], dst_blocks=[0, 1, 2, 3])
    assert opened_tensor.tobytes() == pattern(50, 64).tobytes()
    assert decoder.unlink_clusters([prompt_cluster(prompt.listen_port)], 5000)[0] is SUCCESS


def test_allocated_caches_are_remote_accessible_in_remote_access_mode(local, prompt):
    # cache_manager.cc:233-236 with llm_inner_types.h:73: every allocation's entry is remote-accessible, so
    # a peer pushes into allocated caches, blocks or whole, and they take part in this side's transfers.
    port = free_port()
    server = local(LLMRole.PROMPT, PROMPT_ID, local_comm_res="", mem_pool_cfg=POOL,
                   listen_ip_info=f"{LOCALHOST}:{port}")
    manager = server.cache_manager
    desc = CacheDesc(num_tensors=2, shape=[4, 16], data_type=DataType.DT_UINT8)
    blocks = manager.allocate_blocks_cache(desc, BlocksCacheKey(PROMPT_ID, 0))
    whole = manager.allocate_cache(desc)
    for cache in (blocks, whole):
        for addr in cache.tensor_addrs:
            memory(addr, 64)[:] = 0
    prompt.start(LLMRole.DECODER, DECODER_ID, local_comm_res="")   # here the peer is the decoder, linking
    prompt.run("src_desc, src, src_addrs = patterned(2, (4, 16), 60)\n"
               "entry_desc, entry_src, entry_addrs = patterned(2, (4, 16), 60)\n"
               f"src_blocks = manager.register_blocks_cache(src_desc, src_addrs, BlocksCacheKey({DECODER_ID}, 0))\n"
               "src_cache = manager.register_cache(entry_desc, entry_addrs)\n"
               f"cluster = LLMClusterInfo()\ncluster.remote_cluster_id = {PROMPT_ID}\n"
               f"cluster.append_local_ip_info('{LOCALHOST}', 0)\ncluster.append_remote_ip_info('{LOCALHOST}', {port})\n"
               "assert datadist.link_clusters([cluster], 5000)[0] == LLMStatusCode.LLM_SUCCESS\n"
               f"manager.push_blocks(BlocksCacheKey({PROMPT_ID}, 0), src_blocks, src_blocks=[0, 1], "
               "dst_blocks=[2, 3])\n"
               f"manager.push_cache(CacheKeyByIdAndIndex({PROMPT_ID}, {whole.cache_id}, 1), src_cache, "
               "src_batch_index=0)")
    for index in range(2):
        served = pattern(60 + index, 64).reshape(4, 16)
        pushed_blocks = memory(blocks.tensor_addrs[index], 64).reshape(4, 16)
        assert numpy.array_equal(pushed_blocks[2:], served[:2]) and not pushed_blocks[:2].any()
        pushed_entry = memory(whole.tensor_addrs[index], 64).reshape(4, 16)
        assert numpy.array_equal(pushed_entry[1], served[0]) and not pushed_entry[0].any()
    # And this side moves them: it pulls the peer's blocks into its allocated blocks cache.
    manager.pull_blocks(BlocksCacheKey(DECODER_ID, 0), blocks, src_blocks=[3], dst_blocks=[0])
    assert numpy.array_equal(memory(blocks.tensor_addrs[0], 16), pattern(60, 64)[48:])
    assert prompt.run("result = datadist.unlink_clusters([cluster], 5000)") == [0, [0]]
    manager.deallocate_blocks_cache(blocks)
    manager.deallocate_cache(whole)


EXIT_SCRIPT = """
import atexit, json, socket, sys

def after_the_drop_ins_handler():
    # Registered before the drop-in is imported, so it runs after the drop-in's own handler.
    from llmdd.llm_datadist import LLMDataDist
    with socket.socket() as probe:
        still_listening = probe.connect_ex(("127.0.0.1", PORT)) == 0
    print(json.dumps({"finalized": LLMDataDist.llm_engine_instance is None, "listening": still_listening}),
          flush=True)

atexit.register(after_the_drop_ins_handler)
from llmdd.llm_datadist import *
config = LLMConfig()
config.device_id = 0
config.local_comm_res = ""
config.listen_ip_info = "127.0.0.1:PORT"
datadist = LLMDataDist(LLMRole.PROMPT, 7)
datadist.init(config.generate_options())
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()   # the test linked and pulled meanwhile: exit with the link up, without finalize
"""


def test_an_llmdatadist_left_initialized_is_finalized_at_exit(local):
    # llm_datadist.py:453-465: the module's _shutdown_handler, registered with atexit, finalizes the
    # initialized LLMDataDist: its link ends and its listener closes; the process exits cleanly.
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT.replace("PORT", str(port))], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(process.stdout.readline()) == {"ready": True}
        decoder = local(LLMRole.DECODER, DECODER_ID, local_comm_res="")
        assert decoder.link_clusters([prompt_cluster(port)], 5000) == (SUCCESS, [SUCCESS])
        stdout, stderr = process.communicate("\n", timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0 and "Traceback" not in stderr, stderr[-4000:]
    assert json.loads(stdout) == {"finalized": True, "listening": False}
    assert not listening(port)


def test_the_exit_handler_logs_an_llm_exception_of_finalize_and_goes_on(caplog, monkeypatch):
    # llm_datadist.py:453-462: another framework may have finalized the LLMDataDist already.
    from llmdd.llm_datadist.v2.llm_datadist import _shutdown_handler

    class FinalizedElsewhere:
        cluster_id = 3

        def finalize(self):
            raise LLMException("finalized already", LLMStatusCode.LLM_FAILED)

    monkeypatch.setattr(LLMDataDist, "llm_engine_instance", None)
    _shutdown_handler()                                          # nothing initialized: nothing to do
    monkeypatch.setattr(LLMDataDist, "llm_engine_instance", FinalizedElsewhere())
    with caplog.at_level("WARNING", logger="llmdd.llm_datadist"):
        _shutdown_handler()
    assert "finalized already" in caplog.text
