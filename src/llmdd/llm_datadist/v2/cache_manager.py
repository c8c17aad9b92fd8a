"""CANN's v2/cache_manager module: CacheManager (v2, llm.EnableCacheManager) and KvCacheManager
(v1): caches from the memory pools or registered from the caller's memory, named by id and keys
(the engine's one CacheRegistry), copies, swaps, and pulls and pushes over the engine's one
transfer service (llmdd.transfer)."""

from ... import _options as keys
from ..._limits import INT64, UINT32, UINT64
from ..configs import LLMRole
from ..status import LLMStatusCode, not_enabled, reraised, reraising
from ..utils.utils import (
    check_int,
    check_ints,
    check_not_none,
    check_sequence,
    check_type,
    require,
)
from ._transfers import CacheTransfers
from .llm_types import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    KvCache,
    LayerSynchronizer,
    MemInfo,
    Memtype,
    Placement,
    TransferConfig,
    TransferWithCacheKeyConfig,
    check_cache_key,
)

__all__ = ["CacheManager", "KvCacheManager"]


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


class CacheManager(CacheTransfers):
    """v2's cache_manager (llm.EnableCacheManager): caches from the memory pools or registered
    from the caller's memory, named by id and keys (llmdd's cache registry), copies, swaps.
    Pulls and pushes move caches over the LLMDataDist's links (llmdd.transfer)."""

    _cache_type = Cache
    _v2 = True  # CANN's v2 rules: pools required, blocks caches apart from whole caches
    _task_timeout_status = LLMStatusCode.LLM_TIMEOUT   # a CacheTask's answer while it runs

    def __init__(self, datadist, options):
        self._datadist = datadist
        self._engine = datadist._engine
        self._device_pool = bool(options.get("llm.MemPoolConfig"))
        self._host_pool = bool(options.get("llm.HostMemPoolConfig"))
        self._remote_cache_accessible = options.get(keys.ENABLE_REMOTE_CACHE_ACCESSIBLE, "0") == "1"
        self._registry = self._engine._registry()
        self._tasks = None   # the layer-wise transfers (_layerwise.LayerwiseTasks), from the first one

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
        self._deallocate(cache, "deallocate_cache")

    def deallocate_blocks_cache(self, cache):
        """Drop the reference of a cache from allocate_blocks_cache, as deallocate_cache does."""
        self._require_live()
        self._check_cache("cache", cache, blocks=True)
        self._deallocate(cache, "deallocate_blocks_cache")

    def _deallocate(self, cache, call):
        # A Cache of an earlier initialization, or of another LLMDataDist, is not there whatever
        # its id (ids start again at 1): as for any cache not there, v2 frees nothing and succeeds.
        if self._engine._holds(cache):
            self._succeed(self._registry.deallocate(cache.cache_id), call)

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

    def transfer_cache_async(self, src_cache, layer_synchronizer, transfer_configs, src_block_indices=None,
                             dst_block_indices=None, dst_block_memory_size=None):
        """Push `src_cache` layer by layer as layer_synchronizer says each is computed, to remote
        caches by key (TransferWithCacheKeyConfig, with enable_remote_cache_accessible) or to raw
        remote addresses (TransferConfig); a CacheTask at once (v2/_layerwise.py)."""
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
        config_type = TransferWithCacheKeyConfig if self._v2 and self._remote_cache_accessible else TransferConfig
        check_sequence("transfer_configs", transfer_configs, config_type)
        require(bool(dst_block_indices) or dst_block_memory_size in (None, 0),
                "dst_block_memory_size must be None or 0 unless the destination is blocks")
        from ._layerwise import start_transfer   # its worker machinery loads on first use
        blocks = (list(src_block_indices or ()), list(dst_block_indices or ()), dst_block_memory_size or 0)
        return start_transfer(self, src_cache, layer_synchronizer, transfer_configs, blocks)

    def _layerwise_tasks(self):
        if self._tasks is None:
            from ._layerwise import LayerwiseTasks
            self._tasks = LayerwiseTasks()
        return self._tasks

    def _ending_tasks(self):
        """Around finalize's end of the links: layer-wise transfers stop first and are over after."""
        import contextlib   # at finalize only: importing the drop-in stays light (test_names)
        return contextlib.nullcontext() if self._tasks is None else self._tasks.ending()

    def remap_registered_memory(self, mem_infos):
        """Map the memory behind registered caches again after a device memory fault. llmdd exposes
        memory to a peer per transfer, so the next transfer maps it anew: this checks CANN's rules
        and that each range lies inside a cache's memory (docs/dropin.md)."""
        self._require_live()
        infos = mem_infos if isinstance(mem_infos, list) else [mem_infos]
        for index, info in enumerate(infos):
            check_type(f"mem_infos[{index}]", info, MemInfo)
            require(info.mem_type == Memtype.MEM_TYPE_DEVICE, f"mem_infos[{index}] must be MEM_TYPE_DEVICE")
            require(info.addr != 0, f"mem_infos[{index}].addr must not be 0")
            require(info.size > 0, f"mem_infos[{index}].size must be > 0")
        require(bool(infos), "mem_infos is empty")   # comm_entity_manager.cc RemapRegisteredMemory
        agent = self._datadist._transfer_agent("remap_registered_memory")
        require(bool(agent.linked_clusters()), "remap_registered_memory needs a link", LLMStatusCode.LLM_NOT_YET_LINK)
        holders = self._registry.holding([(info.addr, info.size) for info in infos])
        outside = [info for info, holder in zip(infos, holders) if holder is None]
        # CANN answers LLM_FAILED when HCCL refuses to remap memory it never registered.
        require(not outside, f"not inside a cache's memory: {outside}", LLMStatusCode.LLM_FAILED)


class KvCacheManager(CacheManager):
    """v1's kv_cache_manager (without llm.EnableCacheManager): the same calls, KvCache results,
    no pool needed and no blocks-cache distinction in its checks. v1's roles hold: a prompt keys
    its caches, a decoder pulls them (hicann/ge api/python/llm_datadist_v1/kv_cache_manager.py).
    v1 has no push."""

    _cache_type = KvCache
    _v2 = False
    _task_timeout_status = LLMStatusCode.LLM_WAIT_PROCESS_TIMEOUT

    def _require_role(self, call, role):
        actual = self._datadist.role   # switch_role changes it
        require(actual == role, f"{call} is a {role.name}'s call, not a {actual.name}'s")

    def allocate_cache(self, cache_desc, cache_keys=()):
        """As CacheManager.allocate_cache; only a prompt gives keys (decoders pull)."""
        self._require_live()
        check_type("cache_desc", cache_desc, CacheDesc)
        check_sequence("cache_keys", cache_keys, CacheKey)
        if cache_keys:
            self._require_role("allocate_cache with cache_keys", LLMRole.PROMPT)
        return self._allocate(cache_desc, tuple(cache_keys), False, "allocate_cache")

    def allocate_blocks_cache(self, cache_desc, blocks_cache_key=None):
        """As CacheManager.allocate_blocks_cache; a decoder gives no key."""
        self._require_live()
        check_type("cache_desc", cache_desc, CacheDesc)
        keys = () if blocks_cache_key is None else (check_type("blocks_cache_key", blocks_cache_key, BlocksCacheKey),)
        if keys:
            require(self._datadist.role != LLMRole.DECODER, "a DECODER's blocks cache takes no blocks_cache_key")
        return self._allocate(cache_desc, keys, True, "allocate_blocks_cache")

    def deallocate_cache(self, cache):
        """As CacheManager.deallocate_cache; a cache of this manager has no per_device_tensor_addrs
        after it, as in v1."""
        super().deallocate_cache(cache)
        if self._engine._holds(cache):
            cache._deallocated = True

    def remove_cache_key(self, cache_key):
        """As CacheManager.remove_cache_key: a prompt's call."""
        self._require_live()
        self._require_role("remove_cache_key", LLMRole.PROMPT)
        super().remove_cache_key(cache_key)

    def pull_cache(self, cache_key, kv_cache, batch_index=0, size=-1, **kwargs):
        """Pull a prompt's batch entry (by CacheKey, whose reference the prompt then drops, or by
        CacheKeyByIdAndIndex) into batch entry batch_index of kv_cache: `size` bytes of each tensor
        (-1: all). Keywords: src_layer_range, dst_layer_range, tensor_num_per_layer, and v1's
        src_cache_offset and dst_cache_offset, which llmdd does not move bytes at yet."""
        self._require_live()
        self._require_role("pull_cache", LLMRole.DECODER)
        check_type("cache_key", cache_key, (CacheKey, CacheKeyByIdAndIndex))
        check_type("kv_cache", kv_cache, KvCache)
        require(kv_cache.cache_desc.placement == Placement.DEVICE, "pull_cache needs a DEVICE kv_cache")
        check_int("size", size, INT64)
        check_int("batch_index", batch_index, UINT32)
        require(size == -1 or size > 0, f"size must be -1 or > 0, got {size}")
        offsets = {name: kwargs.pop(name, None) for name in ("src_cache_offset", "dst_cache_offset")}
        for name, offset in offsets.items():   # None: not given (v1's check_positive_or_set_default)
            if offset is not None and check_int(name, offset, INT64) < 0:
                raise ValueError(f"{name} must be >= 0, got {offset}")
        if isinstance(cache_key, CacheKey):
            check_cache_key(cache_key)
        self._check_layers(kwargs)
        given = [name for name, offset in offsets.items() if offset is not None]
        if given:
            raise not_enabled(f"pull_cache's {' and '.join(given)}")
        self._transferred("pull_cache", lambda agent: agent.pull_cache(
            cache_key.cluster_id, cache_key, self._entry(kv_cache), batch_index, size, **self._layers(kwargs)))

    def pull_blocks(self, prompt_cache_key, decoder_kv_cache, prompt_blocks, decoder_blocks, **kwargs):
        """Pull blocks prompt_blocks of a prompt's blocks cache (its BlocksCacheKey) into blocks
        decoder_blocks of decoder_kv_cache, pair by pair. Keywords: src_layer_range,
        dst_layer_range, tensor_num_per_layer."""
        self._require_live()
        self._require_role("pull_blocks", LLMRole.DECODER)
        check_type("prompt_cache_key", prompt_cache_key, BlocksCacheKey)
        check_type("decoder_kv_cache", decoder_kv_cache, KvCache)
        check_ints("prompt_blocks", prompt_blocks, containers=list)
        check_ints("decoder_blocks", decoder_blocks, containers=list)
        require(decoder_kv_cache.cache_desc.placement == Placement.DEVICE, "pull_blocks needs a DEVICE kv_cache")
        require(len(prompt_blocks) > 0 and len(decoder_blocks) > 0, "prompt_blocks and decoder_blocks are empty")
        require(len(prompt_blocks) == len(decoder_blocks), "prompt_blocks and decoder_blocks differ in length")
        self._check_layers(kwargs)
        self._transferred("pull_blocks", lambda agent: agent.pull_blocks(
            prompt_cache_key.cluster_id, prompt_cache_key, self._entry(decoder_kv_cache), list(prompt_blocks),
            list(decoder_blocks), **self._layers(kwargs)))

    def transfer_cache_async(self, src_cache, layer_synchronizer, transfer_configs, src_block_indices=None,
                             dst_block_indices=None, dst_block_memory_size=None):
        """As CacheManager.transfer_cache_async with TransferConfigs: a prompt's call, and no cache
        cut into blocks (v1's llm_utils.py transfer_cache_async)."""
        self._require_live()
        self._require_role("transfer_cache_async", LLMRole.PROMPT)
        check_type("src_cache", src_cache, KvCache)
        require(bool(src_block_indices) or dst_block_indices is None, "v1 transfers no cache into blocks")
        return super().transfer_cache_async(src_cache, layer_synchronizer, transfer_configs, src_block_indices,
                                            dst_block_indices, dst_block_memory_size)

    @property
    def remap_registered_memory(self):
        raise AttributeError("v1's KvCacheManager has no remap_registered_memory: it needs llm.EnableCacheManager")

    # v1's KvCacheManager has no push (pushes are cache-manager mode's): not there, as in CANN.
    @property
    def push_cache(self):
        raise AttributeError("v1's KvCacheManager has no push_cache: pushes need llm.EnableCacheManager")

    @property
    def push_blocks(self):
        raise AttributeError("v1's KvCacheManager has no push_blocks: pushes need llm.EnableCacheManager")


