"""The data plane in a process of its own: DataPlane runs MooncakeEngines in a helper process
(_dataplane_main) and has their interface.

Why (docs/transfer.md, "Mooncake's own ports"): Mooncake's handshake daemon binds every interface
in code, and a malformed message to it aborts its process. The helper runs with bind_guard
LD_PRELOADed, so every wildcard bind in it lands on the listen address, and a crash takes only the
helper: every call on it then answers a failure, `alive` turns False and the agent starts another.

The helper cannot see this process's memory; both map memory this process makes (_shared_memory):
- a write gathers the local segments into staging memory, and the helper writes from there;
- a window (expose) registers a sparse mirror of the regions, so the peer writes into the mirror:
  the transfer stages the extents the peer may write into it first, and copies back those that
  were written when the transfer succeeded.

The helper talks only to this process, over socketpairs (lanes) it was given at its start: a
request is a header (op, payload bytes) and a little-endian payload, an answer a header (result,
payload bytes) and a payload. Each lane carries one request at a time, and every wait on one is
bounded: a helper that does not answer in time is killed.
"""
import array
import bisect
import collections
import contextlib
import importlib.resources
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref

from .._desc import LLMStatusCode
from .._status import LLMException
from . import _shared_memory as shared
from ._mooncake import engine_module, transfer_timeout_s

log = logging.getLogger("llmdd.transfer")

REQUEST = struct.Struct("<IQ")     # op, payload bytes
ANSWER = struct.Struct("<qQ")      # result, payload bytes
PAIR = struct.Struct("<QQ")
MAP, UNMAP, REGISTER, UNREGISTER, WRITE, CLOSE_REGIONS = range(1, 7)
HELPER_MODULE = "llmdd.transfer._dataplane_main"
BIND_ADDRESS_VARIABLE = "LLMDD_BIND_ADDRESS"
BIND_GUARD = "_bind_guard.so"
HELPER_KIND = "helper"            # DataPlane.kind's last part (MooncakeEngines': _mooncake.IN_PROCESS)

# Requests in flight at once (a lane each); a transfer waits for a free lane.
LANES = 8
# The helper starts Python, imports llmdd and starts Mooncake (0.3 to 1 s here); a busy host is slower.
START_TIMEOUT_S = 30.0
# Mapping and registering take microseconds to milliseconds: an answer this late means the helper hangs.
CALL_TIMEOUT_S = 10.0
# A closed helper sees its lanes end and exits at once; one that does not is killed.
STOP_TIMEOUT_S = 1.0
# A write moves through staging in chunks of at most this many bytes, two in turn: the next is
# gathered while the helper writes the last.
CHUNK_BYTES = 16 << 20
# Mirrors (a memfd each) kept for the region sets of recent windows, unused ones beyond this dropped.
MAX_IDLE_MIRRORS = 16
# Pages of idle mirrors kept (zeroed) for the next transfers into the same caches: a fresh shared
# page cost about 5 us to fault in here (a 64 MiB pull into a fresh mirror took 85 ms more), giving
# them back 18 ms a 64 MiB. Beyond this, the least recently used idle mirrors give theirs back.
MAX_IDLE_MIRROR_BYTES = 256 << 20


class HelperFailure(Exception):
    """A request had no good answer: the helper died, was closed, did not answer in time (it is
    killed then), or refused it."""


def bind_guard_path():
    return str(importlib.resources.files("llmdd") / BIND_GUARD)


class _Mirror:
    """A sparse copy of a set of regions in one memfd the helper maps too: region i's bytes at
    offsets[i]. `users`: windows open on it now."""

    def __init__(self, regions):
        self.regions = sorted(tuple(region) for region in regions)
        self.starts = [start for start, _ in self.regions]
        self.offsets, total = [], 0
        for _, nbytes in self.regions:
            self.offsets.append(total)
            total += -(-nbytes // shared.PAGE_BYTES) * shared.PAGE_BYTES
        self.memory = shared.SharedMemory(max(total, shared.PAGE_BYTES), "llmdd-mirror")
        self.helper_address = 0
        self.users = 0
        self.resident = 0       # at most this many bytes of its pages are in memory (zeroed, when idle)
        self.orphaned = False   # not in the plane's cache: unmapped when its last window ends

    def offset(self, address, nbytes):
        """The mirror offset of [address, address + nbytes), which must lie inside one region."""
        index = bisect.bisect_right(self.starts, address) - 1
        if index < 0:
            raise LookupError(f"{address:#x} is in none of the window's regions")
        start, region_bytes = self.regions[index]
        if address + nbytes > start + region_bytes:
            raise LookupError(f"[{address:#x}, +{nbytes}) is in none of the window's regions")
        return self.offsets[index] + address - start


class MirrorWindow:
    """One transfer's view of a mirror: `regions` and address() are what the peer writes, the
    cache's own regions and addresses translated into the helper's mapping of the mirror.
    stage() and close() never raise: a failure there is logged and becomes the transfer's status."""

    def __init__(self, plane, mirror, exposed):
        self._plane = plane
        self._mirror = mirror
        self._exposed = exposed   # the cache's regions, as the transfer named them
        self.regions = [(mirror.helper_address + offset, nbytes)
                        for offset, (_, nbytes) in zip(mirror.offsets, mirror.regions)]
        self._touched = []        # (mirror offset, nbytes) this window staged or copied back
        self._open = True

    def address(self, addr):
        """The address the peer writes for the cache's `addr`; LookupError outside the regions."""
        return self._mirror.helper_address + self._mirror.offset(addr, 0)

    def stage(self, extents):
        """Copies the cache's (addr, nbytes) extents into the mirror, so that what a short write
        leaves there is the cache's own bytes; False (and a warning) for an extent outside it."""
        base = self._mirror.memory.address
        try:
            for addr, nbytes in extents:
                offset = self._mirror.offset(addr, nbytes)
                self._touched.append((offset, nbytes))
                shared.copy(base + offset, addr, nbytes)
        except LookupError as error:
            log.warning("a transfer's destination could not be staged: %s", error)
            return False
        return True

    def keep(self, written):
        """Copies the `written` extents (the cache's addresses) back from the mirror, which stays
        registered: a layer-wise push keeps each layer as it moves."""
        if self._open:
            self._copy_back(written)

    def close(self, written=()):
        """Ends the window (once): the mirror is unregistered, then the `written` extents (the
        cache's addresses) are copied back from it, and every byte this window put there is zeroed."""
        if not self._open:
            return
        self._open = False
        self._plane.unregister(self._mirror)
        try:
            self._copy_back(written)
        finally:
            self._plane.release(self._mirror, self._touched, self._exposed)

    def _copy_back(self, written):
        base = self._mirror.memory.address
        try:
            for addr, nbytes in written:
                offset = self._mirror.offset(addr, nbytes)
                self._touched.append((offset, nbytes))
                shared.copy(addr, base + offset, nbytes)
        except LookupError as error:
            log.warning("a transfer's bytes were not all copied back: %s", error)


class _Helper:
    """The helper process and its lanes: started, asked, and stopped (killed when it hangs)."""

    def __init__(self, host, protocol, device_name, environment):
        self._lock = threading.Lock()
        self._lane_free = threading.Condition(self._lock)
        self.gone = False     # the helper died, hangs or was stopped
        self.forked = False   # this is a forked child's copy: the helper is the parent's
        guard = bind_guard_path()
        if not os.path.isfile(guard):   # the loader would start the helper without it, binding everywhere
            raise LLMException(f"cannot start the data-plane helper: {guard} is missing (a build without it?)",
                               LLMStatusCode.LLM_FAILED)
        try:
            ours, theirs = zip(*(socket.socketpair() for _ in range(LANES)))
        except OSError as error:
            raise LLMException(f"cannot start the data-plane helper: {error}", LLMStatusCode.LLM_FAILED) from None
        self._lanes = list(ours)
        self._free_lanes = list(ours)
        self._owed = {}   # lane -> the op of a request sent on it whose answer is not read yet
        preload = " ".join(filter(None, (guard, os.environ.get("LD_PRELOAD"))))
        # The engine's own Mooncake settings win over this process's: each helper is one engine's.
        environment = dict(os.environ, LD_PRELOAD=preload, **{BIND_ADDRESS_VARIABLE: host}, **dict(environment))
        fds = [lane.fileno() for lane in theirs]
        try:
            self.process = subprocess.Popen([sys.executable, "-m", HELPER_MODULE, host, protocol, device_name,
                                             *map(str, fds)], pass_fds=fds, env=environment,
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as error:
            self._close_lanes()
            raise LLMException(f"cannot start the data-plane helper: {error}", LLMStatusCode.LLM_FAILED) from None
        finally:
            for lane in theirs:
                lane.close()
        try:
            result, payload = self.receive(self._lanes[0], time.monotonic() + START_TIMEOUT_S)
        except HelperFailure:
            raise LLMException("the data-plane helper did not start", LLMStatusCode.LLM_LINK_FAILED) from None
        if result != 0:
            self.stop(kill=False, reason=None)
            raise LLMException(f"the data-plane helper: {payload.decode(errors='replace')}", int(result))
        self.address = payload.decode()

    @property
    def alive(self):
        return not (self.gone or self.forked) and self.process.poll() is None

    @contextlib.contextmanager
    def lane(self, timeout_s):
        """A lane for one request, held by this thread; HelperFailure when there is none to have."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not self._free_lanes and not self.gone:
                if not self._lane_free.wait(max(0.0, deadline - time.monotonic())):
                    raise HelperFailure("no lane to the data-plane helper came free in time")
            if self.gone:
                raise HelperFailure("the data-plane helper is gone")
            lane = self._free_lanes.pop()
            owed = self._owed.pop(lane, None)
        try:
            if owed is not None:
                result = self.receive(lane, time.monotonic() + CALL_TIMEOUT_S)[0]
                if result != 0:
                    log.warning("data-plane helper request %d answered %d", owed, result)
            yield lane
        finally:
            with self._lock:
                if self.gone:
                    lane.close()
                else:
                    self._free_lanes.append(lane)
                    self._lane_free.notify()

    def send(self, lane, op, payload=b"", fds=()):
        try:
            lane.settimeout(CALL_TIMEOUT_S)
            message = REQUEST.pack(op, len(payload)) + payload
            if fds:
                socket.send_fds(lane, [message], fds)
            else:
                lane.sendall(message)
        except OSError as error:
            self._lose(f"a request could not be sent: {error}")

    def receive(self, lane, deadline):
        """(result, payload) of the answer on `lane`; HelperFailure (the helper killed) when it is
        not whole by `deadline`."""
        try:
            result, length = ANSWER.unpack(self._exactly(lane, ANSWER.size, deadline))
            return result, self._exactly(lane, length, deadline)
        except OSError as error:   # socket.timeout included
            self._lose(f"no answer: {error or type(error).__name__}")

    @staticmethod
    def _exactly(lane, count, deadline):
        chunks = []
        while count:
            lane.settimeout(max(1e-3, deadline - time.monotonic()))
            chunk = lane.recv(min(count, 1 << 20))
            if not chunk:
                raise ConnectionError("the data-plane helper closed its lane")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def call(self, op, payload=b"", fds=(), lane=None):
        """The result of one request; HelperFailure when there is none."""
        if lane is None:
            with self.lane(CALL_TIMEOUT_S) as lane:
                return self.call(op, payload, fds, lane)
        self.send(lane, op, payload, fds)
        return self.receive(lane, time.monotonic() + CALL_TIMEOUT_S)[0]

    def call_later(self, op, payload):
        """Sends a request whose answer nobody waits for now (the lane's next user reads it
        first), for what no transfer waits on: unmapping, and the unregistering of what no
        window holds."""
        if not self.alive:
            return
        try:
            with self.lane(CALL_TIMEOUT_S) as lane:
                self.send(lane, op, payload)
                self._owed[lane] = op
        except HelperFailure as error:
            log.debug("data-plane helper request %d: %s", op, error)

    def map(self, memory, lane=None):
        """The helper's address of `memory`, mapped there."""
        address = self.call(MAP, struct.pack("<Q", memory.nbytes), (memory.fd,), lane)
        if address <= 0:
            raise HelperFailure(f"the helper could not map {memory.nbytes} bytes: {os.strerror(-address)}")
        return address

    def _lose(self, reason):
        self.stop(kill=True, reason=reason)
        raise HelperFailure(reason)

    def stop(self, kill, reason):
        """Ends every lane (the helper exits when they end) and reaps the helper: killed at once
        (`kill`) or after STOP_TIMEOUT_S. A thread waiting on a lane wakes and fails."""
        with self._lock:
            if self.gone:
                return
            self.gone = True
            self._lane_free.notify_all()
            free, self._free_lanes = self._free_lanes, []
        if reason is not None:
            log.warning("data-plane helper %d ended: %s", self.process.pid, reason)
        for lane in self._lanes:
            with contextlib.suppress(OSError):
                lane.shutdown(socket.SHUT_RDWR)
        for lane in free:
            lane.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            if not kill:
                self.process.wait(STOP_TIMEOUT_S)
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)   # reaped: no zombie

    def _close_lanes(self):
        for lane in self._lanes:
            lane.close()

    def forget_in_child(self):
        """In a forked child: the helper and its lanes are the parent's. This side's copies of the
        lanes close (so the helper still sees the parent's end); nothing is sent, nothing killed."""
        self.forked = self.gone = True
        self._lock = threading.Lock()
        self._lane_free = threading.Condition(self._lock)
        self._free_lanes = []
        self._close_lanes()


class DataPlane:
    """MooncakeEngines(host, protocol, device_name) in a helper process, with their interface:
    address, kind, failed, needs_local_registration, alive, expose, write, close_regions, close.
    `environment`: Mooncake variables (name, value) the helper runs with (_mooncake.rdma_environment).
    Nothing raises once it started: a call on a helper that is gone answers a failure."""

    def __init__(self, host, protocol, device_name, environment=()):
        engine_module()   # LLM_FEATURE_NOT_ENABLED here, and Mooncake's defaults in the environment it inherits
        self._helper = _Helper(host, protocol, device_name, environment)
        _planes.add(self)
        self.address = self._helper.address
        self.kind = (host, protocol, device_name, environment, HELPER_KIND)
        self.failed = False      # a transfer failed or timed out: not handed to another agent
        self.needs_local_registration = False   # the helper registers its staging itself where needed
        self._lock = threading.Lock()
        self._closed = False     # close() ran: memory a transfer still holds is freed when it lets go
        self._mirrors = collections.OrderedDict()   # sorted region set -> _Mirror, least recently used first
        self._staging = []       # (SharedMemory of 2 * CHUNK_BYTES, its helper address) no write uses now
        self._exposed = {}       # region -> windows exposing it now

    @property
    def alive(self):
        """False once the helper died, was killed or closed: make another (new ports)."""
        return self._helper.alive

    @property
    def helper_pid(self):
        return self._helper.process.pid

    # Windows: a transfer's destination, exposed to the peer's writes

    def expose(self, regions):
        """A MirrorWindow over `regions` registered for one transfer, or None (nothing exposed)."""
        regions = [tuple(region) for region in regions]
        key = tuple(sorted(regions))
        if not self.alive:   # and never the mirrors in a forked child: the parent's transfers use them
            return None
        with self._lock:
            mirror = self._mirrors.pop(key, None)
            if mirror is not None:
                mirror.users += 1
                self._mirrors[key] = mirror   # most recently used
        try:
            if mirror is None:
                mirror = self._new_mirror(key)
            if self._helper.call(REGISTER, PAIR.pack(mirror.helper_address, mirror.memory.nbytes)) != 0:
                self.release(mirror, (), ())
                return None
        except Exception as error:   # HelperFailure, or a bug: a failure all the same
            log.warning("exposing %d regions through the data-plane helper failed: %s: %s", len(regions),
                        type(error).__name__, error)
            if mirror is not None:
                self.release(mirror, (), ())
            return None
        with self._lock:
            for region in regions:
                self._exposed[region] = self._exposed.get(region, 0) + 1
        return MirrorWindow(self, mirror, regions)

    def _new_mirror(self, key):
        try:
            mirror = _Mirror(key)
        except OSError as error:
            raise HelperFailure(f"no mirror memory: {error}") from None
        try:
            mirror.helper_address = self._helper.map(mirror.memory)
        except HelperFailure:
            mirror.memory.close()
            raise
        mirror.users = 1
        with self._lock:
            if key in self._mirrors:   # another thread made one for these regions meanwhile: that one stays
                mirror.orphaned = True
            else:
                self._mirrors[key] = mirror
        self._drop_idle_mirrors()
        return mirror

    def _drop_idle_mirrors(self):
        with self._lock:
            idle = [key for key, mirror in self._mirrors.items() if mirror.users == 0]
            dropped = [self._mirrors.pop(key) for key in idle[:max(0, len(idle) - MAX_IDLE_MIRRORS)]]
        for mirror in dropped:
            self._unmap(mirror)

    def _unmap(self, mirror):
        self._helper.call_later(UNMAP, PAIR.pack(mirror.helper_address, mirror.memory.nbytes))
        mirror.memory.close()

    def unregister(self, mirror):
        """A window's end, before its bytes are copied back: no peer writes the mirror after it."""
        if self.alive:
            try:
                self._helper.call(UNREGISTER, PAIR.pack(mirror.helper_address, mirror.memory.nbytes))
            except HelperFailure as error:   # the helper is gone with its registrations
                log.debug("unregistering a window: %s", error)

    def release(self, mirror, touched, exposed):
        """A window on `mirror` ended: the bytes it put there are zeroed, so nothing of a cache
        outlives its transfer there (a mirror's pages stay for the next window, within
        MAX_IDLE_MIRROR_BYTES)."""
        with self._lock:
            mirror.users -= 1
            last = mirror.users == 0
            for region in exposed:
                count = self._exposed.pop(region) - 1
                if count:
                    self._exposed[region] = count
        for offset, nbytes in touched:
            shared.zero(mirror.memory.address + offset, nbytes)
        with self._lock:
            mirror.resident = min(mirror.memory.nbytes, mirror.resident + sum(nbytes for _, nbytes in touched))
        if last and mirror.orphaned:
            self._unmap(mirror)
        elif last:
            self._trim_idle_mirrors()

    def _trim_idle_mirrors(self):
        """Idle mirrors' pages beyond MAX_IDLE_MIRROR_BYTES given back, least recently used first."""
        with self._lock:
            idle = [mirror for mirror in self._mirrors.values() if mirror.users == 0 and mirror.resident]
            excess = sum(mirror.resident for mirror in idle) - MAX_IDLE_MIRROR_BYTES
            trimmed = []
            for mirror in idle:
                if excess <= 0:
                    break
                excess -= mirror.resident
                mirror.resident = 0
                mirror.users += 1   # held while its pages go, so no window takes it meanwhile
                trimmed.append(mirror)
        for mirror in trimmed:
            mirror.memory.discard()
            with self._lock:
                mirror.users -= 1

    # Writes: this process's memory into a peer's window

    def write(self, peer, local_addrs, remote_addrs, lengths):
        """Writes our memory into the peer's exposed memory through the helper; 0 on success, as
        MooncakeEngines.write. A failure marks these engines failed, as there."""
        try:
            result = self._write(peer, local_addrs, remote_addrs, lengths)
        except Exception as error:   # HelperFailure, or a bug: a status all the same
            log.warning("Mooncake write to %s through the data-plane helper failed: %s: %s", peer,
                        type(error).__name__, error)
            result = -1
        if result != 0:
            self.failed = True
        return result

    def _write(self, peer, local_addrs, remote_addrs, lengths):
        # The hot path of every pull served and every push: gather, then one request a chunk.
        helper = self._helper
        with helper.lane(transfer_timeout_s(CHUNK_BYTES) + CALL_TIMEOUT_S) as lane:
            memory, helper_address = staging = self._take_staging(lane)
            try:
                peer_field = struct.pack("<I", len(peer)) + peer.encode()
                in_flight = None   # the deadline of the chunk the helper writes now
                for index, (chunk_local, chunk_remote, chunk_lengths) in enumerate(
                        _chunks(local_addrs, remote_addrs, lengths)):
                    half = (index % 2) * CHUNK_BYTES
                    staged = array.array("Q")
                    position = half
                    for address, nbytes in zip(chunk_local, chunk_lengths):
                        shared.copy(memory.address + position, address, nbytes)
                        staged.append(helper_address + position)
                        position += nbytes
                    if in_flight is not None:
                        result = helper.receive(lane, in_flight)[0]
                        if result != 0:
                            return result
                    # The chunk's staging too, which a transport other than tcp registers while it
                    # moves: the chunk only, never what earlier writes left in the rest.
                    helper.send(lane, WRITE, peer_field + PAIR.pack(helper_address + half, position - half)
                                + struct.pack("<Q", len(staged)) + staged.tobytes()
                                + array.array("Q", chunk_remote).tobytes() + array.array("Q", chunk_lengths).tobytes())
                    in_flight = time.monotonic() + transfer_timeout_s(position - half) + CALL_TIMEOUT_S
                return 0 if in_flight is None else helper.receive(lane, in_flight)[0]
            finally:
                with self._lock:
                    kept = not self._closed
                    if kept:
                        self._staging.append(staging)
                if not kept:
                    memory.close()

    def _take_staging(self, lane):
        with self._lock:
            if self._staging:
                return self._staging.pop()
        try:
            memory = shared.SharedMemory(2 * CHUNK_BYTES, "llmdd-staging")
        except OSError as error:
            raise HelperFailure(f"no staging memory: {error}") from None
        try:
            return memory, self._helper.map(memory, lane)
        except HelperFailure:
            memory.close()
            raise

    # The engines' end

    def close_regions(self):
        """Nothing stays registered (the helper stays up, idle, for the next agent). Mirrors stay:
        no window is open, and each window zeroed what it put in its mirror. Staging keeps its
        pages, which only this process and the helper see: giving 32 MiB back took 9 ms, which a
        Finalize would wait for."""
        if not self._helper.forked:   # a child's copy: the helper is the parent's
            self._helper.call_later(CLOSE_REGIONS, b"")

    def close(self):
        """Stops the helper (its lanes end and it exits; killed if it does not) and frees the
        memory no transfer uses. In a forked child the helper is the parent's: only this side's
        copies go."""
        if not self._helper.forked:
            self._helper.stop(kill=False, reason=None)
        with self._lock:
            self._closed = True
            mirrors, self._mirrors = list(self._mirrors.values()), collections.OrderedDict()
            staging, self._staging = self._staging, []
            for mirror in mirrors:
                mirror.orphaned = mirror.users > 0
        for mirror in mirrors:
            if not mirror.orphaned:
                mirror.memory.close()
        for memory, _ in staging:
            memory.close()

    def forget_in_child(self):
        self._helper.forget_in_child()
        self._lock = threading.Lock()


def _chunks(local_addrs, remote_addrs, lengths):
    """The segments cut into runs of at most CHUNK_BYTES, a segment split where a run ends."""
    chunks, local, remote, sizes, total = [], [], [], [], 0
    for address, remote_address, nbytes in zip(local_addrs, remote_addrs, lengths):
        while nbytes:
            piece = min(nbytes, CHUNK_BYTES - total)
            local.append(address)
            remote.append(remote_address)
            sizes.append(piece)
            total += piece
            address, remote_address, nbytes = address + piece, remote_address + piece, nbytes - piece
            if total == CHUNK_BYTES:
                chunks.append((local, remote, sizes))
                local, remote, sizes, total = [], [], [], 0
    if sizes:
        chunks.append((local, remote, sizes))
    return chunks


_planes = weakref.WeakSet()   # every DataPlane of this process, for the fork handler


def _forget_planes_in_child():
    for plane in list(_planes):
        plane.forget_in_child()


os.register_at_fork(after_in_child=_forget_planes_in_child)
