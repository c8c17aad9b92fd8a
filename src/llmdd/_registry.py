"""The cache registry: which caches an engine holds, by id and by key, and what still holds them.

LLM-DataDist v2 (CANN's cache manager) names caches two ways: by id, the reference the caller
drops with deallocate_cache, and by keys. A CacheKey (key i names batch entry i) is a reference
too, dropped by a remote pull or remove_cache_key; the memory is freed only when no reference is
left. A BlocksCacheKey only names a blocks cache for pulls: deallocating the cache drops it.
Registered caches are the caller's memory: unregister forgets them, with their keys, and frees
nothing; deallocate and remove_cache_key leave them alone. As in v2, releasing what is not there
succeeds. Within one engine a key is known by its request (or prefix) id and model id: its
cluster id names the prompt cluster a decoder pulls from.

Every face of an engine shares one registry per initialization (the engine makes it on first need,
LlmDataDist._registry()): the drop-in's cache managers, the C++ API's transfer calls and the
transfer service that serves peers. Caches made through the registry carry what CANN's Python
package adds (keys, blocks or whole cache, remote access); any other live cache of the engine is known by id with the engine's own rules, to its
peers only when the engine serves them (it listens, or opened its caches to remote access). The
engine underneath knows only ids (LlmDataDist.AllocateCache, RegisterKvCache, pin, _layout_by_id).
A lock makes each operation whole: the transfer layer's threads read the registry while the
caller's thread changes it.

Interface the transfer layer relies on: entry(cache_id), entry_of(cache), find(key), holding(extents),
pin(cache_id), release_key(key) and remote_cache_accessible.
"""
import bisect
from _thread import allocate_lock  # threading's own lock, without importing threading
from _weakref import ref as weak_ref  # weakref's own ref, without importing weakref (import cost)

from ._cache_layout import CacheLayout
from ._desc import enum_values

# Plain values (the engine's statuses compare equal to them), read without building LLMStatusCode.
_STATUSES = enum_values("LLMStatusCode")
_SUCCESS, _PARAM_INVALID, _FAILED = (_STATUSES[name] for name in ("LLM_SUCCESS", "LLM_PARAM_INVALID", "LLM_FAILED"))


class CacheEntry(CacheLayout):
    """What a transfer needs of one cache: its layout, and the rules of its kind.

    is_blocks_cache: True or False for a cache made by CANN's Python rules, where blocks caches and
    whole caches are apart; None for a cache of the C++ API, where a block is a batch entry of any
    cache. remote_accessible: whether a peer may write into it."""

    __slots__ = ("is_blocks_cache", "remote_accessible")

    def __init__(self, layout, is_blocks_cache, remote_accessible):
        super().__init__(*(getattr(layout, name) for name in CacheLayout.__slots__))
        self.is_blocks_cache = is_blocks_cache
        self.remote_accessible = remote_accessible


class _Record:
    __slots__ = ("entry", "id_held", "names")

    def __init__(self, entry):
        self.entry = entry
        self.id_held = True     # the id's reference, dropped by deallocate
        self.names = set()      # the local names of the keys naming this cache

    def referenced(self):
        # A blocks cache's key only names it (pulls read its blocks again and again).
        return self.id_held or (bool(self.names) and not self.entry.is_blocks_cache)


class _Pin:
    """Holds a cache's memory while a `with` block runs."""

    def __init__(self, holder, entry):
        self._holder = holder
        self._entry = entry

    def __enter__(self):
        return self._entry

    def __exit__(self, *exc_info):
        self._holder = None
        return False


class CacheRegistry:
    """One initialization of an engine: its caches by id and key, with their references. It holds
    the engine weakly: an engine dropped without Finalize is not kept alive by its peers' links."""

    def __init__(self, engine, serves_by_id=False, remote_cache_accessible=False):
        """serves_by_id: whether peers may name the engine's other caches by id (it listens, or
        opened them to remote access; SetRole changes it); remote_cache_accessible: the engine's
        llm.EnableRemoteCacheAccessible, under which peers may write into those and into the caches
        it allocates, and a transfer's local cache must be remote-accessible (as in v2)."""
        self._engine_ref = weak_ref(engine)
        self.initialization = engine._initialization
        self.serves_by_id = serves_by_id
        self.remote_cache_accessible = remote_cache_accessible
        self._records = {}      # cache_id -> _Record
        self._names = {}        # local name -> (cache_id, batch index it names)
        self._lock = allocate_lock()

    def _live_engine(self):
        """The engine while this registry's initialization of it lasts, else None."""
        engine = self._engine_ref()
        if engine is None or not engine.initialized or engine._initialization != self.initialization:
            return None
        return engine

    def _engine(self):
        """The engine while this registry's initialization lasts; ValueError after (the answer for
        a cache that is not held)."""
        engine = self._live_engine()
        if engine is None:
            raise ValueError("the engine's initialization these caches belonged to is over")
        return engine

    def allocate(self, desc, cache, keys=(), *, is_blocks_cache):
        """AllocateCache into `cache`, named by its id and by each key. A key already naming a
        cache, a key given twice, or more keys than batch entries is LLM_PARAM_INVALID (as in
        v2's cache manager), and nothing is allocated. Remote-accessible in the engine's
        remote-access mode: v2 makes every allocation so (cache_manager.cc, CreateCacheEntry)."""
        with self._lock:
            engine = self._live_engine()
            status = self._check_keys(desc, keys, bound_is_invalid=True) if engine is not None else _FAILED
            if status == _SUCCESS:
                status = engine.AllocateCache(desc, cache)
            if status == _SUCCESS:
                self._add(CacheEntry(engine._layout(cache), is_blocks_cache, self.remote_cache_accessible), keys)
            return status

    def register(self, desc, addrs, cache, keys=(), *, is_blocks_cache, remote_accessible):
        """RegisterKvCache of memory the caller owns, named by its id and by each key. A key naming
        another cache already is no refusal, as in v2 (only Allocate checks keys): a BlocksCacheKey
        then names the cache registered last, a CacheKey keeps naming the cache it named
        (cache_manager.cc, AddCacheIndices). A key given twice, or more keys than batch entries,
        is LLM_PARAM_INVALID."""
        with self._lock:
            engine = self._live_engine()
            status = self._check_keys(desc, keys, bound_is_invalid=False) if engine is not None else _FAILED
            if status == _SUCCESS:
                status = engine.RegisterKvCache(desc, addrs, cache)
            if status == _SUCCESS:
                self._add(CacheEntry(engine._layout(cache), is_blocks_cache, remote_accessible), keys)
            return status

    def deallocate(self, cache_id):
        """Drop the id's reference of an allocated cache: freed once no key holds it."""
        with self._lock:
            record = self._records.get(cache_id)
            if record is None or record.entry.registered or not record.id_held:
                return _SUCCESS
            record.id_held = False
            status = self._free_if_unreferenced(record)
            if status != _SUCCESS:
                record.id_held = True       # the runtime kept the memory: a retry may free it
            return status

    def unregister(self, cache_id):
        """Forget a registered cache and its keys; its memory stays the caller's."""
        with self._lock:
            record = self._records.get(cache_id)
            if record is None:
                return _SUCCESS
            if not record.entry.registered:
                return _PARAM_INVALID       # allocated caches are deallocated
            engine = self._live_engine()
            status = engine.UnregisterKvCache(cache_id) if engine is not None else _FAILED
            if status == _SUCCESS:
                self._forget(record)
            return status

    def release_key(self, key):
        """Drop a key's reference (remove_cache_key, or a pull that read it)."""
        with self._lock:
            name = key.local_name()
            named = self._names.get(name)
            if named is None or self._records[named[0]].entry.registered:
                return _SUCCESS
            record = self._records[named[0]]
            del self._names[name]
            record.names.discard(name)
            status = self._free_if_unreferenced(record)
            if status != _SUCCESS:
                self._names[name] = named
                record.names.add(name)
            return status

    def entry(self, cache_id):
        """The CacheEntry of a live cache of the engine, or None."""
        record = self._records.get(cache_id)
        if record is not None or not self.serves_by_id:
            return None if record is None else record.entry
        engine = self._live_engine()
        layout = None if engine is None else engine._layout_by_id(cache_id)
        return None if layout is None else CacheEntry(layout, None, self.remote_cache_accessible)

    def entry_of(self, cache):
        """The CacheEntry of a Cache object of the engine's (the C++ API's calls name their local
        cache so); ValueError for a cache the engine does not hold."""
        layout = self._engine()._layout(cache)
        record = self._records.get(layout.cache_id)
        return record.entry if record is not None else CacheEntry(layout, None, self.remote_cache_accessible)

    def find(self, key):
        """(CacheEntry, batch index) of the cache a key names, or None."""
        with self._lock:
            named = self._names.get(key.local_name())
            return None if named is None else (self._records[named[0]].entry, named[1])

    def holding(self, extents, remote_accessible=False):
        """For each (addr, nbytes) of `extents`, the CacheEntry one of whose regions holds it whole,
        or None; with remote_accessible, only caches a peer may write into count. Regions are
        sorted once a call, so a peer naming many addresses costs a binary search each."""
        with self._lock:
            spans = sorted(((start, start + nbytes, record.entry) for record in self._records.values()
                            if record.entry.remote_accessible or not remote_accessible
                            for start, nbytes in record.entry.regions), key=lambda span: span[:2])
        starts = [start for start, _, _ in spans]
        # Of the spans starting at or before each, the one reaching furthest: registrations may
        # overlap, and an extent lies whole in some span exactly when it lies in that one.
        furthest = []
        for index, (_, end, _) in enumerate(spans):
            furthest.append(index if not furthest or end > spans[furthest[-1]][1] else furthest[-1])
        found = []
        for addr, nbytes in extents:
            last = bisect.bisect_right(starts, addr) - 1
            span = spans[furthest[last]] if last >= 0 else None
            found.append(span[2] if span is not None and addr + nbytes <= span[1] else None)
        return found

    def pin(self, cache_id):
        """`with registry.pin(cache_id) as entry:` holds the cache's memory until the block
        ends (a deallocation meanwhile frees it after). ValueError for an unknown cache. A cache id
        names one cache only within an initialization, so that is checked again once it is held."""
        holder = self._engine().pin(cache_id)
        if self._live_engine() is None:
            raise ValueError("the engine's initialization these caches belonged to is over")
        return _Pin(holder, self.entry(cache_id))

    def _check_keys(self, desc, keys, bound_is_invalid):
        names = [name for name in (key.local_name() for key in keys) if name is not None]
        batch = desc.shape[0] if desc.shape else 0
        if len(keys) > batch or len(set(names)) != len(names):
            return _PARAM_INVALID
        return _PARAM_INVALID if bound_is_invalid and any(name in self._names for name in names) else _SUCCESS

    def _add(self, entry, keys):
        """A new cache's record, named by each of its keys: a blocks cache takes a name over from
        the cache it named (which stays held by its id); any other cache leaves such a name alone."""
        record = _Record(entry)
        self._records[entry.cache_id] = record
        for batch_index, key in enumerate(keys):
            name = key.local_name()
            if name is None:
                continue
            named = self._names.get(name)
            if named is not None:
                if not entry.is_blocks_cache:
                    continue
                self._records[named[0]].names.discard(name)
            self._names[name] = (entry.cache_id, batch_index)
            record.names.add(name)

    def _free_if_unreferenced(self, record):
        if record.referenced():
            return _SUCCESS
        engine = self._live_engine()
        status = engine.DeallocateCache(record.entry.cache_id) if engine is not None else _FAILED
        if status == _SUCCESS:
            self._forget(record)
        return status

    def _forget(self, record):
        for name in record.names:
            del self._names[name]
        del self._records[record.entry.cache_id]
