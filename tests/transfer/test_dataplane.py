"""Mooncake's own ports (issue 18, defects 4 and 5): Mooncake runs in a supervised data-plane helper
process, so no message to its ports kills the engine's process, and nothing of the engine's or of
any process llmdd starts listens beyond the listen address. A helper that dies is replaced."""
import ctypes
import ipaddress
import os
import signal
import socket
import struct
import time

import pytest
from support.network import listening, mooncake_missing
from support.patterns import pattern
from support.peer import Peer
from support.registries import Cluster, LocalRegistry

from llmdd import LLMStatusCode
from llmdd.llm_datadist import BlocksCacheKey, CacheKey
from llmdd.transfer import TransferAgent, _plan

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = LLMStatusCode
PROMPT, DECODER = 31, 32
BLOCK = 4096
WAIT_SECONDS = 10.0
# What aborted a process running Mooncake 0.3.13's P2P handshake daemon (tried in a throwaway
# process): a u64 little-endian length and a JSON array where the daemon's callbacks want an
# object, which throw Json::LogicError, and nothing catches it. The reviewer's 11 bytes read the
# array's first byte as the frame type; with a frame type of 2 the array reaches the callback
# whole. Type 1 with an array is refused with a log line: sent as well, it must harm nothing either.
HANDSHAKE_GARBAGE = (
    struct.pack("<Q", 4) + b"\x01[1]",
    struct.pack("<Q", 3) + b"[1]",
    struct.pack("<Q", 4) + b"\x02[1]",
)


def blocks_key(model_id=0):
    return {"kind": "blocks", "cluster_id": PROMPT, "model_id": model_id}


def handshake_ports(engine_address):
    """The ports of a Mooncake address ("host:port,host:port"), where its P2P handshake listens."""
    return [int(part.rpartition(":")[2]) for part in engine_address.split(",")]


def wait_until(predicate, seconds=WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def send_garbage(port):
    """Each message of HANDSHAKE_GARBAGE on a connection of its own, as the daemon reads one a
    connection, kept open until the daemon closes it (or is gone)."""
    for payload in HANDSHAKE_GARBAGE:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
                connection.sendall(payload)
                while connection.recv(4096):
                    pass
        except OSError:   # the daemon may be gone already (that is what the garbage does), or keep it open
            pass


def pulled_matches(registry, destination, src_cache_id, src_blocks, dst_blocks):
    for tensor in range(destination.num_tensors):
        got = registry.tensor(destination.cache_id, tensor)
        expected = pattern(PROMPT, src_cache_id, tensor, 4 * BLOCK)
        for src, dst in zip(src_blocks, dst_blocks):
            if not (got[dst * BLOCK:(dst + 1) * BLOCK] == expected[src * BLOCK:(src + 1) * BLOCK]).all():
                return False
    return True


def test_garbage_on_mooncakes_handshake_ports_does_not_kill_the_engines_process():
    # Defect 4: the 11 bytes aborted the whole prompt process (Json::LogicError, uncaught).
    prompt = Peer.agent(PROMPT, registry="engine")
    try:
        source = prompt.call("allocate", num_tensors=2, batch=4, block_bytes=BLOCK, blocks=True, keys=[blocks_key()])
        registry = LocalRegistry()
        destination = registry.allocate(2, 4, BLOCK, blocks=True)
        key = BlocksCacheKey(PROMPT, 0)
        with TransferAgent(registry, DECODER, sync_timeout_ms=3000) as decoder:
            assert decoder.link([prompt.cluster()], 30000)[0] == S.LLM_SUCCESS
            assert decoder.pull_blocks(PROMPT, key, destination, [0], [0]) == S.LLM_SUCCESS
            ports = handshake_ports(decoder._links[PROMPT].peer_engine)
            for port in ports:
                send_garbage(port)
            # Mooncake's daemon died (its ports closed) but the prompt's process did not.
            assert wait_until(lambda: not any(listening(port) for port in ports))
            assert prompt.process.poll() is None
            # Its caches live and its calls answer.
            for tensor in range(2):
                assert bytes.fromhex(prompt.call("tensor", cache_id=source["cache_id"], index=tensor)["hex"]) == \
                    pattern(PROMPT, source["cache_id"], tensor, 4 * BLOCK).tobytes()
            assert "cache_id" in prompt.call("allocate", num_tensors=1, batch=1, block_bytes=BLOCK)
            # The link over the dead helper's ports fails with a status; made again, it pulls.
            assert decoder.pull_blocks(PROMPT, key, destination, [1], [1]) in (S.LLM_LINK_FAILED, S.LLM_TIMEOUT)
            decoder.unlink([prompt.cluster()], 1000, force=True)
            assert decoder.link([prompt.cluster()], 30000)[0] == S.LLM_SUCCESS
            assert decoder.pull_blocks(PROMPT, key, destination, [2, 3], [2, 3]) == S.LLM_SUCCESS
            assert pulled_matches(registry, destination, source["cache_id"], [0, 2, 3], [0, 2, 3])
            assert set(handshake_ports(decoder._links[PROMPT].peer_engine)).isdisjoint(ports)
    finally:
        prompt.close()


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue   # gone meanwhile
            if parent == pid:
                found.append(int(entry))
    return found


def _descendants(pid):
    found, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def _address(hex_address):
    """(ip, port) of a /proc/net/tcp{,6} local_address: 32-bit words in host (little-endian) order."""
    host, port = hex_address.split(":")
    raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
    ip = ipaddress.ip_address(raw)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def listening_sockets(pid):
    """(ip, port) of every TCP socket process `pid` holds in the LISTEN state: its descriptors'
    socket inodes, looked up in its network namespace's tables."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:   # 0A: TCP_LISTEN
                    found.append(_address(fields[1]))
    return found


def test_nothing_the_engine_or_its_helpers_run_listens_beyond_the_listen_address():
    # Defect 5: with llm.ListenIpInfo on 127.0.0.1, four of the prompt's five listening ports
    # (Mooncake's) were on 0.0.0.0 or [::]. On 127.0.0.2, every bind follows the listen address;
    # the linking side's follow the local address of its link's connection (127.0.0.3).
    prompt = Peer.agent(PROMPT, listen_ip="127.0.0.2", registry="engine")
    try:
        source = prompt.call("allocate", num_tensors=2, batch=2, block_bytes=BLOCK, blocks=True, keys=[blocks_key()])
        registry = LocalRegistry()
        destination = registry.allocate(2, 2, BLOCK, blocks=True)
        with TransferAgent(registry, DECODER, sync_timeout_ms=3000) as decoder:
            cluster = Cluster(PROMPT, "127.0.0.2", prompt.port, local_ip="127.0.0.3")
            assert decoder.link([cluster], 30000)[0] == S.LLM_SUCCESS
            assert decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [1], [0]) == S.LLM_SUCCESS
            assert (registry.tensor(destination.cache_id, 0)[:BLOCK] ==
                    pattern(PROMPT, source["cache_id"], 0, 2 * BLOCK)[BLOCK:]).all()
            processes = [prompt.process.pid, *_descendants(prompt.process.pid)]
            sockets = {pid: listening_sockets(pid) for pid in processes}
            everything = [address for found in sockets.values() for address in found]
            # The control listener and, a Mooncake engine each, a handshake and a data port.
            assert len(everything) >= 3, sockets
            assert {ip for ip, _ in everything} == {"127.0.0.2"}, sockets
            linking = listening_sockets(decoder._mooncake.helper_pid)
            assert len(linking) >= 2 and {ip for ip, _ in linking} == {"127.0.0.3"}, linking
    finally:
        prompt.close()


@pytest.fixture
def linked():
    prompt_registry, decoder_registry = LocalRegistry(), LocalRegistry()
    with TransferAgent(prompt_registry, PROMPT, "127.0.0.1:0", sync_timeout_ms=3000) as prompt, \
            TransferAgent(decoder_registry, DECODER, sync_timeout_ms=3000) as decoder:
        source = prompt_registry.allocate(2, 4, BLOCK, blocks=True, keys=[BlocksCacheKey(PROMPT, 0)])
        for tensor in range(2):
            prompt_registry.tensor(source.cache_id, tensor)[:] = pattern(PROMPT, source.cache_id, tensor, 4 * BLOCK)
        destination = decoder_registry.allocate(2, 4, BLOCK, blocks=True)
        cluster = Cluster(PROMPT, "127.0.0.1", prompt.listen_address[1])
        assert decoder.link([cluster], 30000)[0] == S.LLM_SUCCESS
        yield prompt, decoder, decoder_registry, source, destination, cluster


def _reaped(pid):
    """Whether `pid` is gone for good: exited and waited for (no zombie left)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "X"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("side", ["prompt", "decoder"])
def test_a_killed_helper_is_replaced_and_the_engine_keeps_working(linked, side):
    prompt, decoder, registry, source, destination, cluster = linked
    key = BlocksCacheKey(PROMPT, 0)
    assert decoder.pull_blocks(PROMPT, key, destination, [0], [0]) == S.LLM_SUCCESS
    victim = (prompt if side == "prompt" else decoder)._mooncake
    os.kill(victim.helper_pid, signal.SIGKILL)
    assert wait_until(lambda: not victim.alive)
    # Every call on the dead helper's links answers a status; the agent forgets them.
    assert decoder.pull_blocks(PROMPT, key, destination, [1], [1]) in (S.LLM_LINK_FAILED, S.LLM_TIMEOUT)
    assert wait_until(lambda: _reaped(victim.helper_pid))
    decoder.unlink([cluster], 1000, force=True)
    assert decoder.link([cluster], 30000)[0] == S.LLM_SUCCESS
    replacement = (prompt if side == "prompt" else decoder)._mooncake
    assert replacement is not victim and replacement.alive
    assert decoder.pull_blocks(PROMPT, key, destination, [2, 3], [2, 3]) == S.LLM_SUCCESS
    for tensor in range(2):
        got = registry.tensor(destination.cache_id, tensor)
        expected = pattern(PROMPT, source.cache_id, tensor, 4 * BLOCK)
        assert (got[2 * BLOCK:] == expected[2 * BLOCK:]).all() and (got[BLOCK:2 * BLOCK] == 0).all()


def test_while_a_pull_moves_a_stranger_reads_nothing_of_the_destination_and_afterwards_nothing_at_all(linked,
                                                                                                    monkeypatch):
    # Registering a destination let anyone who reaches Mooncake read the whole cache while the
    # pull moved. Through the helper's mirror, a stranger (a stock Mooncake engine, no llmdd
    # link) reads zeros while blocks are pulled (each block the pull writes is written whole, so
    # nothing of the cache is staged), and nothing once the pull is over.
    from mooncake.engine import TransferEngine
    prompt, decoder, registry, source, destination, cluster = linked
    for tensor in range(2):
        registry.tensor(destination.cache_id, tensor)[:] = pattern(DECODER, tensor, 4 * BLOCK)
    stranger = TransferEngine()
    assert stranger.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    region_bytes = destination.regions[0][1]
    buffer = ctypes.create_string_buffer(b"\xee" * region_bytes, region_bytes)
    seen = {}
    coalesce = _plan.coalesce

    def stranger_reads(segments, src_regions, dst_regions):   # on the prompt, while the decoder's window is open
        peer = decoder._mooncake.address.split(",")[0]
        seen["read"] = stranger.batch_transfer_sync_read(peer, [ctypes.addressof(buffer)], [dst_regions[0][0]],
                                                         [region_bytes])
        seen["bytes"], seen["window"] = buffer.raw, dst_regions[0][0]
        return coalesce(segments, src_regions, dst_regions)
    monkeypatch.setattr(_plan, "coalesce", stranger_reads)
    assert decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [1], [2]) == S.LLM_SUCCESS
    monkeypatch.undo()
    assert seen["read"] == 0 and seen["bytes"] == bytes(region_bytes)
    peer = decoder._mooncake.address.split(",")[0]
    assert stranger.batch_transfer_sync_read(peer, [ctypes.addressof(buffer)], [seen["window"]], [BLOCK]) != 0
    for tensor in range(2):
        got = registry.tensor(destination.cache_id, tensor)
        assert (got[2 * BLOCK:3 * BLOCK] == pattern(PROMPT, source.cache_id, tensor, 4 * BLOCK)[BLOCK:2 * BLOCK]).all()
        assert (got[:2 * BLOCK] == pattern(DECODER, tensor, 4 * BLOCK)[:2 * BLOCK]).all()
        assert (got[3 * BLOCK:] == pattern(DECODER, tensor, 4 * BLOCK)[3 * BLOCK:]).all()


def test_a_pull_through_a_mirror_leaves_every_byte_it_does_not_write_as_it_was():
    # A guard of the mirror's copy-back (main's in-process pulls had no copy to get wrong): an
    # entry cut into blocks leaves its last block short, and a whole entry may be shorter than the
    # destination's; those tails were staged into the mirror and come back unchanged.
    prompt_registry, registry = LocalRegistry(), LocalRegistry()
    entry_bytes = 3 * BLOCK - 100
    source = prompt_registry.allocate(2, 1, entry_bytes, keys=[CacheKey(PROMPT, 5)])
    blocks = registry.allocate(2, 8, BLOCK, blocks=True)
    entries = registry.allocate(2, 2, 4 * BLOCK, blocks=False)
    own = {}
    for tensor in range(2):
        prompt_registry.tensor(source.cache_id, tensor)[:] = pattern(PROMPT, tensor, entry_bytes)
        for cache in (blocks, entries):
            own[cache.cache_id, tensor] = pattern(DECODER, cache.cache_id, tensor, cache.tensor_bytes)
            registry.tensor(cache.cache_id, tensor)[:] = own[cache.cache_id, tensor]
    with TransferAgent(prompt_registry, PROMPT, "127.0.0.1:0", sync_timeout_ms=3000) as prompt, \
            TransferAgent(registry, DECODER, sync_timeout_ms=3000) as decoder:
        assert decoder.link([Cluster(PROMPT, "127.0.0.1", prompt.listen_address[1])], 30000)[0] == S.LLM_SUCCESS
        assert decoder._mooncake.kind[-1] == "helper"
        assert decoder.pull_blocks(PROMPT, CacheKey(PROMPT, 5), blocks, dst_blocks=[5, 6, 1]) == S.LLM_SUCCESS
        assert decoder.pull_cache(PROMPT, CacheKey(PROMPT, 5), entries, batch_index=1) == S.LLM_SUCCESS
    for tensor in range(2):
        sent = pattern(PROMPT, tensor, entry_bytes)
        expected = own[blocks.cache_id, tensor].copy()
        expected[5 * BLOCK:7 * BLOCK] = sent[:2 * BLOCK]
        expected[BLOCK:2 * BLOCK - 100] = sent[2 * BLOCK:]
        assert (registry.tensor(blocks.cache_id, tensor) == expected).all()
        expected = own[entries.cache_id, tensor].copy()
        expected[4 * BLOCK:4 * BLOCK + entry_bytes] = sent
        assert (registry.tensor(entries.cache_id, tensor) == expected).all()


def test_the_helper_ends_with_the_engines_process():
    prompt = Peer.agent(PROMPT)
    try:
        with TransferAgent(LocalRegistry(), DECODER, sync_timeout_ms=3000) as decoder:
            assert decoder.link([prompt.cluster()], 30000)[0] == S.LLM_SUCCESS
            helpers = _descendants(prompt.process.pid)
            assert helpers
            prompt.kill()
            assert wait_until(lambda: all(_reaped(pid) or not os.path.exists(f"/proc/{pid}") for pid in helpers))
    finally:
        prompt.close()


def test_a_forked_child_does_not_share_the_helper(linked):
    prompt, decoder, registry, source, destination, cluster = linked
    engines = decoder._mooncake
    child = os.fork()
    if child == 0:   # the child: the helper is the parent's, so every call answers a failure at once
        try:
            gone = not engines.alive and engines.expose(destination.regions) is None
            refused = engines.write(engines.address, [destination.tensor_addrs[0]], [0], [BLOCK]) != 0
            engines.close()
            os._exit(0 if gone and refused else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert engines.alive and decoder._mooncake is engines
    assert decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [3], [3]) == S.LLM_SUCCESS


def test_mooncake_in_process_is_an_option():
    # llmdd.MooncakeInProcess=1 keeps Mooncake in the engine's process, its risks accepted.
    from llmdd._options import OptionError, parse_options
    assert parse_options({"llmdd.MooncakeInProcess": "1"}).transfer.mooncake_in_process
    assert not parse_options({}).transfer.mooncake_in_process
    with pytest.raises(OptionError):
        parse_options({"llmdd.MooncakeInProcess": "yes"})
    prompt_registry = LocalRegistry()
    source = prompt_registry.allocate(2, 2, BLOCK, blocks=True, keys=[BlocksCacheKey(PROMPT, 0)])
    prompt_registry.tensor(source.cache_id, 0)[:] = 9
    registry = LocalRegistry()
    destination = registry.allocate(2, 2, BLOCK, blocks=True)
    with TransferAgent(prompt_registry, PROMPT, "127.0.0.1:0", mooncake_in_process=True) as prompt, \
            TransferAgent(registry, DECODER) as decoder:
        assert decoder.link([Cluster(PROMPT, "127.0.0.1", prompt.listen_address[1])], 30000)[0] == S.LLM_SUCCESS
        assert decoder.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), destination, [1], [0]) == S.LLM_SUCCESS
        assert (prompt._mooncake.kind[-1], decoder._mooncake.kind[-1]) == ("in-process", "helper")
    assert (registry.tensor(destination.cache_id, 0)[:BLOCK] == 9).all()
