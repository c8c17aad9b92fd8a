"""The keys that name caches, as values: what the registry indexes caches by and what a transfer
asks a peer for. The drop-in's CacheKey, BlocksCacheKey and CacheKeyByIdAndIndex are these with
CANN's argument checks; the C++ API's CacheIndex becomes an IdKey; the control protocol carries
them as their KIND and FIELDS."""
from ._limits import INVALID_ID


class _Key:
    """A value, equal and hashable by its kind and fields (a drop-in CacheKey equals the RequestKey
    a peer's request names), immutable, so caches can be indexed by it."""

    __slots__ = ()
    KIND = None             # the key's kind on the wire
    FIELDS = ()             # its fields, in the order the constructor takes them
    _shown_fields = None    # the fields repr shows, where CANN's order differs from FIELDS

    def __init__(self, *values):
        if len(values) != len(self.FIELDS):
            raise TypeError(f"{type(self).__name__} takes {len(self.FIELDS)} values, got {len(values)}")
        for name, value in zip(self.FIELDS, values):
            object.__setattr__(self, name, value)

    def __reduce__(self):
        # Rebuilt through _Key.__init__ (the fields are checked values already): a key pickles and
        # copies, as CANN's do, although it cannot be assigned to.
        return (_rebuild_key, (type(self), self._values()))

    def _values(self):
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable: {name} cannot be set")

    def __repr__(self):
        shown = ", ".join(f"{name}={getattr(self, name)}" for name in self._shown_fields or self.FIELDS)
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other):
        return isinstance(other, _Key) and other.KIND == self.KIND and other._values() == self._values()

    def __hash__(self):
        return hash((self.KIND, self._values()))


class RequestKey(_Key):
    """A cache by request (or by prefix) on a cluster: CANN's CacheKey. Its id names batch entry
    i of the cache it was allocated for with."""

    __slots__ = FIELDS = ("cluster_id", "req_id", "model_id", "prefix_id")
    KIND = "cache"
    _shown_fields = ("cluster_id", "req_id", "prefix_id", "model_id")

    def local_name(self):
        """What names its cache within one engine (the cluster id names the engine): ("prefix",
        prefix id, model id), ("req", req id, model id), or None for a key that only holds a
        batch entry's place."""
        if self.prefix_id != INVALID_ID:
            return ("prefix", self.prefix_id, self.model_id)
        return None if self.req_id == INVALID_ID else ("req", self.req_id, self.model_id)


class BlocksKey(_Key):
    """A blocks cache on a cluster: CANN's BlocksCacheKey."""

    __slots__ = FIELDS = ("cluster_id", "model_id")
    KIND = "blocks"

    def local_name(self):
        return ("blocks", self.model_id)


class IdKey(_Key):
    """A cache by id and batch index on a cluster: CANN's CacheKeyByIdAndIndex, the C++ API's CacheIndex."""

    __slots__ = FIELDS = ("cluster_id", "cache_id", "batch_index")
    KIND = "id"

    def local_name(self):
        return None   # an id names a cache by itself, not through the registry's names


def _rebuild_key(key_type, values):
    key = key_type.__new__(key_type)
    _Key.__init__(key, *values)
    return key


KEY_TYPES = {key_type.KIND: key_type for key_type in (RequestKey, BlocksKey, IdKey)}
