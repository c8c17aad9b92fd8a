from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t

from ._desc cimport DescFields


# What memory_stats() reports; kept exact on every allocation and free.
cdef struct MemoryStats:
    uint64_t bytes_in_use           # device bytes held for live caches
    uint64_t peak_bytes_in_use
    uint64_t host_bytes_in_use      # host-pool bytes held for live host caches
    uint64_t peak_host_bytes_in_use
    uint64_t num_caches
    uint64_t num_allocs
    uint64_t num_frees
    uint64_t num_failed_allocs      # AllocateCache calls that found no memory or met a runtime error
    uint64_t pending_bytes          # released by DeallocateCache or Finalize, still held by exports
    uint64_t num_pending


cdef class CacheAllocator


# A cache's memory once a view of it was made or a copy or transfer pinned it: the views,
# arrays, tensors and pins hold it, and it is freed when the allocator has released it and
# the last of them is gone.
cdef class _CacheMemory:
    cdef CacheAllocator allocator
    cdef HeldMemory memory
    cdef bint released


# The caches of one initialization of an engine: where their memory comes from (the runtime or
# a pool) and goes back to, their table, their exports and their statistics. It outlives the
# engine's Finalize while exports hold memory, and tears the device down after the last.
@cython.final   # never subclassed: its methods are plain C calls, which the compiler may inline
cdef class CacheAllocator:
    cdef DeviceRuntime runtime
    cdef MemoryPool device_pool       # None without llm.MemPoolConfig
    cdef MemoryPool host_pool         # None without llm.HostMemPoolConfig
    cdef uint64_t alignment
    cdef CacheTable table
    cdef dict exports                 # cache_id -> _CacheMemory of exported caches
    cdef MemoryStats stats
    cdef bint own_cache_ids           # cache-manager mode (v2): the engine counts its own ids
    cdef int64_t next_own_cache_id
    cdef bint teardown_pending        # from Finalize to the end of the teardown (after the last export)
    cdef bint finalizing              # inside Finalize: the teardown comes at its end
    cdef bint abandoned               # a forked child's copy: the memory is the parent's
    cdef object __weakref__

    cdef uint32_t open(self, DeviceRuntime runtime, int32_t device, int malloc_policy, uint64_t alignment,
                       bint own_cache_ids, device_pool, host_pool)
    cdef void continue_ids_after(self, CacheAllocator earlier)
    cdef uint32_t allocate(self, const DescFields* fields, int64_t* cache_id, uintptr_t* first_addr,
                           uint64_t* stride)
    cdef uint32_t register(self, const DescFields* fields, tuple addrs, int64_t* cache_id)
    cdef CacheRecord* add_record(self, const DescFields* fields, uint64_t nbytes, const HeldMemory* memory,
                                 uintptr_t first_addr, uint64_t stride, uintptr_t* caller_addrs, int64_t* cache_id)
    cdef uint32_t free(self, int64_t cache_id, bint registered)
    cdef _CacheMemory export(self, int64_t cache_id)
    cdef void close(self)
    cdef void teardown(self)
    cdef void release_memory(self, const HeldMemory* memory)
    cdef void release_exported(self, _CacheMemory memory)
    cdef void free_pending(self, _CacheMemory memory)
    cdef dict memory_stats(self, bint with_pools)
    cdef void reset_peaks(self)
    cdef void abandon(self)


cdef void abandon_allocators_in_child()
