"""llmdd.llm_datadist used the way CANN's documentation and samples use `llm_datadist`.

Each two-process test follows one of CANN's Python samples (examples/python/llm_datadist/ in
the hixl repository) with numpy memory in place of torch NPU tensors: this process is one side,
a drop-in peer process (tests/support/peer.py) the other, both on 127.0.0.1, and every transfer is checked byte for byte.
The single-process tests pin the documented call shapes: signatures, return values and the
exception of each documented error case. Sources are cited as <file>:<line> of that repository;
"docs" is docs/zh/api/python/.
"""
import inspect
import socket
import struct

import numpy
import pytest
from support.dropin import LOCALHOST, POOL, cluster_info, failure
from support.network import free_port, mooncake_missing
from support.patterns import memory, pattern

from llmdd.llm_datadist import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    CacheManager,
    DataType,
    LLMClusterInfo,
    LLMDataDist,
    LLMRole,
    LLMStatusCode,
    Placement,
)

pytestmark = [pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing())),
              pytest.mark.sim_only]   # numpy memory stands for device memory only on the sim build

SUCCESS = LLMStatusCode.LLM_SUCCESS
# The transfer agent (src/llmdd/transfer/_agent.py) is being changed; these marks come off with its fixes.

# What the samples' torch tensors become here

def blocks(tensors, shape, dtype):
    """`tensors` arrays of `shape`, each filled with its own pattern."""
    arrays = [numpy.zeros(shape, dtype) for _ in range(tensors)]
    for index, array in enumerate(arrays):
        memory(array.ctypes.data, array.nbytes)[:] = pattern(index, array.nbytes)
    return arrays


def addrs(arrays):
    return [int(array.ctypes.data) for array in arrays]


def ip_port_to_int(ip_port):
    """pull_blocks_xpyd_sample.py:38-51: a cluster id made of an IPv4 address and a port."""
    ip, port = ip_port.split(":")
    return (struct.unpack("!I", socket.inet_aton(ip))[0] << 16) | int(port)


def config_snippet(role, cluster_id, **settings):
    """A peer snippet that initializes `datadist` as the samples' init_llm_datadist does."""
    lines = ["config = LLMConfig()", "config.device_id = 0"]
    lines += [f"config.{name} = {value!r}" for name, value in settings.items()]
    lines += [f"datadist = LLMDataDist(LLMRole.{role.name}, {cluster_id})", "datadist.init(config.generate_options())",
              "manager = datadist.cache_manager"]
    return "\n".join(lines)


# pull_cache_sample.py: a decoder pulls a prompt's batch entries by CacheKey.

FP16_DESC = "CacheDesc(num_tensors=4, shape=[2, 16 * 1024], data_type=DataType.DT_FLOAT16, placement=Placement.DEVICE)"


def start_keyed_prompt(peers, keys):
    """A prompt (cluster 1) serving one allocate_cache'd cache under `keys`, each tensor patterned."""
    port = free_port()
    prompt = peers()
    prompt.run(config_snippet(LLMRole.PROMPT, 1, enable_cache_manager=True, mem_pool_cfg=POOL,
                              listen_ip_info=f"{LOCALHOST}:{port}"))
    prompt.run(f"keys = {keys}\n"
               f"cache = manager.allocate_cache({FP16_DESC}, keys)\n"
               "for index, addr in enumerate(cache.tensor_addrs):\n"
               "    memory(addr, cache.cache_desc.size)[:] = pattern(10 + index, cache.cache_desc.size)")
    return prompt, port


def test_pull_cache_sample_pulls_each_key_into_its_batch_entry(local, peers):
    prompt, port = start_keyed_prompt(peers, "[CacheKey(prompt_cluster_id=1, req_id=0, model_id=0), "
                                             "CacheKey(prompt_cluster_id=1, req_id=1, model_id=0)]")
    decoder = local(LLMRole.DECODER, 2, enable_cache_manager=True, mem_pool_cfg=POOL)
    cluster = cluster_info(1, port, local_port=0)
    linked = decoder.link_clusters([cluster], 5000)
    # llm_datadist.py:299 and docs LLMDataDist.md (link_clusters): a tuple (LLMStatusCode, [LLMStatusCode, ...]).
    assert type(linked) is tuple and type(linked[1]) is list
    assert linked == (SUCCESS, [SUCCESS]) and type(linked[0]) is LLMStatusCode

    manager = decoder.cache_manager
    cache = manager.allocate_cache(eval(FP16_DESC))
    tensor_bytes = cache.cache_desc.size
    assert tensor_bytes == 2 * 16 * 1024 * 2          # CacheDesc.size: one tensor's bytes (llm_types.py:186-192)
    # pull_cache_sample.py:214-219: keyword keys, one pull per batch entry.
    assert manager.pull_cache(CacheKey(prompt_cluster_id=1, req_id=0, model_id=0), cache, batch_index=0) is None
    manager.pull_cache(CacheKey(prompt_cluster_id=1, req_id=1, model_id=0), cache, batch_index=1)
    for index, addr in enumerate(cache.tensor_addrs):
        assert numpy.array_equal(memory(addr, tensor_bytes), pattern(10 + index, tensor_bytes))

    assert decoder.unlink_clusters([cluster], 5000) == (SUCCESS, [SUCCESS])
    manager.deallocate_cache(cache)
    # pull_cache_sample.py:250-255: after the pulls the prompt's remove_cache_key is a no-op, then it deallocates.
    prompt.run("for key in keys:\n    manager.remove_cache_key(key)\nmanager.deallocate_cache(cache)")


def test_pull_cache_takes_a_size_and_layer_ranges(local, peers):
    prompt, port = start_keyed_prompt(peers, "[CacheKey(1, 5)]")
    prompt_cache_id = prompt.run("result = cache.cache_id")
    decoder = local(LLMRole.DECODER, 2, enable_cache_manager=True, mem_pool_cfg=POOL)
    assert decoder.link_clusters([cluster_info(1, port, local_port=0)])[0] is SUCCESS    # timeout's default
    manager = decoder.cache_manager
    cache = manager.allocate_cache(eval(FP16_DESC))
    tensor_bytes, entry_bytes = cache.cache_desc.size, cache.cache_desc.size // 2
    # docs CacheManager.md (pull_cache): size > 0 pulls that many bytes of each tensor.
    manager.pull_cache(CacheKeyByIdAndIndex(1, prompt_cache_id, 0), cache, batch_index=1, size=100)
    for index, addr in enumerate(cache.tensor_addrs):
        entries = memory(addr, tensor_bytes).reshape(2, entry_bytes)
        assert numpy.array_equal(entries[1, :100], pattern(10 + index, tensor_bytes)[:100])
        assert not entries[1, 100:].any() and not entries[0].any()
    # docs CacheManager.md (pull_cache, **kwargs): layer i is tensors [i * n, (i + 1) * n), n = tensor_num_per_layer.
    manager.pull_cache(CacheKeyByIdAndIndex(1, prompt_cache_id, 1), cache, batch_index=0,
                       src_layer_range=range(1, 2), dst_layer_range=range(0, 1), tensor_num_per_layer=2)
    for index in range(2):
        entries = memory(cache.tensor_addrs[index], tensor_bytes).reshape(2, entry_bytes)
        assert numpy.array_equal(entries[0], pattern(12 + index, tensor_bytes)[entry_bytes:])
    assert not memory(cache.tensor_addrs[2], tensor_bytes).reshape(2, entry_bytes)[0].any()
    manager.deallocate_cache(cache)
    prompt.run("manager.remove_cache_key(keys[0])\nmanager.deallocate_cache(cache)")


# pull_from_cache_to_blocks.py: a decoder pulls a prompt's batch entry into one of its blocks.

def test_pull_from_cache_to_blocks_sample_fills_the_named_block(local, peers):
    prompt, port = start_keyed_prompt(peers, "[CacheKey(prompt_cluster_id=1, req_id=0, model_id=0)]")
    decoder = local(LLMRole.DECODER, 2, enable_cache_manager=True, mem_pool_cfg=POOL)
    manager = decoder.cache_manager
    tensors = [numpy.ones((2, 16 * 1024), numpy.float16) for _ in range(4)]
    # pull_from_cache_to_blocks.py:215: the blocks cache is registered before the link.
    cache = manager.register_blocks_cache(eval(FP16_DESC), addrs(tensors))
    assert cache.is_blocks_cache and cache.tensor_addrs == addrs(tensors)
    assert decoder.link_clusters([cluster_info(1, port, local_port=0)], 5000) == (SUCCESS, [SUCCESS])
    # pull_from_cache_to_blocks.py:221-222: a CacheKey, no src_blocks, one dst block.
    manager.pull_blocks(CacheKey(prompt_cluster_id=1, req_id=0, model_id=0), cache, src_blocks=[], dst_blocks=[0])
    block_bytes = tensors[0].nbytes // 2
    for index, tensor in enumerate(tensors):
        assert tensor[0].tobytes() == pattern(10 + index, 2 * block_bytes)[:block_bytes].tobytes()
        assert (tensor[1] == 1).all()
    assert decoder.unlink_clusters([cluster_info(1, port, local_port=0)], 5000)[0] is SUCCESS
    manager.unregister_cache(cache.cache_id)
    prompt.run("manager.remove_cache_key(keys[0])\nmanager.deallocate_cache(cache)")


# pull_blocks_sample.py: blocks by BlocksCacheKey, then swapped out to a CPU cache and back.

def test_pull_blocks_sample_pulls_blocks_and_swaps_them(local, peers):
    block_floats = 16 * 1024
    desc = (f"CacheDesc(num_tensors=1, shape=[2, {block_floats}], data_type=DataType.DT_FLOAT, "
            "placement=Placement.DEVICE)")
    port = free_port()
    prompt = peers()
    # pull_blocks_sample.py:295-297: both sides without a memory pool; the prompt keys its blocks.
    prompt.run(config_snippet(LLMRole.PROMPT, 1, enable_cache_manager=True, listen_ip_info=f"{LOCALHOST}:{port}"))
    prompt.run(f"tensor = numpy.zeros((2, {block_floats}), numpy.float32)\n"
               "memory(tensor.ctypes.data, tensor.nbytes)[:] = pattern(3, tensor.nbytes)\n"
               f"cache = manager.register_blocks_cache({desc}, [int(tensor.ctypes.data)], BlocksCacheKey(1, 0))")
    decoder = local(LLMRole.DECODER, 2, enable_cache_manager=True)
    manager = decoder.cache_manager
    tensor = numpy.ones((2, block_floats), numpy.float32)
    cache = manager.register_blocks_cache(eval(desc), [int(tensor.ctypes.data)])
    assert decoder.link_clusters([cluster_info(1, port, local_port=0)], 5000) == (SUCCESS, [SUCCESS])
    manager.pull_blocks(BlocksCacheKey(1, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 1])
    expected = pattern(3, tensor.nbytes).tobytes()
    assert tensor.tobytes() == expected

    # pull_blocks_sample.py:202-217, 241-245: a HOST desc over CPU memory, create_cpu_cache, swap out and in.
    cpu_tensor = numpy.random.default_rng(0).random((2, block_floats), numpy.float32)
    cpu_desc = CacheDesc(num_tensors=1, shape=[2, block_floats], data_type=DataType.DT_FLOAT, placement=Placement.HOST)
    cpu_cache = Cache.create_cpu_cache(cpu_desc, [cpu_tensor.ctypes.data])
    manager.swap_blocks(cache, cpu_cache, {0: 0, 1: 1})
    assert cpu_tensor.tobytes() == expected
    tensor[...] = 0
    manager.swap_blocks(cpu_cache, cache, {0: 1, 1: 0})          # src block -> dst block
    assert tensor[1].tobytes() + tensor[0].tobytes() == expected

    assert decoder.unlink_clusters([cluster_info(1, port, local_port=0)], 5000)[0] is SUCCESS
    decoder.finalize()
    prompt.run("datadist.finalize()")


# push_blocks_sample.py / push_cache_sample.py: local_comm_res = "", both sides listen, the decoder pushes.

PUSH_DESC = "CacheDesc(num_tensors=2, shape=[3, 10], data_type=DataType.DT_FLOAT, placement=Placement.DEVICE)"

def start_listening_prompt(peers, register):
    """A prompt (cluster 0) configured as the push samples' init_llm_datadist, running `register`."""
    port = free_port()
    prompt = peers()
    prompt.run(config_snippet(LLMRole.PROMPT, 0, local_comm_res="", listen_ip_info=f"{LOCALHOST}:{port}"))
    prompt.run("tensor = numpy.full((3, 10), 7, numpy.float32)\ntensor2 = numpy.full((3, 10), 7, numpy.float32)\n"
               f"desc = {PUSH_DESC}\n" + register)
    return prompt, port


def push_decoder(local):
    """The push samples' decoder (cluster 1): local_comm_res = "" and its own listen port."""
    port = free_port()
    decoder = local(LLMRole.DECODER, 1, local_comm_res="", listen_ip_info=f"{LOCALHOST}:{port}")
    tensors = blocks(2, (3, 10), numpy.float32)
    desc = CacheDesc(num_tensors=2, shape=[3, 10], data_type=DataType.DT_FLOAT, placement=Placement.DEVICE)
    return decoder, port, tensors, desc


def prompt_rows(prompt):
    return [bytes.fromhex(row) for row in prompt.run("result = [tensor.tobytes().hex(), tensor2.tobytes().hex()]")]


def test_push_blocks_sample_writes_the_prompts_blocks(local, peers):
    prompt, prompt_port = start_listening_prompt(
        peers, "cache = manager.register_blocks_cache(desc, [int(tensor.ctypes.data), int(tensor2.ctypes.data)], "
               "BlocksCacheKey(0, 0))")
    decoder, decoder_port, tensors, desc = push_decoder(local)
    manager = decoder.cache_manager
    cache = manager.register_blocks_cache(desc, addrs(tensors), BlocksCacheKey(1, 0))
    # push_blocks_sample.py:137-141: the local ip info carries the decoder's own listen port.
    linked = decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000)
    assert linked == (SUCCESS, [SUCCESS])
    manager.push_blocks(BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 2])
    seven = numpy.full(10, 7, numpy.float32).tobytes()
    for pushed, tensor in zip(prompt_rows(prompt), tensors):
        assert pushed == tensor[0].tobytes() + seven + tensor[1].tobytes()
    assert decoder.unlink_clusters([cluster_info(0, prompt_port)], 5000) == (SUCCESS, [SUCCESS])
    manager.unregister_cache(cache.cache_id)
    prompt.run("manager.unregister_cache(cache.cache_id)")


def test_push_cache_sample_writes_the_prompts_first_registered_cache(local, peers):
    prompt, prompt_port = start_listening_prompt(
        peers, "cache = manager.register_cache(desc, [int(tensor.ctypes.data), int(tensor2.ctypes.data)])\n"
               "result = cache.cache_id")
    # push_cache_sample.py:137-138: the decoder names the prompt's cache as id 1, its first (data_cache_engine.h:56).
    assert prompt.run("result = cache.cache_id") == 1
    decoder, decoder_port, tensors, desc = push_decoder(local)
    manager = decoder.cache_manager
    cache = manager.register_cache(desc, addrs(tensors))
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000) == (SUCCESS, [SUCCESS])
    manager.push_cache(CacheKeyByIdAndIndex(cluster_id=0, cache_id=1, batch_index=0), cache, src_batch_index=0)
    manager.push_cache(CacheKeyByIdAndIndex(cluster_id=0, cache_id=1, batch_index=2), cache, src_batch_index=1)
    seven = numpy.full(10, 7, numpy.float32).tobytes()
    for pushed, tensor in zip(prompt_rows(prompt), tensors):
        assert pushed == tensor[0].tobytes() + seven + tensor[1].tobytes()
    # push_cache_sample.py:145-149: unlink names the remote ip info only, without a local one.
    assert decoder.unlink_clusters([cluster_info(0, prompt_port)], 5000) == (SUCCESS, [SUCCESS])
    # A non-forced unlink ends both sides (docs LLMDataDist.md unlink_clusters), so a new link starts afresh.
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000) == (SUCCESS, [SUCCESS])
    manager.push_cache(CacheKeyByIdAndIndex(0, 1, 1), cache, src_batch_index=2)
    assert [row[40:80] for row in prompt_rows(prompt)] == [tensor[2].tobytes() for tensor in tensors]
    assert decoder.unlink_clusters([cluster_info(0, prompt_port)], 5000) == (SUCCESS, [SUCCESS])
    manager.unregister_cache(cache.cache_id)
    prompt.run("manager.unregister_cache(cache.cache_id)")


def test_a_forced_unlink_names_the_cluster_by_id_alone(local, peers):
    prompt, prompt_port = start_listening_prompt(peers, "")
    decoder, decoder_port, _, _ = push_decoder(local)
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000)[0] is SUCCESS
    # push_blocks_sample.py:155-158; link_msg_handler.cc:417 needs a remote ip info only when force is False.
    assert decoder.unlink_clusters([cluster_info(0)], 5000, force=True) == (SUCCESS, [SUCCESS])


def test_the_linked_side_force_unlinks_its_client(local, peers):
    prompt, prompt_port = start_listening_prompt(peers, "")
    decoder, decoder_port, _, _ = push_decoder(local)
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000)[0] is SUCCESS
    # push_blocks_sample.py:105-110: the prompt, which only listened, force-unlinks the decoder and needs SUCCESS
    # (docs LLMDataDist.md unlink_clusters: "both Client and Server may force an unlink of their own side").
    assert prompt.run("cluster = LLMClusterInfo()\ncluster.remote_cluster_id = 1\n"
                      "result = datadist.unlink_clusters([cluster], 5000, force=True)") == [0, [0]]
    assert decoder.unlink_clusters([cluster_info(0, prompt_port)], 5000, force=True)[0] is SUCCESS


def test_a_forced_unlink_of_an_unlinked_cluster_succeeds(local):
    decoder, _, _, _ = push_decoder(local)
    # comm_entity_manager.cc:33-61: destroying a link that does not exist only logs a warning: SUCCESS.
    assert decoder.unlink_clusters([cluster_info(5)], 1000, force=True) == (SUCCESS, [SUCCESS])


def test_a_clusters_bad_ip_infos_are_a_status_in_the_tuple(local):
    decoder, _, _, _ = push_decoder(local)
    # link_msg_handler.cc:363 and :417 return LLM_PARAM_INVALID for the cluster; llm_datadist_v2_wrapper.cc:67-93
    # hands (ret, rets) back and llm_datadist.py:299/335 returns them: no exception.
    invalid = LLMStatusCode.LLM_PARAM_INVALID
    assert decoder.link_clusters([cluster_info(0, local_port=0)], 1000) == (invalid, [invalid])
    assert decoder.unlink_clusters([cluster_info(0)], 1000) == (invalid, [invalid])


def test_an_empty_cluster_list_is_a_param_invalid_status(local):
    decoder = local(LLMRole.DECODER, 2, enable_cache_manager=True)
    # llm_link_manager.cc:45 and :76 ("clusters size must > 0"), returned as a status by llm_datadist.py:299/335.
    invalid = LLMStatusCode.LLM_PARAM_INVALID
    assert decoder.link_clusters([]) == (invalid, [])
    assert decoder.unlink_clusters((), 1000, force=True) == (invalid, [])


# pull_blocks_xpyd_sample.py: one decoder links several prompts in one call and pulls from each.

def test_pull_blocks_xpyd_sample_links_and_pulls_from_each_prompt(local, peers):
    prompts = []
    for seed in range(2):
        port = free_port()
        cluster_id = ip_port_to_int(f"{LOCALHOST}:{port}")
        prompt = peers()
        # pull_blocks_xpyd_sample.py:53-61: local_comm_res = "" and only the prompts listen.
        prompt.run(config_snippet(LLMRole.PROMPT, cluster_id, local_comm_res="", listen_ip_info=f"{LOCALHOST}:{port}"))
        prompt.run("tensor = numpy.zeros((3, 10), numpy.float32)\n"
                   f"memory(tensor.ctypes.data, tensor.nbytes)[:] = pattern({seed}, tensor.nbytes)\n"
                   "desc = CacheDesc(num_tensors=1, shape=[3, 10], data_type=DataType.DT_FLOAT, "
                   "placement=Placement.DEVICE)\n"
                   "cache = manager.register_blocks_cache(desc, [int(tensor.ctypes.data)], "
                   f"BlocksCacheKey({cluster_id}, 0))")
        prompts.append((prompt, port, cluster_id, pattern(seed, 120).tobytes()))
    own_id = ip_port_to_int(f"{LOCALHOST}:{free_port()}")
    decoder = local(LLMRole.DECODER, own_id, local_comm_res="")
    manager = decoder.cache_manager
    tensor = numpy.zeros((3, 10), numpy.float32)
    desc = CacheDesc(num_tensors=1, shape=[3, 10], data_type=DataType.DT_FLOAT, placement=Placement.DEVICE)
    cache = manager.register_blocks_cache(desc, [int(tensor.ctypes.data)], BlocksCacheKey(own_id, 0))
    clusters = [cluster_info(cluster_id, port, local_port=0) for _, port, cluster_id, _ in prompts]
    assert decoder.link_clusters(clusters, 5000) == (SUCCESS, [SUCCESS, SUCCESS])
    for _, _, cluster_id, served in prompts:
        manager.pull_blocks(BlocksCacheKey(cluster_id, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 2])
        assert tensor[0].tobytes() + tensor[2].tobytes() == served[:80]
    assert not tensor[1].any()
    assert decoder.unlink_clusters(clusters, 5000) == (SUCCESS, [SUCCESS, SUCCESS])
    manager.unregister_cache(cache.cache_id)


# hixl_transfer_backend_sample.py: each side links the other; the prompt pulls while the decoder pushes.

def hixl_side(role, cluster_id, port, fill):
    return (config_snippet(role, cluster_id, local_comm_res="", transfer_backend="hixl",
                           listen_ip_info=f"{LOCALHOST}:{port}")
            + f"\ntensor = numpy.full((3, 10), {fill}, numpy.float32)\n"
              f"tensor2 = numpy.full((3, 10), {fill}, numpy.float32)\ndesc = {PUSH_DESC}\n"
              "cache = manager.register_blocks_cache(desc, [int(tensor.ctypes.data), int(tensor2.ctypes.data)], "
              f"BlocksCacheKey({cluster_id}, 0))")


def test_hixl_sample_links_both_ways_and_pulls_and_pushes(local, peers):
    prompt_port, decoder_port = free_port(), free_port()
    prompt = peers()
    prompt.run(hixl_side(LLMRole.PROMPT, 0, prompt_port, 1))
    decoder = local(LLMRole.DECODER, 1, local_comm_res="", transfer_backend="hixl",
                    listen_ip_info=f"{LOCALHOST}:{decoder_port}")
    manager = decoder.cache_manager
    tensors = [numpy.zeros((3, 10), numpy.float32) for _ in range(2)]
    desc = CacheDesc(num_tensors=2, shape=[3, 10], data_type=DataType.DT_FLOAT, placement=Placement.DEVICE)
    cache = manager.register_blocks_cache(desc, addrs(tensors), BlocksCacheKey(1, 0))
    # hixl_transfer_backend_sample.py:95-100 and :162-167: each side links the other, then transfers.
    assert prompt.run(f"cluster = LLMClusterInfo()\ncluster.remote_cluster_id = 1\n"
                      f"cluster.append_local_ip_info('{LOCALHOST}', {prompt_port})\n"
                      f"cluster.append_remote_ip_info('{LOCALHOST}', {decoder_port})\n"
                      "result = datadist.link_clusters([cluster], 5000)") == [0, [0]]
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000) == (SUCCESS, [SUCCESS])
    prompt.run("manager.pull_blocks(BlocksCacheKey(1, 0), cache, src_blocks=[2], dst_blocks=[2])")
    manager.push_blocks(BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 1])
    # hixl_transfer_backend_sample.py:124-135: the prompt's blocks are all the decoder's zeros now.
    assert prompt.run("result = bool((tensor == 0).all() and (tensor2 == 0).all())") is True
    assert decoder.unlink_clusters([cluster_info(0, prompt_port)], 5000)[0] is SUCCESS
    assert prompt.run(f"cluster = LLMClusterInfo()\ncluster.remote_cluster_id = 1\n"
                      f"cluster.append_remote_ip_info('{LOCALHOST}', {decoder_port})\n"
                      "result = datadist.unlink_clusters([cluster], 5000)") == [0, [0]]


def test_hixl_unlink_names_the_cluster_by_id_alone(local, peers):
    prompt_port, decoder_port = free_port(), free_port()
    prompt = peers()
    prompt.run(hixl_side(LLMRole.PROMPT, 0, prompt_port, 1))
    decoder = local(LLMRole.DECODER, 1, local_comm_res="", transfer_backend="hixl",
                    listen_ip_info=f"{LOCALHOST}:{decoder_port}")
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000)[0] is SUCCESS
    # hixl_transfer_backend_sample.py:181-184 (non-forced, no ip info); hixl_transfer_engine.cc:186-191 unlinks by id.
    assert decoder.unlink_clusters([cluster_info(0)], 5000) == (SUCCESS, [SUCCESS])


def test_the_linked_side_pulls_and_pushes_on_its_clients_link(local, peers):
    prompt, prompt_port = start_listening_prompt(
        peers, "cache = manager.register_blocks_cache(desc, [int(tensor.ctypes.data), int(tensor2.ctypes.data)], "
               "BlocksCacheKey(0, 0))")
    decoder, decoder_port, tensors, desc = push_decoder(local)
    decoder.cache_manager.register_blocks_cache(desc, addrs(tensors), BlocksCacheKey(1, 0))
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000)[0] is SUCCESS
    # docs LLMDataDist.md (init): in cache-manager mode decoder and prompt pull from each other; one link makes
    # an entity on both sides (link_msg_handler.cc:290-330, run by the linking and the linked side), and
    # switch_role_sample.py:105 and :187 push on the link the other side made.
    prompt.run("manager.pull_blocks(BlocksCacheKey(1, 0), cache, src_blocks=[2], dst_blocks=[1])")
    for row, tensor in zip(prompt_rows(prompt), tensors):
        assert row[40:80] == tensor[2].tobytes()
    prompt.run("manager.push_blocks(BlocksCacheKey(1, 0), cache, src_blocks=[0], dst_blocks=[1])")
    for row, tensor in zip(prompt_rows(prompt), tensors):
        assert tensor[1].tobytes() == row[:40]


# Documented error cases of the transfer calls (one process).

def test_transfer_calls_raise_the_documented_errors(local):
    decoder, _, tensors, desc = push_decoder(local)   # local_comm_res: remote caches accessible
    manager = decoder.cache_manager
    blocks_cache = manager.register_blocks_cache(desc, addrs(tensors))
    cache = manager.register_cache(desc, addrs(blocks(2, (3, 10), numpy.float32)))
    # cache_manager.py:282-283: with remote caches accessible, pull_cache takes CacheKeyByIdAndIndex only.
    with pytest.raises(TypeError):
        manager.pull_cache(CacheKey(0, 1), cache)
    # cache_manager.py:239/:245 and :595: empty block lists are LLM_PARAM_INVALID.
    assert failure(manager.pull_blocks, BlocksCacheKey(0), blocks_cache, [], [0]) is LLMStatusCode.LLM_PARAM_INVALID
    assert failure(manager.pull_blocks, BlocksCacheKey(0), blocks_cache, [0], []) is LLMStatusCode.LLM_PARAM_INVALID
    assert failure(manager.push_blocks, BlocksCacheKey(0), blocks_cache, [0], []) is LLMStatusCode.LLM_PARAM_INVALID
    # cache_manager.py:550: push_cache's size is -1 only.
    assert failure(manager.push_cache, CacheKeyByIdAndIndex(0, 1), cache, size=8) is LLMStatusCode.LLM_PARAM_INVALID
    # data_cache_engine.cc:142: a transfer before link_clusters is LLM_NOT_YET_LINK.
    assert failure(manager.push_blocks, BlocksCacheKey(0), blocks_cache, [0], [0]) is LLMStatusCode.LLM_NOT_YET_LINK
    assert failure(manager.pull_cache, CacheKeyByIdAndIndex(0, 1), cache) is LLMStatusCode.LLM_NOT_YET_LINK
    # llm_datadist.py:263-265: timeout is an int32 > 0.
    assert failure(decoder.link_clusters, [cluster_info(0, 1, 0)], 0) is LLMStatusCode.LLM_PARAM_INVALID
    with pytest.raises(TypeError):
        decoder.link_clusters([cluster_info(0, 1, 0)], 1.5)
    with pytest.raises(TypeError):
        decoder.unlink_clusters([cluster_info(0, 1)], 1000, force=1)
    with pytest.raises(TypeError):
        decoder.link_clusters(cluster_info(0, 1, 0))     # a list or tuple of LLMClusterInfo


def test_push_needs_remote_cache_access_and_pull_cache_takes_both_keys_without_it(local):
    decoder = local(LLMRole.DECODER, 2, enable_cache_manager=True, mem_pool_cfg=POOL)
    manager = decoder.cache_manager
    cache = manager.allocate_cache(CacheDesc(2, [2, 64], DataType.DT_UINT8))
    blocks_cache = manager.allocate_blocks_cache(CacheDesc(2, [2, 64], DataType.DT_UINT8))
    # cache_manager.py:530 and :588: push_* without enable_remote_cache_accessible is LLM_PARAM_INVALID.
    assert failure(manager.push_cache, CacheKeyByIdAndIndex(1, 1), cache) is LLMStatusCode.LLM_PARAM_INVALID
    assert failure(manager.push_blocks, BlocksCacheKey(1), blocks_cache, [0], [0]) is LLMStatusCode.LLM_PARAM_INVALID
    # cache_manager.py:285: both key types get past the type check (and fail only on the missing link).
    for key in (CacheKey(1, 1), CacheKeyByIdAndIndex(1, 1)):
        assert failure(manager.pull_cache, key, cache) is LLMStatusCode.LLM_NOT_YET_LINK


def test_remote_accessible_registration_after_link_clusters_is_allowed(local, peers):
    prompt, prompt_port = start_listening_prompt(peers, "")
    decoder, decoder_port, tensors, desc = push_decoder(local)
    manager = decoder.cache_manager
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000)[0] is SUCCESS
    # cache_manager.py:329-330 and :359-360 refuse these after link() only: link_clusters never calls
    # set_is_call_linked (llm_datadist.py link_clusters); test_rank_table_links.py has link()'s side.
    registry = decoder._engine._registry()
    for register in (manager.register_cache, manager.register_blocks_cache):
        explicit, default = register(desc, addrs(tensors), remote_accessible=True), register(desc, addrs(tensors))
        assert registry.entry(explicit.cache_id).remote_accessible and registry.entry(default.cache_id).remote_accessible
        manager.unregister_cache(explicit.cache_id)
        manager.unregister_cache(default.cache_id)
    assert decoder.unlink_clusters([cluster_info(0, prompt_port)], 5000)[0] is SUCCESS


def test_a_none_cache_desc_is_an_attribute_error(datadist_v2):
    manager = datadist_v2.cache_manager
    addr = [int(numpy.zeros(8, numpy.uint8).ctypes.data)]
    host_cache = Cache.create_cpu_cache(CacheDesc(1, [2, 4], DataType.DT_UINT8, Placement.HOST), addr)
    # docs CacheManager.md (register_cache, register_blocks_cache), Cache.md (create_cpu_cache) and deprecated.md
    # (swap_blocks): "an argument of None raises AttributeError" (CANN's type checks let None through).
    for call in (lambda: manager.register_cache(None, addr), lambda: manager.register_blocks_cache(None, addr),
                 lambda: Cache.create_cpu_cache(None, addr), lambda: manager.swap_blocks(None, host_cache, {0: 0}),
                 lambda: manager.swap_blocks(host_cache, None, {0: 0})):
        with pytest.raises(AttributeError):
            call()


# Signatures: parameter names and defaults as CANN's (a keyword call of the samples must work).

CANN_SIGNATURES = {
    LLMDataDist.__init__: "self, role, cluster_id",   # llm_datadist.py:53
    LLMDataDist.init: "self, options",
    LLMDataDist.finalize: "self",
    LLMDataDist.link_clusters: "self, clusters, timeout=3000",                  # llm_datadist.py:259-261
    LLMDataDist.unlink_clusters: "self, clusters, timeout=3000, force=False",   # llm_datadist.py:301-306
    LLMDataDist.switch_role: "self, role, switch_options=None",
    LLMDataDist.link: "self, comm_name, cluster_rank_info, rank_table",
    LLMDataDist.unlink: "self, comm_id",
    LLMDataDist.query_register_mem_status: "self, comm_id",
    CacheManager.allocate_cache: "self, cache_desc, cache_keys=()",             # cache_manager.py:93-95
    CacheManager.allocate_blocks_cache: "self, cache_desc, blocks_cache_key=None",
    CacheManager.deallocate_cache: "self, cache",
    CacheManager.deallocate_blocks_cache: "self, cache",
    CacheManager.register_cache: "self, cache_desc, addrs, cache_keys=(), remote_accessible=None",
    CacheManager.register_blocks_cache: "self, cache_desc, addrs, blocks_cache_key=None, remote_accessible=None",
    CacheManager.unregister_cache: "self, cache_id",
    CacheManager.remove_cache_key: "self, cache_key",
    CacheManager.copy_cache: "self, dst, src, dst_batch_index=0, src_batch_index=0, offset=0, size=-1, req_id=None",
    CacheManager.copy_blocks: "self, cache, copy_block_info",
    CacheManager.swap_blocks: "self, src_cache, dst_cache, src_to_dst",
    CacheManager.pull_cache: "self, cache_key, cache, batch_index=0, size=-1, **kwargs",          # :265-270
    CacheManager.pull_blocks: "self, src_cache_key, dst_cache, src_blocks=(), dst_blocks=(), **kwargs",   # :215-218
    CacheManager.push_cache: "self, dst_cache_key, src_cache, src_batch_index=0, src_layer_range=None, "
                             "dst_layer_range=None, size=-1, tensor_num_per_layer=2",              # :509-516
    CacheManager.push_blocks: "self, dst_cache_key, src_cache, src_blocks=(), dst_blocks=(), src_layer_range=None, "
                              "dst_layer_range=None, tensor_num_per_layer=2",                      # :567-574
    CacheManager.transfer_cache_async: "self, src_cache, layer_synchronizer, transfer_configs, src_block_indices=None, "
                                       "dst_block_indices=None, dst_block_memory_size=None",
    CacheManager.remap_registered_memory: "self, mem_infos",
    CacheKeyByIdAndIndex.__init__: "self, cluster_id, cache_id, batch_index=0",   # llm_types.py:408
    Cache.create_cpu_cache: "cache_desc, addrs",
    LLMClusterInfo.append_local_ip_info: "self, ip, port",
    LLMClusterInfo.append_remote_ip_info: "self, ip, port",
}


def shown(parameter):
    prefix = {parameter.VAR_KEYWORD: "**", parameter.VAR_POSITIONAL: "*"}.get(parameter.kind, "")
    default = "" if parameter.default is parameter.empty else f"={parameter.default!r}"
    return prefix + parameter.name + default


@pytest.mark.parametrize("function", list(CANN_SIGNATURES), ids=lambda function: function.__qualname__)
def test_signatures_are_canns(function):
    assert ", ".join(map(shown, inspect.signature(function).parameters.values())) == CANN_SIGNATURES[function]


def test_cache_desc_takes_the_samples_keywords():
    # llm_types.py:116-123, as the samples call it (e.g. push_blocks_sample.py:84-89).
    desc = CacheDesc(num_tensors=2, shape=[3, 10], data_type=DataType.DT_FLOAT, placement=Placement.DEVICE,
                     batch_dim_index=0, seq_len_dim_index=-1, kv_tensor_format=None)
    assert (desc.num_tensors, desc.shape, desc.batch_size, desc.size) == (2, [3, 10], 3, 120)
    assert CacheDesc(1, [4], DataType.DT_UINT8).placement is Placement.DEVICE
