# CacheAllocator: the caches of one initialization, their memory, exports and statistics.
#
# Rules: docs/facts.md sections 4 and 5. A cache is one slab (tensors at aligned
# offsets, one allocation, one region to register with a transfer engine) from the runtime, or
# whole pages of a pool. Exported memory (_CacheMemory) is the lifetime rule of views (docs/views.md,
# "Lifetime"): memory a view, array, tensor, copy or transfer holds outlives DeallocateCache
# and Finalize, counted as pending, until the last export is gone; so nothing ever points at freed
# memory. Every method runs with the GIL and releases it only inside a runtime call.
cimport cython
from cpython.ref cimport Py_REFCNT
from libc.stdint cimport INT64_MAX, SIZE_MAX, UINT64_MAX
from libc.stdlib cimport free, malloc

from ._acl cimport ACL_SUCCESS, aclError
from ._desc cimport tensor_bytes
from ._llm_facts cimport (
    LLM_DEVICE_OUT_OF_MEMORY,
    LLM_FAILED,
    LLM_KV_CACHE_NOT_EXIST,
    LLM_PARAM_INVALID,
    LLM_SUCCESS,
    LLMDD_kDevice,
    LLMDD_kHost,
)

# No device holds 2**60 bytes: a larger cache is out of memory without asking the runtime.
cdef uint64_t MAX_HELD_BYTES = 1ULL << 60

# cache_id comes from one process-wide counter starting at 1 (docs/facts.md section 4, v1); in cache-manager
# mode (llm.EnableCacheManager=1, v2) each engine counts its own from 1, as v2's cache engine does,
# but goes on counting across its initializations where v2 starts again (continue_ids_after).
# The GIL guards both.
cdef int64_t _next_cache_id = 1

# Allocators from open to their teardown, for the fork handler (LlmDataDist's, which calls
# abandon_allocators_in_child): one whose engine is gone lives on while exports hold it.
cdef object _live_allocators = None


cdef void abandon_allocators_in_child():
    """After fork, in the child: every live allocator's memory is the parent's; free none of it."""
    if _live_allocators is not None:
        for allocator in list(_live_allocators):
            (<CacheAllocator>allocator).abandon()
        _live_allocators.clear()


cdef inline bint _round_up(uint64_t value, uint64_t alignment, uint64_t* rounded) noexcept nogil:
    """value rounded up to a power-of-two alignment; False when that overflows."""
    if value > UINT64_MAX - (alignment - 1):
        return False
    rounded[0] = (value + alignment - 1) & ~(alignment - 1)
    return True


cdef inline void _count_allocation(MemoryStats* stats, bint on_host, uint64_t nbytes) noexcept:
    stats.num_caches += 1
    stats.num_allocs += 1
    if on_host:
        stats.host_bytes_in_use += nbytes
        if stats.host_bytes_in_use > stats.peak_host_bytes_in_use:
            stats.peak_host_bytes_in_use = stats.host_bytes_in_use
    else:
        stats.bytes_in_use += nbytes
        if stats.bytes_in_use > stats.peak_bytes_in_use:
            stats.peak_bytes_in_use = stats.bytes_in_use


cdef inline void _count_free(MemoryStats* stats, const HeldMemory* memory) noexcept:
    if memory.source == FROM_CALLER:
        return   # registered memory is the caller's: memory_stats never counted it
    stats.num_caches -= 1
    stats.num_frees += 1
    if memory.source == FROM_HOST_POOL:
        stats.host_bytes_in_use -= memory.nbytes
    else:
        stats.bytes_in_use -= memory.nbytes


@cython.no_gc_clear  # __dealloc__ needs self.allocator, whatever order a collection clears things in
@cython.auto_pickle(False)  # a copy would be a second owner: a double free
cdef class _CacheMemory:
    """Owns a cache's memory once it was exported (see CacheAllocator.export)."""

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} owns or points at memory: it cannot be copied or pickled")

    def __dealloc__(self):
        if self.released and self.allocator is not None:
            self.allocator.free_pending(self)


@cython.no_gc_clear  # an export's __dealloc__ frees through the runtime and pools held here
cdef class CacheAllocator:

    cdef uint32_t open(self, DeviceRuntime runtime, int32_t device, int malloc_policy, uint64_t alignment,
                       bint own_cache_ids, device_pool, host_pool):
        """Open the runtime on `device`, then the pools configured: all of them or none."""
        global _live_allocators
        cdef MemoryPool pool
        cdef uint32_t status = runtime.open(device, malloc_policy)
        if status != LLM_SUCCESS:
            return status
        self.runtime = runtime
        self.alignment = alignment
        self.own_cache_ids = own_cache_ids
        self.next_own_cache_id = 1
        self.table = CacheTable.__new__(CacheTable)
        self.exports = {}
        if device_pool is not None:
            pool = MemoryPool.__new__(MemoryPool)
            status = pool.open(runtime, False, device_pool.memory_size, device_pool.page_shift, alignment)
            if status == LLM_SUCCESS:
                self.device_pool = pool
        if status == LLM_SUCCESS and host_pool is not None:
            pool = MemoryPool.__new__(MemoryPool)
            status = pool.open(runtime, True, host_pool.memory_size, host_pool.page_shift, alignment)
            if status == LLM_SUCCESS:
                self.host_pool = pool
        if status != LLM_SUCCESS:
            if self.device_pool is not None:
                self.device_pool.close()
            runtime.close()
            return status
        if _live_allocators is None:
            import weakref
            _live_allocators = weakref.WeakSet()
        _live_allocators.add(self)
        return LLM_SUCCESS

    cdef void continue_ids_after(self, CacheAllocator earlier):
        """Cache ids go on from `earlier`, the engine's last initialization: one engine never
        issues an id twice, so a Cache or an id kept from an earlier initialization names no cache
        of this one (v2's cache engine counts from 1 at each Initialize, and would free or serve
        the new cache 1 for the old one)."""
        global _next_cache_id
        cdef int64_t first_unissued = earlier.next_own_cache_id if earlier.own_cache_ids else _next_cache_id
        if self.own_cache_ids:
            self.next_own_cache_id = first_unissued
        elif _next_cache_id < first_unissued:
            _next_cache_id = first_unissued

    # Hot path: typed locals only, no Python object.
    cdef uint32_t allocate(self, const DescFields* fields, int64_t* cache_id, uintptr_t* first_addr,
                           uint64_t* stride):
        """A new cache for `fields`: its id, first tensor address and tensor stride."""
        cdef uint64_t nbytes, slab_bytes, first_tensor
        cdef MemoryPool pool
        cdef HeldMemory memory
        cdef aclError error
        # Device caches, and host caches only from a host pool (LLM-DataDist v2); without
        # one, "only support device cache" (docs/facts.md section 4).
        if fields.placement == LLMDD_kDevice:
            pool = self.device_pool
        elif fields.placement == LLMDD_kHost and self.host_pool is not None:
            pool = self.host_pool
        else:
            return LLM_PARAM_INVALID
        if tensor_bytes(fields, &nbytes) != LLM_SUCCESS:
            return LLM_PARAM_INVALID
        # The slab's size, like a tensor's, must fit in int64.
        if not _round_up(nbytes, self.alignment, stride) or stride[0] > <uint64_t>INT64_MAX // fields.num_tensors:
            return LLM_PARAM_INVALID
        slab_bytes = stride[0] * fields.num_tensors
        if pool is not None:
            memory.block = pool.allocate(slab_bytes, &first_tensor, &memory.nbytes)
            if memory.block == NULL:
                self.stats.num_failed_allocs += 1
                return LLM_DEVICE_OUT_OF_MEMORY  # CANN v2 says LLM_OUT_OF_MEMORY here
            memory.address = NULL
            memory.source = FROM_HOST_POOL if pool.on_host else FROM_DEVICE_POOL
        else:
            # The runtime only promises 64-byte starts: ask for slack to align the first tensor.
            memory.nbytes = slab_bytes + self.alignment - RUNTIME_ALIGNMENT
            if memory.nbytes > <uint64_t>SIZE_MAX:
                return LLM_PARAM_INVALID
            if memory.nbytes > MAX_HELD_BYTES:
                self.stats.num_failed_allocs += 1
                return LLM_DEVICE_OUT_OF_MEMORY
            error = self.runtime.malloc(&memory.address, memory.nbytes, False)
            if error != ACL_SUCCESS:
                self.stats.num_failed_allocs += 1
                return self.runtime.failure(error)
            _round_up(<uintptr_t>memory.address, self.alignment, &first_tensor)  # within the slack
            memory.block = NULL
            memory.source = FROM_RUNTIME
        if self.add_record(fields, nbytes, &memory, <uintptr_t>first_tensor, stride[0], NULL, cache_id) == NULL:
            self.release_memory(&memory)
            return LLM_FAILED  # the host is out of memory for the cache table
        _count_allocation(&self.stats, pool is not None and pool.on_host, memory.nbytes)
        first_addr[0] = <uintptr_t>first_tensor
        return LLM_SUCCESS

    cdef uint32_t register(self, const DescFields* fields, tuple addrs, int64_t* cache_id):
        """A cache over the caller's memory, one checked address per tensor in `addrs`."""
        cdef uint64_t nbytes
        cdef uintptr_t* caller_addrs
        cdef HeldMemory memory
        cdef Py_ssize_t i
        if (tensor_bytes(fields, &nbytes) != LLM_SUCCESS or len(addrs) != fields.num_tensors
                or (fields.placement != LLMDD_kDevice and fields.placement != LLMDD_kHost)):
            return LLM_PARAM_INVALID
        for i in range(len(addrs)):
            if not 0 < addrs[i] <= <uintptr_t>UINT64_MAX:
                return LLM_PARAM_INVALID
        caller_addrs = <uintptr_t*>malloc(fields.num_tensors * sizeof(uintptr_t))
        if caller_addrs == NULL:
            return LLM_FAILED
        for i in range(fields.num_tensors):
            caller_addrs[i] = addrs[i]
        memory.source = FROM_CALLER
        memory.address = NULL
        memory.block = NULL
        memory.nbytes = 0
        if self.add_record(fields, nbytes, &memory, caller_addrs[0], 0, caller_addrs, cache_id) == NULL:
            free(caller_addrs)
            return LLM_FAILED  # the host is out of memory for the cache table
        return LLM_SUCCESS

    cdef CacheRecord* add_record(self, const DescFields* fields, uint64_t nbytes, const HeldMemory* memory,
                                 uintptr_t first_addr, uint64_t stride, uintptr_t* caller_addrs, int64_t* cache_id):
        """The record of a new cache under the next cache id, which it takes; NULL when the host is
        out of memory for the table (the id is not taken)."""
        global _next_cache_id
        cache_id[0] = self.next_own_cache_id if self.own_cache_ids else _next_cache_id
        cdef CacheRecord* record = self.table.add(cache_id[0])
        if record == NULL:
            return NULL
        record.memory = memory[0]
        record.exported = False
        record.first_addr = first_addr
        record.stride = stride
        record.caller_addrs = caller_addrs
        record.num_tensors = fields.num_tensors
        record.tensor_bytes = nbytes
        record.batch = <uint64_t>fields.first_dim
        record.placement = fields.placement
        if self.own_cache_ids:
            self.next_own_cache_id += 1
        else:
            _next_cache_id += 1
        return record

    cdef uint32_t free(self, int64_t cache_id, bint registered):
        """Free (or, `registered`, forget) cache `cache_id`; exported memory goes with its last export."""
        cdef CacheRecord* record = self.table.find(cache_id)
        cdef CacheRecord kept
        cdef _CacheMemory exported
        cdef aclError error
        if record == NULL:
            return LLM_KV_CACHE_NOT_EXIST
        if registered != (record.memory.source == FROM_CALLER):
            return LLM_PARAM_INVALID   # registered caches are unregistered, allocated ones deallocated
        if record.exported:
            exported = <_CacheMemory>self.exports[cache_id]
            if Py_REFCNT(exported) > 2:   # more than exports and `exported`: a live view, array, tensor or pin
                self.table.remove(record)
                del self.exports[cache_id]
                self.release_exported(exported)
                _count_free(&self.stats, &exported.memory)
                return LLM_SUCCESS
            # Every export is gone: free the memory now, so that the status says how that went.
            del self.exports[cache_id]
            record.exported = False
        kept = record[0]
        self.table.remove(record)
        if kept.memory.source == FROM_RUNTIME:
            error = self.runtime.free(kept.memory.address, False)
            if error != ACL_SUCCESS:
                # The runtime still holds the memory: keep the cache so a retry can free it. The
                # record removed is first on the free list, so only a table growth can fail.
                record = self.table.add(cache_id)
                if record != NULL:
                    record[0] = kept
                return self.runtime.failure(error)
        else:
            self.release_memory(&kept.memory)
        _count_free(&self.stats, &kept.memory)
        return LLM_SUCCESS

    cdef void release_memory(self, const HeldMemory* memory):
        """Give a cache's memory back to where it came from. A failed aclrtFree leaves the
        memory to aclrtResetDevice, which releases what the process still holds."""
        if memory.source == FROM_RUNTIME:
            self.runtime.free(memory.address, False)
        elif memory.source == FROM_HOST_POOL:
            self.host_pool.free(memory.block)
        elif memory.source == FROM_DEVICE_POOL:
            self.device_pool.free(memory.block)

    cdef _CacheMemory export(self, int64_t cache_id):
        """The owner of a live cache's memory, made on the first export. The new object is
        made before the table is read: making it may run a garbage collection, and so any
        Python code, which may deallocate the cache."""
        cdef _CacheMemory memory = _CacheMemory.__new__(_CacheMemory)
        cdef CacheRecord* record = self.table.find(cache_id)
        if self.teardown_pending or record == NULL:
            raise ValueError(f"cache {cache_id} is not allocated: it was deallocated or its engine finalized")
        if record.exported:
            return self.exports[cache_id]
        memory.allocator = self
        memory.memory = record.memory
        record.exported = True
        self.exports[cache_id] = memory   # an int key into an existing dict: no collection runs here
        return memory

    cdef void release_exported(self, _CacheMemory memory):
        """The allocator lets go of exported memory; it is freed with the last export (which
        may be the caller's reference, dropped right after)."""
        memory.released = True
        self.stats.pending_bytes += memory.memory.nbytes
        self.stats.num_pending += 1

    cdef void free_pending(self, _CacheMemory memory):
        """The last export of released memory is gone: free it, and finish a Finalize that
        was waiting for it."""
        if self.abandoned:
            return  # a forked child: the memory is the parent's
        self.release_memory(&memory.memory)
        self.stats.pending_bytes -= memory.memory.nbytes
        self.stats.num_pending -= 1
        if self.stats.num_pending == 0 and self.teardown_pending and not self.finalizing:
            self.teardown()

    cdef void close(self):
        """Finalize: free every cache, and release the device unless exports still hold memory
        (then the last of them does). New calls were refused before this: the table is still."""
        cdef uint64_t slot
        cdef CacheRecord* record
        cdef dict exports = self.exports
        self.teardown_pending = True
        self.finalizing = True
        self.runtime.wait_for_calls()
        self.exports = None
        for slot in range(self.table.index.capacity):
            record = self.table.at(slot)
            if record == NULL:
                continue
            if record.exported and record.cache_id in exports:
                self.release_exported(exports[record.cache_id])
            elif record.exported or record.memory.source == FROM_RUNTIME:
                # (an export whose owner a garbage collection already took is gone too)
                self.release_memory(&record.memory)  # pool caches go with their pool
            _count_free(&self.stats, &record.memory)
        self.table.clear()
        exports.clear()     # exports nobody else holds free their memory here
        self.finalizing = False
        if self.stats.num_pending == 0:
            self.teardown()

    cdef void teardown(self):
        """Release the pools, the context and the device, once no exported memory is left.
        Freeing a pool releases the GIL: teardown_pending stays set to the very end, so an
        Initialize on another thread answers LLM_FAILED rather than set up under the teardown."""
        if _live_allocators is not None:
            _live_allocators.discard(self)
        if self.device_pool is not None:
            self.device_pool.close()
        if self.host_pool is not None:
            self.host_pool.close()
        self.runtime.close()
        self.teardown_pending = False

    cdef dict memory_stats(self, bint with_pools):
        """The statistics, and the pools' while they are open."""
        stats = dict(self.stats)
        if with_pools and self.device_pool is not None:
            stats.update(self.device_pool.stats(""))
        if with_pools and self.host_pool is not None:
            stats.update(self.host_pool.stats("host_"))
        return stats

    cdef void reset_peaks(self):
        self.stats.peak_bytes_in_use = self.stats.bytes_in_use
        self.stats.peak_host_bytes_in_use = self.stats.host_bytes_in_use

    cdef void abandon(self):
        """Forget the runtime state without a runtime call (a forked child's copy of it)."""
        for memory in (self.exports or {}).values():
            (<_CacheMemory>memory).released = False
        self.exports = None
        self.table.clear()
        if self.device_pool is not None:
            self.device_pool.abandon()
        if self.host_pool is not None:
            self.host_pool.abandon()
        self.teardown_pending = False
        self.abandoned = True
