"""A drop-in for CANN's `llm_datadist` Python package, over llmdd's engine.

    import llmdd.llm_datadist as llm_datadist

gives the names Python users of LLM-DataDist already write (shared/spec/llm-datadist.md
section 6): LLMDataDist with init/finalize and its cache managers, LLMConfig, CacheDesc with
CANN's argument checks, Cache/KvCache, the key types and the enums. It is a thin layer: every
allocation goes through llmdd.LlmDataDist. What llmdd does not implement yet (links, pulls,
pushes, role switches) raises LLMException with LLM_FEATURE_NOT_ENABLED rather than being
absent or silently doing nothing.
"""
from . import _datadist, _desc
from ._datadist import LLMException
from ._desc import DataType, LLMRole, LLMStatusCode, Placement

__all__ = [
    "LLMDataDist", "LLMConfig", "LlmConfig", "CacheDesc", "Cache", "KvCache", "CacheManager", "KvCacheManager",
    "CacheKey", "CacheKeyByIdAndIndex", "BlocksCacheKey", "LLMClusterInfo", "LLMException", "LLMStatusCode",
    "LLMRole", "Placement", "DataType",
]

INT64_RANGE = (-(1 << 63), (1 << 63) - 1)
UINT32_MAX = (1 << 32) - 1


def _not_enabled(name):
    def method(self, *args, **kwargs):
        raise LLMException(f"{name} is not implemented by llmdd yet: LLM_FEATURE_NOT_ENABLED",
                           LLMStatusCode.LLM_FEATURE_NOT_ENABLED)

    method.__name__ = name
    method.__doc__ = "Not implemented by llmdd yet: raises LLMException(LLM_FEATURE_NOT_ENABLED)."
    return method


def _check_int(value, name):
    if type(value) is bool or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


class CacheDesc(_desc.CacheDesc):
    """CANN's Python CacheDesc: checked arguments, batch and sequence-length dims."""

    def __init__(self, num_tensors, shape, data_type, placement=Placement.DEVICE, batch_dim_index=0,
                 seq_len_dim_index=-1):
        if not 0 <= _check_int(num_tensors, "num_tensors") <= UINT32_MAX:
            raise ValueError(f"num_tensors must be in [0, {UINT32_MAX}], got {num_tensors}")
        self._check_shape(shape)
        if not isinstance(data_type, DataType):
            raise TypeError(f"data_type must be a DataType, not {type(data_type).__name__}")
        if not isinstance(placement, Placement):
            raise TypeError(f"placement must be a Placement, not {type(placement).__name__}")
        if not 0 <= _check_int(batch_dim_index, "batch_dim_index") < len(shape):
            raise ValueError(f"batch_dim_index must be in [0, {len(shape)}), got {batch_dim_index}")
        _check_int(seq_len_dim_index, "seq_len_dim_index")
        if seq_len_dim_index != -1 and not 0 <= seq_len_dim_index < len(shape):
            raise ValueError(f"seq_len_dim_index must be -1 or in [0, {len(shape)}), got {seq_len_dim_index}")
        super().__init__(num_tensors, shape, data_type, placement)
        self.batch_dim_index = batch_dim_index
        self.seq_len_dim_index = seq_len_dim_index
        self.kv_tensor_format = None

    @staticmethod
    def _check_shape(shape):
        if not isinstance(shape, (list, tuple)):
            raise TypeError(f"shape must be a list or tuple of ints, not {type(shape).__name__}")
        for dim in shape:
            if not INT64_RANGE[0] <= _check_int(dim, "shape dim") <= INT64_RANGE[1]:
                raise ValueError(f"shape dim {dim} does not fit in int64")

    @property
    def batch_dim(self):
        return self.batch_dim_index

    @property
    def batch_size(self):
        return self.shape[self.batch_dim_index]

    def update_dim(self, index, value):
        """Set dim `index` of the shape to `value`."""
        shape = self.shape
        if not -len(shape) <= _check_int(index, "index") < len(shape):
            raise ValueError(f"dim index {index} is out of range for shape {shape}")
        if not INT64_RANGE[0] <= _check_int(value, "value") <= INT64_RANGE[1]:
            raise ValueError(f"dim {value} does not fit in int64")
        shape[index] = value
        self.shape = shape

    def __reduce__(self):
        return (CacheDesc, (self.num_tensors, self.shape, self.data_type, self.placement, self.batch_dim_index,
                            self.seq_len_dim_index))


class Cache(_datadist.Cache):
    """A v2 cache: cache_id, cache_desc (as it was allocated), tensor_addrs."""

    @staticmethod
    def create_cpu_cache(cache_desc, addrs):
        """A host cache over memory the caller owns, for copies and swaps."""
        _datadist.Cache.create_cpu_cache(cache_desc, addrs)  # the checks
        cache = Cache()
        cache.cache_desc = cache_desc
        cache.tensor_addrs = addrs
        return cache

    @property
    def cache_desc(self):
        return self.__dict__.get("_requested_desc") or _datadist.Cache.cache_desc.__get__(self)

    @cache_desc.setter
    def cache_desc(self, desc):
        _datadist.Cache.cache_desc.__set__(self, desc)
        self._requested_desc = desc

    @property
    def cache_keys(self):
        return self.__dict__.get("_cache_keys", ())


class KvCache(Cache):
    """A v1 cache: its addresses per device (llmdd's engine has one device)."""

    @property
    def per_device_tensor_addrs(self):
        return [self.tensor_addrs]


class _KeyType:
    """A value type of named fields: equal, hashable, printable."""

    __slots__ = ()

    def _values(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and other._values() == self._values()

    def __hash__(self):
        return hash((type(self).__name__, self._values()))

    def __repr__(self):
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self.__slots__, self._values()))
        return f"{type(self).__name__}({fields})"


class CacheKey(_KeyType):
    """A prompt-side cache by request: (prompt_cluster_id, req_id, model_id)."""

    __slots__ = ("prompt_cluster_id", "req_id", "model_id")

    def __init__(self, prompt_cluster_id, req_id, model_id=0):
        self.prompt_cluster_id = _check_int(prompt_cluster_id, "prompt_cluster_id")
        self.req_id = _check_int(req_id, "req_id")
        self.model_id = _check_int(model_id, "model_id")


class CacheKeyByIdAndIndex(_KeyType):
    """A cache by id and batch index on a cluster."""

    __slots__ = ("cluster_id", "cache_id", "batch_index")

    def __init__(self, cluster_id, cache_id, batch_index=0):
        self.cluster_id = _check_int(cluster_id, "cluster_id")
        self.cache_id = _check_int(cache_id, "cache_id")
        self.batch_index = _check_int(batch_index, "batch_index")


class BlocksCacheKey(_KeyType):
    """A block-table cache on a prompt cluster."""

    __slots__ = ("prompt_cluster_id", "model_id")

    def __init__(self, prompt_cluster_id, model_id=0):
        self.prompt_cluster_id = _check_int(prompt_cluster_id, "prompt_cluster_id")
        self.model_id = _check_int(model_id, "model_id")


_KEY_TYPES = (CacheKey, CacheKeyByIdAndIndex, BlocksCacheKey)


class CacheManager:
    """v2's cache_manager: allocate_cache / deallocate_cache over the engine."""

    _cache_type = Cache

    def __init__(self, engine):
        self._engine = engine

    def allocate_cache(self, cache_desc, cache_keys=()):
        """A new cache for cache_desc; cache_keys (CacheKey and the like) are kept on it."""
        if not isinstance(cache_desc, _desc.CacheDesc):
            raise TypeError(f"cache_desc must be a CacheDesc, not {type(cache_desc).__name__}")
        keys = tuple(cache_keys or ())
        for key in keys:
            if not isinstance(key, _KEY_TYPES):
                raise TypeError(f"cache_keys must hold CacheKey, CacheKeyByIdAndIndex or BlocksCacheKey, "
                                f"not {type(key).__name__}")
        cache = self._cache_type()
        status = self._engine.AllocateCache(cache_desc, cache)
        if status != LLMStatusCode.LLM_SUCCESS:
            raise self._engine._exception(status, "allocate_cache")
        cache._requested_desc = cache_desc
        cache._cache_keys = keys
        return cache

    def deallocate_cache(self, cache):
        """Free a cache from allocate_cache."""
        if not isinstance(cache, _datadist.Cache):
            raise TypeError(f"cache must be a Cache, not {type(cache).__name__}")
        self._engine.deallocate_cache(cache)

    def copy_cache(self, dst, src, dst_batch_index=0, src_batch_index=0, offset=0, size=-1, req_id=None):
        """Copy batch entry src_batch_index of src into dst_batch_index of dst (CopyKvCache)."""
        self._engine.copy_cache(src, dst, src_batch_index, dst_batch_index, offset, size)

    def copy_blocks(self, cache, copy_block_info):
        """Within one cache, copy each source block to its destination blocks:
        {src_block: [dst_block, ...]} (CopyKvBlocks, device to device)."""
        pairs = [(source, target) for source, targets in self._block_map(copy_block_info, list).items()
                 for target in targets]
        self._engine.copy_blocks(cache, cache, [source for source, _ in pairs], [[target for _, target in pairs]])

    def swap_blocks(self, src, dst, src_to_dst):
        """Copy blocks between a device and a host cache, {src_block: dst_block}: swap out
        (device to host) or in (host to device)."""
        mapping = self._block_map(src_to_dst, int)
        self._engine.copy_blocks(src, dst, list(mapping), [list(mapping.values())])

    @staticmethod
    def _block_map(mapping, value_type):
        if not isinstance(mapping, dict):
            raise TypeError(f"the block map must be a dict, not {type(mapping).__name__}")
        for source, target in mapping.items():
            _check_int(source, "block index")
            if not isinstance(target, value_type) or isinstance(target, bool):
                raise TypeError(f"block {source} maps to {target!r}, not a {value_type.__name__}")
        return mapping

    pull_cache = _not_enabled("pull_cache")
    pull_blocks = _not_enabled("pull_blocks")
    push_cache = _not_enabled("push_cache")
    push_blocks = _not_enabled("push_blocks")
    register_cache = _not_enabled("register_cache")
    unregister_cache = _not_enabled("unregister_cache")
    remove_cache_key = _not_enabled("remove_cache_key")


class KvCacheManager(CacheManager):
    """v1's kv_cache_manager: the same, with KvCache results."""

    _cache_type = KvCache


class LLMClusterInfo:
    """A remote cluster to link: its id, role and one local and one remote ip:port."""

    def __init__(self):
        self.remote_cluster_id = 0
        self.remote_role_type = 0
        self.local_ip_info_list = []
        self.remote_ip_info_list = []

    @staticmethod
    def _ip_text(ip):
        if isinstance(ip, int) and not isinstance(ip, bool):
            if not 0 <= ip < 1 << 32:
                raise ValueError(f"ip {ip} is not an IPv4 address")
            return ".".join(str((ip >> shift) & 0xFF) for shift in (24, 16, 8, 0))
        if not isinstance(ip, str):
            raise TypeError(f"ip must be a str or int, not {type(ip).__name__}")
        return ip

    def append_local_ip_info(self, ip, port):
        self.local_ip_info_list.append((self._ip_text(ip), _check_int(port, "port")))

    def append_remote_ip_info(self, ip, port):
        self.remote_ip_info_list.append((self._ip_text(ip), _check_int(port, "port")))


class LLMConfig:
    """Options for LLMDataDist.init, turned into LLM-DataDist's option strings."""

    def __init__(self):
        self.device_id = None
        self.sync_kv_timeout = None
        self.enable_switch_role = False
        self.ge_options = {}
        self.listen_ip_info = None
        self.mem_utilization = 0.95
        self.buf_pool_cfg = None
        self.enable_cache_manager = False
        self.mem_pool_cfg = None
        self.host_mem_pool_cfg = None
        self.enable_remote_cache_accessible = False
        self.global_resource_config = None

    def generate_options(self):
        """The options dict for init: device ids as `ge.exec.deviceId` ("0;1" for a list) and
        `ge.session_device_id` (the first), then each setting that was given."""
        if not (isinstance(self.mem_utilization, (int, float)) and 0 <= self.mem_utilization <= 1):
            raise LLMException(f"mem_utilization must be in [0, 1], got {self.mem_utilization!r}",
                               LLMStatusCode.LLM_PARAM_INVALID)
        if self.global_resource_config is not None and not isinstance(self.global_resource_config, str):
            raise TypeError("global_resource_config must be a str")
        options = {str(key): str(value) for key, value in dict(self.ge_options).items()}
        if self.device_id is not None:
            ids = list(self.device_id) if isinstance(self.device_id, (list, tuple)) else [self.device_id]
            options["ge.exec.deviceId"] = ";".join(str(_check_int(device, "device_id")) for device in ids)
            options["ge.session_device_id"] = str(ids[0])
        if self.sync_kv_timeout is not None:
            options["llm.SyncKvCacheWaitTime"] = str(_check_int(self.sync_kv_timeout, "sync_kv_timeout"))
        if self.enable_switch_role:
            options["llm.EnableSwitchRole"] = "1"
        for key, value in (("llm.ListenIpInfo", self.listen_ip_info), ("llm.BufPoolCfg", self.buf_pool_cfg),
                           ("llm.MemPoolConfig", self.mem_pool_cfg),
                           ("llm.HostMemPoolConfig", self.host_mem_pool_cfg),
                           ("llm.GlobalResourceConfig", self.global_resource_config)):
            if value is not None:
                options[key] = value
        return options

    gen_options = generate_options


LlmConfig = LLMConfig


class LLMDataDist:
    """CANN's Python LLMDataDist(role, cluster_id) over llmdd's engine."""

    def __init__(self, role, cluster_id):
        if not isinstance(role, LLMRole):
            raise TypeError(f"role must be an LLMRole, not {type(role).__name__}")
        self._engine = _datadist.LlmDataDist(_check_int(cluster_id, "cluster_id"), role)
        self._cache_manager = CacheManager(self._engine)
        self._kv_cache_manager = KvCacheManager(self._engine)

    @property
    def cluster_id(self):
        return self._engine.cluster_id

    @property
    def role(self):
        return self._engine.role

    def init(self, options):
        """Initialize with an options dict (LLMConfig.generate_options()); LLMException on failure.
        A device list selects its first device: llmdd's engine allocates on one device."""
        options = dict(options)
        for key in ("ge.exec.deviceId", "llm.DeviceId"):
            if key in options and isinstance(options[key], str) and ";" in options[key]:
                options[key] = options[key].split(";")[0]
        options.pop("ge.session_device_id", None)
        self._engine.initialize(options)

    def finalize(self):
        self._engine.Finalize()

    def _require_initialized(self):
        if not self._engine.initialized:
            raise LLMException("LLMDataDist is not initialized: call init first", LLMStatusCode.LLM_FAILED)

    @property
    def cache_manager(self):
        self._require_initialized()
        return self._cache_manager

    @property
    def kv_cache_manager(self):
        self._require_initialized()
        return self._kv_cache_manager

    link_clusters = _not_enabled("link_clusters")
    unlink_clusters = _not_enabled("unlink_clusters")
    link = _not_enabled("link")
    unlink = _not_enabled("unlink")
    query_register_mem_status = _not_enabled("query_register_mem_status")
    check_link_status = _not_enabled("check_link_status")
    switch_role = _not_enabled("switch_role")
