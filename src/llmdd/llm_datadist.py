"""A drop-in for CANN's `llm_datadist` Python package, over llmdd's engine.

    import llmdd.llm_datadist as llm_datadist

gives the names Python users of LLM-DataDist already write (shared/spec/llm-datadist.md
sections 6 and 9) with CANN's argument checks: LLMDataDist with init/finalize and its cache
managers (v2 `cache_manager` with llm.EnableCacheManager, v1 `kv_cache_manager` without),
LLMConfig, CacheDesc, Cache/KvCache, the keys, the transfer types and the enums. Every
allocation goes through llmdd.LlmDataDist and llmdd's cache registry; in cache-manager mode links,
pulls and pushes go through llmdd.transfer (Mooncake's Transfer Engine). What llmdd does not
implement yet (rank-table links, role switches, transfer_cache_async, remap_registered_memory)
checks its arguments as CANN does and then raises LLMException(LLM_FEATURE_NOT_ENABLED): no CANN
method is missing.
"""
from . import _datadist
from ._datadist import LLMException
from ._registry import CacheRegistry
from ._dropin_config import LLMClusterInfo, LLMConfig, LlmConfig
from ._dropin_names import (
    INT32,
    INT64,
    UINT32,
    UINT64,
    DataType,
    LLMRole,
    LLMStatusCode,
    Memtype,
    Placement,
    RegisterMemStatus,
    Status,
    check_int,
    check_ints,
    check_layer_range,
    check_not_none,
    check_sequence,
    check_str_dict,
    check_type,
    not_enabled,
    status_of,
    reraised,
    reraising,
    require,
)
from ._dropin_types import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    CacheTask,
    KvCache,
    LayerSynchronizer,
    MemInfo,
    TransferConfig,
    TransferWithCacheKeyConfig,
    check_cache_key,
)

__all__ = [
    "LLMDataDist", "LLMConfig", "LlmConfig", "LLMClusterInfo", "CacheDesc", "Cache", "KvCache", "CacheManager",
    "KvCacheManager", "CacheKey", "CacheKeyByIdAndIndex", "BlocksCacheKey", "LLMException", "LLMStatusCode",
    "Status", "LLMRole", "Placement", "DataType", "RegisterMemStatus", "MemInfo", "Memtype", "TransferConfig",
    "TransferWithCacheKeyConfig", "LayerSynchronizer", "CacheTask",
]

_TENSOR_NUM_PER_LAYER = 2  # CANN's default: a K and a V tensor per layer
_MAX_COMM_NAME = 128
_MAX_RANK_TABLE_NODES = 4
_CACHE_MANAGER = "llm.EnableCacheManager"
_REMOTE_CACHE_ACCESSIBLE = "llm.EnableRemoteCacheAccessible"
_LOCAL_COMM_RES = "llm.LocalCommRes"
_TRANSFER_BACKEND = "llm.TransferBackend"
_LISTEN_IP_INFO = "llm.listenIpInfo"
_ENGINE_LISTEN_IP_INFO = "llm.ListenIpInfo"   # the C++ engine's spelling, taken too
_ENGINE_TRANSFER_SERVING = (_ENGINE_LISTEN_IP_INFO, _REMOTE_CACHE_ACCESSIBLE)
_FLOW_GRAPH_MEM_MAX_SIZE = "ge.flowGraphMemMaxSize"
_SYNC_KV_WAIT_TIME = "llm.SyncKvCacheWaitTime"
_DEFAULT_SYNC_KV_WAIT_MS = 1000      # LLM-DataDist's default wait for a transfer's peer
_TRANSFER_PROTOCOL = "llmdd.TransferProtocol"   # Mooncake's protocol: "tcp" (default), "rdma", "ascend"
_TRANSFER_DEVICE = "llmdd.TransferDevice"       # the device name the protocol needs, if any


def _check_tensor_num_per_layer(tensor_num_per_layer):
    check_int("tensor_num_per_layer", tensor_num_per_layer, UINT32)
    require(tensor_num_per_layer > 0, "tensor_num_per_layer must be > 0")


def _check_block_map(name, mapping, target_type):
    """{block: target}: int keys, target_type values (a list of ints, or an int)."""
    check_type(name, mapping, dict)
    key_name, value_name = f"{name} key", f"{name} value"
    for source, target in mapping.items():
        check_int(key_name, source)
        if target_type is list:
            check_ints(value_name, target, containers=list)
        else:
            check_int(value_name, target)
    return mapping


class CacheManager:
    """v2's cache_manager (llm.EnableCacheManager): caches from the memory pools or registered
    from the caller's memory, named by id and keys (llmdd's cache registry), copies, swaps.
    Pulls and pushes move caches over the LLMDataDist's links (llmdd.transfer)."""

    _cache_type = Cache
    _v2 = True  # CANN's v2 rules: pools required, blocks caches apart from whole caches

    def __init__(self, datadist, options):
        self._datadist = datadist
        self._engine = datadist._engine
        self._device_pool = bool(options.get("llm.MemPoolConfig"))
        self._host_pool = bool(options.get("llm.HostMemPoolConfig"))
        self._remote_cache_accessible = options.get(_REMOTE_CACHE_ACCESSIBLE, "0") == "1"
        self._registry = CacheRegistry(self._engine)

    check_cache_key = staticmethod(check_cache_key)

    def _require_live(self):
        require(self._datadist._owns_live_manager(self), "this cache manager's LLMDataDist was finalized",
                LLMStatusCode.LLM_FAILED)

    def _check_cache(self, name, cache, blocks=None):
        check_type(name, cache, Cache)
        if self._v2 and blocks is not None:
            require(cache.is_blocks_cache == blocks,
                    f"{name} must {'' if blocks else 'not '}be a blocks cache")
        return cache

    def allocate_cache(self, cache_desc, cache_keys=()):
        """A new cache for cache_desc, held by its id and by each of cache_keys (CacheKey i
        names batch entry i for pulls): deallocate_cache drops the id's reference, a pull or
        remove_cache_key a key's, and the memory is freed when none is left."""
        self._require_live()
        check_type("cache_desc", cache_desc, CacheDesc)
        check_sequence("cache_keys", cache_keys, CacheKey)
        return self._allocate(cache_desc, tuple(cache_keys), False, "allocate_cache")

    def allocate_blocks_cache(self, cache_desc, blocks_cache_key=None):
        """A new blocks cache (shape[0] counts its blocks), held by its id and by
        blocks_cache_key if given; deallocate_blocks_cache drops the id's reference."""
        self._require_live()
        check_type("cache_desc", cache_desc, CacheDesc)
        keys = () if blocks_cache_key is None else (check_type("blocks_cache_key", blocks_cache_key, BlocksCacheKey),)
        return self._allocate(cache_desc, keys, True, "allocate_blocks_cache")

    def _allocate(self, cache_desc, keys, is_blocks_cache, call):
        require(cache_desc.num_tensors > 0, "num_tensors must be > 0")
        if self._v2:  # v2 carves every cache from the pool of its placement
            pooled, option = ((self._device_pool, "llm.MemPoolConfig") if cache_desc.placement == Placement.DEVICE
                              else (self._host_pool, "llm.HostMemPoolConfig"))
            require(pooled, f"a {cache_desc.placement} cache needs {option} in cache-manager mode")
        cache = self._cache_type()
        self._succeed(self._registry.allocate(cache_desc, cache, keys, is_blocks_cache=is_blocks_cache), call)
        cache._requested_desc = cache_desc
        cache._is_blocks_cache = is_blocks_cache
        return cache

    def register_cache(self, cache_desc, addrs, cache_keys=(), remote_accessible=None):
        """A cache over memory the caller owns (one address per tensor), held by its id and
        by each of cache_keys; nothing is copied or touched. unregister_cache forgets it."""
        self._require_live()
        self._check_registration(cache_desc, addrs, remote_accessible)
        check_sequence("cache_keys", cache_keys, CacheKey)
        return self._register(cache_desc, addrs, tuple(cache_keys), False, remote_accessible, "register_cache")

    def register_blocks_cache(self, cache_desc, addrs, blocks_cache_key=None, remote_accessible=None):
        """A blocks cache over memory the caller owns (one address per tensor, each tensor
        shape[0] blocks), held by its id and by blocks_cache_key if given."""
        self._require_live()
        self._check_registration(cache_desc, addrs, remote_accessible)
        keys = () if blocks_cache_key is None else (check_type("blocks_cache_key", blocks_cache_key, BlocksCacheKey),)
        return self._register(cache_desc, addrs, keys, True, remote_accessible, "register_blocks_cache")

    @staticmethod
    def _check_registration(cache_desc, addrs, remote_accessible):
        check_ints("addrs", addrs, UINT64, list)
        if remote_accessible is not None:
            check_type("remote_accessible", remote_accessible, bool)
        check_type("cache_desc", check_not_none("cache_desc", cache_desc, "num_tensors"), CacheDesc)
        require(len(addrs) > 0, "addrs must not be empty")
        require(len(addrs) == cache_desc.num_tensors,
                f"{len(addrs)} addrs for a cache_desc of {cache_desc.num_tensors} tensors")
        require(0 not in addrs, "an addr is 0")

    def _register(self, cache_desc, addrs, keys, is_blocks_cache, remote_accessible, call):
        linked = self._datadist._has_linked
        require(not (linked and remote_accessible), "remote accessible caches must be registered before the first link")
        if remote_accessible is None:  # CANN's default: device memory is, host memory is not; none after a link
            remote_accessible = cache_desc.placement == Placement.DEVICE and not linked
        cache = self._cache_type()
        self._succeed(self._registry.register(cache_desc, addrs, cache, keys, is_blocks_cache=is_blocks_cache,
                                              remote_accessible=remote_accessible), call)
        cache._requested_desc = cache_desc
        cache._is_blocks_cache = is_blocks_cache
        return cache

    def unregister_cache(self, cache_id):
        """Forget a registered cache and its keys; its memory stays the caller's. An id the
        manager does not hold is a no-op, as in CANN's v2."""
        self._require_live()
        check_int("cache_id", cache_id, INT64)
        self._succeed(self._registry.unregister(cache_id), "unregister_cache")

    def deallocate_cache(self, cache):
        """Drop the reference of a cache from allocate_cache: it is freed now, or when its
        last key is pulled or removed. As in CANN's v2, a cache already released or a
        registered one is left as it is."""
        self._require_live()
        self._check_cache("cache", cache, blocks=False)
        self._succeed(self._registry.deallocate(cache.cache_id), "deallocate_cache")

    def deallocate_blocks_cache(self, cache):
        """Drop the reference of a cache from allocate_blocks_cache, as deallocate_cache does."""
        self._require_live()
        self._check_cache("cache", cache, blocks=True)
        self._succeed(self._registry.deallocate(cache.cache_id), "deallocate_blocks_cache")

    def remove_cache_key(self, cache_key):
        """Drop a key's reference: the key no longer names its cache to pulls, and the cache
        is freed if nothing else holds it. An unknown key, or a registered cache's, is a no-op."""
        self._require_live()
        check_type("cache_key", cache_key, CacheKey)
        self._succeed(self._registry.release_key(cache_key), "remove_cache_key")

    def _succeed(self, status, call):
        if status != LLMStatusCode.LLM_SUCCESS:
            raise reraised(self._engine._exception(status, call))

    def copy_cache(self, dst, src, dst_batch_index=0, src_batch_index=0, offset=0, size=-1, req_id=None):
        """Copy batch entry src_batch_index of src into dst_batch_index of dst (CopyKvCache):
        `size` bytes (-1: the rest) from `offset` of each tensor."""
        self._require_live()
        self._check_cache("dst", dst, blocks=False)
        self._check_cache("src", src, blocks=False)
        check_int("dst_batch_index", dst_batch_index, UINT32)
        check_int("src_batch_index", src_batch_index, UINT32)
        check_int("offset", offset, UINT64)
        check_int("size", size, INT64)
        require(size == -1 or size > 0, f"size must be -1 or > 0, got {size}")
        if req_id is not None:
            check_int("req_id", req_id, UINT64)  # CANN logs it; nothing else uses it
        with reraising:
            self._engine.copy_cache(src, dst, src_batch_index, dst_batch_index, offset, size)

    def copy_blocks(self, cache, copy_block_info):
        """Within one blocks cache, copy each source block to its destination blocks:
        {src_block: [dst_block, ...]} (CopyKvBlocks, device to device)."""
        self._require_live()
        self._check_cache("cache", cache, blocks=True)
        _check_block_map("copy_block_info", copy_block_info, list)
        pairs = [(source, target) for source, targets in copy_block_info.items() for target in targets]
        with reraising:
            self._engine.copy_blocks(cache, cache, [source for source, _ in pairs], [[target for _, target in pairs]])

    def swap_blocks(self, src_cache, dst_cache, src_to_dst):
        """Copy blocks {src_block: dst_block} between a device and a host blocks cache: swap out
        (device to host) or in (host to device)."""
        self._require_live()
        self._check_cache("src_cache", check_not_none("src_cache", src_cache, "is_blocks_cache"), blocks=True)
        self._check_cache("dst_cache", check_not_none("dst_cache", dst_cache, "is_blocks_cache"), blocks=True)
        _check_block_map("src_to_dst", check_not_none("src_to_dst", src_to_dst, "items"), int)
        src_desc, dst_desc = src_cache.cache_desc, dst_cache.cache_desc
        require(src_desc.num_tensors == dst_desc.num_tensors, "src and dst caches must have as many tensors")
        require(src_desc.size // src_desc.batch_size == dst_desc.size // dst_desc.batch_size,
                "src and dst caches must have blocks of the same size")
        src_batch, dst_batch = src_desc.batch_size, dst_desc.batch_size
        for source, target in src_to_dst.items():   # messages are made only for a block out of range
            if not 0 <= source < src_batch:
                require(False, f"src block {source} is outside [0, {src_batch})")
            if not 0 <= target < dst_batch:
                require(False, f"dst block {target} is outside [0, {dst_batch})")
        require({src_desc.placement, dst_desc.placement} == {Placement.HOST, Placement.DEVICE},
                f"swap_blocks copies between HOST and DEVICE, not {src_desc.placement} to {dst_desc.placement}")
        with reraising:
            self._engine.copy_blocks(src_cache, dst_cache, list(src_to_dst), [list(src_to_dst.values())])

    def pull_cache(self, cache_key, cache, batch_index=0, size=-1, **kwargs):
        """Pull a remote cache's batch entry (by CacheKey, whose reference the prompt side then
        drops, or by CacheKeyByIdAndIndex) into batch entry batch_index of `cache`."""
        self._require_live()
        key_types = CacheKeyByIdAndIndex if self._remote_cache_accessible else (CacheKey, CacheKeyByIdAndIndex)
        check_type("cache_key", cache_key, key_types)
        self._check_cache("cache", cache, blocks=False)
        check_int("batch_index", batch_index, UINT32)
        check_int("size", size, INT64)
        require(size == -1 or size > 0, f"size must be -1 or > 0, got {size}")
        self._check_layers(kwargs)
        if isinstance(cache_key, CacheKey):
            check_cache_key(cache_key)
        self._transferred("pull_cache", lambda agent: agent.pull_cache(
            cache_key.cluster_id, cache_key, self._entry(cache), batch_index, size, **self._layers(kwargs)))

    def pull_blocks(self, src_cache_key, dst_cache, src_blocks=(), dst_blocks=(), **kwargs):
        """Pull remote blocks (BlocksCacheKey, src_blocks) or a remote batch entry (CacheKey,
        CacheKeyByIdAndIndex, no src_blocks) into blocks dst_blocks of `dst_cache`."""
        self._require_live()
        check_type("src_cache_key", src_cache_key, (CacheKey, CacheKeyByIdAndIndex, BlocksCacheKey))
        self._check_cache("dst_cache", dst_cache, blocks=True)
        check_ints("src_blocks", src_blocks)
        check_ints("dst_blocks", dst_blocks)
        require(len(dst_blocks) > 0, "dst_blocks must not be empty")
        self._check_layers(kwargs)
        if isinstance(src_cache_key, BlocksCacheKey):
            require(len(src_blocks) > 0, "src_blocks must not be empty for a BlocksCacheKey")
        else:
            if isinstance(src_cache_key, CacheKey):
                check_cache_key(src_cache_key)
            require(len(src_blocks) == 0, "src_blocks must be empty unless src_cache_key is a BlocksCacheKey")
        self._transferred("pull_blocks", lambda agent: agent.pull_blocks(
            src_cache_key.cluster_id, src_cache_key, self._entry(dst_cache), list(src_blocks), list(dst_blocks),
            **self._layers(kwargs)))

    def push_cache(self, dst_cache_key, src_cache, src_batch_index=0, src_layer_range=None, dst_layer_range=None,
                   size=-1, tensor_num_per_layer=_TENSOR_NUM_PER_LAYER):
        """Write batch entry src_batch_index of `src_cache` into a remote remote-accessible cache."""
        self._require_live()
        self._require_remote_cache_accessible("push_cache")
        check_type("dst_cache_key", dst_cache_key, CacheKeyByIdAndIndex)
        self._check_cache("src_cache", src_cache, blocks=False)
        check_int("src_batch_index", src_batch_index, UINT32)
        self._check_push_layers(src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer)
        check_int("size", size, INT64)
        require(size == -1, f"push_cache's size must be -1, got {size}")
        self._transferred("push_cache", lambda agent: agent.push_cache(
            dst_cache_key.cluster_id, dst_cache_key, self._entry(src_cache), src_batch_index, size,
            src_layer_range=src_layer_range, dst_layer_range=dst_layer_range,
            tensor_num_per_layer=tensor_num_per_layer))

    def push_blocks(self, dst_cache_key, src_cache, src_blocks=(), dst_blocks=(), src_layer_range=None,
                    dst_layer_range=None, tensor_num_per_layer=_TENSOR_NUM_PER_LAYER):
        """Write blocks of `src_cache` into blocks of a remote remote-accessible blocks cache."""
        self._require_live()
        self._require_remote_cache_accessible("push_blocks")
        check_type("dst_cache_key", dst_cache_key, BlocksCacheKey)
        self._check_cache("src_cache", src_cache, blocks=True)
        check_ints("src_blocks", src_blocks)
        check_ints("dst_blocks", dst_blocks)
        require(len(dst_blocks) > 0, "dst_blocks must not be empty")
        self._check_push_layers(src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer)
        self._transferred("push_blocks", lambda agent: agent.push_blocks(
            dst_cache_key.cluster_id, dst_cache_key, self._entry(src_cache), list(src_blocks), list(dst_blocks),
            src_layer_range=src_layer_range, dst_layer_range=dst_layer_range,
            tensor_num_per_layer=tensor_num_per_layer))

    # Transfers: the checks above are CANN's; the bytes move through the LLMDataDist's transfer
    # agent (llmdd.transfer, over Mooncake's Transfer Engine).

    def _entry(self, cache):
        """The registry's entry of a local cache; LLM_KV_CACHE_NOT_EXIST for one it does not hold."""
        entry = self._registry.entry(cache.cache_id)
        require(entry is not None, f"cache {cache.cache_id} is not held by this cache manager",
                LLMStatusCode.LLM_KV_CACHE_NOT_EXIST)
        return entry

    @staticmethod
    def _layers(kwargs):
        src_layer_range, dst_layer_range = kwargs.get("src_layer_range"), kwargs.get("dst_layer_range")
        tensor_num_per_layer = kwargs.get("tensor_num_per_layer", _TENSOR_NUM_PER_LAYER)
        if src_layer_range is None and dst_layer_range is None:
            # CANN uses tensor_num_per_layer only to turn layer ranges into tensor indices: a pull
            # without ranges moves every tensor, so a 1-tensor cache pulls with the default of 2
            # (CANN's pull_blocks_sample.py; llm_utils.py layer_range_to_tensor_indices,
            # data_cache_engine.cc CheckTensorIndices).
            tensor_num_per_layer = 1
        return {"src_layer_range": src_layer_range, "dst_layer_range": dst_layer_range,
                "tensor_num_per_layer": tensor_num_per_layer}

    def _transferred(self, call, transfer):
        with reraising:
            status = transfer(self._datadist._transfer_agent(call))
        if status != LLMStatusCode.LLM_SUCCESS:
            raise LLMException(f"{call} failed: {status_of(status).name}", status_of(status))

    def transfer_cache_async(self, src_cache, layer_synchronizer, transfer_configs, src_block_indices=None,
                             dst_block_indices=None, dst_block_memory_size=None):
        """Write `src_cache` layer by layer to remote memory as layers finish. Not implemented by llmdd yet."""
        self._require_live()
        check_type("src_cache", src_cache, Cache)
        require(src_cache.cache_desc.placement != Placement.HOST, "transfer_cache_async needs a DEVICE src_cache")
        for name, indices in (("dst_block_indices", dst_block_indices), ("src_block_indices", src_block_indices)):
            if indices is not None:
                check_ints(name, indices, UINT64)
        if dst_block_memory_size is not None:
            check_int("dst_block_memory_size", dst_block_memory_size, UINT64)
        if src_block_indices:
            require(bool(dst_block_indices), "blocks transfer only to blocks: dst_block_indices is required")
            require(len(src_block_indices) == len(dst_block_indices),
                    "src_block_indices and dst_block_indices must have the same length")
        elif dst_block_indices:
            require(dst_block_memory_size is not None, "a transfer to blocks needs dst_block_memory_size")
        check_type("layer_synchronizer", layer_synchronizer, LayerSynchronizer)
        config_type = TransferWithCacheKeyConfig if self._remote_cache_accessible else TransferConfig
        check_sequence("transfer_configs", transfer_configs, config_type)
        require(bool(dst_block_indices) or dst_block_memory_size in (None, 0),
                "dst_block_memory_size must be None or 0 unless the destination is blocks")
        raise not_enabled("transfer_cache_async")

    def remap_registered_memory(self, mem_infos):
        """Map registered memory again after a device memory fault. Not implemented by llmdd yet."""
        self._require_live()
        infos = mem_infos if isinstance(mem_infos, list) else [mem_infos]
        for index, info in enumerate(infos):
            check_type(f"mem_infos[{index}]", info, MemInfo)
            require(info.mem_type == Memtype.MEM_TYPE_DEVICE, f"mem_infos[{index}] must be MEM_TYPE_DEVICE")
            require(info.addr != 0, f"mem_infos[{index}].addr must not be 0")
            require(info.size > 0, f"mem_infos[{index}].size must be > 0")
        raise not_enabled("remap_registered_memory")

    def _require_remote_cache_accessible(self, name):
        require(self._remote_cache_accessible, f"{name} needs {_REMOTE_CACHE_ACCESSIBLE} "
                                               "(LLMConfig.enable_remote_cache_accessible = True)")

    @staticmethod
    def _check_layers(kwargs):
        """The layer keywords of pull_cache/pull_blocks; layer i is tensors
        [i * tensor_num_per_layer, (i + 1) * tensor_num_per_layer)."""
        unknown = set(kwargs) - {"src_layer_range", "dst_layer_range", "tensor_num_per_layer"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        _check_tensor_num_per_layer(kwargs.get("tensor_num_per_layer", _TENSOR_NUM_PER_LAYER))
        for name in ("src_layer_range", "dst_layer_range"):
            layer_range = check_layer_range(name, kwargs.get(name))
            if layer_range is not None:
                check_int(name, layer_range.stop - 1, UINT32)

    @staticmethod
    def _check_push_layers(src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer):
        _check_tensor_num_per_layer(tensor_num_per_layer)
        layers = range(src_cache.cache_desc.num_tensors // tensor_num_per_layer)
        src_layers = layers if src_layer_range is None else check_layer_range("src_layer_range", src_layer_range)
        dst_layers = layers if dst_layer_range is None else check_layer_range("dst_layer_range", dst_layer_range)
        require(len(src_layers) == len(dst_layers), "src_layer_range and dst_layer_range must have the same length")


class KvCacheManager(CacheManager):
    """v1's kv_cache_manager (without llm.EnableCacheManager): the same calls, KvCache results,
    no pool needed and no blocks-cache distinction."""

    _cache_type = KvCache
    _v2 = False


class _LinkTarget:
    """An LLMClusterInfo as the transfer agent takes it: dotted ips (CANN keeps them as ints)."""

    __slots__ = ("remote_cluster_id", "remote_role_type", "local_ip_infos", "remote_ip_infos")

    def __init__(self, cluster):
        self.remote_cluster_id = cluster.remote_cluster_id
        self.remote_role_type = cluster.remote_role_type
        self.local_ip_infos = [(_dotted(ip), port) for ip, port in cluster.local_ip_info_list]
        self.remote_ip_infos = [(_dotted(ip), port) for ip, port in cluster.remote_ip_info_list]


def _dotted(ip):
    """CANN's integer form of an IPv4 address (its bytes little-endian) as a dotted string."""
    require(0 <= ip < 1 << 32, f"ip {ip} is not an IPv4 address")
    return ".".join(str(part) for part in ip.to_bytes(4, "little"))


class LLMDataDist:
    """CANN's Python LLMDataDist(role, cluster_id) over llmdd's engine. One may be initialized
    per process at a time, as in CANN."""

    llm_engine_instance = None  # the initialized LLMDataDist of this process (CANN's name)

    def __init__(self, role, cluster_id):
        check_type("role", role, LLMRole)
        check_int("cluster_id", cluster_id, UINT64)
        self._role = role
        self._engine = _datadist.LlmDataDist(cluster_id, role.value)
        self._manager = None
        self._cache_manager_mode = False
        self._options = {}  # the options of the current initialization, after CANN's rules
        self._agent = None  # the transfer agent (llmdd.transfer), made on first need
        self._has_linked = False

    @property
    def cluster_id(self):
        return self._engine.cluster_id

    @property
    def role(self):
        return self._role

    def init(self, options):
        """Initialize with an options dict (LLMConfig.generate_options()); LLMException on
        failure, and when another LLMDataDist of this process is initialized. Again: a no-op.
        A device list selects its first device: llmdd's engine allocates on one device."""
        if self._engine.initialized:
            return
        require(LLMDataDist.llm_engine_instance is None, "another LLMDataDist is initialized in this process",
                LLMStatusCode.LLM_FAILED)
        options = dict(self._checked_options(options))
        for key in ("ge.exec.deviceId", "llm.DeviceId"):
            if ";" in options.get(key, ""):
                options[key] = options[key].split(";")[0]
        # The drop-in's transfer agent serves its caches (cache-manager mode; v1 mode transfers
        # nothing), not the engine: it neither listens nor keeps what it would serve by id.
        engine_options = {key: value for key, value in options.items() if key not in _ENGINE_TRANSFER_SERVING}
        with reraising:
            self._engine.initialize(engine_options)
        manager_type = CacheManager if self._cache_manager_mode else KvCacheManager
        self._manager = manager_type(self, options)
        self._options = options
        self._has_linked = False
        if self._cache_manager_mode and self._listen_ip_info() is not None:
            try:   # a prompt side serves its caches from init on
                self._transfer_agent()
            except LLMException:
                self._engine.Finalize()
                self._manager = None
                raise
        LLMDataDist.llm_engine_instance = self

    def _listen_ip_info(self):
        return self._options.get(_LISTEN_IP_INFO, self._options.get(_ENGINE_LISTEN_IP_INFO))

    def _transfer_agent(self, call="init"):
        """This initialization's TransferAgent over the cache manager's registry."""
        if self._agent is None:
            require(self._cache_manager_mode, f"{call}: llmdd transfers in cache-manager mode only ({_CACHE_MANAGER}=1, "
                    "LLMConfig.enable_cache_manager)", LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
            from .transfer import TransferAgent   # Mooncake and the transfer layer load only when used
            with reraising:
                self._agent = TransferAgent(
                    self._manager._registry, self.cluster_id, listen_ip_info=self._listen_ip_info(),
                    protocol=self._options.get(_TRANSFER_PROTOCOL, "tcp"),
                    device_name=self._options.get(_TRANSFER_DEVICE, ""),
                    sync_timeout_ms=int(self._options.get(_SYNC_KV_WAIT_TIME, _DEFAULT_SYNC_KV_WAIT_MS)))
        return self._agent

    def _checked_options(self, options):
        """CANN's option rules before the engine sees them; sets the cache-manager mode."""
        check_str_dict("options", options)
        pool_sizes = options.get(_FLOW_GRAPH_MEM_MAX_SIZE)
        if pool_sizes is not None:
            require("," not in pool_sizes, f"{_FLOW_GRAPH_MEM_MAX_SIZE} takes one pool size, got {pool_sizes!r}")
            require(pool_sizes.isascii() and pool_sizes.isdigit(),
                    f"{_FLOW_GRAPH_MEM_MAX_SIZE} must be digits, got {pool_sizes!r}")
        options = dict(options)
        if _LOCAL_COMM_RES in options:  # local communication resources imply both modes
            options.setdefault(_CACHE_MANAGER, "1")
            options.setdefault(_REMOTE_CACHE_ACCESSIBLE, "1")
        cache_manager_mode = options.get(_CACHE_MANAGER) == "1"
        require(cache_manager_mode or _LOCAL_COMM_RES not in options,
                f"{_LOCAL_COMM_RES} needs {_CACHE_MANAGER}=1")
        if _TRANSFER_BACKEND in options:
            require(cache_manager_mode, f"{_TRANSFER_BACKEND} needs {_CACHE_MANAGER}=1")
            options.setdefault(_REMOTE_CACHE_ACCESSIBLE, "1")
            require(options[_REMOTE_CACHE_ACCESSIBLE] == "1", f"{_TRANSFER_BACKEND} needs {_REMOTE_CACHE_ACCESSIBLE}=1")
            require(_LISTEN_IP_INFO in options, f"{_TRANSFER_BACKEND} needs {_LISTEN_IP_INFO}")
        if cache_manager_mode and _LISTEN_IP_INFO in options:
            _check_listen_ip_info(options[_LISTEN_IP_INFO])
        # Checked here: the engine, which would check it, is not given it (init).
        require(options.get(_REMOTE_CACHE_ACCESSIBLE, "0") in ("0", "1"),
                f"{_REMOTE_CACHE_ACCESSIBLE} must be '0' or '1', got {options.get(_REMOTE_CACHE_ACCESSIBLE)!r}")
        self._cache_manager_mode = cache_manager_mode
        return options

    def finalize(self):
        """Release everything; a no-op when not initialized."""
        if not self._engine.initialized:
            return
        if self._agent is not None:   # links and served pins end before the caches go
            self._agent.close()
            self._agent = None
        self._engine.Finalize()
        self._manager = None
        if LLMDataDist.llm_engine_instance is self:
            LLMDataDist.llm_engine_instance = None

    def _owns_live_manager(self, manager):
        """Whether `manager` belongs to this LLMDataDist's current initialization."""
        return manager is self._manager and self._engine.initialized

    def _require_initialized(self):
        require(self._engine.initialized, "LLMDataDist is not initialized: call init first", LLMStatusCode.LLM_FAILED)

    def _require_mode(self, name, cache_manager_mode):
        self._require_initialized()
        require(self._cache_manager_mode == cache_manager_mode,
                f"{name} is {'only' if cache_manager_mode else 'not'} available with {_CACHE_MANAGER}=1 "
                "(LLMConfig.enable_cache_manager)")

    @property
    def cache_manager(self):
        """v2's CacheManager: only with enable_cache_manager."""
        self._require_mode("cache_manager", True)
        return self._manager

    @property
    def kv_cache_manager(self):
        """v1's KvCacheManager: only without enable_cache_manager."""
        self._require_mode("kv_cache_manager", False)
        return self._manager

    def link(self, comm_name, cluster_rank_info, rank_table):
        """Link the clusters of a rank table (cache-manager mode). Not implemented by llmdd yet."""
        self._require_mode("link", True)
        check_type("comm_name", comm_name, str)
        require(0 < len(comm_name) < _MAX_COMM_NAME, f"comm_name must have 1 to {_MAX_COMM_NAME - 1} characters")
        check_type("cluster_rank_info", cluster_rank_info, dict)
        require(len(cluster_rank_info) <= _MAX_RANK_TABLE_NODES,
                f"cluster_rank_info has more than {_MAX_RANK_TABLE_NODES} clusters")
        for cluster_id, rank in cluster_rank_info.items():
            check_int("cluster_rank_info key", cluster_id, UINT64)
            check_int("cluster_rank_info value", rank, UINT32)
        check_type("rank_table", rank_table, str)
        ranks = list(cluster_rank_info.values())
        require(len(ranks) > 1, "cluster_rank_info needs at least 2 clusters")
        require(ranks == sorted(ranks), "the ranks of cluster_rank_info must be in order")
        raise not_enabled("link")

    def unlink(self, comm_id):
        """Undo link (cache-manager mode). Not implemented by llmdd yet."""
        self._require_mode("unlink", True)
        check_int("comm_id", comm_id, UINT64)
        raise not_enabled("unlink")

    def query_register_mem_status(self, comm_id):
        """The RegisterMemStatus of a link (cache-manager mode). Not implemented by llmdd yet."""
        self._require_mode("query_register_mem_status", True)
        check_int("comm_id", comm_id, UINT64)
        raise not_enabled("query_register_mem_status")

    def check_link_status(self, remote_cluster_id):
        """Whether the link to a cluster is up (v1 mode). Not implemented by llmdd yet."""
        self._require_mode("check_link_status", False)
        check_int("remote_cluster_id", remote_cluster_id, UINT64)
        raise not_enabled("check_link_status")

    def _check_clusters(self, clusters, timeout):
        self._require_initialized()
        check_int("timeout", timeout, INT32)
        require(timeout > 0, f"timeout must be > 0, got {timeout}")
        check_sequence("clusters", clusters, LLMClusterInfo)
        for cluster in clusters:
            check_int("remote_cluster_id", cluster.remote_cluster_id, UINT64)

    def link_clusters(self, clusters, timeout=3000):
        """Link to clusters (LLMClusterInfo), returning (status, [status per cluster]); a link
        serves both sides, which may each pull, push and unlink on it."""
        self._check_clusters(clusters, timeout)
        if self._cache_manager_mode and not self._options.get(_LOCAL_COMM_RES):
            for cluster in clusters:
                require(bool(cluster.local_ip_info_list), "local_ip_info_list is empty: call append_local_ip_info "
                                                          f"(or set {_LOCAL_COMM_RES})")
        status, statuses = self._linked("link_clusters", clusters, lambda agent, targets: agent.link(targets, timeout))
        self._has_linked = self._has_linked or any(each == LLMStatusCode.LLM_SUCCESS for each in statuses)
        return status, statuses

    def unlink_clusters(self, clusters, timeout=3000, force=False):
        """Unlink clusters, returning (status, [status per cluster]); force tears down only this side."""
        self._check_clusters(clusters, timeout)
        check_type("force", force, bool)
        # The hixl backend names the clusters to unlink by id alone (hixl_transfer_engine.cc).
        by_id = _TRANSFER_BACKEND in self._options
        return self._linked("unlink_clusters", clusters,
                            lambda agent, targets: agent.unlink(targets, timeout, force, by_id=by_id))

    def _linked(self, call, clusters, link):
        """(status, [status per cluster]) of link(agent, link targets), in the drop-in's status codes."""
        if not clusters:
            # CANN's link managers refuse an empty list with a status, not an exception
            # (llm_link_manager.cc, hixl_transfer_engine.cc: "clusters size must > 0").
            return LLMStatusCode.LLM_PARAM_INVALID, []
        with reraising:
            status, statuses = link(self._transfer_agent(call), [_LinkTarget(cluster) for cluster in clusters])
        return status_of(status), [status_of(each) for each in statuses]

    def switch_role(self, role, switch_options=None):
        """Change this cluster's role. Not implemented by llmdd yet."""
        self._require_initialized()
        check_type("role", role, LLMRole)
        if switch_options is not None:
            check_type("switch_options", switch_options, dict)
        options = switch_options or {}
        if not self._cache_manager_mode:
            require(role != self._role, f"the role is already {role.name}")
            require(role != LLMRole.PROMPT or _LISTEN_IP_INFO in options,
                    f"switching to PROMPT needs {_LISTEN_IP_INFO} in switch_options")
        if _LISTEN_IP_INFO in options:
            _check_listen_ip_info(options[_LISTEN_IP_INFO])
        raise not_enabled("switch_role")


def _check_listen_ip_info(listen_ip_info):
    """'ip:port', as cache-manager mode splits it."""
    check_type(_LISTEN_IP_INFO, listen_ip_info, str)
    parts = listen_ip_info.split(":")
    require(len(parts) == 2 and parts[1].isascii() and parts[1].isdigit(),
            f"{_LISTEN_IP_INFO}={listen_ip_info!r} is not 'ip:port'")


_NUMPY_TABLES = ("dtype_to_np_dtype", "valid_np_dtypes", "np_dtype_to_dtype")


def __getattr__(name):
    """CANN's numpy dtype tables, built (and numpy imported) on first use; and CANN's v1-only
    Tensor / TensorDesc, which llmdd does not provide (CANN raises ImportError without v1 too)."""
    if name in _NUMPY_TABLES:
        import numpy

        # CANN's own table: BF16 shows as numpy.float16 (numpy has no bfloat16), and so has no way back.
        dtype_to_np_dtype = {
            DataType.DT_FLOAT: numpy.float32, DataType.DT_FLOAT16: numpy.float16, DataType.DT_BF16: numpy.float16,
            DataType.DT_INT8: numpy.int8, DataType.DT_INT16: numpy.int16, DataType.DT_UINT16: numpy.uint16,
            DataType.DT_UINT8: numpy.uint8, DataType.DT_INT32: numpy.int32, DataType.DT_INT64: numpy.int64,
            DataType.DT_UINT32: numpy.uint32, DataType.DT_UINT64: numpy.uint64, DataType.DT_BOOL: numpy.bool_,
            DataType.DT_DOUBLE: numpy.double, DataType.DT_STRING: numpy.bytes_,
        }
        globals().update(
            dtype_to_np_dtype=dtype_to_np_dtype,
            valid_np_dtypes=list(dtype_to_np_dtype.values()),
            np_dtype_to_dtype={numpy.dtype(np_type): data_type for data_type, np_type in dtype_to_np_dtype.items()
                               if data_type is not DataType.DT_BF16},
        )
        return globals()[name]
    if name in ("Tensor", "TensorDesc"):
        raise ImportError(f"llmdd.llm_datadist has no {name}: it is CANN's v1-only (llm_datadist_v1) type")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
