# MemoryPool: one runtime allocation made at Initialize, carved into whole pages by page_pool.c.
#
# The page allocator is not thread-safe by itself: every call here holds the GIL and runs no
# Python code, which serializes them (page_pool.h says why there is no lock).
from ._acl cimport ACL_SUCCESS, aclError
from ._llm_facts cimport LLM_FAILED, LLM_SUCCESS
from ._page_pool cimport (
    llmdd_pool_alloc,
    llmdd_pool_free,
    llmdd_pool_free_pages,
    llmdd_pool_init,
    llmdd_pool_release,
)


cdef class MemoryPool:
    """A pool of 2**page_shift-byte pages, page 0 at a multiple of the engine's alignment."""

    cdef uint32_t open(self, DeviceRuntime runtime, bint on_host, uint64_t memory_size, uint64_t page_shift,
                       uint64_t alignment):
        """One runtime allocation of the pool's whole pages, plus slack to align page 0."""
        cdef uint64_t pages = memory_size >> page_shift
        cdef void* memory = NULL
        cdef aclError error = runtime.malloc(&memory, (pages << page_shift) + alignment - RUNTIME_ALIGNMENT, on_host)
        if error != ACL_SUCCESS:
            return runtime.failure(error)
        if llmdd_pool_init(&self.pages, pages) != 0:
            runtime.free(memory, on_host)
            return LLM_FAILED  # no host memory for the pool's records
        self.runtime = runtime
        self.memory = memory
        self.base = (<uintptr_t>memory + alignment - 1) & ~(<uintptr_t>alignment - 1)   # within the slack
        self.page_shift = page_shift
        # Caches start at a multiple of the alignment; pages are powers of two too.
        self.alignment_pages = alignment >> page_shift if alignment >> page_shift > 1 else 1
        self.on_host = on_host
        self.active = True
        return LLM_SUCCESS

    cdef void close(self):
        """Give the pool's memory back to the runtime (its caches go with it)."""
        if not self.active:
            return
        llmdd_pool_release(&self.pages)
        self.runtime.free(self.memory, self.on_host)
        self.active = False

    cdef void abandon(self):
        """Forget the pool without a runtime call (a forked child's copy of the parent's)."""
        if self.active:
            llmdd_pool_release(&self.pages)
            self.active = False

    # Hot path of a pooled allocation.
    cdef llmdd_pool_block* allocate(self, uint64_t nbytes, uint64_t* first, uint64_t* held_bytes) noexcept:
        """Whole pages for `nbytes`, or NULL when no free block holds them."""
        cdef uint64_t pages = (nbytes >> self.page_shift) + ((nbytes & ((1ULL << self.page_shift) - 1)) != 0)
        cdef llmdd_pool_block* block = llmdd_pool_alloc(&self.pages, pages, self.alignment_pages)
        if block != NULL:
            first[0] = self.base + (block.start << self.page_shift)
            held_bytes[0] = pages << self.page_shift
        return block

    cdef void free(self, llmdd_pool_block* block) noexcept:
        llmdd_pool_free(&self.pages, block)

    cdef bint holds(self, uintptr_t address, uint64_t nbytes) noexcept:
        """Whether [address, address + nbytes) lies inside the pool."""
        cdef uintptr_t end = self.base + (self.pages.total_pages << self.page_shift)
        return self.active and nbytes <= end - self.base and self.base <= address <= end - nbytes

    cdef dict stats(self, str prefix):
        cdef uint64_t free_pages, largest_pages
        llmdd_pool_free_pages(&self.pages, &free_pages, &largest_pages)
        return {
            f"{prefix}pool_bytes": self.pages.total_pages << self.page_shift,
            f"{prefix}pool_free_bytes": free_pages << self.page_shift,
            f"{prefix}largest_free_block": largest_pages << self.page_shift,
        }
