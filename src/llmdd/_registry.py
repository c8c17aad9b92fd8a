"""The cache registry: which caches an engine holds, by id and by key, and what still holds them.

LLM-DataDist v2 (CANN's cache manager) names caches two ways: by id, the reference the caller
drops with deallocate_cache, and by keys. A CacheKey (one per batch entry) is a reference too,
dropped by a remote pull or remove_cache_key; the memory is freed only when no reference is left.
A BlocksCacheKey only names a blocks cache for pulls: deallocating the cache drops it. Registered caches are the caller's memory: unregister forgets them, with their
keys, and frees nothing. The drop-in's cache managers and the transfer layer share one registry
per engine; the engine underneath knows only ids (LlmDataDist.AllocateCache, RegisterKvCache,
pin). A lock makes each operation whole: the transfer layer's listener thread reads the registry
while the caller's thread changes it.
"""
import threading
from contextlib import contextmanager

from ._datadist import Cache as _EngineCache
from ._desc import LLMStatusCode

# The engine's view of a cache's descriptor, whatever a drop-in Cache says its cache_desc is.
_engine_desc = _EngineCache.cache_desc.__get__


class CacheEntry:
    """What the registry knows of one cache: its layout, addresses and regions."""

    __slots__ = ("cache_id", "num_tensors", "tensor_addrs", "tensor_bytes", "batch", "block_bytes", "placement",
                 "is_blocks_cache", "remote_accessible", "registered", "regions")

    def __init__(self, cache, is_blocks_cache, registered, remote_accessible):
        desc = _engine_desc(cache)
        self.cache_id = cache.cache_id
        self.num_tensors = desc.num_tensors
        self.tensor_addrs = tuple(cache.tensor_addrs)
        self.tensor_bytes = desc.size
        self.batch = desc.shape[0]
        self.block_bytes = self.tensor_bytes // self.batch
        self.placement = int(desc.placement)
        self.is_blocks_cache = is_blocks_cache
        self.registered = registered
        self.remote_accessible = remote_accessible
        # One region a slab; a registered cache's tensors are one region each (design 3b).
        if registered:
            self.regions = tuple((address, self.tensor_bytes) for address in self.tensor_addrs)
        else:
            address, nbytes, _ = cache.region()
            self.regions = ((address, nbytes),)


class _Record:
    __slots__ = ("entry", "id_held", "keys")

    def __init__(self, entry):
        self.entry = entry
        self.id_held = True     # the id's reference, dropped by deallocate (or unregister)
        self.keys = set()       # the keys still naming this cache


class CacheRegistry:
    """One engine's caches by id and key, with their references."""

    def __init__(self, engine):
        self._engine = engine
        self._records = {}      # cache_id -> _Record
        self._keys = {}         # key -> (cache_id, batch index the key names)
        self._lock = threading.Lock()

    def allocate(self, desc, cache, keys=(), *, is_blocks_cache):
        """AllocateCache into `cache`, named by its id and by each key (key i names batch
        entry i; a BlocksCacheKey names the whole cache). A key that names a cache already is
        LLM_CACHE_KEY_ALREADY_EXIST, and nothing is allocated."""
        with self._lock:
            status = self._check_new_keys(keys)
            if status == LLMStatusCode.LLM_SUCCESS:
                status = self._engine.AllocateCache(desc, cache)
            if status == LLMStatusCode.LLM_SUCCESS:
                self._add(CacheEntry(cache, is_blocks_cache, False, False), keys)
            return status

    def register(self, desc, addrs, cache, keys=(), *, is_blocks_cache, remote_accessible):
        """RegisterKvCache of memory the caller owns, named by its id and by each key."""
        with self._lock:
            status = self._check_new_keys(keys)
            if status == LLMStatusCode.LLM_SUCCESS:
                status = self._engine.RegisterKvCache(desc, addrs, cache)
            if status == LLMStatusCode.LLM_SUCCESS:
                self._add(CacheEntry(cache, is_blocks_cache, True, remote_accessible), keys)
            return status

    def release_id(self, cache_id, registered):
        """Drop the id's reference: an allocated cache is freed once no key holds it; a
        registered one is forgotten at once, with its keys (its memory is the caller's).
        LLM_PARAM_INVALID when the cache is not of the kind `registered` says."""
        with self._lock:
            record = self._records.get(cache_id)
            if record is None or not record.id_held:
                return LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
            if record.entry.registered != registered:
                return LLMStatusCode.LLM_PARAM_INVALID
            if registered:
                status = self._engine.UnregisterKvCache(cache_id)
                if status == LLMStatusCode.LLM_SUCCESS:
                    self._forget(record)
                return status
            record.id_held = False
            status = self._free_if_unreferenced(record)
            if status != LLMStatusCode.LLM_SUCCESS:
                record.id_held = True       # the runtime kept the memory: a retry may free it
            return status

    def release_key(self, key):
        """Drop a key's reference (remove_cache_key, or a pull that read it)."""
        with self._lock:
            named = self._keys.pop(key, None)
            if named is None:
                return LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
            record = self._records[named[0]]
            record.keys.discard(key)
            status = self._free_if_unreferenced(record)
            if status != LLMStatusCode.LLM_SUCCESS:
                self._keys[key] = named
                record.keys.add(key)
            return status

    def entry(self, cache_id):
        """The CacheEntry of a cache the registry holds, or None."""
        record = self._records.get(cache_id)
        return None if record is None else record.entry

    def find(self, key):
        """(CacheEntry, batch index) of the cache a key names, or None."""
        with self._lock:
            named = self._keys.get(key)
            return None if named is None else (self._records[named[0]].entry, named[1])

    @contextmanager
    def pin(self, cache_id):
        """Hold a cache's memory until the block ends: a deallocate meanwhile frees it after."""
        holder = self._engine.pin(cache_id)
        try:
            yield self._records[cache_id].entry if cache_id in self._records else None
        finally:
            del holder

    def clear(self):
        """Forget everything (the engine was finalized, which freed it all)."""
        with self._lock:
            self._records.clear()
            self._keys.clear()

    def _check_new_keys(self, keys):
        if len(set(keys)) != len(keys) or any(key in self._keys for key in keys):
            return LLMStatusCode.LLM_CACHE_KEY_ALREADY_EXIST
        return LLMStatusCode.LLM_SUCCESS

    def _add(self, entry, keys):
        record = _Record(entry)
        self._records[entry.cache_id] = record
        for batch_index, key in enumerate(keys):
            self._keys[key] = (entry.cache_id, batch_index)
            record.keys.add(key)

    def _free_if_unreferenced(self, record):
        # A blocks cache's key only names it (pulls read its blocks again and again): the id
        # is its one reference.
        if record.id_held or (record.keys and not record.entry.is_blocks_cache):
            return LLMStatusCode.LLM_SUCCESS
        status = self._engine.DeallocateCache(record.entry.cache_id)
        if status == LLMStatusCode.LLM_SUCCESS:
            self._forget(record)
        return status

    def _forget(self, record):
        for key in record.keys:
            del self._keys[key]
        del self._records[record.entry.cache_id]
