"""The cache managers' transfer calls: pulls and pushes with CANN's argument checks, whose bytes
move through the LLMDataDist's transfer agent (llmdd.transfer, over Mooncake's Transfer Engine)."""
from ... import _options as keys
from ..._limits import INT64, TENSOR_NUM_PER_LAYER, UINT32
from ..status import LLMException, LLMStatusCode, reraising, status_of
from ..utils.utils import check_int, check_ints, check_layer_range, check_type, require
from .llm_types import BlocksCacheKey, CacheKey, CacheKeyByIdAndIndex, check_cache_key

__all__ = ["CacheTransfers"]


def check_tensor_num_per_layer(tensor_num_per_layer):
    check_int("tensor_num_per_layer", tensor_num_per_layer, UINT32)
    require(tensor_num_per_layer > 0, "tensor_num_per_layer must be > 0")


class CacheTransfers:
    """pull_cache, pull_blocks, push_cache and push_blocks of a cache manager (which gives
    _require_live, _check_cache, _datadist, _registry and _remote_cache_accessible)."""

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
                   size=-1, tensor_num_per_layer=TENSOR_NUM_PER_LAYER):
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
                    dst_layer_range=None, tensor_num_per_layer=TENSOR_NUM_PER_LAYER):
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

    def _entry(self, cache):
        """The registry's entry of a local cache of this initialization (its id alone could name a
        newer cache); LLM_KV_CACHE_NOT_EXIST for one the manager does not hold."""
        try:
            entry = self._registry.entry_of(cache)
        except ValueError:
            entry = None
        require(entry is not None and entry.is_blocks_cache is not None,
                f"cache {cache.cache_id} is not held by this cache manager", LLMStatusCode.LLM_KV_CACHE_NOT_EXIST)
        return entry

    @staticmethod
    def _layers(kwargs):
        src_layer_range, dst_layer_range = kwargs.get("src_layer_range"), kwargs.get("dst_layer_range")
        tensor_num_per_layer = kwargs.get("tensor_num_per_layer", TENSOR_NUM_PER_LAYER)
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

    def _require_remote_cache_accessible(self, name):
        require(self._remote_cache_accessible, f"{name} needs {keys.ENABLE_REMOTE_CACHE_ACCESSIBLE} "
                                               "(LLMConfig.enable_remote_cache_accessible = True)")

    @staticmethod
    def _check_layers(kwargs):
        """The layer keywords of pull_cache/pull_blocks; layer i is tensors
        [i * tensor_num_per_layer, (i + 1) * tensor_num_per_layer)."""
        unknown = set(kwargs) - {"src_layer_range", "dst_layer_range", "tensor_num_per_layer"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        check_tensor_num_per_layer(kwargs.get("tensor_num_per_layer", TENSOR_NUM_PER_LAYER))
        for name in ("src_layer_range", "dst_layer_range"):
            layer_range = check_layer_range(name, kwargs.get(name))
            if layer_range is not None:
                check_int(name, layer_range.stop - 1, UINT32)

    @staticmethod
    def _check_push_layers(src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer):
        check_tensor_num_per_layer(tensor_num_per_layer)
        layers = range(src_cache.cache_desc.num_tensors // tensor_num_per_layer)
        src_layers = layers if src_layer_range is None else check_layer_range("src_layer_range", src_layer_range)
        dst_layers = layers if dst_layer_range is None else check_layer_range("dst_layer_range", dst_layer_range)
        require(len(src_layers) == len(dst_layers), "src_layer_range and dst_layer_range must have the same length")
