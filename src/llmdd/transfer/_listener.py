"""The serving side of the control protocol: a listener thread on llm.ListenIpInfo.

A connection must LINK first (within the handshake time) and to this cluster; anything else, and
any frame that fails validation, closes the connection without an answer. A linked connection
may then RESOLVE keys (which pins the cache it names and registers its memory with the engine),
UNPIN (and release a CacheKey after a pull) and UNLINK. Pins a connection holds are released when
it ends, however it ends, so a decoder that dies never keeps a prompt-side cache alive.
"""
import contextlib
import itertools
import logging
import socket
import threading
import time

from .._datadist import LLMException
from .._desc import LLMStatusCode
from . import _protocol as wire

log = logging.getLogger("llmdd.transfer")

MAX_CONNECTIONS = 64
MAX_PINS_PER_CONNECTION = 256
# How often blocked accept/recv calls look up to see whether the listener is closing.
_POLL_SECONDS = 0.2

_SUCCESS = int(LLMStatusCode.LLM_SUCCESS)


class _Pin:
    __slots__ = ("hold", "key")

    def __init__(self, hold, key):
        self.hold = hold    # an ExitStack holding registry.pin(cache_id)
        self.key = key      # the CacheKey a pull may release afterwards, else None


class ControlListener:
    def __init__(self, host, port, cluster_id, registry, engine_for_host, message_timeout_s):
        self._cluster_id = cluster_id
        self._registry = registry
        self._engine_for_host = engine_for_host
        self._message_timeout_s = message_timeout_s
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._connections = {}   # socket -> its serving thread
        self._pin_ids = itertools.count(1)
        self._socket = socket.create_server((host, port), backlog=MAX_CONNECTIONS)
        self._socket.settimeout(_POLL_SECONDS)
        self.address = self._socket.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, name=f"llmdd-control-{self.address[1]}",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout_s=2.0):
        """Stops accepting, ends every connection (releasing their pins) and joins the threads."""
        self._closing.set()
        self._thread.join(timeout_s)
        self._socket.close()
        with self._lock:
            connections = dict(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self):
        while not self._closing.is_set():
            try:
                connection, peer = self._socket.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                if len(self._connections) >= MAX_CONNECTIONS or self._closing.is_set():
                    log.warning("control connection from %s refused: %d connections open", peer, MAX_CONNECTIONS)
                    connection.close()
                    continue
                thread = threading.Thread(target=self._serve, args=(connection, peer), daemon=True,
                                          name=f"llmdd-control-{peer[0]}:{peer[1]}")
                self._connections[connection] = thread
            thread.start()

    def _wait_for_frame(self, connection):
        """True when the next frame starts arriving, False when the peer closed or we are closing.
        An idle linked connection may wait forever; a started frame gets message_timeout_s."""
        connection.settimeout(_POLL_SECONDS)
        while not self._closing.is_set():
            try:
                return bool(connection.recv(1, socket.MSG_PEEK))
            except socket.timeout:
                continue
        return False

    def _serve(self, connection, peer):
        pins = {}
        try:
            message_type, request_id, body = wire.receive(connection, time.monotonic() + self._message_timeout_s)
            if message_type != wire.MessageType.LINK:
                log.warning("control connection from %s sent %s before linking: closed unanswered", peer,
                            message_type.name)
                return
            reply = self._link(body, connection)
            self._reply(connection, message_type, request_id, reply)
            if reply["status"] != _SUCCESS:
                return
            log.info("cluster %d linked from %s", body["cluster_id"], peer)
            while self._wait_for_frame(connection):
                message_type, request_id, body = wire.receive(connection, time.monotonic() + self._message_timeout_s)
                if message_type == wire.MessageType.RESOLVE:
                    reply = self._resolve(body, pins)
                elif message_type == wire.MessageType.UNPIN:
                    reply = self._unpin(body, pins)
                elif message_type == wire.MessageType.UNLINK:
                    self._reply(connection, message_type, request_id, {"status": _SUCCESS})
                    log.info("cluster %d unlinked", body["cluster_id"])
                    return
                else:
                    log.warning("control connection from %s sent a %s: closed", peer, message_type.name)
                    return
                self._reply(connection, message_type, request_id, reply)
        except wire.ProtocolError as error:
            log.warning("control connection from %s closed: %s", peer, error)
        except (OSError, socket.timeout) as error:
            log.info("control connection from %s ended: %s", peer, error)
        finally:
            for pin in pins.values():
                pin.hold.close()
            with self._lock:
                self._connections.pop(connection, None)
            connection.close()

    def _reply(self, connection, request_type, request_id, body):
        wire.send(connection, wire.REPLY_TO[request_type], request_id, body,
                  time.monotonic() + self._message_timeout_s)

    def _link(self, body, connection):
        failed = {"status": int(LLMStatusCode.LLM_LINK_FAILED), "cluster_id": self._cluster_id, "engine": "none"}
        if body["to_cluster_id"] != self._cluster_id:
            log.warning("a link for cluster %d reached cluster %d", body["to_cluster_id"], self._cluster_id)
            return failed
        try:
            # The engine listens on the address the caller reached us at.
            engine = self._engine_for_host(connection.getsockname()[0])
        except LLMException as error:
            log.warning("cannot serve a link: %s", error)
            return dict(failed, status=int(error.status_code))
        return {"status": _SUCCESS, "cluster_id": self._cluster_id, "engine": engine.address}

    def _resolve(self, body, pins):
        not_found = {"status": int(LLMStatusCode.LLM_KV_CACHE_NOT_EXIST), "pin": 0, "layout": None}
        fields = body["key"]
        key = None   # a key by id names no key to find or release
        if fields["kind"] == "id":
            entry, batch_index = self._registry.entry(fields["cache_id"]), fields["batch_index"]
        else:
            key = wire.key_from_fields(fields)
            found = self._registry.find(key)
            entry, batch_index = found if found is not None else (None, 0)
        if entry is None:
            return not_found
        if body["write"] and not entry.remote_accessible:
            log.warning("a push into cache %d, which is not registered remote_accessible", entry.cache_id)
            return dict(not_found, status=int(LLMStatusCode.LLM_PARAM_INVALID))
        if len(pins) >= MAX_PINS_PER_CONNECTION:
            return dict(not_found, status=int(LLMStatusCode.LLM_LINK_BUSY))
        hold = contextlib.ExitStack()
        try:
            hold.enter_context(self._registry.pin(entry.cache_id))
        except (LLMException, LookupError, ValueError):
            return not_found   # deallocated between the lookup and the pin
        if not self._engine_for_host(None).register(entry.regions):
            hold.close()
            return dict(not_found, status=int(LLMStatusCode.LLM_FAILED))
        pin_id = next(self._pin_ids)
        pins[pin_id] = _Pin(hold, key if fields["kind"] == "cache" else None)
        layout = {"cache_id": entry.cache_id, "tensor_addrs": list(entry.tensor_addrs),
                  "tensor_bytes": entry.tensor_bytes, "batch": entry.batch, "block_bytes": entry.block_bytes,
                  "is_blocks_cache": bool(entry.is_blocks_cache), "remote_accessible": bool(entry.remote_accessible),
                  "batch_index": batch_index, "regions": [list(region) for region in entry.regions]}
        return {"status": _SUCCESS, "pin": pin_id, "layout": layout}

    def _unpin(self, body, pins):
        pin = pins.pop(body["pin"], None)
        if pin is None:
            return {"status": int(LLMStatusCode.LLM_PARAM_INVALID)}
        status = _SUCCESS
        with pin.hold:
            # Dropped under the pin, so a cache already deallocated is freed when the pin goes.
            if body["release_key"]:
                if pin.key is None:
                    status = int(LLMStatusCode.LLM_PARAM_INVALID)
                else:
                    status = int(self._registry.release_key(pin.key))
        return {"status": status}
