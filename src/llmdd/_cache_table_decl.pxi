from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t

from ._page_pool cimport llmdd_pool_block
from ._u64_table cimport llmdd_u64_table


cdef enum CacheSource:
    FROM_RUNTIME
    FROM_DEVICE_POOL
    FROM_HOST_POOL
    FROM_CALLER             # a registered cache: the caller's memory, never allocated or freed by llmdd


# A cache's memory: where it came from, and so where it goes back to.
cdef struct HeldMemory:
    CacheSource source
    void* address               # FROM_RUNTIME: what aclrtMalloc returned
    llmdd_pool_block* block     # FROM_DEVICE_POOL, FROM_HOST_POOL: the pool's block
    uint64_t nbytes             # what memory_stats counts: whole pages, or the slab and its slack; 0 for the caller's


# One live cache: its memory and its layout, enough to describe it by id alone.
cdef struct CacheRecord:
    int64_t cache_id
    HeldMemory memory
    bint exported               # a view or a copy held its memory: the exports own it from then on
    uintptr_t first_addr        # tensor i is at first_addr + i * stride ...
    uint64_t stride
    uintptr_t* caller_addrs     # ... or at caller_addrs[i] for a registered cache (the record's own array)
    uint32_t num_tensors
    uint64_t tensor_bytes
    uint64_t batch              # shape[0]: the batch entries, or blocks, a tensor splits into
    uint32_t placement
    CacheRecord* next_free      # while on the table's free list


# cache_id -> CacheRecord, in C: no Python object per cache.
@cython.final   # never subclassed: its methods are plain C calls, which the compiler may inline
cdef class CacheTable:
    cdef llmdd_u64_table index      # cache_id -> the record's address
    cdef CacheRecord* free_records  # records kept for reuse

    cdef CacheRecord* add(self, int64_t cache_id) noexcept
    cdef CacheRecord* find(self, int64_t cache_id) noexcept
    cdef void remove(self, CacheRecord* record) noexcept
    cdef CacheRecord* at(self, uint64_t slot) noexcept
    cdef void clear(self) noexcept
    cdef object layout(self, int64_t cache_id)
