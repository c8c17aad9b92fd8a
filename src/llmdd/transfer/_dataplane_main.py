"""The data-plane helper process: MooncakeEngines for the process that started it (a
_dataplane.DataPlane), and nothing else.

    python -m llmdd.transfer._dataplane_main HOST PROTOCOL DEVICE_NAME LANE_FD...

Each LANE_FD is a socketpair end whose other end only the starting process holds: the only input
this process trusts (its Mooncake ports are the untrusted surface, bound to HOST by bind_guard).
Lane 0 first carries the answer to the start: the engines' address, or the failure. A thread
serves each lane; when any lane ends (the starting process closed it, or died), this process
exits at once, without Mooncake's second-long stop: its ports close with it.
"""
import array
import os
import signal
import socket
import struct
import sys
import threading

from .._desc import LLMStatusCode
from .._status import LLMException
from . import _dataplane as wire
from . import _shared_memory as shared
from ._mooncake import MooncakeEngines


def _receive(lane, count, with_fds=False):
    """`count` bytes (with_fds: and the descriptors sent with the first of them); the lane's end
    ends the process."""
    fds = []
    if with_fds:
        data, fds, _, _ = socket.recv_fds(lane, count, 1)
    else:
        data = lane.recv(count)
    chunks, received = [data], len(data)
    while data and received < count:
        data = lane.recv(count - received)
        chunks.append(data)
        received += len(data)
    if received < count:
        os._exit(0)
    return b"".join(chunks), fds


class Helper:
    """Answers the starting process's requests on its lanes with `engines`."""

    def __init__(self, engines):
        self._engines = engines
        self._lock = threading.Lock()
        self._mapped = {}   # address -> bytes of the memory the starting process shared

    def serve(self, lane):
        while True:
            header, fds = _receive(lane, wire.REQUEST.size, with_fds=True)
            op, length = wire.REQUEST.unpack(header)
            payload = _receive(lane, length)[0] if length else b""
            result = self._answer(op, payload, fds)
            lane.sendall(wire.ANSWER.pack(result, 0))

    def _answer(self, op, payload, fds):
        if op == wire.MAP:
            return self._map(struct.unpack("<Q", payload)[0], fds)
        if op == wire.WRITE:
            return self._write(payload)
        if op == wire.CLOSE_REGIONS:
            self._engines.close_regions()
            return 0
        region = wire.PAIR.unpack(payload)
        if op == wire.REGISTER:
            return 0 if self._inside_mapped(region) and self._engines.register_regions([region]) else -1
        if op == wire.UNREGISTER:
            self._engines.unregister_regions([region])
            return 0
        if op == wire.UNMAP:
            with self._lock:
                nbytes = self._mapped.pop(region[0], None)
            if nbytes is not None:
                shared.unmap(region[0], nbytes)
            return 0
        os._exit(2)   # not a request of ours: the starting process is broken

    def _map(self, nbytes, fds):
        if len(fds) != 1:
            return -22   # EINVAL
        try:
            address = shared.map_fd(fds[0], nbytes)
        except OSError as error:
            return -error.errno
        finally:
            for fd in fds:
                os.close(fd)
        with self._lock:
            self._mapped[address] = nbytes
        return address

    def _inside_mapped(self, region):
        address, nbytes = region
        with self._lock:
            return self._mapped.get(address, -1) >= nbytes

    def _write(self, payload):
        (peer_bytes,) = struct.unpack_from("<I", payload)
        peer = payload[4:4 + peer_bytes].decode()
        position = 4 + peer_bytes
        staging = wire.PAIR.unpack_from(payload, position)
        (count,) = struct.unpack_from("<Q", payload, position + wire.PAIR.size)
        position += wire.PAIR.size + 8
        columns = []
        for _ in range(3):
            column = array.array("Q")
            column.frombytes(payload[position:position + 8 * count])
            columns.append(column.tolist())
            position += 8 * count
        # Over tcp Mooncake reads a local source by address; other transports need it registered.
        if self._engines.needs_local_registration:
            if not self._engines.register_regions([staging]):
                return -1
            try:
                return self._engines.write(peer, *columns)
            finally:
                self._engines.unregister_regions([staging])
        return self._engines.write(peer, *columns)


def main(host, protocol, device_name, *lane_fds):
    # Ctrl-C in a terminal reaches the whole process group: the starting process decides, and
    # this one ends with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lanes = [socket.socket(fileno=int(fd)) for fd in lane_fds]
    try:
        if not _bind_guard_loaded():   # the dynamic loader only warns when a preload is missing
            raise LLMException(f"{wire.BIND_GUARD} is not loaded: Mooncake would bind every interface",
                               LLMStatusCode.LLM_FAILED)
        engines = MooncakeEngines(host, protocol, device_name)
    except LLMException as error:
        message = str(error).encode()
        lanes[0].sendall(wire.ANSWER.pack(int(error.status_code), len(message)) + message)
        return
    except Exception as error:   # reported to the starting process, which answers a status
        message = f"{type(error).__name__}: {error}".encode()
        lanes[0].sendall(wire.ANSWER.pack(int(LLMStatusCode.LLM_LINK_FAILED), len(message)) + message)
        return
    address = engines.address.encode()
    lanes[0].sendall(wire.ANSWER.pack(0, len(address)) + address)
    helper = Helper(engines)
    threads = [threading.Thread(target=_serve_until_the_end, args=(helper, lane), daemon=True) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _bind_guard_loaded():
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith("/" + wire.BIND_GUARD) for line in maps)


def _serve_until_the_end(helper, lane):
    try:
        helper.serve(lane)
    finally:
        os._exit(0)   # any lane's end is the starting process's end (or its close of this helper)


if __name__ == "__main__":
    main(*sys.argv[1:])
    os._exit(0)
