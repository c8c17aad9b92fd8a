"""What a transfer exposes to anyone who reaches Mooncake's ports: a stranger's stock Mooncake
engine, with no llmdd link, may read or write a cache only while a transfer needs it, and never a
pull's source. And a peer whose Mooncake answers garbage gets a status, never an exception."""
import contextlib
import ctypes
import socket
import struct
import threading
import time
import types

import numpy
import pytest
from support.network import mooncake_missing
from support.registries import LocalRegistry

import llmdd
from llmdd.llm_datadist import BlocksCacheKey
from llmdd.transfer import TransferAgent, _plan
from llmdd.transfer import _protocol as wire

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER = 1, 2
BLOCK = 4096
ANSWER_SECONDS = 5.0


def cluster(cluster_id, port):
    return types.SimpleNamespace(remote_cluster_id=cluster_id, remote_role_type=0,
                                 remote_ip_infos=[("127.0.0.1", port)], local_ip_infos=[])


@pytest.fixture(scope="module")
def stranger():
    """A stock Mooncake engine and a buffer of its own: it knows addresses, not llmdd."""
    from mooncake.engine import TransferEngine
    engine = TransferEngine()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    buffer = ctypes.create_string_buffer(BLOCK)
    return types.SimpleNamespace(engine=engine, buffer=buffer, addr=ctypes.addressof(buffer))


def reads(stranger, engines, address):
    """Whether the stranger reads BLOCK bytes at `address` through each of `engines`' addresses."""
    return [stranger.engine.batch_transfer_sync_read(peer, [stranger.addr], [address], [BLOCK]) == 0
            for peer in engines.address.split(",")]


def writes(stranger, engines, address):
    ctypes.memset(stranger.addr, 0xEE, BLOCK)
    return [stranger.engine.batch_transfer_sync_write(peer, [stranger.addr], [address], [BLOCK]) == 0
            for peer in engines.address.split(",")]


@pytest.fixture
def linked():
    prompt_registry, decoder_registry = LocalRegistry(), LocalRegistry()
    with TransferAgent(prompt_registry, PROMPT, "127.0.0.1:0", sync_timeout_ms=3000) as prompt, \
            TransferAgent(decoder_registry, DECODER, sync_timeout_ms=3000) as decoder:
        assert decoder.link([cluster(PROMPT, prompt.listen_address[1])], 3000)[0] == S.LLM_SUCCESS
        yield types.SimpleNamespace(prompt=prompt, decoder=decoder, prompt_registry=prompt_registry,
                                    decoder_registry=decoder_registry)


def source_and_destination(linked, remote_accessible=False):
    source = linked.prompt_registry.allocate(2, 8, BLOCK, blocks=True, keys=[BlocksCacheKey(PROMPT, 0)],
                                             remote_accessible=remote_accessible)
    for t in range(2):
        linked.prompt_registry.tensor(source.cache_id, t)[:] = 7 + t
    destination = linked.decoder_registry.allocate(2, 8, BLOCK, blocks=True)
    return source, destination


def test_after_a_pull_neither_side_leaves_a_byte_for_a_stranger(linked, stranger):
    # Defect 1: registrations outlived the pull, and a stranger read (and wrote) the source and
    # the destination at their addresses, even after the memory was freed and reused.
    source, destination = source_and_destination(linked)
    assert linked.decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [1], [2]) == S.LLM_SUCCESS
    assert (linked.decoder_registry.tensor(destination.cache_id, 0)[2 * BLOCK:3 * BLOCK] == 7).all()
    prompt_engines, decoder_engines = linked.prompt._mooncake, linked.decoder._mooncake
    assert not any(reads(stranger, prompt_engines, source.tensor_addrs[0]))
    assert not any(writes(stranger, prompt_engines, source.tensor_addrs[0] + BLOCK))
    assert not any(reads(stranger, decoder_engines, destination.tensor_addrs[0]))
    assert not any(writes(stranger, decoder_engines, destination.tensor_addrs[0] + 2 * BLOCK))
    assert (linked.prompt_registry.tensor(source.cache_id, 0) == 7).all()
    assert (linked.decoder_registry.tensor(destination.cache_id, 0)[2 * BLOCK:3 * BLOCK] == 7).all()
    assert prompt_engines._exposed == {} and decoder_engines._exposed == {}


def test_while_a_pull_moves_its_source_is_not_exposed_at_all(linked, stranger, monkeypatch):
    # Defect 2: serving a pull registered the source with Mooncake, which lets anyone write it,
    # though the cache was not remote accessible. Now the source side writes into the puller's
    # cache: the stranger, trying while the pull is under way, neither writes nor reads the source.
    source, destination = source_and_destination(linked)
    during = {}
    coalesce = _plan.coalesce

    def stranger_tries(*arguments):
        engines = linked.prompt._mooncake
        during["writes"] = writes(stranger, engines, source.tensor_addrs[1])
        during["reads"] = reads(stranger, engines, source.tensor_addrs[1])
        return coalesce(*arguments)
    monkeypatch.setattr(_plan, "coalesce", stranger_tries)
    assert linked.decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [0, 1], [0, 1]) == S.LLM_SUCCESS
    assert during == {"writes": [False] * len(during["writes"]), "reads": [False] * len(during["reads"])}
    assert (linked.prompt_registry.tensor(source.cache_id, 1) == 8).all()
    assert (linked.decoder_registry.tensor(destination.cache_id, 1)[:2 * BLOCK] == 8).all()


def test_a_push_exposes_its_destination_only_until_it_unpins(linked, stranger):
    source, _ = source_and_destination(linked, remote_accessible=True)
    pusher_source = linked.decoder_registry.allocate(2, 8, BLOCK, blocks=True)
    linked.decoder_registry.tensor(pusher_source.cache_id, 0)[:] = 3
    assert linked.decoder.push_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), pusher_source, [0], [5]) == S.LLM_SUCCESS
    assert (linked.prompt_registry.tensor(source.cache_id, 0)[5 * BLOCK:6 * BLOCK] == 3).all()
    assert not any(writes(stranger, linked.prompt._mooncake, source.tensor_addrs[0]))
    assert linked.prompt._mooncake._exposed == {}


def test_a_push_into_a_cache_that_is_not_remote_accessible_exposes_nothing(linked):
    source, _ = source_and_destination(linked, remote_accessible=False)
    pusher_source = linked.decoder_registry.allocate(2, 8, BLOCK, blocks=True)
    assert linked.decoder.push_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), pusher_source, [0], [5]) == \
        S.LLM_PARAM_INVALID
    assert (linked.prompt_registry.tensor(source.cache_id, 0) == 7).all()
    assert linked.prompt._mooncake._exposed == {}


@contextlib.contextmanager
def broken_mooncake_peer():
    """A port that answers Mooncake's handshake with a JSON array where an object belongs: the
    Mooncake client raises (RuntimeError) on it instead of answering a status."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except socket.timeout:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    length = struct.unpack("<Q", connection.recv(8, socket.MSG_WAITALL))[0]
                    connection.recv(length + 1, socket.MSG_WAITALL)
                    connection.sendall(struct.pack("<Q", 4) + b"\x01[1]]")
                    time.sleep(0.1)
                except (OSError, struct.error):
                    pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_pull_served_to_a_peer_whose_mooncake_answers_garbage_is_a_status_and_the_link_lives(linked):
    # Defect 6: Mooncake raised RuntimeError through the transfer call. A raw peer links to the
    # prompt naming the broken port as its engine and asks for a pull: the answer is a status, and
    # the same connection then serves the next request.
    source, _ = source_and_destination(linked)
    with broken_mooncake_peer() as engine, socket.create_connection(linked.prompt.listen_address, 5) as connection:
        deadline = time.monotonic() + ANSWER_SECONDS
        wire.send(connection, wire.MessageType.LINK, 0, {"cluster_id": 9, "to_cluster_id": PROMPT, "engine": engine,
                                                         "protocol": "tcp", "host": "none", "pid": 0}, deadline)
        assert wire.receive(connection, deadline)[2]["status"] == S.LLM_SUCCESS
        destination = {"tensor_addrs": [1 << 20, 2 << 20], "tensor_bytes": 8 * BLOCK, "batch": 8,
                       "block_bytes": BLOCK, "is_blocks_cache": True, "regions": [[1 << 20, 16 * BLOCK]]}
        pull = {"key": wire.key_fields(BlocksCacheKey(PROMPT, 0)), "release_key": False, "mode": "blocks",
                "kind_rules": True, "destination": destination, "batch_index": 0, "size": -1, "src_blocks": [0],
                "dst_blocks": [0], "src_layer_range": None, "dst_layer_range": None, "tensor_num_per_layer": 1,
                "ipc": None}
        for request_id in (1, 2):
            wire.send(connection, wire.MessageType.PULL, request_id, pull, deadline)
            assert wire.receive(connection, deadline) == (wire.MessageType.PULL_REPLY, request_id,
                                                         {"status": S.LLM_LINK_FAILED})
    assert (linked.prompt_registry.tensor(source.cache_id, 0) == 7).all()


def test_a_push_to_a_peer_whose_mooncake_answers_garbage_is_a_status(stranger):
    # Defect 6 on the pushing side: a raw listener answers LINK and RESOLVE like a prompt, and
    # names the broken port as its engine.
    registry = LocalRegistry()
    source = registry.allocate(2, 8, BLOCK, blocks=True)
    layout = {"cache_id": 1, "tensor_addrs": [1 << 20, 2 << 20], "tensor_bytes": 8 * BLOCK, "batch": 8,
              "block_bytes": BLOCK, "is_blocks_cache": True, "remote_accessible": True, "batch_index": 0,
              "regions": [[1 << 20, 16 * BLOCK]], "ipc": None}
    with broken_mooncake_peer() as engine, socket.create_server(("127.0.0.1", 0)) as listener, \
            TransferAgent(registry, DECODER, sync_timeout_ms=3000) as agent:
        def answer():
            connection, _ = listener.accept()
            with connection:
                deadline = time.monotonic() + ANSWER_SECONDS
                while True:
                    try:
                        message_type, request_id, _ = wire.receive(connection, deadline)
                    except (OSError, wire.ProtocolError):
                        return
                    replies = {wire.MessageType.LINK: {"status": 0, "cluster_id": PROMPT, "engine": engine,
                                                       "host": "none", "pid": 0},
                               wire.MessageType.RESOLVE: {"status": 0, "pin": 1, "layout": layout},
                               wire.MessageType.UNPIN: {"status": 0}}
                    wire.send(connection, wire.REPLY_TO[message_type], request_id, replies[message_type], deadline)
        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        assert agent.link([cluster(PROMPT, listener.getsockname()[1])], 3000)[0] == S.LLM_SUCCESS
        assert agent.push_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), source, [0], [0]) == S.LLM_LINK_FAILED
        agent.unlink([types.SimpleNamespace(remote_cluster_id=PROMPT)], 1000, force=True)
        thread.join(10)
