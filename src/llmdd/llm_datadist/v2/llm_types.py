"""CANN's v2/llm_types module: Placement, CacheDesc, Cache/KvCache, the cache keys, MemInfo, the
memory and registration enums and the transfer configurations, with the argument checks of CANN's
Python package (docs/facts.md section 6)."""
from abc import ABC, abstractmethod
from enum import Enum, IntEnum

from ... import _cache_keys, _datadist, _desc
from ..._limits import INT32, INT64, INVALID_ID, UINT32, UINT64
from ..._transfer_types import REGISTER_MEMORY_STATUSES
from ..data_type import DataType
from ..status import qualified_name
from ..utils.utils import (
    check_int,
    check_ints,
    check_layer_range,
    check_not_none,
    check_sequence,
    check_type,
    checked_property,
    require,
)

_PLACEMENTS = _desc.enum_values("CachePlacement")


class Placement(IntEnum):
    HOST = _PLACEMENTS["HOST"]
    DEVICE = _PLACEMENTS["DEVICE"]

    __str__ = qualified_name


class RegisterMemStatus(Enum):
    OK = REGISTER_MEMORY_STATUSES["OK"]
    PREPARING = REGISTER_MEMORY_STATUSES["PREPARING"]
    FAILED = REGISTER_MEMORY_STATUSES["FAILED"]


class Memtype(Enum):
    MEM_TYPE_DEVICE = 0
    MEM_TYPE_HOST = 1


class CacheDesc(_desc.CacheDesc):
    """CANN's Python CacheDesc: checked arguments, batch and sequence-length dims; the engine
    reads the same fields."""

    def __init__(self, num_tensors, shape, data_type, placement=Placement.DEVICE, batch_dim_index=0,
                 seq_len_dim_index=-1, kv_tensor_format=None):
        check_int("num_tensors", num_tensors, UINT32)
        check_sequence("shape", shape, int)
        check_type("data_type", data_type, DataType)
        check_type("placement", placement, Placement)
        check_int("batch_dim_index", batch_dim_index)
        check_int("seq_len_dim_index", seq_len_dim_index, INT32)
        if kv_tensor_format is not None:
            check_type("kv_tensor_format", kv_tensor_format, str)
        require(0 <= batch_dim_index < len(shape), f"batch_dim_index {batch_dim_index} is outside [0, {len(shape)})")
        require(seq_len_dim_index == -1 or 0 <= seq_len_dim_index < len(shape),
                f"seq_len_dim_index {seq_len_dim_index} is neither -1 nor in [0, {len(shape)})")
        check_ints("shape", shape, INT64)
        super().__init__(num_tensors, shape, data_type.value, placement.value)
        self.batch_dim_index = batch_dim_index
        self.seq_len_dim_index = seq_len_dim_index
        self.kv_tensor_format = kv_tensor_format

    @property
    def data_type(self):
        return DataType(_desc.CacheDesc.data_type.__get__(self))

    @property
    def placement(self):
        return Placement(_desc.CacheDesc.placement.__get__(self))

    @property
    def batch_dim(self):
        return self.batch_dim_index

    @property
    def batch_size(self):
        return self.shape[self.batch_dim_index]

    def update_dim(self, dim_index, dim_value):
        """Set dim `dim_index` of the shape to `dim_value`."""
        shape = self.shape
        check_int("dim_index", dim_index, (-len(shape), len(shape) - 1))
        shape[dim_index] = check_int("dim_value", dim_value, INT64)
        self.shape = shape

    def __reduce__(self):
        return (CacheDesc, (self.num_tensors, self.shape, self.data_type, self.placement, self.batch_dim_index,
                            self.seq_len_dim_index, self.kv_tensor_format))

    def __repr__(self):
        return (f"CacheDesc(num_tensors={self.num_tensors}, shape={self.shape}, data_type={self.data_type}, "
                f"placement={self.placement}, batch_dim_index={self.batch_dim_index}, "
                f"seq_len_dim_index={self.seq_len_dim_index}, kv_tensor_format={self.kv_tensor_format})")


class Cache(_datadist.Cache):
    """A v2 cache: cache_id, cache_desc (as it was given), tensor_addrs, is_blocks_cache.
    Made by the cache manager or create_cpu_cache, not by hand."""

    _requested_desc = None
    _is_blocks_cache = False

    @classmethod
    def create_cpu_cache(cls, cache_desc, addrs):
        """A host cache over memory the caller owns, for swaps; CANN makes it a blocks cache."""
        check_type("cache_desc", check_not_none("cache_desc", cache_desc, "placement"), CacheDesc)
        check_ints("addrs", addrs, UINT64, list)
        require(cache_desc.placement == Placement.HOST, "create_cpu_cache needs a cache_desc of placement HOST")
        require(cache_desc.num_tensors == len(addrs),
                f"cache_desc has {cache_desc.num_tensors} tensors but {len(addrs)} addrs were given")
        cache = cls()
        cache.cache_desc = cache_desc
        cache.tensor_addrs = addrs
        cache._is_blocks_cache = True
        return cache

    @property
    def cache_desc(self):
        if self._requested_desc is not None:
            return self._requested_desc
        return _datadist.Cache.cache_desc.__get__(self)

    @cache_desc.setter
    def cache_desc(self, desc):
        _datadist.Cache.cache_desc.__set__(self, desc)
        self._requested_desc = desc

    @property
    def is_blocks_cache(self):
        return self._is_blocks_cache

    def __str__(self):
        return (f"Cache(cache_id={self.cache_id}, num_tensor_addrs={len(self.tensor_addrs)}, "
                f"is_blocks_cache={self._is_blocks_cache})")


class KvCache(Cache):
    """A v1 cache: its addresses per device (llmdd's engine has one device), none once
    kv_cache_manager.deallocate_cache released it (v1's rule, whatever its keys still hold)."""

    _deallocated = False

    @property
    def per_device_tensor_addrs(self):
        return [] if self._deallocated else [self.tensor_addrs]


def _key_arguments(kind, args, kwargs, positional, required):
    """CANN's key arguments: positionally in `positional` order or by keyword, `prompt_cluster_id`
    as another name of `cluster_id`; a missing, repeated or unknown one is LLM_PARAM_INVALID."""
    require(len(args) + len(kwargs) <= len(positional), f"{kind} takes at most {len(positional)} arguments")
    given = dict(zip(positional, args))
    for name, value in kwargs.items():
        require(name in positional or name == "prompt_cluster_id", f"{kind}: Unsupported argument {name!r}")
        name = "cluster_id" if name == "prompt_cluster_id" else name
        require(name not in given, f"{kind}: {name} is given twice")
        given[name] = value
    for name in required:
        require(name in given, f"{kind}: {name} is required"
                + (" (or prompt_cluster_id)" if name == "cluster_id" else ""))
    return given


class CacheKey(_cache_keys.RequestKey):
    """A cache by request (or prefix) on a cluster: CacheKey(cluster_id, req_id, model_id=0,
    prefix_id=2**64-1); cluster_id may be given as prompt_cluster_id."""

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        given = _key_arguments("CacheKey", args, kwargs, self.FIELDS, ("cluster_id", "req_id"))
        super().__init__(*(check_int(name, given.get(name, INVALID_ID if name == "prefix_id" else 0), UINT64)
                           for name in self.FIELDS))

    @property
    def prompt_cluster_id(self):
        return self.cluster_id


class BlocksCacheKey(_cache_keys.BlocksKey):
    """A blocks cache on a cluster: BlocksCacheKey(cluster_id, model_id=0); cluster_id may be given
    as prompt_cluster_id."""

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        given = _key_arguments("BlocksCacheKey", args, kwargs, self.FIELDS, ("cluster_id",))
        super().__init__(check_int("cluster_id", given["cluster_id"], UINT64),
                         check_int("model_id", given.get("model_id", 0), UINT64))

    @property
    def prompt_cluster_id(self):
        return self.cluster_id


class CacheKeyByIdAndIndex(_cache_keys.IdKey):
    """A remote cache by id and batch index: CacheKeyByIdAndIndex(cluster_id, cache_id, batch_index=0)."""

    __slots__ = ()

    def __init__(self, cluster_id, cache_id, batch_index=0):
        super().__init__(check_int("cluster_id", cluster_id, UINT64), check_int("cache_id", cache_id, INT64),
                         check_int("batch_index", batch_index, UINT32))


def is_valid_id(req_or_prefix_id):
    return 0 <= req_or_prefix_id < INVALID_ID


def check_cache_key(cache_key):
    """A CacheKey names a request or a prefix: exactly one of req_id and prefix_id is valid."""
    req_valid, prefix_valid = is_valid_id(cache_key.req_id), is_valid_id(cache_key.prefix_id)
    require(req_valid or prefix_valid, f"{cache_key!r} has neither a valid req_id nor a valid prefix_id")
    require(not (req_valid and prefix_valid), f"{cache_key!r} has both a valid req_id and a valid prefix_id")


class MemInfo:
    """A memory region: its Memtype, address and size."""

    __slots__ = ("_mem_type", "_addr", "_size")

    def __init__(self, mem_type, addr, size):
        self._mem_type = check_type("mem_type", mem_type, Memtype)
        self._addr = check_int("addr", addr)
        self._size = check_int("size", size)

    mem_type = property(lambda self: self._mem_type)
    addr = property(lambda self: self._addr)
    size = property(lambda self: self._size)

    def __repr__(self):
        return f"MemInfo(mem_type={self._mem_type}, addr={self._addr}, size={self._size})"


class LayerSynchronizer(ABC):
    """Implemented by the caller of transfer_cache_async: wait until a layer is computed."""

    @abstractmethod
    def synchronize_layer(self, layer_index, timeout_in_millis):
        """Block until layer `layer_index` is computed; True on success."""


class TransferConfig:
    """Where transfer_cache_async writes: a cluster, its addresses, the source layers and batch index."""

    __slots__ = ("_dst_cluster_id", "_dst_addrs", "_src_layer_range", "_src_batch_index", "dst_layer_range")

    def __init__(self, dst_cluster_id, dst_addrs, src_layer_range=None, src_batch_index=0):
        self.dst_cluster_id = dst_cluster_id
        self.dst_addrs = dst_addrs
        self.src_layer_range = src_layer_range
        self.src_batch_index = src_batch_index
        self.dst_layer_range = None

    dst_cluster_id = checked_property("dst_cluster_id", lambda name, value: check_int(name, value, UINT64))
    dst_addrs = checked_property("dst_addrs", lambda name, value: check_ints(name, value, UINT64))
    src_layer_range = checked_property("src_layer_range", check_layer_range)
    src_batch_index = checked_property("src_batch_index", lambda name, value: check_int(name, value, UINT32))

    def __repr__(self):
        return (f"TransferConfig(dst_cluster_id={self._dst_cluster_id}, dst_addrs={self._dst_addrs}, "
                f"src_layer_range={self._src_layer_range}, src_batch_index={self._src_batch_index})")


class TransferWithCacheKeyConfig:
    """Where transfer_cache_async writes, by key: a BlocksCacheKey or CacheKeyByIdAndIndex, source
    and destination layers of equal length, and a source batch index (0 for blocks)."""

    __slots__ = ("_cache_key", "_src_layer_range", "_dst_layer_range", "_src_batch_index", "dst_cluster_id")

    def __init__(self, cache_key, src_layer_range, dst_layer_range, src_batch_index=0):
        self._cache_key = check_type("cache_key", cache_key, (BlocksCacheKey, CacheKeyByIdAndIndex))
        # Both ranges are required here, unlike in their setters.
        self._src_layer_range = check_layer_range("src_layer_range", check_type("src_layer_range", src_layer_range,
                                                                                range))
        self._dst_layer_range = check_layer_range("dst_layer_range", check_type("dst_layer_range", dst_layer_range,
                                                                                range))
        require(len(src_layer_range) == len(dst_layer_range),
                "src_layer_range and dst_layer_range must have the same length")
        self._src_batch_index = 0
        self.src_batch_index = src_batch_index
        self.dst_cluster_id = cache_key.cluster_id

    cache_key = checked_property("cache_key",
                                 lambda name, value: check_type(name, value, (BlocksCacheKey, CacheKeyByIdAndIndex)))
    src_layer_range = checked_property("src_layer_range", check_layer_range)
    dst_layer_range = checked_property("dst_layer_range", check_layer_range)

    @property
    def src_batch_index(self):
        return self._src_batch_index

    @src_batch_index.setter
    def src_batch_index(self, src_batch_index):
        check_int("src_batch_index", src_batch_index, UINT32)
        require(not (isinstance(self._cache_key, BlocksCacheKey) and src_batch_index != 0),
                "src_batch_index must be 0 for a BlocksCacheKey")
        self._src_batch_index = src_batch_index

    def __repr__(self):
        return (f"TransferWithCacheKeyConfig(cache_key={self._cache_key}, src_layer_range={self._src_layer_range}, "
                f"dst_layer_range={self._dst_layer_range}, src_batch_index={self._src_batch_index})")


class CacheTask:
    """What transfer_cache_async returns: wait for the whole transfer or for each destination's status."""

    __slots__ = ("_task",)

    def __init__(self, transfer_async_task):
        self._task = transfer_async_task

    @staticmethod
    def _seconds(timeout_in_millis):
        if timeout_in_millis is None:
            return None
        return check_int("timeout_in_millis", timeout_in_millis, UINT32) / 1000

    def synchronize(self, timeout_in_millis=None):
        """The transfer's LLMStatusCode, waiting at most timeout_in_millis (None: no limit)."""
        return self._task.get(self._seconds(timeout_in_millis))

    def get_results(self, timeout_in_millis=None):
        """One LLMStatusCode per transfer config."""
        return self._task.get_results(self._seconds(timeout_in_millis))
