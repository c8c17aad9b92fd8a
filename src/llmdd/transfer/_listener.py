"""The listening side of the control protocol: a thread on llm.ListenIpInfo that takes links.

A connection must LINK first and to this cluster, after proving it holds the link secret when one
is set (_auth.py), all within the message time; anything else, and any frame that fails
validation, closes the connection without an answer. A link that is answered becomes a Channel of
the agent's (on_link), which serves and sends requests both ways.
"""
import contextlib
import errno
import ipaddress
import logging
import socket
import threading
import time

from .._status import LLMException
from .._desc import LLMStatusCode
from . import _auth
from . import _protocol as wire
from ._sockets import track

log = logging.getLogger("llmdd.transfer")

MAX_CONNECTIONS = 64
# Links and handshakes from one remote host at a time, so that one host cannot take every slot
# (MAX_CONNECTIONS handshakes, the agent's 64 accepted links). 16 fits the largest Ascend server
# (8 chips of 2 dies), each device's engine linking once, and leaves other hosts three quarters.
MAX_LINKS_PER_HOST = 16
# How often the blocked accept looks up to see whether the listener is closing.
_POLL_SECONDS = 0.2

_SUCCESS = int(LLMStatusCode.LLM_SUCCESS)


def _is_loopback(host):
    """Whether only this host can reach a listener bound to `host` (a dotted IPv4 address)."""
    return ipaddress.IPv4Address(host).is_loopback


class Listeners:
    """An agent's control listeners, one an address: the one it was made with (llm.ListenIpInfo)
    and those asked for later (a rank table's endpoints), each counted by its users and closed
    when the last one is done with it. make(host, port) makes a ControlListener; unsecured: no
    link secret is set, so a listener that other hosts can reach is worth a warning."""

    def __init__(self, make, unsecured):
        self._make = make
        self._unsecured = unsecured
        self._lock = threading.Lock()
        self._listening = {}   # (ip, port) bound -> [ControlListener, users]
        self._closed = False

    def open(self, host, port):
        """The (ip, port) a listener is bound to at host:port (port 0: one the system picks), made
        unless one of these listens there already. LLMException: LLM_PARAM_INVALID for an address
        this host lacks, LLM_FAILED for one in use or once closed."""
        with self._lock:
            if self._closed:
                raise LLMException("the transfer agent is closed", LLMStatusCode.LLM_FAILED)
            if (host, port) in self._listening:
                self._listening[host, port][1] += 1
                return host, port
            try:
                listener = self._make(host, port)
            except OSError as error:
                # An address this host does not have is a bad option; a port in use is not.
                status = LLMStatusCode.LLM_PARAM_INVALID if error.errno == errno.EADDRNOTAVAIL \
                    else LLMStatusCode.LLM_FAILED
                raise LLMException(f"cannot listen on {host}:{port}: {error}", status) from None
            self._listening[listener.address] = [listener, 1]
        if self._unsecured and not _is_loopback(host):
            log.warning("listening for links on %s:%d with no link secret: any host that reaches it may link and "
                        "read the caches it serves (set llmdd.LinkSecret; docs/security.md)", host, port)
        return listener.address

    def release(self, address):
        """One user of the listener at `address` is done with it; the last one closes it (the links
        made through it stay)."""
        with self._lock:
            listening = self._listening.get(address)
            if listening is None:
                return
            listening[1] -= 1
            if listening[1] > 0:
                return
            del self._listening[address]
        listening[0].close()

    def close(self):
        with self._lock:
            self._closed = True
            listeners = [listener for listener, _ in self._listening.values()]
            self._listening = {}
        for listener in listeners:
            listener.close()


class ControlListener:
    """on_link(connection, link body): the agent's Channel for a link about to be answered, or
    None to refuse it; on_linked(channel) once the answer went out (or failed to). mooncake_for_host(host)
    starts this side's Mooncake engine. links_from(host): how many links that host made here.
    link_secret: the bytes a linking side must prove it holds, or None."""

    def __init__(self, host, port, cluster_id, mooncake_for_host, on_link, on_linked, message_timeout_s,
                 links_from, link_secret, same_host):
        self._cluster_id = cluster_id
        self._same_host = same_host   # {"host": ..., "pid": ...} this side tells a linking peer
        self._links_from = links_from
        self._link_secret = link_secret
        self._mooncake_for_host = mooncake_for_host
        self._on_link = on_link
        self._on_linked = on_linked
        self._message_timeout_s = message_timeout_s
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._handshakes = {}   # socket -> (remote host, its thread), until the link is answered
        self._socket = track(socket.create_server((host, port), backlog=MAX_CONNECTIONS))
        self._socket.settimeout(_POLL_SECONDS)
        self.address = self._socket.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, name=f"llmdd-control-{self.address[1]}",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout_s=2.0):
        """Stops accepting and ends the links not answered yet (the agent ends the others)."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept at once (Linux)
        self._thread.join(timeout_s)
        self._socket.close()
        with self._lock:
            handshakes = dict(self._handshakes)
        for connection in handshakes:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        for _, thread in handshakes.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self):
        while not self._closing.is_set():
            try:
                connection, peer = self._socket.accept()
                track(connection)
            except socket.timeout:
                continue
            except OSError:
                return
            links = self._links_from(peer[0])
            with self._lock:
                if self._closing.is_set():
                    connection.close()
                    continue
                if len(self._handshakes) >= MAX_CONNECTIONS:
                    log.warning("control connection from %s refused: %d links under way", peer, MAX_CONNECTIONS)
                    connection.close()
                    continue
                if links + sum(host == peer[0] for host, _ in self._handshakes.values()) >= MAX_LINKS_PER_HOST:
                    log.warning("control connection from %s refused: %d links and handshakes from that host",
                                peer, MAX_LINKS_PER_HOST)
                    connection.close()
                    continue
                thread = threading.Thread(target=self._handshake, args=(connection, peer), daemon=True,
                                          name=f"llmdd-control-{peer[0]}:{peer[1]}")
                self._handshakes[connection] = (peer[0], thread)
            thread.start()

    def _handshake(self, connection, peer):
        channel = None
        try:
            deadline = time.monotonic() + self._message_timeout_s   # for the whole handshake
            message_type, request_id, body = wire.receive(connection, deadline)
            if self._link_secret is not None:
                if message_type != wire.MessageType.AUTH_HELLO or not _auth.authenticate_linking_side(
                        connection, body, request_id, self._link_secret, deadline):
                    log.warning("control connection from %s did not prove it holds the link secret: closed "
                                "unanswered", peer)
                    return
                message_type, request_id, body = wire.receive(connection, deadline)
            if message_type != wire.MessageType.LINK:
                log.warning("control connection from %s sent %s before linking: closed unanswered", peer,
                            message_type.name)
                return
            reply = self._link(body, connection)
            if reply["status"] == _SUCCESS:
                channel = self._on_link(connection, body)
                if channel is None:
                    reply = dict(reply, status=int(LLMStatusCode.LLM_LINK_FAILED), engine="none")
            # The reply's time counts from the engines' start, which may have started a data-plane
            # helper process (hundreds of milliseconds); the linking side's link timeout bounds both.
            deadline = time.monotonic() + self._message_timeout_s
            wire.send(connection, wire.MessageType.LINK_REPLY, request_id, reply, deadline)
            if channel is not None:
                log.info("cluster %d linked from %s", body["cluster_id"], peer)
        except wire.ProtocolError as error:
            log.warning("control connection from %s closed: %s", peer, error)
        except OSError as error:   # socket.timeout included
            log.info("control connection from %s ended: %s", peer, error)
        finally:
            with self._lock:
                self._handshakes.pop(connection, None)
            if channel is not None:
                self._on_linked(channel)   # a reply that did not go out ends it at once, and the agent forgets it
            else:
                connection.close()

    def _link(self, body, connection):
        failed = {"status": int(LLMStatusCode.LLM_LINK_FAILED), "cluster_id": self._cluster_id, "engine": "none",
                  **self._same_host}
        if body["to_cluster_id"] != self._cluster_id:
            log.warning("a link for cluster %d reached cluster %d", body["to_cluster_id"], self._cluster_id)
            return failed
        try:
            # The engine listens on the address the caller reached us at.
            engine = self._mooncake_for_host(connection.getsockname()[0])
        except LLMException as error:
            log.warning("cannot serve a link: %s", error)
            return dict(failed, status=int(error.status_code))
        return {"status": _SUCCESS, "cluster_id": self._cluster_id, "engine": engine.address, **self._same_host}
