"""The drop-in's transfer calls between two real processes on 127.0.0.1, as serving engines
make them: a prompt process registers and allocates KV caches under keys; this process (the
decoder) links, pulls blocks, layers and caches by key through llmdd.llm_datadist, and unlinks."""
import textwrap

import numpy
import pytest
from support.network import free_port, mooncake_missing
from support.peer import Peer

from llmdd.llm_datadist import (
    BlocksCacheKey,
    CacheDesc,
    CacheKey,
    DataType,
    LLMClusterInfo,
    LLMConfig,
    LLMDataDist,
    LLMException,
    LLMRole,
    LLMStatusCode,
)

pytestmark = [pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing())),
              pytest.mark.sim_only]   # host memory stands for device memory only on the sim build

PROMPT_ID, DECODER_ID = 11, 22
LAYERS, BLOCKS, BLOCK_BYTES = 3, 8, 256
BLOCKS_DESC = CacheDesc(2 * LAYERS, [BLOCKS, BLOCK_BYTES], DataType.DT_UINT8)   # a K and a V tensor a layer
CACHE_DESC = CacheDesc(2, [2, 512], DataType.DT_UINT8)                           # batch 2, one key an entry
WAIT_SECONDS = 30

# The prompt process's set-up, run as a snippet in a drop-in peer process (tests/support/peer.py).
PROMPT = textwrap.dedent("""
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.mem_pool_cfg = '{"memory_size": 4194304}'
    config.listen_ip_info = "127.0.0.1:%(port)d"
    datadist = LLMDataDist(LLMRole.PROMPT, %(prompt)d)
    datadist.init(config.generate_options())
    manager = datadist.cache_manager
    # A block pool the engine owns (vLLM's K and V tensors of each layer), registered in place.
    pool = numpy.arange(%(tensors)d * %(blocks)d * %(block_bytes)d, dtype=numpy.uint32).astype(numpy.uint8)
    pool = pool.reshape(%(tensors)d, %(blocks)d, %(block_bytes)d) ^ numpy.arange(%(tensors)d, dtype=numpy.uint8)[:, None, None]
    manager.register_blocks_cache(CacheDesc(%(tensors)d, [%(blocks)d, %(block_bytes)d], DataType.DT_UINT8),
                                  [int(pool[i].ctypes.data) for i in range(%(tensors)d)], BlocksCacheKey(%(prompt)d, 0))
    cache = manager.allocate_cache(CacheDesc(2, [2, 512], DataType.DT_UINT8),
                                   [CacheKey(%(prompt)d, req_id=7), CacheKey(%(prompt)d, req_id=8)])
    for tensor in range(2):
        numpy.asarray(cache.tensor(tensor))[:] = [[0x70 + tensor] * 512, [0x80 + tensor] * 512]
    manager.deallocate_cache(cache)     # the keys hold it until pulled
""")


def expected_pool():
    pool = numpy.arange(2 * LAYERS * BLOCKS * BLOCK_BYTES, dtype=numpy.uint32).astype(numpy.uint8)
    return pool.reshape(2 * LAYERS, BLOCKS, BLOCK_BYTES) ^ numpy.arange(2 * LAYERS, dtype=numpy.uint8)[:, None, None]


class Prompt(Peer):
    """The prompt: a drop-in peer serving the caches PROMPT makes; finalized at the end of its input."""

    def __init__(self):
        super().__init__("dropin")
        self.port = free_port()
        self.run(PROMPT % {"port": self.port, "prompt": PROMPT_ID, "tensors": 2 * LAYERS, "blocks": BLOCKS,
                           "block_bytes": BLOCK_BYTES})

    def caches(self):
        return self.run("result = datadist._engine.memory_stats()['num_caches']")


@pytest.fixture
def prompt():
    peer = Prompt()
    yield peer
    peer.close(check=True)


@pytest.fixture
def decoder():
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.mem_pool_cfg = '{"memory_size": 4194304}'
    datadist = LLMDataDist(LLMRole.DECODER, DECODER_ID)
    datadist.init(config.generate_options())
    yield datadist
    datadist.finalize()


def cluster(port):
    info = LLMClusterInfo()
    info.remote_cluster_id = PROMPT_ID
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", port)
    return info


def failure(call, *args, **kwargs):
    with pytest.raises(LLMException) as raised:
        call(*args, **kwargs)
    return raised.value.status_code


def test_a_decoder_links_pulls_blocks_layers_and_keyed_caches_and_unlinks(prompt, decoder):
    manager = decoder.cache_manager
    local = numpy.zeros((2 * LAYERS, BLOCKS, BLOCK_BYTES), numpy.uint8)
    blocks = manager.register_blocks_cache(BLOCKS_DESC, [int(local[i].ctypes.data) for i in range(2 * LAYERS)])
    assert failure(manager.pull_blocks, BlocksCacheKey(PROMPT_ID, 0), blocks, [0], [0]) \
        is LLMStatusCode.LLM_NOT_YET_LINK
    assert decoder.link_clusters([cluster(prompt.port)], 3000) == (LLMStatusCode.LLM_SUCCESS, [LLMStatusCode.LLM_SUCCESS])
    assert decoder.link_clusters([cluster(prompt.port)], 3000)[1] == [LLMStatusCode.LLM_ALREADY_LINK]

    expected = expected_pool()
    manager.pull_blocks(BlocksCacheKey(PROMPT_ID, 0), blocks, [1, 3, 2], [0, 1, 5])
    assert numpy.array_equal(local[:, [0, 1, 5]], expected[:, [1, 3, 2]])
    assert not local[:, [2, 3, 4, 6, 7]].any()                       # nothing else written
    manager.pull_blocks(BlocksCacheKey(PROMPT_ID, 0), blocks, [4], [7], src_layer_range=range(2, 3),
                        dst_layer_range=range(0, 1), tensor_num_per_layer=2)
    assert numpy.array_equal(local[0:2, 7], expected[4:6, 4]) and not local[2:, 7].any()
    before = local.copy()
    for bad in ([BLOCKS], [0, 1]):                                     # out of range; unequal lists
        assert failure(manager.pull_blocks, BlocksCacheKey(PROMPT_ID, 0), blocks, bad, [3]) \
            is LLMStatusCode.LLM_PARAM_INVALID
    assert failure(manager.pull_blocks, BlocksCacheKey(PROMPT_ID, 9), blocks, [0], [3]) \
        is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    assert numpy.array_equal(local, before)                           # a rejected pull writes nothing

    dst = manager.allocate_cache(CACHE_DESC)
    assert prompt.caches() == 1
    manager.pull_cache(CacheKey(PROMPT_ID, req_id=8), dst, batch_index=1)
    assert [bytes(numpy.asarray(dst.tensor(t))[1]) for t in range(2)] == [b"\x80" * 512, b"\x81" * 512]
    assert failure(manager.pull_cache, CacheKey(PROMPT_ID, req_id=8), dst) is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    assert prompt.caches() == 1                                        # still held by its other key
    manager.pull_cache(CacheKey(PROMPT_ID, req_id=7), dst, batch_index=0)
    assert bytes(numpy.asarray(dst.tensor(1))[0]) == b"\x71" * 512
    assert prompt.caches() == 0                                        # the last key pulled: freed

    assert decoder.unlink_clusters([cluster(prompt.port)], 3000) == (LLMStatusCode.LLM_SUCCESS,
                                                                      [LLMStatusCode.LLM_SUCCESS])
    assert failure(manager.pull_blocks, BlocksCacheKey(PROMPT_ID, 0), blocks, [0], [0]) \
        is LLMStatusCode.LLM_NOT_YET_LINK


def test_an_unreachable_prompt_is_a_link_failure_within_the_timeout(decoder):
    status, statuses = decoder.link_clusters([cluster(free_port())], 1000)
    assert status is not LLMStatusCode.LLM_SUCCESS
    assert statuses[0] in (LLMStatusCode.LLM_LINK_FAILED, LLMStatusCode.LLM_TIMEOUT)
    with pytest.raises(LLMException) as raised:
        decoder.link_clusters([cluster(1)], 0)
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID


def test_a_killed_prompt_fails_the_pull_and_the_decoder_goes_on(prompt, decoder):
    manager = decoder.cache_manager
    local = numpy.zeros((2 * LAYERS, BLOCKS, BLOCK_BYTES), numpy.uint8)
    blocks = manager.register_blocks_cache(BLOCKS_DESC, [int(local[i].ctypes.data) for i in range(2 * LAYERS)])
    assert decoder.link_clusters([cluster(prompt.port)], 3000)[0] is LLMStatusCode.LLM_SUCCESS
    prompt.process.kill()
    prompt.process.wait(WAIT_SECONDS)   # (the fixture closes its pipes)
    assert failure(manager.pull_blocks, BlocksCacheKey(PROMPT_ID, 0), blocks, [0], [0]) in (
        LLMStatusCode.LLM_LINK_FAILED, LLMStatusCode.LLM_TIMEOUT)
    assert decoder.unlink_clusters([cluster(prompt.port)], 1000, force=True)[0] is LLMStatusCode.LLM_SUCCESS
    manager.deallocate_cache(manager.allocate_cache(CACHE_DESC))      # still usable
    prompt.process.returncode = 0                                      # killed on purpose
