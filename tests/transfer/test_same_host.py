"""The same-host path: two engines of one host (the test process and a peer process) move a
transfer's bytes through the runtime's IPC memory, exported for the writing side's pid only and
closed when the transfer ends; llmdd.TransferPath "network", or memory the runtime cannot export,
takes Mooncake instead. The host runtime counts each ACL call (llmdd.sim), so a test sees which
path moved the bytes."""
import numpy
import pytest
from support.network import mooncake_missing
from support.patterns import cache_tensor as tensor
from support.patterns import fill_pattern, pattern
from support.peer import Peer

import llmdd
import llmdd.sim
from llmdd import CacheIndex, ClusterInfo, IpInfo

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER = 1, 2
IPC_CALLS = ("aclrtIpcMemGetExportKey", "aclrtIpcMemSetImportPid", "aclrtIpcMemImportByKey", "aclrtIpcMemClose")
# The host runtime exports allocations of 1 MiB and more (docs/facts.md section 10).
BIG = (2, 8, 128 << 10)      # tensors, blocks, block bytes: a 2 MiB slab
SMALL = (2, 8, 1024)         # a 16 KiB slab: not exportable, so Mooncake


@pytest.fixture(scope="module")
def prompt():
    peer = Peer.engine(PROMPT, remote_accessible=True)
    yield peer
    peer.close()


def calls_here():
    return {call: llmdd.sim.call_count(call) for call in IPC_CALLS}


def calls_in(peer):
    return peer.run("import llmdd.sim\n"
                    f"result = {{call: llmdd.sim.call_count(call) for call in {IPC_CALLS!r}}}")


def grew(before, after):
    return {call: after[call] - before[call] for call in IPC_CALLS}


def allocate(engine, shape):
    tensors, blocks, block_bytes = shape
    cache = llmdd.Cache()
    desc = llmdd.CacheDesc(tensors, [blocks, block_bytes], llmdd.DT_UINT8)
    assert engine.AllocateCache(desc, cache) == S.LLM_SUCCESS
    return cache


def linked_decoder(prompt, options):
    engine = llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder)
    assert engine.Initialize({"llm.SyncKvCacheWaitTime": "3000", **options}) == S.LLM_SUCCESS
    cluster = ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", prompt.port)])
    assert engine.LinkLlmClusters([cluster], [], 3000) == S.LLM_SUCCESS
    return engine, cluster


@pytest.fixture(params=[{}, {"llmdd.TransferPath": "auto"}], ids=["default", "auto"])
def decoder(prompt, request):
    engine, cluster = linked_decoder(prompt, request.param)
    yield engine
    assert engine.UnlinkLlmClusters([cluster], [], 3000) == S.LLM_SUCCESS
    engine.Finalize()


def pull_and_check(prompt, decoder, shape):
    source_id = prompt.call("allocate", num_tensors=shape[0], batch=shape[1], block_bytes=shape[2])["cache_id"]
    destination = allocate(decoder, shape)
    src_blocks, dst_blocks = [1, 2, 5], [7, 0, 3]
    assert decoder.PullKvBlocks(CacheIndex(PROMPT, source_id, 0), destination, src_blocks, dst_blocks) == \
        S.LLM_SUCCESS
    block_bytes = shape[2]
    for t in range(shape[0]):
        expected = pattern(PROMPT, source_id, t, shape[1] * block_bytes).reshape(shape[1], block_bytes)
        got = tensor(destination, t).reshape(shape[1], block_bytes)
        assert numpy.array_equal(got[dst_blocks], expected[src_blocks])
    assert decoder.DeallocateCache(destination.cache_id) == S.LLM_SUCCESS
    prompt.call("deallocate", cache_id=source_id)


def test_a_pull_between_engines_of_one_host_moves_through_ipc_memory(prompt, decoder):
    here, there = calls_here(), calls_in(prompt)
    pull_and_check(prompt, decoder, BIG)
    # The decoder exported its destination (one slab) for the prompt's pid and closed it after;
    # the prompt imported it, copied, and closed its import. No Mooncake registration either side.
    assert grew(here, calls_here()) == {"aclrtIpcMemGetExportKey": 1, "aclrtIpcMemSetImportPid": 1,
                                        "aclrtIpcMemImportByKey": 0, "aclrtIpcMemClose": 1}
    assert grew(there, calls_in(prompt)) == {"aclrtIpcMemGetExportKey": 0, "aclrtIpcMemSetImportPid": 0,
                                             "aclrtIpcMemImportByKey": 1, "aclrtIpcMemClose": 1}
    assert decoder._transfer_service().agent._mooncake._exposed == {}


def test_a_cache_the_runtime_cannot_export_takes_the_network_path(prompt, decoder):
    here, there = calls_here(), calls_in(prompt)
    pull_and_check(prompt, decoder, SMALL)
    assert grew(here, calls_here())["aclrtIpcMemClose"] == 0   # the export was refused: nothing to close
    assert grew(there, calls_in(prompt))["aclrtIpcMemImportByKey"] == 0


def test_transfer_path_network_moves_every_byte_with_mooncake(prompt):
    engine, cluster = linked_decoder(prompt, {"llmdd.TransferPath": "network"})
    try:
        here, there = calls_here(), calls_in(prompt)
        pull_and_check(prompt, engine, BIG)
        assert grew(here, calls_here()) == dict.fromkeys(IPC_CALLS, 0)
        assert grew(there, calls_in(prompt)) == dict.fromkeys(IPC_CALLS, 0)
    finally:
        engine.UnlinkLlmClusters([cluster], [], 3000)
        engine.Finalize()


def test_a_push_between_engines_of_one_host_moves_through_ipc_memory(prompt, decoder):
    destination_id = prompt.call("allocate", num_tensors=BIG[0], batch=BIG[1], block_bytes=BIG[2])["cache_id"]
    source = allocate(decoder, BIG)
    for t in range(BIG[0]):
        fill_pattern(tensor(source, t), DECODER, t)
    here, there = calls_here(), calls_in(prompt)
    assert decoder.PushKvBlocks(source, CacheIndex(PROMPT, destination_id, 0), [0, 4], [6, 1]) == S.LLM_SUCCESS
    assert grew(there, calls_in(prompt)) == {"aclrtIpcMemGetExportKey": 1, "aclrtIpcMemSetImportPid": 1,
                                             "aclrtIpcMemImportByKey": 0, "aclrtIpcMemClose": 1}
    assert grew(here, calls_here()) == {"aclrtIpcMemGetExportKey": 0, "aclrtIpcMemSetImportPid": 0,
                                        "aclrtIpcMemImportByKey": 1, "aclrtIpcMemClose": 1}
    for t in range(BIG[0]):
        pushed = bytes.fromhex(prompt.call("tensor", cache_id=destination_id, index=t)["hex"])
        expected = pattern(DECODER, t, BIG[1] * BIG[2]).reshape(BIG[1], BIG[2])
        got = numpy.frombuffer(pushed, numpy.uint8).reshape(BIG[1], BIG[2])
        assert numpy.array_equal(got[[6, 1]], expected[[0, 4]])
    assert decoder.DeallocateCache(source.cache_id) == S.LLM_SUCCESS
    prompt.call("deallocate", cache_id=destination_id)


def test_a_bad_transfer_path_is_a_bad_option():
    with llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as engine:
        assert engine.Initialize({"llmdd.TransferPath": "ipc"}) == S.LLM_PARAM_INVALID
