"""llmdd's control protocol: the metadata two transfer agents exchange over TCP.

Bytes of caches never travel here (they move through Mooncake's Transfer Engine); this carries
who linked, where each side's engine listens, pulls (the puller's exposed cache and which part of
the key's cache to write into it) and pushes (which cache a key names, pinned and exposed to the
pusher's writes until it unpins). The format is documented in docs/control-protocol.md.

A frame is a 16-byte header and a JSON body:

    magic    4 bytes  b"LDDC"
    version  u8       PROTOCOL_VERSION
    type     u8       a MessageType
    flags    u16      0 (reserved)
    request  u32      request id; a reply carries its request's id
    length   u32      body bytes, at most MAX_BODY_BYTES

all big-endian. The body is a UTF-8 JSON object whose fields are exactly those MESSAGE_FIELDS
lists for its type, each checked for type and range. No pickle: a peer can make us build only
dicts, lists, strings and bounded ints, and anything else ends the connection unanswered.
"""
import enum
import json
import socket
import struct
import time

from .._cache_keys import KEY_TYPES
from .._limits import INT64, UINT32, UINT64

MAGIC = b"LDDC"
# 2: requests both ways on a link; 3: PULL, authentication, PING; 4: UNPIN's written; 5: RESOLVE by
# memory (a push to raw addresses) and UNPIN's written "entry_blocks"; 6: KEEP (a layer-wise push's
# layers kept one by one under one pin)
PROTOCOL_VERSION = 6
HEADER = struct.Struct("!4sBBHII")
# A layout of the largest cache we describe (MAX_TENSORS addresses of up to 20 digits) fits
# several times over; anything bigger is not one of our messages.
MAX_BODY_BYTES = 1 << 20
MAX_TENSORS = 16384
MAX_BLOCKS = 65536      # block indices a pull names on each side
MAX_TEXT = 256
UINT32_MAX, UINT64_MAX = UINT32[1], UINT64[1]
INT64_MIN, INT64_MAX = INT64


class ProtocolError(Exception):
    """The peer sent something that is not a valid message of this protocol."""


class MessageType(enum.IntEnum):
    LINK = 1          # caller -> listener: I link to you
    LINK_REPLY = 2
    UNLINK = 3
    UNLINK_REPLY = 4
    RESOLVE = 5       # a push: pin the cache this key names and expose it to my writes
    RESOLVE_REPLY = 6
    UNPIN = 7         # the push's bytes moved (or not): keep what was written, unpin, withdraw
    UNPIN_REPLY = 8
    PULL = 9          # write what this key names into my exposed cache, then answer
    PULL_REPLY = 10
    KEEP = 11         # a layer-wise push's layer moved: keep what was written, the pin stays for the next
    KEEP_REPLY = 12
    # Authentication, before LINK when a link secret is set (_auth.py), and the keepalive.
    AUTH_HELLO = 20      # caller -> listener: the caller's nonce
    AUTH_CHALLENGE = 21  # listener -> caller: the listener's nonce
    AUTH_PROOF = 22      # caller -> listener: the caller's MAC over both nonces
    AUTH_CONFIRM = 23    # listener -> caller: the listener's MAC, once the caller's checked out
    PING = 24            # either side of a link it has sent nothing on for a while; never answered


REPLY_TO = {
    MessageType.LINK: MessageType.LINK_REPLY,
    MessageType.UNLINK: MessageType.UNLINK_REPLY,
    MessageType.RESOLVE: MessageType.RESOLVE_REPLY,
    MessageType.UNPIN: MessageType.UNPIN_REPLY,
    MessageType.PULL: MessageType.PULL_REPLY,
    MessageType.KEEP: MessageType.KEEP_REPLY,
}


def _int_in(low, high):
    def check(value):
        # bool is an int to Python but never a number on this wire.
        return type(value) is int and low <= value <= high
    return check


def _is_bool(value):
    return type(value) is bool


def _text(value):
    return type(value) is str and 0 < len(value) <= MAX_TEXT


def _one_of(*choices):
    return lambda value: value in choices and type(value) is str


def _hex_bytes(count):
    digits = frozenset("0123456789abcdef")
    return lambda value: type(value) is str and len(value) == 2 * count and digits.issuperset(value)


def _list_of(check_item, max_items):
    return lambda value: type(value) is list and len(value) <= max_items and all(check_item(v) for v in value)


def _or_none(check):
    return lambda value: value is None or check(value)


_u32 = _int_in(0, UINT32_MAX)
_u64 = _int_in(0, UINT64_MAX)
_i64 = _int_in(INT64_MIN, INT64_MAX)
_status = _int_in(-1, UINT32_MAX)
NONCE_BYTES = 32   # a fresh random nonce from each side of an authentication
MAC_BYTES = 32     # HMAC-SHA256

# Keys by kind: a CacheKey ("cache"), a BlocksCacheKey ("blocks") or a CacheKeyByIdAndIndex ("id").
KEY_FIELDS = {
    "cache": {"kind": _one_of("cache"), "cluster_id": _u64, "req_id": _u64, "prefix_id": _u64, "model_id": _u64},
    "blocks": {"kind": _one_of("blocks"), "cluster_id": _u64, "model_id": _u64},
    "id": {"kind": _one_of("id"), "cluster_id": _u64, "cache_id": _i64, "batch_index": _u32},
}

# (address, nbytes) of memory a transfer engine registers: a segment may not cross one's end.
_regions = _list_of(lambda region: type(region) is list and len(region) == 2 and _int_in(1, UINT64_MAX)(region[0])
                   and _int_in(1, INT64_MAX)(region[1]), MAX_TENSORS)

# Regions exported as IPC memory for the peer (the same-host path): [start, nbytes, key] each.
_exported_or_none = _or_none(_list_of(lambda region: type(region) is list and len(region) == 3
                                      and _int_in(1, UINT64_MAX)(region[0]) and _int_in(1, INT64_MAX)(region[1])
                                      and _text(region[2]), MAX_TENSORS))

LAYOUT_FIELDS = {
    "cache_id": _i64,
    "tensor_addrs": _list_of(_int_in(1, UINT64_MAX), MAX_TENSORS),
    "tensor_bytes": _int_in(1, INT64_MAX),
    "batch": _int_in(1, INT64_MAX),
    "block_bytes": _int_in(1, INT64_MAX),
    "is_blocks_cache": _is_bool,
    "remote_accessible": _is_bool,
    "batch_index": _u32,
    "regions": _regions,
    "ipc": _exported_or_none,
}


def is_key(value):
    """Whether `value` is a valid wire key."""
    if type(value) is not dict or type(value.get("kind")) is not str or value["kind"] not in KEY_FIELDS:
        return False
    return _fields_valid(value, KEY_FIELDS[value["kind"]])


# What a push to raw addresses (transfer_cache_async's TransferConfig) asks the peer to expose:
# `batch` blocks of `block_bytes` at each address, which must lie in the peer's remote-accessible memory.
MEMORY_FIELDS = {
    "kind": _one_of("memory"),
    "cluster_id": _u64,
    "tensor_addrs": _list_of(_int_in(1, UINT64_MAX), MAX_TENSORS),
    "batch": _int_in(1, INT64_MAX),
    "block_bytes": _int_in(1, INT64_MAX),
}


def _is_memory(value):
    if type(value) is not dict or value.get("kind") != "memory" or not _fields_valid(value, MEMORY_FIELDS):
        return False
    nbytes = value["batch"] * value["block_bytes"]
    return (len(value["tensor_addrs"]) > 0 and nbytes <= INT64_MAX
            and all(addr + nbytes - 1 <= UINT64_MAX for addr in value["tensor_addrs"]))


def is_push_target(value):
    """Whether `value` is what RESOLVE may name: a wire key, or memory by address."""
    return is_key(value) or _is_memory(value)


def memory_fields(cluster_id, tensor_addrs, batch, block_bytes):
    """RESOLVE's `key` for `batch` blocks of `block_bytes` at each of tensor_addrs on the peer."""
    return {"kind": "memory", "cluster_id": cluster_id, "tensor_addrs": list(tensor_addrs), "batch": batch,
            "block_bytes": block_bytes}


def _layout_or_none(value):
    if value is None:
        return True
    if type(value) is not dict or not _fields_valid(value, LAYOUT_FIELDS):
        return False
    return len(value["tensor_addrs"]) > 0 and value["tensor_bytes"] == value["batch"] * value["block_bytes"]


# The puller's cache, exposed to the server's writes for the pull.
DESTINATION_FIELDS = {
    "tensor_addrs": _list_of(_int_in(1, UINT64_MAX), MAX_TENSORS),
    "tensor_bytes": _int_in(1, INT64_MAX),
    "batch": _int_in(1, INT64_MAX),
    "block_bytes": _int_in(1, INT64_MAX),
    "is_blocks_cache": _is_bool,
    "regions": _regions,
}


def _destination(value):
    if type(value) is not dict or not _fields_valid(value, DESTINATION_FIELDS):
        return False
    return len(value["tensor_addrs"]) > 0 and value["tensor_bytes"] == value["batch"] * value["block_bytes"]


def is_layer_range(value):
    """A range as [start, stop, step], of at most MAX_TENSORS layers."""
    if value is None:
        return True
    if not (type(value) is list and len(value) == 3 and all(_i64(v) for v in value) and value[2] != 0):
        return False
    return len(range(*value)) <= MAX_TENSORS


# How a pull cuts the source: a batch entry into one ("cache"), blocks into blocks ("blocks"), a
# batch entry into blocks ("entry_blocks").
PULL_MODES = ("cache", "blocks", "entry_blocks")

# UNPIN's `written`: the destination's side of the push that moved (the serving side copies those
# bytes back when its peer wrote into a data-plane helper's mirror), or null when it did not move.
# "entry_blocks": an entry of `size` bytes cut into dst_blocks, the last one possibly short.
WRITTEN_FIELDS = {
    "mode": _one_of("cache", "blocks", "entry_blocks"),
    "batch_index": _u32,
    "size": _int_in(-1, INT64_MAX),
    "dst_blocks": _list_of(_u64, MAX_BLOCKS),
    "dst_layer_range": is_layer_range,
    "tensor_num_per_layer": _u32,
}


def _written(value):
    return type(value) is dict and _fields_valid(value, WRITTEN_FIELDS)


def _written_or_none(value):
    return value is None or _written(value)


MESSAGE_FIELDS = {
    MessageType.LINK: {"cluster_id": _u64, "to_cluster_id": _u64, "engine": _text, "protocol": _text,
                       "host": _text, "pid": _u32},
    MessageType.LINK_REPLY: {"status": _status, "cluster_id": _u64, "engine": _text, "host": _text, "pid": _u32},
    MessageType.UNLINK: {"cluster_id": _u64},
    MessageType.UNLINK_REPLY: {"status": _status},
    MessageType.RESOLVE: {"key": is_push_target},
    MessageType.RESOLVE_REPLY: {"status": _status, "pin": _u64, "layout": _layout_or_none},
    MessageType.UNPIN: {"pin": _u64, "written": _written_or_none},
    MessageType.UNPIN_REPLY: {"status": _status},
    MessageType.KEEP: {"pin": _u64, "written": _written},
    MessageType.KEEP_REPLY: {"status": _status},
    MessageType.PULL: {"key": is_key, "release_key": _is_bool, "mode": _one_of(*PULL_MODES), "kind_rules": _is_bool,
                       "destination": _destination, "batch_index": _u32, "size": _int_in(-1, INT64_MAX),
                       "src_blocks": _list_of(_u64, MAX_BLOCKS), "dst_blocks": _list_of(_u64, MAX_BLOCKS),
                       "src_layer_range": is_layer_range, "dst_layer_range": is_layer_range,
                       "tensor_num_per_layer": _u32, "ipc": _exported_or_none},
    MessageType.PULL_REPLY: {"status": _status},
    MessageType.AUTH_HELLO: {"nonce": _hex_bytes(NONCE_BYTES)},
    MessageType.AUTH_CHALLENGE: {"nonce": _hex_bytes(NONCE_BYTES)},
    MessageType.AUTH_PROOF: {"mac": _hex_bytes(MAC_BYTES)},
    MessageType.AUTH_CONFIRM: {"mac": _hex_bytes(MAC_BYTES)},
    MessageType.PING: {},
}


def _fields_valid(body, fields):
    return body.keys() == fields.keys() and all(check(body[name]) for name, check in fields.items())


def _no_duplicate_keys(pairs):
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ProtocolError("duplicate field in a message body")
    return dict(pairs)


def _refuse_constant(name):
    raise ProtocolError(f"{name} is not a number of this protocol")


def encode(message_type, request_id, body):
    """One frame; the body is checked like a received one, so we never send what we would refuse."""
    message_type = MessageType(message_type)
    if not _fields_valid(body, MESSAGE_FIELDS[message_type]):
        raise ProtocolError(f"{message_type.name} body does not match its fields: {body!r}")
    payload = json.dumps(body, separators=(",", ":")).encode()
    if len(payload) > MAX_BODY_BYTES:
        raise ProtocolError(f"{message_type.name} body is {len(payload)} bytes, more than {MAX_BODY_BYTES}")
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, message_type, 0, request_id, len(payload)) + payload


def decode_header(header):
    """(message type, request id, body length) of a 16-byte header, or ProtocolError."""
    magic, version, message_type, flags, request_id, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    if message_type not in MESSAGE_FIELDS.keys() or flags != 0:
        raise ProtocolError(f"unknown message type {message_type} or flags {flags}")
    if length > MAX_BODY_BYTES:
        raise ProtocolError(f"body of {length} bytes is over the limit of {MAX_BODY_BYTES}")
    return MessageType(message_type), request_id, length


def decode_body(message_type, payload):
    try:
        body = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError(f"{message_type.name} body is not JSON: {error}") from None
    if type(body) is not dict or not _fields_valid(body, MESSAGE_FIELDS[message_type]):
        raise ProtocolError(f"{message_type.name} body does not match its fields")
    return body


def _receive_exactly(sock, count, deadline):
    chunks = []
    while count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("control message not complete in time")
        sock.settimeout(remaining)
        chunk = sock.recv(min(count, 1 << 16))
        if not chunk:
            raise ConnectionError("peer closed the control connection")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def receive(sock, deadline):
    """(type, request id, body) of the next frame; everything must arrive before `deadline`
    (time.monotonic()). socket.timeout, ConnectionError/OSError or ProtocolError otherwise."""
    message_type, request_id, length = decode_header(_receive_exactly(sock, HEADER.size, deadline))
    return message_type, request_id, decode_body(message_type, _receive_exactly(sock, length, deadline))


def send(sock, message_type, request_id, body, deadline):
    send_frame(sock, encode(message_type, request_id, body), deadline)


def send_frame(sock, frame, deadline):
    """Sends an encoded frame whole before `deadline` (time.monotonic()), or socket.timeout."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("no time left to send a control message")
    sock.settimeout(remaining)
    sock.sendall(frame)


def key_fields(key):
    """The wire form of a cache key (an llmdd._cache_keys value): its kind and fields."""
    return {"kind": key.KIND, **{name: getattr(key, name) for name in key.FIELDS}}


def key_from_fields(fields):
    """The key a validated wire key names (the serving side looks it up in its registry)."""
    key_type = KEY_TYPES[fields["kind"]]
    return key_type(*(fields[name] for name in key_type.FIELDS))
