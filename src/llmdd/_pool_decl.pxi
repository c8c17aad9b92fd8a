from libc.stdint cimport uint32_t, uint64_t, uintptr_t

from ._page_pool cimport llmdd_page_pool, llmdd_pool_block


# A memory pool (llm.MemPoolConfig / llm.HostMemPoolConfig): one runtime allocation at
# Initialize, carved into caches by the page allocator (page_pool.c).
@cython.final   # never subclassed: its methods are plain C calls, which the compiler may inline
cdef class MemoryPool:
    cdef DeviceRuntime runtime
    cdef bint on_host
    cdef llmdd_page_pool pages
    cdef void* memory           # from aclrtMalloc or aclrtMallocHost
    cdef uintptr_t base         # page 0, aligned to the engine's tensor alignment
    cdef uint64_t page_shift
    cdef uint64_t alignment_pages
    cdef bint active            # between open and close

    cdef uint32_t open(self, DeviceRuntime runtime, bint on_host, uint64_t memory_size, uint64_t page_shift,
                       uint64_t alignment)
    cdef void close(self)
    cdef void abandon(self)
    cdef llmdd_pool_block* allocate(self, uint64_t nbytes, uint64_t* first, uint64_t* held_bytes) noexcept
    cdef void free(self, llmdd_pool_block* block) noexcept
    cdef bint holds(self, uintptr_t address, uint64_t nbytes) noexcept
    cdef dict stats(self, str prefix)
