"""One link's control connection, used both ways.

After LINK, either side may send requests on the connection (PULL, RESOLVE, KEEP, UNPIN, UNLINK) and serves
the other's, so one link lets both sides pull and push, as one CANN link does. A reader thread
takes every frame: a reply goes to the request waiting for it, a request to the CacheServer,
whose answer goes back at once. This side sends one request at a time. A timeout or a frame
that breaks the protocol ends the channel for good: a late reply would desynchronize the stream.

Keepalive: each side PINGs a link it has sent nothing on for KEEPALIVE_INTERVAL_S (one Keepalive
thread per agent), and a reader that, waiting for a frame, hears nothing for KEEPALIVE_LIMIT_S
ends the link: its peer vanished without a FIN or RST (its host is gone), and its pins go with it.
"""
import itertools
import logging
import socket
import threading
import time

from .._desc import LLMStatusCode
from . import _protocol as wire
from ._sockets import track

log = logging.getLogger("llmdd.transfer")

# How often the reader, waiting for a frame, looks up to see whether the channel is closing.
_POLL_SECONDS = 0.2
# How long ending a link waits for the peer to unpin what it is moving (Mooncake's own give-up
# time with 0.3.13 was 60 s); a peer that dies unpins at once.
DRAIN_SECONDS = 60.0
# A link's peer is gone when the reader, waiting for a frame, hears nothing for KEEPALIVE_LIMIT_S
# while the peer pings every KEEPALIVE_INTERVAL_S of silence: fifteen pings lost, or a peer stalled
# (its GIL held) for 15 s, is a dead link. The reader notices within the limit and a poll. Long
# enough that a serving engine busy for seconds (a model load, a graph capture holding the GIL)
# keeps its links; short enough that a vanished peer's pins go well before Finalize's 60 s drain.
KEEPALIVE_INTERVAL_S = 1.0
KEEPALIVE_LIMIT_S = 15.0
_TCP_ESTABLISHED = 1   # tcpi_state, the first byte of Linux's struct tcp_info
_REPLIES = frozenset(wire.REPLY_TO.values())


class LinkFailure(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


class _Waiter:
    __slots__ = ("request_id", "reply_type", "event", "reply")

    def __init__(self, request_id, reply_type):
        self.request_id = request_id
        self.reply_type = reply_type
        self.event = threading.Event()
        self.reply = None


class Channel:
    """A linked cluster: its control connection and its Mooncake engine's address.

    server: the CacheServer answering the peer's requests. on_end(channel, unlinked) runs when
    the reader stops (and, when the peer unlinks, also before the answer goes out, so it must
    bear a second call): unlinked is True when the peer unlinked, False when the connection
    failed or was closed."""

    def __init__(self, connection, remote_cluster_id, peer_engine, server, message_timeout_s, on_end, peer_pid=0):
        self.remote_cluster_id = remote_cluster_id
        self.peer_engine = peer_engine
        self.peer_pid = peer_pid   # the peer's pid when it shares this host's IPC memory, else 0
        self.peer_host = connection.getpeername()[0]
        # Held by a transfer from RESOLVE to UNPIN (a layer-wise push's: each layer's write and
        # KEEP), and by whoever ends the link: the peer's pins must outlive the bytes moving under them.
        self.transfer_lock = threading.Lock()
        self.broken = False
        self.unlinked_by_peer = False
        self._reader = connection
        # The sender's own socket object over the same connection: each keeps its own timeout.
        self._sender = track(connection.dup())
        self._server = server
        self._message_timeout_s = message_timeout_s
        self._on_end = on_end
        self._pins = {}
        self._send_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._request_ids = itertools.count(1)
        self._waiter = None
        self._last_sent = time.monotonic()
        self._closing = threading.Event()
        self._draining = False
        self._serving = False   # a PULL of the peer's is being served
        self._thread = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"llmdd-link-{remote_cluster_id}")

    def start(self):
        self._thread.start()

    def request(self, message_type, body, timeout_s):
        """The reply body of one round trip; LinkFailure(LLM_TIMEOUT or LLM_LINK_FAILED) otherwise,
        and LinkFailure(LLM_PARAM_INVALID), with the link untouched, for a body no frame can carry
        (more than MAX_BODY_BYTES)."""
        with self._request_lock:
            if self.broken:
                raise LinkFailure(LLMStatusCode.LLM_LINK_FAILED)
            waiter = _Waiter(next(self._request_ids) & wire.UINT32_MAX, wire.REPLY_TO[message_type])
            try:
                frame = wire.encode(message_type, waiter.request_id, body)
            except wire.ProtocolError as error:
                log.warning("a %s to cluster %d not sent: %s", message_type.name, self.remote_cluster_id, error)
                raise LinkFailure(LLMStatusCode.LLM_PARAM_INVALID) from None
            self._waiter = waiter
            deadline = time.monotonic() + timeout_s
            try:
                # The reader sets `broken` before it wakes the waiter it finds: one of us sees the other.
                if self.broken:
                    raise LinkFailure(LLMStatusCode.LLM_LINK_FAILED)
                self._send_frame(frame, deadline)
                if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
                    self._break(f"no answer to {message_type.name} in {timeout_s * 1000:.0f} ms")
                    raise LinkFailure(LLMStatusCode.LLM_TIMEOUT)
            except socket.timeout:
                self._break(f"could not send {message_type.name} in {timeout_s * 1000:.0f} ms")
                raise LinkFailure(LLMStatusCode.LLM_TIMEOUT) from None
            except OSError as error:
                self._break(error)
                raise LinkFailure(LLMStatusCode.LLM_LINK_FAILED) from None
            finally:
                self._waiter = None
            if waiter.reply is None:   # the channel ended while we waited
                raise LinkFailure(LLMStatusCode.LLM_LINK_FAILED)
            return waiter.reply

    def drain(self, timeout_s=DRAIN_SECONDS):
        """Refuses the peer new pins and pulls, and waits (at most timeout_s) until it has unpinned
        the ones it holds and the pull being served has moved its bytes: ending the link releases
        them, and the peer may still be moving their bytes."""
        self._draining = True
        deadline = time.monotonic() + timeout_s
        while (self._pins or self._serving) and not self.broken and time.monotonic() < deadline:
            time.sleep(0.005)

    def over(self):
        """Whether the link ended, or its peer closed its side of it: a peer that unlinked by force
        or died may link again before this side's reader has taken the close (tcp_info sees it
        even behind bytes not read yet)."""
        if self.broken:
            return True
        try:
            state = self._reader.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except OSError:   # closed meanwhile
            return True
        return state != _TCP_ESTABLISHED

    def keep_alive(self):
        """PINGs the peer when this side has sent nothing for KEEPALIVE_INTERVAL_S (the Keepalive
        thread's call: never the reader's, which may be busy serving)."""
        if time.monotonic() - self._last_sent < KEEPALIVE_INTERVAL_S:
            return
        if not self._send_lock.acquire(blocking=False):
            return   # a frame going out now keeps the link alive as well
        try:
            # The reader closes the socket, under this lock, once it broke; a closing link is let be.
            if not (self.broken or self._closing.is_set()):
                self._send_with_lock_held(wire.encode(wire.MessageType.PING, 0, {}),
                                          time.monotonic() + self._message_timeout_s)
        except OSError as error:   # socket.timeout included: the peer reads nothing
            if not self._closing.is_set():
                self._break(f"keepalive: {error}")
        finally:
            self._send_lock.release()

    def close(self):
        """Ends the channel without telling the peer (bounded: joins the reader for a moment)."""
        self.shutdown()
        self.join()

    def shutdown(self):
        self._closing.set()
        self._shutdown()

    def join(self):
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(2 * _POLL_SECONDS + self._message_timeout_s)

    def _send(self, message_type, request_id, body, deadline):
        self._send_frame(wire.encode(message_type, request_id, body), deadline)

    def _send_frame(self, frame, deadline):
        with self._send_lock:
            self._send_with_lock_held(frame, deadline)

    def _send_with_lock_held(self, frame, deadline):
        wire.send_frame(self._sender, frame, deadline)
        self._last_sent = time.monotonic()

    def _break(self, reason):
        log.warning("link with cluster %d failed: %s", self.remote_cluster_id, reason)
        self.broken = True
        self._shutdown()

    def _shutdown(self):
        try:
            self._reader.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _wait_for_frame(self):
        """True when the next frame starts arriving, False when the peer closed, fell silent for
        KEEPALIVE_LIMIT_S, or we are closing. A started frame gets message_timeout_s. Silence counts
        only from here: time spent serving the last request is not the peer's."""
        self._reader.settimeout(_POLL_SECONDS)
        waiting_since = time.monotonic()
        while not self._closing.is_set():
            try:
                return bool(self._reader.recv(1, socket.MSG_PEEK))
            except socket.timeout:
                if time.monotonic() - waiting_since > KEEPALIVE_LIMIT_S:
                    log.warning("link with cluster %d: nothing heard for %.1f s, the peer is gone",
                                self.remote_cluster_id, KEEPALIVE_LIMIT_S)
                    return False
        return False

    def _read_loop(self):
        unlinked = False
        try:
            while self._wait_for_frame():
                message_type, request_id, body = wire.receive(self._reader,
                                                              time.monotonic() + self._message_timeout_s)
                deadline = time.monotonic() + self._message_timeout_s
                if message_type == wire.MessageType.PING:   # keepalive only: never answered
                    if request_id != 0:
                        raise wire.ProtocolError(f"PING #{request_id}: a PING carries request id 0")
                    continue
                if message_type in _REPLIES:
                    waiter = self._waiter
                    if waiter is None or (waiter.request_id, waiter.reply_type) != (request_id, message_type):
                        raise wire.ProtocolError(f"{message_type.name} #{request_id} answers no request")
                    waiter.reply = body
                    waiter.event.set()
                elif message_type == wire.MessageType.RESOLVE:
                    reply = (self._server.resolve(body, self._pins, self.peer_pid) if not self._draining
                             else self._server.refused(LLMStatusCode.LLM_NOT_YET_LINK))   # the link is ending
                    try:
                        frame = wire.encode(wire.MessageType.RESOLVE_REPLY, request_id, reply)
                    except wire.ProtocolError:   # a layout no frame carries (over 16,384 tensors)
                        self._server.unpin({"pin": reply["pin"]}, self._pins)
                        frame = wire.encode(wire.MessageType.RESOLVE_REPLY, request_id,
                                            self._server.refused(LLMStatusCode.LLM_PARAM_INVALID))
                    self._send_frame(frame, deadline)
                elif message_type == wire.MessageType.PULL:
                    # Served here, on the reader: the peer waits for this answer, and its bytes are
                    # written by Mooncake's threads, so nothing else this link carries is held up long.
                    self._serving = True   # before looking at _draining, which drain() sets before looking here
                    try:
                        reply = ({"status": int(LLMStatusCode.LLM_NOT_YET_LINK)} if self._draining
                                 else self._server.pull(body, self.peer_engine, self.peer_pid))
                    finally:
                        self._serving = False
                    self._send(wire.MessageType.PULL_REPLY, request_id, reply,
                               time.monotonic() + self._message_timeout_s)
                elif message_type == wire.MessageType.UNPIN:
                    self._send(wire.MessageType.UNPIN_REPLY, request_id, self._server.unpin(body, self._pins),
                               deadline)
                elif message_type == wire.MessageType.KEEP:
                    self._send(wire.MessageType.KEEP_REPLY, request_id, self._server.keep(body, self._pins), deadline)
                elif message_type == wire.MessageType.UNLINK:
                    # Gone from this side before the peer hears so: its next call here finds no link.
                    self.broken = True
                    self.unlinked_by_peer = True
                    self._on_end(self, True)
                    self._send(wire.MessageType.UNLINK_REPLY, request_id, {"status": int(LLMStatusCode.LLM_SUCCESS)},
                               deadline)
                    log.info("cluster %d unlinked", self.remote_cluster_id)
                    unlinked = True
                    return
                else:
                    raise wire.ProtocolError(f"a {message_type.name} on a linked connection")
        except wire.ProtocolError as error:
            log.warning("link with cluster %d closed: %s", self.remote_cluster_id, error)
        except OSError as error:   # socket.timeout included
            if not self._closing.is_set():
                log.info("link with cluster %d ended: %s", self.remote_cluster_id, error)
        finally:
            self.broken = True
            self._server.release(self._pins)
            waiter = self._waiter
            if waiter is not None:
                waiter.event.set()   # with no reply: LLM_LINK_FAILED
            self._shutdown()
            self._reader.close()
            with self._send_lock:   # not under a sendall of this side's
                self._sender.close()
            self._on_end(self, unlinked)


class Keepalive:
    """One thread per agent that PINGs each link it watches as needed, from the agent's first link
    on; a link that is ending is still watched until its reader stops (a peer may drain its
    transfer for long). Looking twice an interval keeps every gap between two frames under 1.5
    intervals."""

    def __init__(self, name):
        self._name = name
        self._lock = threading.Lock()
        self._channels = set()
        self._stopping = threading.Event()
        self._thread = None

    def watch(self, channel):
        with self._lock:
            if self._stopping.is_set():
                return
            self._channels.add(channel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def stop(self):
        with self._lock:
            self._stopping.set()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self):
        while not self._stopping.wait(KEEPALIVE_INTERVAL_S / 2):
            with self._lock:
                self._channels = {channel for channel in self._channels if not channel.broken}
                channels = list(self._channels)
            for channel in channels:
                channel.keep_alive()
