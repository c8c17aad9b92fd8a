"""CacheLayout: where a cache's tensors lie, as the engine describes a live cache to the registry
and the transfer layer (LlmDataDist._layout and _layout_by_id)."""


class CacheLayout:
    """One cache's memory: num_tensors tensors of tensor_bytes each at tensor_addrs, each split
    into `batch` entries (shape[0]: batch entries, or blocks of a blocks cache). regions are what
    a transfer engine registers: one slab of every tensor for an allocated cache, one region a
    tensor for a registered one (its tensors lie where the caller put them)."""

    __slots__ = ("cache_id", "tensor_addrs", "tensor_bytes", "batch", "placement", "registered", "regions")

    def __init__(self, cache_id, tensor_addrs, tensor_bytes, batch, placement, registered, regions):
        self.cache_id = cache_id
        self.tensor_addrs = tensor_addrs    # a tuple of ints
        self.tensor_bytes = tensor_bytes
        self.batch = batch
        self.placement = placement          # the engine's CachePlacement value
        self.registered = registered        # the caller's memory (RegisterKvCache), never freed by llmdd
        self.regions = regions              # a tuple of (address, nbytes)

    @property
    def num_tensors(self):
        return len(self.tensor_addrs)

    @property
    def block_bytes(self):
        return self.tensor_bytes // self.batch

    def __repr__(self):
        return (f"CacheLayout(cache_id={self.cache_id}, num_tensors={self.num_tensors}, "
                f"tensor_bytes={self.tensor_bytes}, batch={self.batch}, registered={self.registered})")
