"""The control protocol: framing and field-by-field validation, and a listener that survives
malformed, oversized and unlinked traffic and answers nothing it should not."""
import json
import socket
import struct
import time

import numpy
import pytest
from support.network import mooncake_missing
from support.registries import LocalRegistry

from llmdd import LLMException, LLMStatusCode
from llmdd.transfer import MAX_BODY_BYTES, TransferAgent
from llmdd.transfer import _protocol as wire

S = LLMStatusCode
needs_mooncake = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))
CLUSTER = 1
ANSWER_SECONDS = 2.0

VALID = {
    wire.MessageType.LINK: {"cluster_id": 2, "to_cluster_id": CLUSTER, "engine": "127.0.0.1:1", "protocol": "tcp",
                            "host": "none", "pid": 0},
    wire.MessageType.LINK_REPLY: {"status": 0, "cluster_id": 1, "engine": "127.0.0.1:2", "host": "none", "pid": 0},
    wire.MessageType.UNLINK: {"cluster_id": 2},
    wire.MessageType.UNLINK_REPLY: {"status": int(S.LLM_UNLINK_FAILED)},
    wire.MessageType.RESOLVE: {"key": {"kind": "blocks", "cluster_id": 1, "model_id": 0}},
    wire.MessageType.RESOLVE_REPLY: {"status": 0, "pin": 3, "layout": {
        "cache_id": 4, "tensor_addrs": [4096, 8192], "tensor_bytes": 64, "batch": 4, "block_bytes": 16,
        "is_blocks_cache": True, "remote_accessible": False, "batch_index": 0, "regions": [[4096, 8192]],
        "ipc": [[4096, 8192, "0000002a"]]}},
    wire.MessageType.UNPIN: {"pin": 3, "written": {"mode": "blocks", "batch_index": 0, "size": -1, "dst_blocks": [2, 3],
                                                   "dst_layer_range": [0, 2, 1], "tensor_num_per_layer": 1}},
    wire.MessageType.UNPIN_REPLY: {"status": 0},
    wire.MessageType.KEEP: {"pin": 3, "written": {"mode": "cache", "batch_index": 1, "size": -1, "dst_blocks": [],
                                                  "dst_layer_range": [4, 5, 1], "tensor_num_per_layer": 2}},
    wire.MessageType.KEEP_REPLY: {"status": 0},
    wire.MessageType.PULL: {
        "key": {"kind": "cache", "cluster_id": 1, "req_id": 2, "prefix_id": 3, "model_id": 4}, "release_key": True,
        "mode": "cache", "kind_rules": True, "destination": {
            "tensor_addrs": [4096, 8192], "tensor_bytes": 64, "batch": 4, "block_bytes": 16, "is_blocks_cache": False,
            "regions": [[4096, 8192]]},
        "batch_index": 1, "size": -1, "src_blocks": [], "dst_blocks": [], "src_layer_range": [0, 2, 1],
        "dst_layer_range": None, "tensor_num_per_layer": 1, "ipc": None},
    wire.MessageType.PULL_REPLY: {"status": 0},
    wire.MessageType.AUTH_HELLO: {"nonce": "0f" * 32},
    wire.MessageType.AUTH_CHALLENGE: {"nonce": "a5" * 32},
    wire.MessageType.AUTH_PROOF: {"mac": "09" * 32},
    wire.MessageType.AUTH_CONFIRM: {"mac": "fe" * 32},
    wire.MessageType.PING: {},
}


def frame(message_type, body_bytes, magic=wire.MAGIC, version=wire.PROTOCOL_VERSION, flags=0, length=None):
    return wire.HEADER.pack(magic, version, message_type, flags, 9,
                            len(body_bytes) if length is None else length) + body_bytes


def decode(data):
    message_type, request_id, length = wire.decode_header(data[:wire.HEADER.size])
    return message_type, request_id, wire.decode_body(message_type, data[wire.HEADER.size:wire.HEADER.size + length])


@pytest.mark.parametrize("message_type", list(wire.MessageType))
def test_every_message_round_trips(message_type):
    assert decode(wire.encode(message_type, 77, VALID[message_type])) == (message_type, 77, VALID[message_type])


def _with(body, **changes):
    return {**body, **changes}


LINK = VALID[wire.MessageType.LINK]
RESOLVE = VALID[wire.MessageType.RESOLVE]
LAYOUT = VALID[wire.MessageType.RESOLVE_REPLY]["layout"]
PULL = VALID[wire.MessageType.PULL]
UNPIN = VALID[wire.MessageType.UNPIN]
KEEP = VALID[wire.MessageType.KEEP]
DESTINATION = PULL["destination"]
MEMORY = {"kind": "memory", "cluster_id": 1, "tensor_addrs": [4096, 8192], "batch": 4, "block_bytes": 16}


def test_resolve_names_memory_by_address():
    body = _with(RESOLVE, key=MEMORY)
    assert decode(wire.encode(wire.MessageType.RESOLVE, 3, body)) == (wire.MessageType.RESOLVE, 3, body)
    written = _with(UNPIN, written=_with(UNPIN["written"], mode="entry_blocks", size=40))
    assert decode(wire.encode(wire.MessageType.UNPIN, 3, written))[2] == written


@pytest.mark.parametrize("message_type, body", [
    (wire.MessageType.LINK, _with(LINK, extra=1)),
    (wire.MessageType.LINK, {k: v for k, v in LINK.items() if k != "engine"}),
    (wire.MessageType.LINK, _with(LINK, cluster_id=True)),
    (wire.MessageType.LINK, _with(LINK, cluster_id=-1)),
    (wire.MessageType.LINK, _with(LINK, cluster_id=2**64)),
    (wire.MessageType.LINK, _with(LINK, cluster_id=1.0)),
    (wire.MessageType.LINK, _with(LINK, engine="")),
    (wire.MessageType.LINK, _with(LINK, engine="x" * 257)),
    (wire.MessageType.RESOLVE, _with(RESOLVE, key={"kind": "blocks", "cluster_id": 1})),
    (wire.MessageType.RESOLVE, _with(RESOLVE, key={"kind": "other", "cluster_id": 1, "model_id": 0})),
    (wire.MessageType.RESOLVE, _with(RESOLVE, key={"kind": "id", "cluster_id": 1, "cache_id": 2, "batch_index": 2**32})),
    (wire.MessageType.RESOLVE, _with(RESOLVE, write=True)),
    (wire.MessageType.RESOLVE_REPLY, {"status": 0, "pin": 1, "layout": _with(LAYOUT, tensor_addrs=[])}),
    (wire.MessageType.RESOLVE_REPLY, {"status": 0, "pin": 1, "layout": _with(LAYOUT, tensor_addrs=[0])}),
    (wire.MessageType.RESOLVE_REPLY, {"status": 0, "pin": 1, "layout": _with(LAYOUT, block_bytes=15)}),
    (wire.MessageType.RESOLVE_REPLY, {"status": 0, "pin": 1, "layout": _with(LAYOUT, tensor_addrs=[1] * 16385)}),
    (wire.MessageType.RESOLVE_REPLY, {"status": 0, "pin": 1, "layout": _with(LAYOUT, regions=[[4096]])}),
    (wire.MessageType.RESOLVE_REPLY, {"status": 0, "pin": 1, "layout": _with(LAYOUT, regions=[[4096, 0]])}),
    (wire.MessageType.UNPIN, {"pin": -3, "written": None}),
    (wire.MessageType.UNPIN, {"pin": 3}),
    (wire.MessageType.UNPIN, _with(UNPIN, written=_with(UNPIN["written"], mode="entry"))),
    (wire.MessageType.RESOLVE, _with(RESOLVE, key=_with(MEMORY, tensor_addrs=[]))),
    (wire.MessageType.RESOLVE, _with(RESOLVE, key=_with(MEMORY, tensor_addrs=[0]))),
    (wire.MessageType.RESOLVE, _with(RESOLVE, key=_with(MEMORY, tensor_addrs=[2**64 - 16]))),   # past 2**64
    (wire.MessageType.RESOLVE, _with(RESOLVE, key=_with(MEMORY, batch=2**62, block_bytes=2))),  # over i64
    (wire.MessageType.RESOLVE, _with(RESOLVE, key=_with(MEMORY, batch=0))),
    (wire.MessageType.RESOLVE, _with(RESOLVE, key={k: v for k, v in MEMORY.items() if k != "block_bytes"})),
    (wire.MessageType.PULL, _with(PULL, key=MEMORY)),   # memory is pushed into, never pulled from
    (wire.MessageType.UNPIN, _with(UNPIN, written=_with(UNPIN["written"], dst_blocks=[0] * (wire.MAX_BLOCKS + 1)))),
    (wire.MessageType.UNPIN, _with(UNPIN, written=_with(UNPIN["written"], extra=1))),
    (wire.MessageType.UNPIN, _with(UNPIN, written=[])),
    (wire.MessageType.KEEP, _with(KEEP, written=None)),   # a KEEP always names what a layer wrote
    (wire.MessageType.KEEP, {"written": KEEP["written"]}),
    (wire.MessageType.KEEP, _with(KEEP, written=_with(KEEP["written"], mode="memory"))),
    (wire.MessageType.PULL, _with(PULL, mode="all")),
    (wire.MessageType.PULL, _with(PULL, size=-2)),
    (wire.MessageType.PULL, _with(PULL, src_blocks=[-1])),
    (wire.MessageType.PULL, _with(PULL, dst_blocks=[0] * (wire.MAX_BLOCKS + 1))),
    (wire.MessageType.PULL, _with(PULL, src_layer_range=[0, 2, 0])),
    (wire.MessageType.PULL, _with(PULL, src_layer_range=[0, 2**40, 1])),
    (wire.MessageType.PULL, _with(PULL, dst_layer_range=[0, 2])),
    (wire.MessageType.PULL, _with(PULL, destination=_with(DESTINATION, block_bytes=15))),
    (wire.MessageType.PULL, _with(PULL, destination=_with(DESTINATION, tensor_addrs=[]))),
    (wire.MessageType.PULL, _with(PULL, destination=_with(DESTINATION, regions=[[0, 16]]))),
    (wire.MessageType.PULL, _with(PULL, destination=None)),
    (wire.MessageType.AUTH_HELLO, {"nonce": "0f" * 31}),
    (wire.MessageType.AUTH_HELLO, {"nonce": "0F" * 32}),
    (wire.MessageType.AUTH_CHALLENGE, {"nonce": "0g" * 32}),
    (wire.MessageType.AUTH_PROOF, {"mac": 1}),
    (wire.MessageType.AUTH_CONFIRM, {"mac": "09" * 33}),
    (wire.MessageType.PING, {"status": 0}),
], ids=lambda value: getattr(value, "name", ""))
def test_a_body_that_breaks_a_field_rule_is_refused(message_type, body):
    payload = json.dumps(body).encode()
    with pytest.raises(wire.ProtocolError):
        wire.decode_body(message_type, payload)
    with pytest.raises(wire.ProtocolError):
        wire.encode(message_type, 1, body)


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"\xff\xfe", b"[]", b'"text"', b"null",
    b'{"cluster_id": 2, "cluster_id": 3}',
    b'{"cluster_id": NaN}', b'{"cluster_id": Infinity}',
    b"[" * 100000 + b"]" * 100000,
])
def test_a_body_that_is_not_one_json_object_is_refused(payload):
    with pytest.raises(wire.ProtocolError):
        wire.decode_body(wire.MessageType.UNLINK, payload)


@pytest.mark.parametrize("header", [
    frame(1, b"", magic=b"HTTP"),
    frame(1, b"", version=wire.PROTOCOL_VERSION - 1),   # an older version
    frame(1, b"", version=wire.PROTOCOL_VERSION + 1),
    frame(0, b""),
    frame(max(wire.MessageType) + 1, b""),
    frame(1, b"", flags=1),
    frame(1, b"", length=MAX_BODY_BYTES + 1),
    frame(1, b"", length=2**32 - 1),
])
def test_a_header_that_is_not_ours_is_refused(header):
    with pytest.raises(wire.ProtocolError):
        wire.decode_header(header[:wire.HEADER.size])


@pytest.fixture
def serving():
    registry = LocalRegistry()
    agent = TransferAgent(registry, CLUSTER, "127.0.0.1:0", sync_timeout_ms=500)
    yield agent, registry
    agent.close()


def connect(agent):
    connection = socket.create_connection(agent.listen_address, timeout=ANSWER_SECONDS)
    return connection


def answer_of(connection):
    """Everything the listener sends until it closes the connection (or ANSWER_SECONDS pass)."""
    connection.settimeout(ANSWER_SECONDS)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except socket.timeout:
        received += b"<still open>"
    except ConnectionResetError:
        pass   # closed with our unread bytes still in its buffer: a reset, and no answer
    return received


@pytest.mark.parametrize("sent", [
    wire.encode(wire.MessageType.RESOLVE, 1, RESOLVE),              # a request before linking
    wire.encode(wire.MessageType.UNLINK, 1, {"cluster_id": 2}),
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                           # not our protocol
    frame(1, b"", length=MAX_BODY_BYTES + 1),                       # oversized: refused from the header
    frame(1, b'{"cluster_id": 2}'),                                 # a LINK missing its fields
    frame(1, b"{" * 10),                                            # not JSON
], ids=["resolve-before-link", "unlink-before-link", "http", "oversized", "bad-fields", "not-json"])
def test_the_listener_answers_nothing_to_what_is_not_a_valid_link(serving, sent):
    agent, _ = serving
    with connect(agent) as connection:
        connection.sendall(sent)
        assert answer_of(connection) == b""


def test_a_frame_left_incomplete_is_closed_within_the_message_timeout(serving):
    agent, _ = serving
    with connect(agent) as connection:
        connection.sendall(wire.encode(wire.MessageType.LINK, 1, LINK)[:20])
        started = time.monotonic()
        assert answer_of(connection) == b""
        assert time.monotonic() - started < 1.5


def test_a_link_to_another_cluster_id_is_refused(serving):
    agent, _ = serving
    with connect(agent) as connection:
        connection.sendall(wire.encode(wire.MessageType.LINK, 1, _with(LINK, to_cluster_id=CLUSTER + 1)))
        message_type, request_id, body = decode(answer_of(connection))
    assert (message_type, request_id, body["status"]) == (wire.MessageType.LINK_REPLY, 1, S.LLM_LINK_FAILED)


def linked(agent):
    connection = connect(agent)
    connection.sendall(wire.encode(wire.MessageType.LINK, 0, LINK))
    message_type, _, body = wire.receive(connection, time.monotonic() + ANSWER_SECONDS)
    assert message_type == wire.MessageType.LINK_REPLY and body["status"] == S.LLM_SUCCESS
    return connection


def round_trip(connection, message_type, body, request_id=5):
    wire.send(connection, message_type, request_id, body, time.monotonic() + ANSWER_SECONDS)
    reply_type = wire.MessageType.PING
    while reply_type == wire.MessageType.PING:   # the listener's keepalive, on a link idle for a while
        reply_type, reply_id, reply = wire.receive(connection, time.monotonic() + ANSWER_SECONDS)
    assert (reply_type, reply_id) == (wire.REPLY_TO[message_type], request_id)
    return reply


@needs_mooncake
def test_a_linked_peer_gets_answers_and_a_dropped_connection_releases_its_pins(serving):
    agent, registry = serving
    from llmdd.llm_datadist import BlocksCacheKey
    entry = registry.allocate(2, 4, 64, blocks=True, keys=[BlocksCacheKey(CLUSTER, 0)], remote_accessible=True)
    with linked(agent) as connection:
        unknown = {"kind": "blocks", "cluster_id": CLUSTER, "model_id": 5}
        assert round_trip(connection, wire.MessageType.RESOLVE, _with(RESOLVE, key=unknown))["status"] == \
            S.LLM_KV_CACHE_NOT_EXIST
        reply = round_trip(connection, wire.MessageType.RESOLVE, RESOLVE)
        assert reply["status"] == S.LLM_SUCCESS
        # The cache as the peer writes it: its own addresses, or a data-plane helper's mirror of it.
        region = reply["layout"]["regions"][0][0]
        assert [addr - region for addr in reply["layout"]["tensor_addrs"]] == \
            [addr - entry.regions[0][0] for addr in entry.tensor_addrs]
        assert round_trip(connection, wire.MessageType.UNPIN, {"pin": reply["pin"] + 1, "written": None}) == \
            {"status": S.LLM_PARAM_INVALID}
        round_trip(connection, wire.MessageType.RESOLVE, RESOLVE)   # two pins the connection never gives back
        registry.deallocate(entry.cache_id)
        registry.release_key(BlocksCacheKey(CLUSTER, 0))
        assert registry.pin_count(entry.cache_id) == 2 and not registry.is_freed(entry.cache_id)
    # The connection is gone: its pin goes with it, and with it the deallocated cache.
    deadline = time.monotonic() + ANSWER_SECONDS
    while not registry.is_freed(entry.cache_id) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.is_freed(entry.cache_id)


@needs_mooncake
def test_a_push_by_address_is_taken_only_inside_remote_accessible_memory(serving):
    """A hostile peer names memory by address (transfer_cache_async's TransferConfig): only
    ranges wholly inside a remote-accessible cache's regions are pinned and exposed."""
    agent, registry = serving
    open_cache = registry.allocate(2, 4, 64, remote_accessible=True, per_tensor=True)
    closed = registry.allocate(2, 4, 64)
    first, second = open_cache.tensor_addrs

    def memory(addrs, batch=1, block_bytes=64):
        return {"key": {"kind": "memory", "cluster_id": CLUSTER, "tensor_addrs": addrs, "batch": batch,
                        "block_bytes": block_bytes}}
    with linked(agent) as connection:
        for refused in (memory([0x1000]),                          # nothing of ours
                        memory([first + 200]),                     # runs past the end of a tensor
                        memory([first, second], batch=5),          # blocks past the end
                        memory([first, closed.tensor_addrs[0]]),   # a cache no peer may write
                        memory([first - 1])):                      # starts before a tensor
            assert round_trip(connection, wire.MessageType.RESOLVE, refused) == \
                {"status": S.LLM_PARAM_INVALID, "pin": 0, "layout": None}
        assert registry.pin_count(open_cache.cache_id) == 0 and registry.pin_count(closed.cache_id) == 0
        reply = round_trip(connection, wire.MessageType.RESOLVE, memory([second + 64, first + 128], batch=2))
        assert reply["status"] == S.LLM_SUCCESS and registry.pin_count(open_cache.cache_id) == 1
        layout = reply["layout"]
        assert (layout["tensor_bytes"], layout["batch"], layout["block_bytes"]) == (128, 2, 64)
        # The addresses as the peer writes them (the cache's own, or a data-plane helper's mirror's):
        # each at its offset into the exposed copy of its tensor.
        placed = [next((index, addr - start) for index, (start, nbytes) in enumerate(layout["regions"])
                       if start <= addr < start + nbytes) for addr in layout["tensor_addrs"]]
        assert [offset for _, offset in placed] == [64, 128] and placed[0][0] != placed[1][0]
        # UNPIN's written is read against the named memory: a block beyond it is refused.
        written = {"mode": "blocks", "batch_index": 0, "size": -1, "dst_blocks": [2], "dst_layer_range": None,
                   "tensor_num_per_layer": 1}
        assert round_trip(connection, wire.MessageType.UNPIN, {"pin": reply["pin"], "written": written}) == \
            {"status": S.LLM_PARAM_INVALID}
        assert registry.pin_count(open_cache.cache_id) == 0


@needs_mooncake
@pytest.mark.parametrize("in_process", [False, True], ids=["helper", "in-process"])
def test_keep_copies_back_what_a_layer_wrote_and_the_pin_stays_until_unpin(in_process):
    """A layer-wise push's steps under one pin: bytes a stock Mooncake engine wrote into the
    exposed destination reach the cache at KEEP (from the data-plane helper's mirror, or in
    place), the pin and the exposure stay; a KEEP of another pin, or naming bytes outside the
    destination, is refused and changes nothing; UNPIN ends both."""
    from mooncake.engine import TransferEngine

    from llmdd.llm_datadist import BlocksCacheKey
    registry = LocalRegistry()
    with TransferAgent(registry, CLUSTER, "127.0.0.1:0", sync_timeout_ms=500, mooncake_in_process=in_process) as agent:
        entry = registry.allocate(1, 4, 64, blocks=True, keys=[BlocksCacheKey(CLUSTER, 0)], remote_accessible=True)
        writer = TransferEngine()
        assert writer.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
        block = numpy.full(64, 0xAB, numpy.uint8)

        def write(layout, index):
            peer, address = agent._mooncake.address.split(",")[0], layout["tensor_addrs"][0] + 64 * index
            assert writer.batch_transfer_sync_write(peer, [block.ctypes.data], [address], [64]) == 0

        def written(*blocks):
            return {"mode": "blocks", "batch_index": 0, "size": -1, "dst_blocks": list(blocks),
                    "dst_layer_range": None, "tensor_num_per_layer": 1}
        with linked(agent) as connection:
            reply = round_trip(connection, wire.MessageType.RESOLVE, RESOLVE)
            assert reply["status"] == S.LLM_SUCCESS
            pin = reply["pin"]
            write(reply["layout"], 1)
            assert round_trip(connection, wire.MessageType.KEEP, {"pin": pin, "written": written(1)}) == \
                {"status": S.LLM_SUCCESS}
            assert list(registry.tensor(entry.cache_id, 0)[::64]) == [0, 0xAB, 0, 0]
            assert registry.pin_count(entry.cache_id) == 1 and agent._mooncake._exposed
            for refused in ({"pin": pin + 1, "written": written(2)}, {"pin": pin, "written": written(4)}):
                assert round_trip(connection, wire.MessageType.KEEP, refused) == {"status": S.LLM_PARAM_INVALID}
            assert registry.pin_count(entry.cache_id) == 1
            write(reply["layout"], 2)   # the next layer, under the same pin
            assert round_trip(connection, wire.MessageType.UNPIN, {"pin": pin, "written": written(2)}) == \
                {"status": S.LLM_SUCCESS}
            assert list(registry.tensor(entry.cache_id, 0)[::64]) == [0, 0xAB, 0xAB, 0]
            assert registry.pin_count(entry.cache_id) == 0 and agent._mooncake._exposed == {}


@needs_mooncake
def test_the_listener_survives_garbage_and_serves_the_next_link(serving):
    agent, _ = serving
    for garbage in (b"\x00" * 64, frame(5, b"{}"), frame(1, b"x", length=MAX_BODY_BYTES * 4)):
        with connect(agent) as connection:
            connection.sendall(garbage)
            assert answer_of(connection) == b""
    with linked(agent) as connection:
        connection.sendall(b"\x00" * wire.HEADER.size)   # garbage after linking ends that link only
        assert answer_of(connection) == b""
    with linked(agent) as connection:
        assert round_trip(connection, wire.MessageType.UNLINK, {"cluster_id": 2}) == {"status": S.LLM_SUCCESS}


def test_agent_arguments_are_checked():
    registry = LocalRegistry()
    for bad in ({"cluster_id": -1}, {"protocol": "udp"}, {"sync_timeout_ms": 0}, {"listen_ip_info": "nohost"},
                {"listen_ip_info": "1.2.3:80"}, {"listen_ip_info": "127.0.0.1:70000"}):
        arguments = {"cluster_id": 1, **bad}
        with pytest.raises(LLMException) as raised:
            TransferAgent(registry, **arguments)
        assert raised.value.status_code == S.LLM_PARAM_INVALID


def test_the_header_is_sixteen_bytes_big_endian():
    assert wire.HEADER.size == 16
    assert wire.encode(wire.MessageType.UNPIN_REPLY, 0x01020304, {"status": 0})[:16] == \
        b"LDDC" + struct.pack("!BBHII", wire.PROTOCOL_VERSION, 8, 0, 0x01020304, len(b'{"status":0}'))
