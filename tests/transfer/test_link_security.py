"""Who may link, and how long a link lives (docs/security.md): the link secret (llmdd.LinkSecret),
links that a LINK claiming their cluster id cannot take over, the cap on links and handshakes
from one host, and the keepalive that ends a link whose peer vanished. Agents and engines in this
process, and strangers on raw sockets speaking llmdd.transfer._protocol, over 127.0.0.1."""
import logging
import socket
import threading
import time

import numpy
import pytest
from support.network import free_port, mooncake_missing
from support.peer import Peer
from support.registries import Cluster, LocalRegistry

import llmdd
from llmdd import CacheIndex, ClusterInfo, IpInfo
from llmdd.llm_datadist import BlocksCacheKey
from llmdd.transfer import TransferAgent, _agent, _auth, _channel, _listener
from llmdd.transfer import _protocol as wire

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER, STRANGER = 987654321, 2, 3   # the prompt's id is long enough to look for in bytes
SECRET = "correct horse battery staple 8f3a9c"
ANSWER_SECONDS = 3.0
LINK_TIMEOUT_MS = 1000


@pytest.fixture
def agents():
    """make(cluster_id, listen=True, **options): a TransferAgent (over a LocalRegistry) closed at the end."""
    made = []

    def make(cluster_id, listen=True, **options):
        options.setdefault("sync_timeout_ms", 3000)
        made.append(TransferAgent(LocalRegistry(), cluster_id, "127.0.0.1:0" if listen else None, **options))
        return made[-1]
    yield make
    for agent in made:
        agent.close()


def cluster_of(agent, cluster_id=PROMPT, local_ip=None):
    return Cluster(cluster_id, "127.0.0.1", agent.listen_address[1], local_ip)


def blocks_of(agent, remote_accessible=False):
    """A blocks cache of the agent's, named BlocksCacheKey(agent's id, 0), each byte its own."""
    entry = agent._registry.allocate(2, 4, 4096, blocks=True, keys=[BlocksCacheKey(agent.cluster_id, 0)],
                                     remote_accessible=remote_accessible)
    for t in range(2):
        agent._registry.tensor(entry.cache_id, t)[:] = (numpy.arange(4 * 4096) * 7 + t).astype(numpy.uint8)
    return entry


def pulls(decoder, prompt):
    """Whether the decoder pulls block 2 of the prompt's cache (blocks_of) into its block 0."""
    source = prompt._registry.find(BlocksCacheKey(prompt.cluster_id, 0))[0]
    destination = decoder._registry.allocate(2, 4, 4096, blocks=True)
    status = decoder.pull_blocks(prompt.cluster_id, BlocksCacheKey(prompt.cluster_id, 0), destination, [2], [0])
    return status == S.LLM_SUCCESS and all(
        numpy.array_equal(decoder._registry.tensor(destination.cache_id, t)[:4096],
                          prompt._registry.tensor(source.cache_id, t)[2 * 4096:3 * 4096]) for t in range(2))


def wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


# A stranger on a raw socket.

def connect(agent, source_ip="127.0.0.1"):
    return socket.create_connection(agent.listen_address, timeout=ANSWER_SECONDS, source_address=(source_ip, 0))


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
        pass   # closed with our unread bytes still in its buffer: a reset
    return received


def link_body(cluster_id, to_cluster_id=PROMPT):
    return {"cluster_id": cluster_id, "to_cluster_id": to_cluster_id, "engine": "127.0.0.1:1", "protocol": "tcp",
            "host": "none", "pid": 0}


def send(connection, message_type, body, request_id=0):
    wire.send(connection, message_type, request_id, body, time.monotonic() + ANSWER_SECONDS)


def receive(connection):
    """The next frame that is not a keepalive PING."""
    while True:
        message_type, request_id, body = wire.receive(connection, time.monotonic() + ANSWER_SECONDS)
        if message_type != wire.MessageType.PING:
            return message_type, request_id, body


def raw_link(agent, cluster_id):
    """A raw connection linked to the agent as `cluster_id`."""
    connection = connect(agent)
    send(connection, wire.MessageType.LINK, link_body(cluster_id, agent.cluster_id))
    message_type, _, body = receive(connection)
    assert (message_type, body["status"]) == (wire.MessageType.LINK_REPLY, S.LLM_SUCCESS)
    return connection


def frames(data):
    """The message types of the whole frames in `data`, in order."""
    types = []
    while len(data) >= wire.HEADER.size:
        message_type, _, length = wire.decode_header(data[:wire.HEADER.size])
        types.append(message_type)
        data = data[wire.HEADER.size + length:]
    return types


class Relay:
    """A relay on 127.0.0.1 to `target` for one connection, recording the bytes each way."""

    def __init__(self, target):
        self.sent, self.answered = bytearray(), bytearray()   # by the side that connected; by the target
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(ANSWER_SECONDS)
        self.port = self._server.getsockname()[1]
        self._target = target
        self._sockets = [self._server]
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self):
        client, _ = self._server.accept()
        upstream = socket.create_connection(self._target)
        self._sockets += [client, upstream]
        for source, sink, record in ((client, upstream, self.sent), (upstream, client, self.answered)):
            self._threads.append(threading.Thread(target=self._pump, args=(source, sink, record), daemon=True))
            self._threads[-1].start()

    @staticmethod
    def _pump(source, sink, record):
        try:
            while chunk := source.recv(65536):
                record += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(ANSWER_SECONDS)


# The link secret

def test_with_the_same_secret_both_sides_prove_it_without_sending_it_and_pull(agents):
    prompt = agents(PROMPT, link_secret=SECRET)
    blocks_of(prompt)
    decoder = agents(DECODER, listen=False, link_secret=SECRET)
    relay = Relay(prompt.listen_address)
    try:
        assert decoder.link([Cluster(PROMPT, "127.0.0.1", relay.port)], LINK_TIMEOUT_MS) == \
            (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        assert pulls(decoder, prompt)
    finally:
        relay.close()
    T = wire.MessageType
    assert frames(bytes(relay.sent))[:4] == [T.AUTH_HELLO, T.AUTH_PROOF, T.LINK, T.PULL]
    assert frames(bytes(relay.answered))[:3] == [T.AUTH_CHALLENGE, T.AUTH_CONFIRM, T.LINK_REPLY]
    for recorded in (relay.sent, relay.answered):
        assert SECRET.encode() not in recorded and SECRET.encode().hex().encode() not in recorded


@pytest.mark.parametrize("linking_secret, listening_secret", [
    ("a wrong secret", SECRET), (None, SECRET), (SECRET, None)], ids=["wrong", "none-linking", "none-listening"])
def test_a_link_without_the_listeners_secret_fails_within_the_link_timeout(agents, linking_secret,
                                                                           listening_secret):
    prompt = agents(PROMPT, link_secret=listening_secret)
    decoder = agents(DECODER, listen=False, link_secret=linking_secret)
    started = time.monotonic()
    assert decoder.link([cluster_of(prompt)], LINK_TIMEOUT_MS) == (S.LLM_LINK_FAILED, [S.LLM_LINK_FAILED])
    assert time.monotonic() - started < LINK_TIMEOUT_MS / 1000
    assert prompt.linked_clusters() == [] and decoder.linked_clusters() == []


def test_a_stranger_without_the_secret_reads_nothing_not_even_the_cluster_id(agents):
    prompt = agents(PROMPT, link_secret=SECRET)
    for body in (link_body(STRANGER), link_body(STRANGER, to_cluster_id=PROMPT + 1)):
        with connect(prompt) as connection:
            send(connection, wire.MessageType.LINK, body)
            assert answer_of(connection) == b""
    # One that authenticates with a MAC it cannot know gets the listener's nonce (a frame of that
    # one field), then a close.
    with connect(prompt) as connection:
        send(connection, wire.MessageType.AUTH_HELLO, {"nonce": "11" * wire.NONCE_BYTES})
        assert wire.receive(connection, time.monotonic() + ANSWER_SECONDS)[0] == wire.MessageType.AUTH_CHALLENGE
        send(connection, wire.MessageType.AUTH_PROOF, {"mac": "22" * wire.MAC_BYTES})
        assert answer_of(connection) == b""
    assert prompt.linked_clusters() == []


def authenticate(connection, secret=SECRET, pause=0.0):
    """The linking side's part, on a raw connection, pausing before its proof."""
    linking_nonce = bytes(range(wire.NONCE_BYTES))
    send(connection, wire.MessageType.AUTH_HELLO, {"nonce": linking_nonce.hex()})
    message_type, _, challenge = receive(connection)
    assert message_type == wire.MessageType.AUTH_CHALLENGE
    time.sleep(pause)
    listening_nonce = bytes.fromhex(challenge["nonce"])
    send(connection, wire.MessageType.AUTH_PROOF,
         {"mac": _auth.mac(secret.encode(), _auth.LINKING_SIDE, linking_nonce, listening_nonce).hex()})
    message_type, _, confirm = receive(connection)
    assert message_type == wire.MessageType.AUTH_CONFIRM
    assert confirm["mac"] == _auth.mac(secret.encode(), _auth.LISTENING_SIDE, linking_nonce, listening_nonce).hex()


def test_the_whole_handshake_must_end_within_the_message_timeout(agents):
    prompt = agents(PROMPT, link_secret=SECRET, sync_timeout_ms=600)
    with connect(prompt) as connection:   # in time: linked
        authenticate(connection)
        send(connection, wire.MessageType.LINK, link_body(STRANGER))
        assert receive(connection)[2]["status"] == S.LLM_SUCCESS
    with connect(prompt) as connection:   # each step in time, but the LINK is not: closed unanswered
        started = time.monotonic()
        authenticate(connection, pause=0.5)
        assert answer_of(connection) == b""
        # At the bound of the whole handshake; a bound for each step would have waited past 1.1 s.
        assert time.monotonic() - started < 0.9


def test_engines_take_the_secret_from_their_option_or_the_environment(monkeypatch):
    port = free_port()
    monkeypatch.delenv("LLMDD_LINK_SECRET", raising=False)
    with llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt) as prompt, \
            llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as stranger, \
            llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder) as decoder:
        assert prompt.Initialize({"llm.ListenIpInfo": f"127.0.0.1:{port}", "llmdd.LinkSecret": SECRET}) == \
            S.LLM_SUCCESS
        source = prompt.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        target = [ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", port)])]
        assert stranger.Initialize({}) == S.LLM_SUCCESS
        rets = []
        assert stranger.LinkLlmClusters(target, rets, LINK_TIMEOUT_MS) == S.LLM_LINK_FAILED
        monkeypatch.setenv("LLMDD_LINK_SECRET", SECRET)
        assert decoder.Initialize({}) == S.LLM_SUCCESS
        destination = decoder.allocate_cache(llmdd.CacheDesc(1, [2, 4096], llmdd.DT_UINT8))
        assert decoder.LinkLlmClusters(target, rets, LINK_TIMEOUT_MS) == S.LLM_SUCCESS
        assert decoder.PullKvCache(CacheIndex(PROMPT, source.cache_id, 0), destination) == S.LLM_SUCCESS


DROPIN_PROMPT = """
config = LLMConfig()
config.device_id = 0
config.enable_cache_manager = True
config.mem_pool_cfg = '{{"memory_size": 1048576}}'
config.listen_ip_info = "127.0.0.1:{port}"
datadist = LLMDataDist(LLMRole.PROMPT, {prompt})
datadist.init(config.generate_options())
cache = datadist.cache_manager.allocate_cache(CacheDesc(1, [1, 512], DataType.DT_UINT8), [CacheKey({prompt}, req_id=5)])
numpy.asarray(cache.tensor(0))[:] = 0x5a
"""


def test_the_drop_in_links_with_the_secret_from_the_environment_or_its_ge_options(monkeypatch):
    from llmdd.llm_datadist import CacheDesc, CacheKey, DataType, LLMClusterInfo, LLMConfig, LLMDataDist, LLMRole
    monkeypatch.setenv("LLMDD_LINK_SECRET", SECRET)
    prompt = Peer.dropin()   # the secret from its environment
    monkeypatch.delenv("LLMDD_LINK_SECRET")
    try:
        port = free_port()
        prompt.run(DROPIN_PROMPT.format(port=port, prompt=PROMPT))
        cluster = LLMClusterInfo()
        cluster.remote_cluster_id = PROMPT
        cluster.append_local_ip_info("127.0.0.1", 0)
        cluster.append_remote_ip_info("127.0.0.1", port)
        for ge_options, linked in (({}, False), ({"llmdd.LinkSecret": SECRET}, True)):
            config = LLMConfig()
            config.device_id = 0
            config.enable_cache_manager = True
            config.mem_pool_cfg = '{"memory_size": 1048576}'
            config.ge_options = ge_options
            decoder = LLMDataDist(LLMRole.DECODER, DECODER)
            decoder.init(config.generate_options())
            try:
                statuses = decoder.link_clusters([cluster], LINK_TIMEOUT_MS)[1]
                assert statuses == [S.LLM_SUCCESS if linked else S.LLM_LINK_FAILED]
                if linked:
                    destination = decoder.cache_manager.allocate_cache(CacheDesc(1, [1, 512], DataType.DT_UINT8))
                    decoder.cache_manager.pull_cache(CacheKey(PROMPT, req_id=5), destination)
                    assert (numpy.asarray(destination.tensor(0)) == 0x5a).all()
            finally:
                decoder.finalize()
    finally:
        prompt.close()


def test_listening_beyond_loopback_without_a_secret_warns_once(agents, monkeypatch, caplog):
    assert _listener._is_loopback("127.0.0.1") and _listener._is_loopback("127.0.0.2")
    assert not _listener._is_loopback("0.0.0.0") and not _listener._is_loopback("192.0.2.1")
    # Only loopback may be here: the agent listens on 127.0.0.1 and is told it is not loopback.
    monkeypatch.setattr(_listener, "_is_loopback", lambda host: False)
    with caplog.at_level(logging.WARNING, logger="llmdd.transfer"):
        agents(PROMPT)
        agents(PROMPT + 1, link_secret=SECRET)
    warnings = [record for record in caplog.records if "no link secret" in record.getMessage()]
    assert len(warnings) == 1 and "127.0.0.1:0" in warnings[0].getMessage()


# Links that cannot be taken over, and the cap a host

def test_a_link_claiming_a_linked_cluster_id_is_refused_and_the_link_stays(agents):
    prompt = agents(PROMPT)
    blocks_of(prompt)
    decoder = agents(DECODER, listen=False)
    blocks_of(decoder)
    assert decoder.link([cluster_of(prompt)], LINK_TIMEOUT_MS)[0] == S.LLM_SUCCESS
    assert wait_until(lambda: prompt.linked_clusters() == [DECODER], ANSWER_SECONDS)
    with connect(prompt) as stranger:
        send(stranger, wire.MessageType.LINK, link_body(DECODER))
        assert receive(stranger)[2]["status"] == S.LLM_LINK_FAILED
    assert pulls(decoder, prompt)
    assert pulls(prompt, decoder)   # the side that listened reaches the real decoder on the link too
    # A peer that ended its side (by force, or by dying: a close) links again at once.
    assert decoder.unlink([cluster_of(prompt)], LINK_TIMEOUT_MS, force=True)[0] == S.LLM_SUCCESS
    assert decoder.link([cluster_of(prompt)], LINK_TIMEOUT_MS)[0] == S.LLM_SUCCESS
    assert pulls(decoder, prompt)
    raw_link(prompt, STRANGER).close()
    raw_link(prompt, STRANGER).close()


def test_one_host_holds_at_most_its_share_of_links_and_handshakes(agents):
    prompt = agents(PROMPT, sync_timeout_ms=5000)
    linked = [raw_link(prompt, STRANGER + index) for index in range(4)]
    waiting = [connect(prompt) for _ in range(_listener.MAX_LINKS_PER_HOST - len(linked))]
    try:
        assert wait_until(lambda: len(prompt.linked_clusters()) == len(linked), ANSWER_SECONDS)
        with connect(prompt) as one_too_many:
            started = time.monotonic()
            assert answer_of(one_too_many) == b""
            assert time.monotonic() - started < 1.0   # closed at once, not at the handshake's timeout
        # Another host still links.
        decoder = agents(DECODER, listen=False)
        assert decoder.link([cluster_of(prompt, local_ip="127.0.0.2")], LINK_TIMEOUT_MS)[0] == S.LLM_SUCCESS
    finally:
        for connection in linked + waiting:
            connection.close()


# Keepalive

@pytest.fixture
def quick_keepalive(monkeypatch):
    """PINGs after 0.1 s of silence, and links silent for 1 s end."""
    monkeypatch.setattr(_channel, "KEEPALIVE_INTERVAL_S", 0.1)
    monkeypatch.setattr(_channel, "KEEPALIVE_LIMIT_S", 1.0)


def pinned_by_a_silent_peer(prompt):
    """A raw peer links and RESOLVEs (a push's pin) a remote-accessible cache, which the prompt
    then deallocates: (the connection, now silent, the cache's entry)."""
    entry = blocks_of(prompt, remote_accessible=True)
    connection = raw_link(prompt, STRANGER)
    send(connection, wire.MessageType.RESOLVE, {"key": {"kind": "blocks", "cluster_id": PROMPT, "model_id": 0}},
         request_id=1)
    assert receive(connection)[2]["status"] == S.LLM_SUCCESS
    prompt._registry.deallocate(entry.cache_id)
    prompt._registry.release_key(BlocksCacheKey(PROMPT, 0))
    assert prompt._registry.pin_count(entry.cache_id) == 1 and not prompt._registry.is_freed(entry.cache_id)
    return connection, entry


def test_a_peer_gone_silent_is_dropped_within_the_limit_and_its_pins_released(agents, quick_keepalive):
    prompt = agents(PROMPT)
    connection, entry = pinned_by_a_silent_peer(prompt)
    with connection:
        assert wait_until(lambda: prompt._registry.is_freed(entry.cache_id), 1.0 + 2.0)
        assert prompt.linked_clusters() == []


def test_closing_an_agent_whose_peer_vanished_takes_the_keepalive_limit_not_the_drain_time(agents,
                                                                                         quick_keepalive):
    prompt = agents(PROMPT)
    connection, entry = pinned_by_a_silent_peer(prompt)
    with connection:
        started = time.monotonic()
        prompt.close()
        assert time.monotonic() - started < 1.0 + 2.0 < _channel.DRAIN_SECONDS
    assert prompt._registry.is_freed(entry.cache_id)


def test_idle_links_ping_and_outlive_the_limit(agents, quick_keepalive):
    prompt = agents(PROMPT)
    blocks_of(prompt)
    decoder = agents(DECODER, listen=False)
    assert decoder.link([cluster_of(prompt)], LINK_TIMEOUT_MS)[0] == S.LLM_SUCCESS
    with raw_link(prompt, STRANGER) as connection:
        pings = [wire.receive(connection, time.monotonic() + ANSWER_SECONDS) for _ in range(3)]
        assert pings == [(wire.MessageType.PING, 0, {})] * 3
        time.sleep(1.5)   # silent past the limit, both ways, but for the pings
    assert prompt.linked_clusters() == [DECODER] and decoder.linked_clusters() == [PROMPT]
    assert pulls(decoder, prompt)
