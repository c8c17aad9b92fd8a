"""Registries with the CacheRegistry interface for llmdd.transfer's tests: LocalRegistry over numpy
memory, EngineRegistry over llmdd's own engine; and the keys and clusters a TransferAgent takes."""
import contextlib
import threading
from dataclasses import dataclass

import numpy

from support.patterns import memory


@dataclass(frozen=True)
class Entry:
    """The CacheEntry interface: what the registry knows of one cache."""
    cache_id: int
    num_tensors: int
    tensor_addrs: tuple
    tensor_bytes: int
    batch: int
    block_bytes: int
    placement: int
    is_blocks_cache: bool
    remote_accessible: bool
    regions: tuple


class LocalRegistry:
    """The CacheRegistry interface over numpy memory: one slab per cache (or one array per tensor
    when `per_tensor`), key references, pins that defer a deallocation until they end."""

    remote_cache_accessible = False   # transfers move any of its caches

    def __init__(self):
        self._lock = threading.Lock()
        self._next_id = 1
        self._entries = {}      # cache_id -> Entry
        self._memory = {}       # cache_id -> the numpy arrays behind it
        self._keys = {}         # key -> (cache_id, batch index)
        self._pins = {}         # cache_id -> count
        self._deallocated = set()

    def allocate(self, num_tensors, batch, block_bytes, blocks=False, keys=(), remote_accessible=False,
                 per_tensor=False):
        tensor_bytes = batch * block_bytes
        if per_tensor:
            arrays = [numpy.zeros(tensor_bytes, numpy.uint8) for _ in range(num_tensors)]
            addrs = tuple(a.ctypes.data for a in arrays)
            regions = tuple((a.ctypes.data, tensor_bytes) for a in arrays)
        else:
            slab = numpy.zeros(num_tensors * tensor_bytes, numpy.uint8)
            arrays = [slab]
            addrs = tuple(slab.ctypes.data + t * tensor_bytes for t in range(num_tensors))
            regions = ((slab.ctypes.data, slab.nbytes),)
        with self._lock:
            if any(key in self._keys for key in keys):
                raise ValueError("a key already names a cache")   # as CacheRegistry refuses it
            cache_id = self._next_id
            self._next_id += 1
            entry = Entry(cache_id, num_tensors, addrs, tensor_bytes, batch, block_bytes, 0, blocks,
                          remote_accessible, regions)
            self._entries[cache_id] = entry
            self._memory[cache_id] = arrays
            for index, key in enumerate(keys):
                self._keys[key] = (cache_id, 0 if blocks else index)
        return entry

    def tensor(self, cache_id, index):
        entry = self._entries[cache_id]
        arrays = self._memory[cache_id]
        if len(arrays) == entry.num_tensors and entry.num_tensors > 1:
            return arrays[index]
        return arrays[0][index * entry.tensor_bytes:(index + 1) * entry.tensor_bytes]

    def deallocate(self, cache_id):
        with self._lock:
            self._deallocated.add(cache_id)
            self._free_if_unheld(cache_id)

    def is_freed(self, cache_id):
        with self._lock:
            return cache_id not in self._entries

    def pin_count(self, cache_id):
        with self._lock:
            return self._pins.get(cache_id, 0)

    def _free_if_unheld(self, cache_id):
        held = self._pins.get(cache_id, 0) or any(c == cache_id for c, _ in self._keys.values())
        if cache_id in self._deallocated and not held and cache_id in self._entries:
            del self._entries[cache_id], self._memory[cache_id]

    # The CacheRegistry interface

    def entry(self, cache_id):
        with self._lock:
            return None if cache_id in self._deallocated else self._entries.get(cache_id)

    def find(self, key):
        with self._lock:
            found = self._keys.get(key)
            return None if found is None else (self._entries[found[0]], found[1])

    @contextlib.contextmanager
    def pin(self, cache_id):
        with self._lock:
            if cache_id not in self._entries:
                raise LookupError(f"cache {cache_id} does not exist")
            self._pins[cache_id] = self._pins.get(cache_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[cache_id] -= 1
                self._free_if_unheld(cache_id)

    def holding(self, extents, remote_accessible=False):
        with self._lock:
            entries = [entry for cache_id, entry in self._entries.items() if cache_id not in self._deallocated
                       and (entry.remote_accessible or not remote_accessible)]
        return [next((entry for entry in entries for start, nbytes in entry.regions
                      if start <= addr and addr + size <= start + nbytes), None) for addr, size in extents]

    def release_key(self, key):
        with self._lock:
            found = self._keys.pop(key, None)
            if found is not None:
                self._free_if_unheld(found[0])
        return 0


class EngineRegistry:
    """llmdd's own CacheRegistry over an initialized LlmDataDist, with the few extra calls the
    peer makes (allocate by shape, tensor bytes, is_freed), so the same tests run against it."""

    def __init__(self, cluster_id):
        import llmdd
        from llmdd._registry import CacheRegistry
        self._engine = llmdd.LlmDataDist(cluster_id, llmdd.LlmRole.kPrompt)
        assert self._engine.Initialize({"llm.DeviceId": "0"}) == llmdd.LLM_SUCCESS
        self._registry = CacheRegistry(self._engine)
        self._caches = {}
        self._memory = []   # the registered caches' memory, owned here as a caller owns it

    def __getattr__(self, name):   # entry, find, pin, release_key, deallocate: the registry's own
        return getattr(self._registry, name)

    def allocate(self, num_tensors, batch, block_bytes, blocks=False, keys=(), remote_accessible=False,
                 per_tensor=False):
        import llmdd
        desc = llmdd.CacheDesc(num_tensors, [batch, block_bytes], llmdd.DT_UINT8)
        cache = llmdd.Cache()
        if remote_accessible:
            # Only caller-owned (registered) caches are remote-accessible in LLM-DataDist v2.
            memory = [numpy.zeros(batch * block_bytes, numpy.uint8) for _ in range(num_tensors)]
            status = self._registry.register(desc, [m.ctypes.data for m in memory], cache, keys,
                                             is_blocks_cache=blocks, remote_accessible=True)
            self._memory.append(memory)
        else:
            status = self._registry.allocate(desc, cache, keys, is_blocks_cache=blocks)
        assert status == llmdd.LLM_SUCCESS, status
        self._caches[cache.cache_id] = cache
        return self._registry.entry(cache.cache_id)

    def tensor(self, cache_id, index):
        entry = self._registry.entry(cache_id)
        return memory(entry.tensor_addrs[index], entry.tensor_bytes)

    def is_freed(self, cache_id):
        return self._registry.entry(cache_id) is None

    def close(self):
        self._engine.Finalize()


def make_key(fields):
    """A drop-in key from its JSON form ({"kind": "cache" | "blocks" | "id", **its fields})."""
    from llmdd.llm_datadist import BlocksCacheKey, CacheKey, CacheKeyByIdAndIndex
    kind = fields.pop("kind")
    return {"cache": CacheKey, "blocks": BlocksCacheKey, "id": CacheKeyByIdAndIndex}[kind](**fields)


class Cluster:
    """What TransferAgent.link takes for a cluster."""

    def __init__(self, remote_cluster_id, remote_ip, remote_port, local_ip=None):
        self.remote_cluster_id = remote_cluster_id
        self.remote_role_type = 0
        self.remote_ip_infos = [(remote_ip, remote_port)]
        self.local_ip_infos = [(local_ip, 0)] if local_ip else []
