"""Review of issue 18's transfer code: what a linked peer speaking the control protocol can make
a serving engine do. Each test fails on the code it was written against (main at c4a250e)."""
import os
import socket
import threading
import time

import pytest
from support.network import free_port, mooncake_missing
from support.patterns import cache_tensor, memory
from support.peer import Peer
from support.registries import Cluster, LocalRegistry

import llmdd
from llmdd.llm_datadist import BlocksCacheKey
from llmdd.transfer import TransferAgent
from llmdd.transfer import _protocol as wire
from llmdd.transfer._same_host import host_token

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
SERVER, PEER = 1, 2
MIB = 1 << 20        # the host runtime exports allocations of 1 MiB and more
ANSWER_SECONDS = 5.0


def allocate(engine, nbytes, fill):
    cache = llmdd.Cache()
    assert engine.AllocateCache(llmdd.CacheDesc(1, [1, nbytes], llmdd.DT_UINT8), cache) == S.LLM_SUCCESS
    cache_tensor(cache, 0)[:] = fill
    return cache


@pytest.fixture
def server():
    """An llmdd engine listening on 127.0.0.1 in this process."""
    engine = llmdd.LlmDataDist(SERVER, llmdd.LlmRole.kPrompt)
    port = free_port()
    assert engine.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}", "llm.SyncKvCacheWaitTime": "3000"}) == \
        S.LLM_SUCCESS
    yield engine, port
    engine.Finalize()


@pytest.fixture(scope="module")
def exporter():
    """Another process of this host: it exports IPC memory of its own for this process to import."""
    peer = Peer.engine(PEER)
    yield peer
    peer.close()


def export_for_this_process(exporter, nbytes):
    """(start, key, pid) of `nbytes` of the exporter's memory, exported for this process alone."""
    return exporter.run(
        "import os\nimport llmdd\n"
        "cache = llmdd.Cache()\n"
        f"assert engine.AllocateCache(llmdd.CacheDesc(1, [1, {nbytes}], llmdd.DT_UINT8), cache) == 0\n"
        "caches[cache.cache_id] = cache\n"
        f"status, key = engine._ipc_export(cache.tensor_addrs[0], {nbytes}, {os.getpid()})\n"
        "assert status == 0, status\n"
        "result = [cache.tensor_addrs[0], key, os.getpid()]")


def link_as_same_host_peer(port, pid):
    """A raw connection linked as a peer of this host with process `pid`."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS)
    body = {"cluster_id": PEER, "to_cluster_id": SERVER, "engine": "127.0.0.1:1", "protocol": "tcp",
            "host": host_token(), "pid": pid}
    wire.send(connection, wire.MessageType.LINK, 0, body, time.monotonic() + ANSWER_SECONDS)
    reply_type, _, reply = wire.receive(connection, time.monotonic() + ANSWER_SECONDS)
    assert reply_type == wire.MessageType.LINK_REPLY and reply["status"] == S.LLM_SUCCESS
    assert reply["pid"] == os.getpid()   # the server takes the same-host path with us
    return connection


def round_trip(connection, message_type, body, request_id=7):
    wire.send(connection, message_type, request_id, body, time.monotonic() + ANSWER_SECONDS)
    reply_type = wire.MessageType.PING
    while reply_type == wire.MessageType.PING:
        reply_type, reply_id, reply = wire.receive(connection, time.monotonic() + ANSWER_SECONDS)
    assert (reply_type, reply_id) == (wire.REPLY_TO[message_type], request_id)
    return reply


def pull_body(source_cache_id, destination_addr, nbytes, ipc):
    return {"key": {"kind": "id", "cluster_id": SERVER, "cache_id": source_cache_id, "batch_index": 0},
            "release_key": False, "mode": "cache", "kind_rules": False,
            "destination": {"tensor_addrs": [destination_addr], "tensor_bytes": nbytes, "batch": 1,
                            "block_bytes": nbytes, "is_blocks_cache": False,
                            "regions": [[destination_addr, nbytes]]},
            "batch_index": 0, "size": -1, "src_blocks": [], "dst_blocks": [], "src_layer_range": None,
            "dst_layer_range": None, "tensor_num_per_layer": 1, "ipc": ipc}


def test_a_pull_cannot_write_beyond_the_ipc_memory_its_peer_exported(server, exporter):
    server, port = server
    # The serving side trusts the [start, nbytes, key] its peer claims for each export: a peer that
    # exported 1 MiB but claims more makes the server copy past the import's end, into whatever
    # this process has mapped there (here: another cache of the server's, never exported).
    source = allocate(server, MIB, 0xAA)
    victim = allocate(server, MIB, 0x00)
    start, key, pid = export_for_this_process(exporter, MIB)
    # Where the server's import of the key lands: importing a key again hands out the same mapping.
    status, mapped, _ = server._ipc_import(key)
    assert status == S.LLM_SUCCESS
    try:
        offset = victim.tensor_addrs[0] - mapped
        # Where the victim lies depends on the process's mappings: when it is not past the export's
        # end, the claim reaches just past the end instead (only the refusal then shows).
        victim_reached = offset >= MIB
        offset = offset if victim_reached else MIB
        with link_as_same_host_peer(port, pid) as connection:
            body = pull_body(source.cache_id, start + offset, MIB, [[start, offset + MIB, key]])
            status = round_trip(connection, wire.MessageType.PULL, body)["status"]
    finally:
        server._ipc_close(key)
    assert status == S.LLM_PARAM_INVALID
    assert not victim_reached or (cache_tensor(victim, 0) == 0).all(), \
        "the pull wrote into memory of the server's never exported"


def answer_one_pull(listener, importer, seen):
    """A hostile serving side: answers the LINK, imports what the PULL exported and keeps what the
    mapping shows at each address of `seen["look_at"]`, answers the pull a success."""
    connection, _ = listener.accept()
    with connection:
        deadline = time.monotonic() + 3 * ANSWER_SECONDS
        _, request_id, _ = wire.receive(connection, deadline)
        wire.send(connection, wire.MessageType.LINK_REPLY, request_id,
                  {"status": 0, "cluster_id": SERVER, "engine": "127.0.0.1:1", "host": host_token(),
                   "pid": os.getpid()}, deadline)
        message_type = wire.MessageType.PING
        while message_type == wire.MessageType.PING:
            message_type, request_id, body = wire.receive(connection, deadline)
        seen["exported"] = body["ipc"]
        seen["destination"] = body["destination"]["regions"]
        for start, nbytes, key in body["ipc"] or []:
            status, mapped, _ = importer._ipc_import(key)
            assert status == S.LLM_SUCCESS
            seen["read"] = [bytes(memory(mapped + address - start, size))
                            for address, size in seen["look_at"] if start <= address < start + nbytes]
            importer._ipc_close(key)
        wire.send(connection, wire.MessageType.PULL_REPLY, request_id, {"status": 0}, deadline)


def test_a_pull_exports_no_byte_of_the_puller_beyond_its_destination(exporter):
    # Exports start at a page (4 KiB here, a 2 MiB device page on Ascend), so a destination carved
    # out of a pool of 1 KiB pages is exported together with the cache in front of it: the serving
    # peer imports the export and reads (and may write) another cache of the puller's.
    importer = llmdd.LlmDataDist(SERVER, llmdd.LlmRole.kPrompt)
    assert importer.Initialize({}) == S.LLM_SUCCESS
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(3 * ANSWER_SECONDS)
        seen = {}
        exporter.run(
            "import llmdd\nfrom support.patterns import memory\n"
            "pooled = llmdd.LlmDataDist(3, llmdd.LlmRole.kDecoder)\n"
            "assert pooled.Initialize({'llm.MemPoolConfig': '{\"memory_size\": 4194304, \"page_shift\": 10}',\n"
            "                          'llm.SyncKvCacheWaitTime': '5000'}) == 0\n"
            "neighbour, destination = llmdd.Cache(), llmdd.Cache()\n"
            "for cache in (neighbour, destination):\n"
            "    assert pooled.AllocateCache(llmdd.CacheDesc(1, [1, 1024], llmdd.DT_UINT8), cache) == 0\n"
            "memory(neighbour.tensor_addrs[0], 1024)[:] = 0x5A\n"
            "result = [neighbour.tensor_addrs[0], destination.tensor_addrs[0]]")
        neighbour, destination = exporter.run("result = [neighbour.tensor_addrs[0], destination.tensor_addrs[0]]")
        seen["look_at"] = [(neighbour, 1024)]
        serving = threading.Thread(target=answer_one_pull, args=(listener, importer, seen), daemon=True)
        serving.start()
        try:
            status = exporter.run(
                f"cluster = llmdd.ClusterInfo({SERVER}, 0, [], [llmdd.IpInfo('127.0.0.1', {listener.getsockname()[1]})])\n"
                "assert pooled.LinkLlmClusters([cluster], [], 5000) == 0\n"
                f"result = int(pooled.PullKvCache(llmdd.CacheIndex({SERVER}, 1, 0), destination))\n"
                "pooled.UnlinkLlmClusters([cluster], [], 1000, True)\n"
                "pooled.Finalize()")
        finally:
            serving.join(3 * ANSWER_SECONDS)
            importer.Finalize()
    assert status == S.LLM_SUCCESS
    assert seen.get("read", []) == [], "the pull's export shows the puller's other cache to the serving peer"
    # A destination that is not whole pages is not exported at all: it takes the network path.
    assert seen["exported"] is None


def test_a_pull_whose_request_does_not_fit_a_frame_is_a_status_not_an_exception():
    # Each list is within MAX_BLOCKS, but the PULL's body is over MAX_BODY_BYTES: encode's
    # ProtocolError went through Channel.request and out of the transfer call.
    prompt_registry, decoder_registry = LocalRegistry(), LocalRegistry()
    with TransferAgent(prompt_registry, SERVER, "127.0.0.1:0", sync_timeout_ms=3000) as prompt, \
            TransferAgent(decoder_registry, PEER, sync_timeout_ms=3000) as decoder:
        assert decoder.link([Cluster(SERVER, "127.0.0.1", prompt.listen_address[1])], 3000)[0] == S.LLM_SUCCESS
        prompt_registry.allocate(1, 8, 64, blocks=True, keys=[BlocksCacheKey(SERVER, 0)])
        destination = decoder_registry.allocate(1, 8, 64, blocks=True)
        blocks = [10**9 + index for index in range(wire.MAX_BLOCKS)]
        status = decoder.pull_blocks(SERVER, BlocksCacheKey(SERVER, 0), destination, blocks, blocks)
        assert status == S.LLM_PARAM_INVALID


def test_a_pull_naming_more_segments_than_a_plan_may_hold_is_refused_before_planning(server):
    # 16,384 destination tensors x 65,536 blocks would be a billion segments built on the link's
    # reader: the request is refused from its sizes alone.
    server, port = server
    source = allocate(server, MIB, 0x11)
    with link_as_same_host_peer(port, os.getpid() + 1) as connection:
        body = pull_body(source.cache_id, 1 << 40, MIB, None)
        tensors = wire.MAX_TENSORS
        body.update(mode="entry_blocks", dst_blocks=list(range(wire.MAX_BLOCKS)), tensor_num_per_layer=1,
                    destination={"tensor_addrs": [(1 << 40) + t * 4096 for t in range(tensors)],
                                 "tensor_bytes": wire.MAX_BLOCKS, "batch": wire.MAX_BLOCKS, "block_bytes": 1,
                                 "is_blocks_cache": False, "regions": [[1 << 40, tensors * 4096]]})
        assert round_trip(connection, wire.MessageType.PULL, body)["status"] == S.LLM_PARAM_INVALID


def test_a_link_naming_mooncake_engines_elsewhere_than_its_own_address_is_refused(server):
    # Otherwise a linked peer points the server's writes at a third party's engine.
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS) as connection:
        body = {"cluster_id": PEER, "to_cluster_id": SERVER, "engine": "127.0.0.1:1,10.9.9.9:2", "protocol": "tcp",
                "host": "none", "pid": 0}
        wire.send(connection, wire.MessageType.LINK, 0, body, time.monotonic() + ANSWER_SECONDS)
        reply_type, _, reply = wire.receive(connection, time.monotonic() + ANSWER_SECONDS)
        assert reply_type == wire.MessageType.LINK_REPLY and reply["status"] == S.LLM_LINK_FAILED
