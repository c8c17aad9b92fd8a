"""The one place llmdd touches Mooncake's Transfer Engine (`mooncake.engine`), imported on first use.

`import llmdd` and `import llmdd.transfer` never import Mooncake: it loads libibverbs and starts
nothing until a link needs an engine. MooncakeEngines run in the data-plane helper process
(_dataplane_main), or in the engine's own process when the user accepts the risk
(llmdd.MooncakeInProcess; docs/transfer.md).
"""
import collections
import ctypes
import logging
import os
import threading
import time
import weakref

from .._desc import LLMStatusCode
from .._options import MOONCAKE_IN_PROCESS, RDMA_SERVICE_LEVEL, RDMA_TRAFFIC_CLASS
from .._status import LLMException
from ._plan import shares
from ._sockets import close_listeners_in_child

log = logging.getLogger("llmdd.transfer")

INSTALL_HINT = ("llmdd's transfers need Mooncake's Transfer Engine: pip install 'llmdd[transfer]' "
                "(mooncake-transfer-engine-non-cuda; on Ascend, mooncake-transfer-engine-npu) and, on "
                "Debian/Ubuntu, apt-get install libibverbs1")
# glog's minimum level (0 INFO .. 3 FATAL) inside engine.so. Mooncake logs every failed transfer
# and every handshake at INFO/ERROR on stderr; we turn failures into statuses and log them
# through Python logging instead. MC_LOG_LEVEL (Mooncake's own knob) set by the user wins.
_QUIET_GLOG_LEVEL = 3
_GLOG_MINLOGLEVEL_SYMBOL = "_ZN3fLI17FLAGS_minloglevelE"

# Mooncake's TCP transport queues at most MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER requests per peer;
# a batch beyond it is refused part-way ("queue-full rejection") and, measured here with 0.3.13,
# later batches to that peer keep failing. llmdd raises the default queue (unless the user set
# it) and never has more than half of it in flight.
TCP_QUEUE_VARIABLE = "MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER"
TCP_QUEUE_DEFAULT = 8192

# Mooncake's TCP transport drives all of an engine's connections from one asio thread, and one
# loopback TCP stream moved about 1.2 GB/s on the 2-core development machine however it was
# chunked (MC_TCP_SLICE_SIZE) or spread over lanes (MC_TCP_LANES_PER_PEER); two streams, each
# with a thread on either side, moved about twice that (bench/RESULTS.md). So MooncakeEngines over tcp
# runs this many Mooncake engines, pairs each with one of the peer's, and shares every transfer
# between the pairs by bytes.
# Each pair's requests go over MC_TCP_LANES_PER_PEER connections, one request at a time each;
# 8 (Mooncake's default is 4) made the scattered 1 GiB pull about a quarter faster here, within
# the noise of a shared machine (bench/RESULTS.md). The user's setting wins.
TCP_LANES_VARIABLE = "MC_TCP_LANES_PER_PEER"
TCP_LANES_DEFAULT = 8
ENGINES_VARIABLE = "LLMDD_MOONCAKE_ENGINES"
TCP_ENGINES_DEFAULT = 2
# A transfer below this many bytes a pair goes through fewer pairs.
MIN_SHARE_BYTES = 256 << 10
# batch_transfer_sync_* and get_batch_transfer_status wait for a batch by polling it without a
# pause, which takes a whole core from the transport's threads on a small host. llmdd submits
# one-request batches instead (transfer_check_status looks at a batch's first request only),
# keeps at most IN_FLIGHT_PER_PAIR of them in flight a pair, checks the oldest, and sleeps
# between checks: from FIRST_PAUSE_S, doubling while nothing completes, up to LAST_PAUSE_S.
IN_FLIGHT_PER_PAIR = 128
FIRST_PAUSE_S = 20e-6
LAST_PAUSE_S = 500e-6
# As Mooncake's own sync calls: a transfer fails after 30 s (MC_TRANSFER_TIMEOUT) plus 1 s a GB.
TRANSFER_TIMEOUT_VARIABLE = "MC_TRANSFER_TIMEOUT"
TRANSFER_TIMEOUT_DEFAULT_S = 30

# Mooncake's rdma transport gives its queue pairs the traffic class and service level in these
# variables, which it reads once a process: when mooncake.engine is imported (measured with
# 0.3.13: its config is loaded at import, and once only, config.cpp's globalConfig). An engine's
# llm.RdmaTrafficClass and llm.RdmaServiceLevel set them for its Mooncake engines.
RDMA_VARIABLES = {"MC_IB_TC": RDMA_TRAFFIC_CLASS, "MC_IB_SL": RDMA_SERVICE_LEVEL}

# MooncakeEngines.kind's last part: where the engines run (_dataplane.DataPlane's is "helper").
IN_PROCESS = "in-process"

_module_lock = threading.Lock()
_module = None
_import_error = None
_read_environment = {}   # RDMA_VARIABLES' values when this process imported Mooncake (None: unset)

_live = weakref.WeakSet()   # in-process MooncakeEngines not closed: a forked child closes its copies of their ports


def rdma_environment(protocol, traffic_class, service_level):
    """The Mooncake variables an engine's RDMA options ask for, as (name, value) pairs: none but
    over rdma, and none for an option not given (Mooncake's own setting then)."""
    if protocol != "rdma":
        return ()
    return tuple((name, str(value)) for name, value in zip(RDMA_VARIABLES, (traffic_class, service_level))
                 if value is not None)


def engine_module():
    """mooncake.engine, imported once; LLMException(LLM_FEATURE_NOT_ENABLED) naming what to
    install when it cannot be."""
    global _module, _import_error, _read_environment
    with _module_lock:
        if _module is None and _import_error is None:
            os.environ.setdefault(TCP_QUEUE_VARIABLE, str(TCP_QUEUE_DEFAULT))
            os.environ.setdefault(TCP_LANES_VARIABLE, str(TCP_LANES_DEFAULT))
            try:
                import mooncake.engine as module
            except ImportError as error:
                _import_error = error
            else:
                if "MC_LOG_LEVEL" not in os.environ and "GLOG_minloglevel" not in os.environ:
                    _quiet_glog(module.__file__)
                _read_environment = {name: os.environ.get(name) for name in RDMA_VARIABLES}
                _module = module
    if _module is None:
        raise LLMException(f"{INSTALL_HINT} (import mooncake.engine failed: {_import_error})",
                           LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
    return _module


def claim_environment(environment):
    """Sets the Mooncake variables `environment` ((name, value) pairs) for engines in this process
    (llmdd.MooncakeInProcess) where they are unset, before Mooncake loads and reads them, once.
    LLMException(LLM_PARAM_INVALID) where the environment has another value, or Mooncake read
    another: a traffic class silently not applied would put the KV traffic in another network
    class (docs/transfer.md, "RDMA traffic class and service level")."""
    with _module_lock:
        read = _module is not None
        values = _read_environment if read else os.environ
        for name, value in environment:
            current = values.get(name, value)
            if current != value:
                seen = f"{name} unset" if current is None else f"{name}={current!r}"
                where = "Mooncake read, when this process loaded it," if read else "this process's environment has"
                refusal = (f"{RDMA_VARIABLES[name]}={value} needs {name}={value} for Mooncake in this process "
                           f"({MOONCAKE_IN_PROCESS}=1), but {where} {seen}: make them equal, or run Mooncake in "
                           "its helper process")
                log.warning("%s", refusal)   # the C++ API's callers see only the status
                raise LLMException(refusal, LLMStatusCode.LLM_PARAM_INVALID)
        if not read:
            os.environ.update(environment)


def _quiet_glog(library_path):
    try:
        ctypes.c_int.in_dll(ctypes.CDLL(library_path), _GLOG_MINLOGLEVEL_SYMBOL).value = _QUIET_GLOG_LEVEL
    except (OSError, ValueError):
        log.debug("could not set glog's level in %s; Mooncake logs on stderr", library_path)


def _engine_count(protocol):
    if protocol != "tcp":
        return 1
    count = os.environ.get(ENGINES_VARIABLE, "")
    return max(1, int(count)) if count.isdigit() else TCP_ENGINES_DEFAULT


def transfer_timeout_s(nbytes):
    seconds = os.environ.get(TRANSFER_TIMEOUT_VARIABLE, "")
    return (max(5, int(seconds)) if seconds.isdigit() else TRANSFER_TIMEOUT_DEFAULT_S) + nbytes / 1e9


class MooncakeEngines:
    """Mooncake TransferEngines (P2P handshake, no metadata server; several over tcp, see
    TCP_ENGINES_DEFAULT) and the regions they have registered.

    `address` is what a peer passes back as `peer` to read and write: each engine's host:port
    (where Mooncake's P2P handshake listens), comma-separated. `environment`: the Mooncake
    variables (rdma_environment) these engines need in this process (claim_environment); none in
    the data-plane helper, whose starter gave them to its environment."""

    def __init__(self, host, protocol, device_name, environment=()):
        claim_environment(environment)
        module = engine_module()
        self._engines = []
        for _ in range(_engine_count(protocol)):
            engine = module.TransferEngine()
            status = engine.initialize(host, "P2PHANDSHAKE", protocol, device_name)
            if status != 0:
                self._engines.clear()
                raise LLMException(f"Mooncake's TransferEngine.initialize({host!r}, 'P2PHANDSHAKE', {protocol!r}, "
                                   f"{device_name!r}) answered {status}", LLMStatusCode.LLM_LINK_FAILED)
            self._engines.append(engine)
        self.handshake_ports = [engine.get_rpc_port() for engine in self._engines]
        self.address = ",".join(f"{host}:{port}" for port in self.handshake_ports)
        self.kind = (host, protocol, device_name, environment, IN_PROCESS)
        self.failed = False    # a transfer failed or timed out: not handed to another agent
        self.needs_local_registration = protocol != "tcp"
        self._lock = threading.Lock()
        self._exposed = {}   # (start address, nbytes) -> how many transfers expose it now
        # A call keeps at most _in_flight segments in flight a pair, never more than half the
        # peer's queue (see TCP_QUEUE_VARIABLE), so it may take any number of segments: one call
        # for a whole transfer drains the pairs once, where a call per 4,096 segments (what the
        # queue allowed sync batches) cost about 15% of a scattered 1 GiB pull.
        queue = os.environ.get(TCP_QUEUE_VARIABLE, "")
        queue = max(1, int(queue)) if queue.isdigit() else TCP_QUEUE_DEFAULT
        self._in_flight = max(1, min(IN_FLIGHT_PER_PAIR, queue // 2))
        _live.add(self)

    @property
    def alive(self):
        """In-process engines live as long as the process: only a data-plane helper dies alone."""
        return True

    def expose(self, regions):
        """A RegisteredWindow: each (addr, nbytes) registered with every engine for one transfer,
        so the peer writes the memory itself; None, with nothing left registered, on failure."""
        return RegisteredWindow(self, regions) if self.register_regions(regions) else None

    def register_regions(self, regions):
        """Registers each (addr, nbytes) with every engine; True on success (the caller then
        unregister_regions() the same regions), False with nothing left registered.

        A Mooncake registration lets any peer that reaches the engines read and write the region
        (its TCP transport checks only that an address lies in one), so a region stays registered
        only while a transfer needs it: transfers that register one region at once count it."""
        done = []
        with self._lock:
            for region in regions:
                if region not in self._exposed and not self._register(region):
                    self._withdraw_locked(done)
                    return False
                self._exposed[region] = self._exposed.get(region, 0) + 1
                done.append(region)
        return True

    def unregister_regions(self, regions):
        """Ends one register_regions() of `regions`: unregistered once no transfer needs them."""
        with self._lock:
            self._withdraw_locked(regions)

    def _register(self, region):
        address, nbytes = region
        for index, engine in enumerate(self._engines):
            status = engine.register_memory(address, nbytes)
            if status != 0:
                log.warning("Mooncake refused to register %d bytes at %#x: %d", nbytes, address, status)
                for registered in self._engines[:index]:
                    registered.unregister_memory(address)
                return False
        return True

    def _withdraw_locked(self, regions):
        for region in regions:
            count = self._exposed.get(region, 0) - 1
            if count > 0:
                self._exposed[region] = count
            elif count == 0:
                del self._exposed[region]
                for engine in self._engines:
                    engine.unregister_memory(region[0])

    def write(self, peer, local_addrs, remote_addrs, lengths):
        """Writes our memory into the peer's exposed memory; 0 on success, as Mooncake's status.
        A failure, a time-out or an exception (Mooncake raises on some answers of a broken peer)
        may leave batches in flight: these engines are then marked failed for good, and never
        handed to another agent."""
        try:
            result = self._write(peer, local_addrs, remote_addrs, lengths)
        except Exception as error:
            log.warning("Mooncake write to %s raised %s: %s", peer, type(error).__name__, error)
            result = -1
        if result != 0:
            self.failed = True
        return result

    def _write(self, peer, local_addrs, remote_addrs, lengths):
        # The hot path of every pull and push: each segment is one Mooncake batch.
        peers = peer.split(",")
        pairs = [(engine, peers[index % len(peers)]) for index, engine in enumerate(self._engines)]
        runs = shares(local_addrs, remote_addrs, lengths, len(pairs), MIN_SHARE_BYTES)
        if len(runs) == 1 and len(runs[0][2]) <= self._in_flight:
            # Too small to share: Mooncake's own polling is as short as the transfer, and waits
            # less than our pauses (a 4 KiB read took 73 us so, 190 us through the loop below).
            engine, peer_engine = pairs[0]
            return engine.batch_transfer_sync_write(peer_engine, *runs[0])
        deadline = time.monotonic() + transfer_timeout_s(sum(lengths))
        lanes = []      # [engine, peer engine, submit, run, next segment, batches in flight]
        for (engine, peer_engine), run in zip(pairs, runs):
            lanes.append([engine, peer_engine, engine.batch_transfer_async_write, run, 0, collections.deque()])
        failed = False
        pause = FIRST_PAUSE_S
        while True:
            progressed = busy = False
            for lane in lanes:
                engine, peer_engine, submit, (run_local, run_remote, run_lengths), position, in_flight = lane
                while in_flight:
                    state = engine.transfer_check_status(in_flight[0])
                    if state == 0:
                        break
                    # 1 completed, -1 failed (Mooncake freed the batch), -2 timed out (left to Mooncake).
                    in_flight.popleft()
                    progressed = True
                    failed = failed or state != 1
                while not failed and position < len(run_lengths) and len(in_flight) < self._in_flight:
                    batch = submit(peer_engine, [run_local[position]], [run_remote[position]], [run_lengths[position]])
                    if batch == 0:
                        failed = True
                        break
                    in_flight.append(batch)
                    position += 1
                lane[4] = position
                busy = busy or bool(in_flight)
            if not busy:
                return -1 if failed else 0
            if time.monotonic() > deadline:
                log.warning("Mooncake write to %s timed out with %d batches in flight", peer,
                            sum(len(lane[5]) for lane in lanes))
                return -1
            pause = FIRST_PAUSE_S if progressed else min(2 * pause, LAST_PAUSE_S)
            time.sleep(pause)

    def close_regions(self):
        """Unregisters every region still exposed (the engines stay up)."""
        with self._lock:
            for address, _ in self._exposed:
                for engine in self._engines:
                    engine.unregister_memory(address)
            self._exposed.clear()

    def close(self):
        """Unregisters every region and stops the engines (Mooncake takes about 1 s to stop one's
        threads, holding the GIL, so the two of a tcp MooncakeEngines take 2 s)."""
        self.close_regions()
        self._engines = []
        _live.discard(self)


class RegisteredWindow:
    """One transfer's regions registered with in-process MooncakeEngines: the peer reads and
    writes them where they are, so addresses are the cache's own and nothing is copied. The
    interface of _dataplane.MirrorWindow, which the transfer layer uses."""

    def __init__(self, engines, regions):
        self._engines = engines
        self.regions = [tuple(region) for region in regions]
        self._open = True

    @staticmethod
    def address(addr):
        """The address the peer writes for `addr` of the regions: the same one."""
        return addr

    @staticmethod
    def stage(extents):
        """Nothing to stage: the peer writes the memory itself."""
        return True

    @staticmethod
    def keep(written):
        """Nothing to copy: `written` is already in place."""

    def close(self, written=()):
        """Unregisters the regions (once); `written` is already in place."""
        if self._open:
            self._open = False
            self._engines.unregister_regions(self.regions)


def _fresh_module_lock_in_child():
    """A thread of the parent may have held the lock at the fork."""
    global _module_lock
    _module_lock = threading.Lock()


def _close_handshake_listeners_in_child():
    """The child's copies of every in-process engine's handshake listener go, so that a port the
    parent stops listening on is refused at once, not left to a child that never answers. Their
    data ports stay: Mooncake does not say which they are (docs/architecture.md, "Fork")."""
    close_listeners_in_child({port for engines in list(_live) for port in engines.handshake_ports})


os.register_at_fork(after_in_child=_fresh_module_lock_in_child)
os.register_at_fork(after_in_child=_close_handshake_listeners_in_child)
