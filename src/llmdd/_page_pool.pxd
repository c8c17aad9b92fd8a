# The page allocator of page_pool.h. Declarations only.
from libc.stdint cimport uint64_t


cdef extern from "page_pool.h" nogil:
    ctypedef struct llmdd_pool_block:
        uint64_t start
        uint64_t pages

    ctypedef struct llmdd_page_pool:
        uint64_t total_pages
        uint64_t free_pages

    int llmdd_pool_init(llmdd_page_pool* pool, uint64_t pages)
    void llmdd_pool_release(llmdd_page_pool* pool)
    llmdd_pool_block* llmdd_pool_alloc(llmdd_page_pool* pool, uint64_t pages, uint64_t align_pages)
    void llmdd_pool_free(llmdd_page_pool* pool, llmdd_pool_block* block)
    void llmdd_pool_free_pages(const llmdd_page_pool* pool, uint64_t* free_pages, uint64_t* largest_free_block)
