# Cache copies (CopyKvCache, CopyKvBlocks; docs/facts.md section 4), included into _datadist:
# they read Cache and engine state, and call the runtime through the engine's DeviceRuntime. A
# copy goes in three steps, so that no Python code runs between reading a cache's addresses and
# using them: (1) convert and check every Python argument (an item's __index__ may run any code,
# even DeallocateCache); (2) pin the engine's caches like exports, so that a DeallocateCache from
# another thread while the GIL is released frees their memory only when the copy lets go; (3) read the addresses, check them against
# what was pinned, and copy. Everything is checked before the first byte moves, so only a
# runtime failure can stop a copy part-way.
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdint cimport UINT64_MAX
from libc.stdlib cimport free, malloc, qsort

from ._acl cimport (
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_MEMCPY_HOST_TO_HOST,
    aclrtContext,
    aclrtMemcpyKind,
)


# One side of a copy: where its tensors are and how they split into batch entries (blocks).
cdef struct CopyEndpoint:
    uintptr_t first_addr      # tensor i is at first_addr + i * stride ...
    uint64_t stride
    uintptr_t* addrs          # ... or at addrs[i], for a cache whose addresses the caller set
    uint32_t num_tensors
    uint64_t tensor_bytes
    uint64_t batch            # shape[0]: the number of blocks
    uint64_t block_bytes      # tensor_bytes / shape[0]
    bint on_device            # placement: what the copy rules (D2D, D2H, H2D) are about
    bint in_device_memory     # where the bytes are, for the runtime's memcpy kind
    Py_ssize_t cache_key      # the Cache object, to tell a copy within one cache


cdef inline uintptr_t _tensor_address(const CopyEndpoint* side, uint32_t index) noexcept nogil:
    return side.addrs[index] if side.addrs != NULL else side.first_addr + index * side.stride


cdef uint32_t _copy_endpoint(LlmDataDist engine, Cache cache, _CacheMemory pinned, CopyEndpoint* side,
                             bint with_addresses) except? 0xFFFFFFFE:
    """Fill `side` for `cache` from its state now, running no Python code: LLM_KV_CACHE_NOT_EXIST
    for a device cache this engine does not hold (or no longer holds the memory `pinned`),
    LLM_PARAM_INVALID for a cache that cannot take part in a copy. Caller-set addresses are
    copied into side.addrs only `with_addresses` (the caller frees them)."""
    cdef DescFields fields
    cdef bint engine_cache = cache.belongs_to(engine)
    cdef tuple shape
    cdef CacheRecord* record
    cdef Py_ssize_t i
    cdef bint caller_addresses = True   # per-tensor addresses: a host cache's or a registered cache's
    side.addrs = NULL
    side.cache_key = <Py_ssize_t><PyObject*>cache
    if cache._engine is engine and not engine_cache:
        return LLM_KV_CACHE_NOT_EXIST    # a cache of an earlier initialization of this engine
    if engine_cache:
        fields = cache._desc_fields      # what was allocated, whatever was set since
        shape = cache._desc_shape
    elif cache._desc is not None:
        fields = cache._desc.fields
        shape = cache._desc._shape
    else:
        return LLM_KV_CACHE_NOT_EXIST    # a default Cache: a device cache nobody allocated
    if fields.placement == LLMDD_kDevice or engine_cache:
        record = engine._caches.table.find(cache._cache_id) if engine_cache else NULL
        if record == NULL or (pinned is not None and not _same_memory(&record.memory, &pinned.memory)):
            return LLM_KV_CACHE_NOT_EXIST
        side.first_addr = cache._first_addr
        side.stride = cache._addr_stride
        caller_addresses = record.memory.source == FROM_CALLER
    elif fields.placement == LLMDD_kHost:
        # Caller-owned host memory: what can be checked is the count and that none is NULL.
        if cache._caller_addrs is None or len(cache._caller_addrs) != fields.num_tensors:
            return LLM_PARAM_INVALID
        if 0 in cache._caller_addrs:
            return LLM_PARAM_INVALID
    else:
        return LLM_PARAM_INVALID
    if tensor_bytes(&fields, &side.tensor_bytes) != LLM_SUCCESS or side.tensor_bytes % <uint64_t>shape[0] != 0:
        return LLM_PARAM_INVALID
    side.on_device = fields.placement == LLMDD_kDevice
    # On the sim build a registered cache is the caller's host memory, whatever its placement.
    side.in_device_memory = side.on_device and not (LLMDD_SIMULATED and engine_cache and caller_addresses)
    side.num_tensors = fields.num_tensors
    side.batch = shape[0]
    side.block_bytes = side.tensor_bytes // side.batch
    if with_addresses and caller_addresses:
        side.addrs = <uintptr_t*>malloc(side.num_tensors * sizeof(uintptr_t))
        if side.addrs == NULL:
            raise MemoryError()
        for i in range(side.num_tensors):
            side.addrs[i] = cache._caller_addrs[i]
        # A host cache over the engine's own device pool (CANN's tests make their CPU caches
        # so) is device memory to the runtime.
        if not side.on_device and _within_device_pool(engine, side):
            side.in_device_memory = True
    return LLM_SUCCESS


cdef inline bint _same_memory(const HeldMemory* a, const HeldMemory* b) noexcept:
    return a.source == b.source and a.address == b.address and a.block == b.block


cdef bint _within_device_pool(LlmDataDist engine, const CopyEndpoint* side) noexcept:
    """Whether every tensor of `side` lies inside the engine's device pool."""
    cdef MemoryPool pool = engine._caches.device_pool
    cdef uint32_t i
    if pool is None:
        return False
    for i in range(side.num_tensors):
        if not pool.holds(side.addrs[i], side.tensor_bytes):
            return False
    return True


cdef _CacheMemory _pin(LlmDataDist engine, Cache cache):
    """Hold the memory of an engine's cache for the length of a copy; None for a cache the
    engine does not hold (the endpoint check then answers for it)."""
    if not cache.belongs_to(engine):
        return None
    try:
        return engine.export_memory(cache._cache_id)
    except ValueError:
        return None


cdef uint32_t _pinned_endpoints(LlmDataDist engine, Cache src_cache, Cache dst_cache, _CacheMemory src_pin,
                                _CacheMemory dst_pin, CopyEndpoint* src, CopyEndpoint* dst) except? 0xFFFFFFFE:
    """Both endpoints with their addresses, each engine cache still the one that was pinned."""
    if src_cache.belongs_to(engine) != (src_pin is not None) or dst_cache.belongs_to(engine) != (dst_pin is not None):
        return LLM_KV_CACHE_NOT_EXIST    # a cache changed hands while its pin was taken
    cdef uint32_t status = _copy_endpoint(engine, src_cache, src_pin, src, True)
    if status == LLM_SUCCESS:
        status = _copy_endpoint(engine, dst_cache, dst_pin, dst, True)
    return status


cdef aclrtMemcpyKind _copy_kind(const CopyEndpoint* src, const CopyEndpoint* dst) noexcept:
    if src.in_device_memory:
        return ACL_MEMCPY_DEVICE_TO_DEVICE if dst.in_device_memory else ACL_MEMCPY_DEVICE_TO_HOST
    return ACL_MEMCPY_HOST_TO_DEVICE if dst.in_device_memory else ACL_MEMCPY_HOST_TO_HOST


cdef uint32_t _copy_kv_cache(LlmDataDist engine, Cache src_cache, Cache dst_cache, uint64_t src_batch_index,
                             uint64_t dst_batch_index, uint64_t offset, int64_t size):
    cdef CopyEndpoint src, dst
    cdef uint32_t status
    cdef uint64_t count
    cdef uint32_t i
    cdef aclError error = ACL_SUCCESS
    cdef aclrtContext previous = NULL
    cdef aclrtMemcpyKind kind
    # Every argument is a C value already: check the engine, pin, then read the addresses.
    cdef _CacheMemory src_pin, dst_pin
    engine._runtime.last_error = ACL_SUCCESS
    if not engine._initialized:
        return LLM_FAILED
    src_pin = _pin(engine, src_cache)
    dst_pin = _pin(engine, dst_cache)
    src.addrs = dst.addrs = NULL
    try:
        status = _pinned_endpoints(engine, src_cache, dst_cache, src_pin, dst_pin, &src, &dst)
        if status != LLM_SUCCESS:
            return status
        # Device to device and device to host only (docs/facts.md section 4).
        if (not src.on_device or src.num_tensors != dst.num_tensors or src_batch_index >= src.batch
                or dst_batch_index >= dst.batch or offset >= src.block_bytes or offset >= dst.block_bytes):
            return LLM_PARAM_INVALID
        count = src.block_bytes - offset if size == -1 else <uint64_t>size
        if size == 0 or size < -1 or count > src.block_bytes - offset or count > dst.block_bytes - offset:
            return LLM_PARAM_INVALID
        kind = _copy_kind(&src, &dst)
        engine._runtime.calls_in_flight += 1
        with nogil:
            error = engine._runtime.bind_context(&previous)
            if error == ACL_SUCCESS:
                for i in range(src.num_tensors):
                    error = copy_memory(
                        <void*>(_tensor_address(&dst, i) + dst_batch_index * dst.block_bytes + offset),
                        <void*>(_tensor_address(&src, i) + src_batch_index * src.block_bytes + offset), count, kind)
                    if error != ACL_SUCCESS:
                        break
                engine._runtime.restore_context(previous)
        engine._runtime.calls_in_flight -= 1
        return engine._runtime.failure(error) if error != ACL_SUCCESS else LLM_SUCCESS
    finally:
        free(src.addrs)
        free(dst.addrs)


cdef int _block_indices(tuple blocks, uint64_t* out, str name) except -1:
    """Python ints into `out`; TypeError for anything else. Negative values become huge
    indices, which the range check refuses."""
    cdef Py_ssize_t i
    for i in range(len(blocks)):
        index = as_integer(blocks[i], name)
        out[i] = <uint64_t>index if 0 <= index <= <uint64_t>UINT64_MAX else UINT64_MAX
    return 0


cdef int _compare_blocks(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


cdef bint _sorted_contains(const uint64_t* values, Py_ssize_t count, uint64_t value) noexcept nogil:
    cdef Py_ssize_t low = 0, high = count
    cdef Py_ssize_t middle
    while low < high:
        middle = (low + high) // 2
        if values[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low < count and values[low] == value


cdef bint _valid_block_table(const CopyEndpoint* src, const CopyEndpoint* dst, const uint64_t* indices,
                             Py_ssize_t count, Py_ssize_t lists, uint64_t* scratch) noexcept nogil:
    """Every index in range, every destination block written once per call, and within one
    cache never a source block that is also written. `scratch` holds lists * count values."""
    cdef Py_ssize_t i, written = lists * count
    for i in range(count):
        if indices[i] >= src.batch:
            return False
    for i in range(written):
        if indices[count + i] >= dst.batch:
            return False
        scratch[i] = indices[count + i]
    qsort(scratch, written, sizeof(uint64_t), _compare_blocks)
    for i in range(1, written):
        if scratch[i] == scratch[i - 1]:
            return False
    if src.cache_key == dst.cache_key:
        for i in range(count):
            if _sorted_contains(scratch, written, indices[i]):
                return False
    return True


cdef aclError _copy_block_runs(LlmDataDist engine, const CopyEndpoint* src, const CopyEndpoint* dst,
                               const uint64_t* src_blocks, const uint64_t* dst_blocks, Py_ssize_t count,
                               aclrtMemcpyKind kind) noexcept nogil:
    """Copy src block src_blocks[k] to dst block dst_blocks[k] in every tensor, one runtime
    copy per run of consecutive blocks."""
    cdef uint32_t tensor
    cdef Py_ssize_t start, end
    cdef uint64_t nbytes
    cdef aclError error
    for tensor in range(src.num_tensors):
        start = 0
        while start < count:
            end = start + 1
            while end < count and src_blocks[end] == src_blocks[end - 1] + 1 and dst_blocks[end] == dst_blocks[end - 1] + 1:
                end += 1
            nbytes = (end - start) * src.block_bytes
            error = copy_memory(<void*>(_tensor_address(dst, tensor) + dst_blocks[start] * dst.block_bytes),
                                <void*>(_tensor_address(src, tensor) + src_blocks[start] * src.block_bytes), nbytes,
                                kind)
            if error != ACL_SUCCESS:
                return error
            start = end
    return ACL_SUCCESS


cdef uint32_t _copy_kv_blocks(LlmDataDist engine, Cache src_cache, Cache dst_cache, object src_blocks,
                              object dst_blocks_list):
    cdef CopyEndpoint src, dst
    cdef uint32_t status
    cdef Py_ssize_t count, lists, j
    cdef uint64_t* indices = NULL      # src blocks, then each destination list, then scratch
    cdef aclError error = ACL_SUCCESS
    cdef aclrtContext previous = NULL
    cdef aclrtMemcpyKind kind
    cdef _CacheMemory src_pin, dst_pin
    engine._runtime.last_error = ACL_SUCCESS
    if not engine._initialized:
        return LLM_FAILED
    if not isinstance(src_blocks, (list, tuple)):
        raise TypeError(f"src_blocks must be a list of ints, not {type(src_blocks).__name__}")
    if not isinstance(dst_blocks_list, (list, tuple)):
        raise TypeError("dst_blocks_list must be a list of lists of ints")
    src.addrs = dst.addrs = NULL
    # (1) The caches as they are now, for the status and the bounds of the block table: each
    # destination block is written at most once, so the table has at most dst.batch entries
    # per list and in all, and anything longer is refused before it costs memory.
    status = _copy_endpoint(engine, src_cache, None, &src, False)
    if status == LLM_SUCCESS:
        status = _copy_endpoint(engine, dst_cache, None, &dst, False)
    if status != LLM_SUCCESS:
        return status
    # Tuples from here on: an item's __index__ may run code that changes the caller's lists.
    src_blocks = tuple(src_blocks)
    dst_blocks_list = tuple(dst_blocks_list)
    count = len(src_blocks)
    lists = len(dst_blocks_list)
    if count == 0 or lists == 0 or <uint64_t>count > dst.batch or <uint64_t>lists > dst.batch // <uint64_t>count:
        return LLM_PARAM_INVALID
    if <uint64_t>lists * <uint64_t>count > <uint64_t>PY_SSIZE_T_MAX // (3 * sizeof(uint64_t)):
        raise MemoryError()   # a table no host could hold, for a destination of 2**60 blocks
    try:
        indices = <uint64_t*>malloc((2 * lists + 1) * count * sizeof(uint64_t))
        if indices == NULL:
            raise MemoryError()
        _block_indices(src_blocks, indices, "src block")
        for j in range(lists):
            dst_blocks = dst_blocks_list[j]
            if not isinstance(dst_blocks, (list, tuple)):
                raise TypeError("dst_blocks_list must be a list of lists of ints")
            dst_blocks = tuple(dst_blocks)
            if len(dst_blocks) != count:
                return LLM_PARAM_INVALID
            _block_indices(dst_blocks, indices + (j + 1) * count, "dst block")
        # (2) Pin; (3) from here no Python code runs until the copy is done.
        src_pin = _pin(engine, src_cache)
        dst_pin = _pin(engine, dst_cache)
        status = _pinned_endpoints(engine, src_cache, dst_cache, src_pin, dst_pin, &src, &dst)
        if status != LLM_SUCCESS:
            return status
        # D2D, D2H and H2D; not H2H; equal block sizes and tensor counts (docs/facts.md section 4).
        if ((not src.on_device and not dst.on_device) or src.block_bytes != dst.block_bytes
                or src.num_tensors != dst.num_tensors
                or not _valid_block_table(&src, &dst, indices, count, lists, indices + (lists + 1) * count)):
            return LLM_PARAM_INVALID
        kind = _copy_kind(&src, &dst)
        engine._runtime.calls_in_flight += 1
        with nogil:
            error = engine._runtime.bind_context(&previous)
            if error == ACL_SUCCESS:
                for j in range(lists):
                    error = _copy_block_runs(engine, &src, &dst, indices, indices + (j + 1) * count, count, kind)
                    if error != ACL_SUCCESS:
                        break
                engine._runtime.restore_context(previous)
        engine._runtime.calls_in_flight -= 1
        return engine._runtime.failure(error) if error != ACL_SUCCESS else LLM_SUCCESS
    finally:
        free(indices)
        free(src.addrs)
        free(dst.addrs)
