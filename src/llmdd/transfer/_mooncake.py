"""The one place llmdd touches Mooncake's Transfer Engine (`mooncake.engine`), imported on first use.

`import llmdd` and `import llmdd.transfer` never import Mooncake: it loads libibverbs and starts
nothing until a link needs an engine.
"""
import ctypes
import logging
import os
import threading

from .._datadist import LLMException
from .._desc import LLMStatusCode

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
# it) and never puts more than half of it in one batch call.
TCP_QUEUE_VARIABLE = "MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER"
TCP_QUEUE_DEFAULT = 8192

_module_lock = threading.Lock()
_module = None
_import_error = None


def engine_module():
    """mooncake.engine, imported once; LLMException(LLM_FEATURE_NOT_ENABLED) naming what to
    install when it cannot be."""
    global _module, _import_error
    with _module_lock:
        if _module is None and _import_error is None:
            os.environ.setdefault(TCP_QUEUE_VARIABLE, str(TCP_QUEUE_DEFAULT))
            try:
                import mooncake.engine as module
            except ImportError as error:
                _import_error = error
            else:
                if "MC_LOG_LEVEL" not in os.environ and "GLOG_minloglevel" not in os.environ:
                    _quiet_glog(module.__file__)
                _module = module
    if _module is None:
        raise LLMException(f"{INSTALL_HINT} (import mooncake.engine failed: {_import_error})",
                           LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
    return _module


def _quiet_glog(library_path):
    try:
        ctypes.c_int.in_dll(ctypes.CDLL(library_path), _GLOG_MINLOGLEVEL_SYMBOL).value = _QUIET_GLOG_LEVEL
    except (OSError, ValueError):
        log.debug("could not set glog's level in %s; Mooncake logs on stderr", library_path)


class Engine:
    """One Mooncake TransferEngine (P2P handshake, no metadata server) and the regions it has registered."""

    def __init__(self, host, protocol, device_name):
        module = engine_module()
        self._engine = module.TransferEngine()
        status = self._engine.initialize(host, "P2PHANDSHAKE", protocol, device_name)
        if status != 0:
            raise LLMException(f"Mooncake's TransferEngine.initialize({host!r}, 'P2PHANDSHAKE', {protocol!r}, "
                               f"{device_name!r}) answered {status}", LLMStatusCode.LLM_LINK_FAILED)
        # What a peer passes as target: Mooncake's P2P handshake listens on host:rpc_port.
        self.address = f"{host}:{self._engine.get_rpc_port()}"
        self._lock = threading.Lock()
        self._regions = {}   # start address -> nbytes, never overlapping
        queue = os.environ.get(TCP_QUEUE_VARIABLE, "")
        self.max_segments_per_call = max(1, int(queue) // 2) if queue.isdigit() else TCP_QUEUE_DEFAULT // 2

    def register(self, regions):
        """Registers each (addr, nbytes) not already inside a registered region; True on success.

        A region that overlaps a registered one without lying inside it means the old one's
        memory was freed and reused (live caches never overlap, and a cache in transfer is
        pinned), so the stale registration goes first: Mooncake refuses overlapping ones."""
        with self._lock:
            for address, nbytes in regions:
                if any(start <= address and address + nbytes <= start + size for start, size in self._regions.items()):
                    continue
                for start in [s for s, size in self._regions.items() if s < address + nbytes and address < s + size]:
                    self._engine.unregister_memory(start)
                    del self._regions[start]
                status = self._engine.register_memory(address, nbytes)
                if status != 0:
                    log.warning("Mooncake refused to register %d bytes at %#x: %d", nbytes, address, status)
                    return False
                self._regions[address] = nbytes
            return True

    def read(self, peer, local_addrs, remote_addrs, lengths):
        """One batch of reads from peer's memory into ours; Mooncake's status (0 is success)."""
        return self._engine.batch_transfer_sync_read(peer, local_addrs, remote_addrs, lengths)

    def write(self, peer, local_addrs, remote_addrs, lengths):
        return self._engine.batch_transfer_sync_write(peer, local_addrs, remote_addrs, lengths)

    def close_regions(self):
        """Unregisters every region (the engine stays up)."""
        with self._lock:
            for start in list(self._regions):
                self._engine.unregister_memory(start)
            self._regions.clear()

    def close(self):
        """Unregisters every region and stops the engine (Mooncake takes about 1 s to stop its threads)."""
        self.close_regions()
        self._engine = None
