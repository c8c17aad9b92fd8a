"""The same-host path: engines on one host move a transfer's bytes through the runtime's IPC
memory, as CANN does within a node, instead of through Mooncake.

The side that receives the bytes exports its destination for the sending side's pid only
(aclrtIpcMemGetExportKey, aclrtIpcMemSetImportPid); the sender imports the keys, copies device to
device from its own memory into them, and closes its imports; the receiver then closes the
exports. As with Mooncake, a destination is exposed for one transfer, to the one process that
writes it, and a pull's source is never exposed. Memory the runtime cannot export (in the host
runtime, allocations under 1 MiB and memory llmdd did not allocate) takes the network path.
"""
import bisect
import logging
import os
import weakref

from .._datadist import SIMULATED
from .._desc import LLMStatusCode

log = logging.getLogger("llmdd.transfer")

NOT_SHARED = "none"   # the host token of a side that takes the network path only
# The host runtime exports whole 4 KiB pages (docs/facts.md section 10). A region that does not
# start and end on one takes the network path: exporting the pages around it would hand the peer
# a neighbouring cache's bytes too.
EXPORT_PAGE_BYTES = 4096
_SUCCESS = LLMStatusCode.LLM_SUCCESS


def host_token():
    """What two sides compare to know they share IPC memory: this boot of this host, and the pid
    namespace (a pid must name the same process to both)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot_id:
            boot = boot_id.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return NOT_SHARED


def link_fields(same_host):
    """The `host` and `pid` a side sends in LINK or LINK_REPLY (same_host: its SameHostMemory,
    or None when it takes the network path only)."""
    if same_host is None:
        return {"host": NOT_SHARED, "pid": 0}
    return {"host": same_host.host, "pid": same_host.pid}


def shared_pid(own, peer):
    """The peer's pid when it shares this host's IPC memory (both link_fields), else 0. Two
    engines of one process copy nothing through it: the runtime refuses a self-import."""
    if own["host"] == NOT_SHARED or peer["host"] != own["host"] or peer["pid"] in (0, own["pid"]):
        return 0
    return peer["pid"]


class SameHostMemory:
    """An engine's IPC memory calls, for its transfer service. The engine is held weakly: the
    service must not keep it alive, and once it is gone nothing is exported, imported or copied."""

    def __init__(self, engine):
        self._engine = weakref.ref(engine)
        status, pid = engine._ipc_pid()
        self.pid = pid if status == _SUCCESS else 0
        # A side writes into what its peer exported only up to what the runtime says the import
        # holds, never what the peer claims. ACL does not say, so its build takes the network
        # path (docs/security.md).
        self.host = host_token() if self.pid and SIMULATED else NOT_SHARED

    def export(self, regions, peer_pid):
        """[[start, nbytes, key], ...] exporting each region for peer_pid only, or None (nothing
        left exported) when the runtime refuses one or a region is not whole pages."""
        engine = self._engine()
        if engine is None or any(address % EXPORT_PAGE_BYTES or nbytes % EXPORT_PAGE_BYTES
                                 for address, nbytes in regions):
            return None
        exported = []
        for address, nbytes in regions:
            status, key = engine._ipc_export(address, nbytes, peer_pid)
            if status != _SUCCESS:
                self.close([key for _, _, key in exported])
                return None
            exported.append([address, nbytes, key])
        return exported

    def close(self, keys):
        engine = self._engine()
        for key in keys:
            status = LLMStatusCode.LLM_FAILED if engine is None else engine._ipc_close(key)
            if status != _SUCCESS:
                log.warning("closing IPC memory %s answered %s", key, status)

    def imported(self, exported):
        """(LLM_SUCCESS, the peer's exported regions mapped here: an ImportedRegions), or (a
        status, None) with nothing left imported: LLM_FAILED when the runtime refuses one,
        LLM_PARAM_INVALID when one holds fewer bytes than the peer claims or overlaps another."""
        engine = self._engine()
        if engine is None:
            return LLMStatusCode.LLM_FAILED, None
        regions = []
        for start, nbytes, key in sorted(exported):
            status, address, held = engine._ipc_import(key)
            if status != _SUCCESS:
                self.close(key for _, _, key, _ in regions)
                return LLMStatusCode.LLM_FAILED, None
            regions.append((start, nbytes, key, address))
            if held < nbytes or (len(regions) > 1 and regions[-2][0] + regions[-2][1] > start):
                self.close(key for _, _, key, _ in regions)
                return LLMStatusCode.LLM_PARAM_INVALID, None
        return _SUCCESS, ImportedRegions(self, regions)

    def copy(self, dst_addrs, src_addrs, lengths):
        engine = self._engine()
        return engine is not None and engine._ipc_copy(dst_addrs, src_addrs, lengths) == _SUCCESS


class ImportedRegions:
    """A peer's exported regions mapped into this process: addresses translated from the peer's
    to ours, only inside a region."""

    def __init__(self, memory, regions):
        self._memory = memory
        self._regions = regions   # sorted (peer's start, nbytes, key, our address)
        self._starts = [start for start, _, _, _ in regions]

    def translated(self, addrs, lengths):
        """Our addresses of the peer's segments, or None when one leaves every region."""
        ours = []
        for address, length in zip(addrs, lengths):
            index = bisect.bisect_right(self._starts, address) - 1
            if index < 0:
                return None
            start, nbytes, _, mapped = self._regions[index]
            if address + length > start + nbytes:
                return None
            ours.append(mapped + address - start)
        return ours

    def close(self):
        self._memory.close(key for _, _, key, _ in self._regions)
        self._regions = []
