"""Review of issue 18's transfer code: what a linked peer speaking the control protocol can make
a serving engine do. Each test fails on the code it was written against (main at c4a250e)."""
import os
import socket
import time

import pytest
from support.network import free_port, mooncake_missing
from support.patterns import cache_tensor
from support.peer import Peer

import llmdd
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
    status, mapped = server._ipc_import(key)
    assert status == S.LLM_SUCCESS
    try:
        offset = victim.tensor_addrs[0] - mapped
        assert offset >= MIB   # the victim lies past the export's end, not inside it
        with link_as_same_host_peer(port, pid) as connection:
            body = pull_body(source.cache_id, start + offset, MIB, [[start, offset + MIB, key]])
            status = round_trip(connection, wire.MessageType.PULL, body)["status"]
    finally:
        server._ipc_close(key)
    assert (cache_tensor(victim, 0) == 0).all(), "the pull wrote into memory of the server's never exported"
    assert status == S.LLM_PARAM_INVALID
