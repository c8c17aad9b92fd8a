/* A page allocator for one pre-allocated region: how LLM-DataDist's memory pools carve caches
 * out of a single runtime allocation (docs/facts.md section 5).
 *
 * Two-level segregated fit (TLSF): free blocks sit in size classes found with two bitmaps, so
 * allocation and free take constant time however many caches are live. A request first takes
 * the smallest fitting block of its own class (best fit where it matters most), else the first
 * block of the next non-empty class. Freed blocks merge with free neighbours at once, so two
 * free blocks are never adjacent. Block records live on the host; the pool's memory itself is
 * never touched (it may be device memory). Not thread-safe by itself: the engine calls it only
 * while holding the GIL, with no Python code run in between, which serializes every call (a
 * lock here cost 7% of the pooled allocation round trip, counted with callgrind). */
#ifndef LLMDD_PAGE_POOL_H
#define LLMDD_PAGE_POOL_H

#include <stdint.h>

#define LLMDD_POOL_SL_BITS 5
#define LLMDD_POOL_SL_COUNT (1 << LLMDD_POOL_SL_BITS)
#define LLMDD_POOL_FL_COUNT (64 - LLMDD_POOL_SL_BITS + 1)

typedef struct llmdd_pool_block {
    uint64_t start; /* first page */
    uint64_t pages;
    struct llmdd_pool_block *prev_in_memory, *next_in_memory;
    struct llmdd_pool_block *prev_free, *next_free; /* in its size class, while free */
    int is_free;
} llmdd_pool_block;

typedef struct {
    uint64_t total_pages;
    uint64_t free_pages;
    llmdd_pool_block *first;  /* the block at page 0 */
    llmdd_pool_block *spare;  /* block records kept for reuse, linked by next_free */
    uint64_t class_bitmap;    /* bit fl: some class of first level fl has a free block */
    uint32_t subclass_bitmap[LLMDD_POOL_FL_COUNT];
    llmdd_pool_block *free_lists[LLMDD_POOL_FL_COUNT][LLMDD_POOL_SL_COUNT];
} llmdd_page_pool;

/* A pool of `pages` free pages (pages >= 1). Returns 0, or -1 when host memory ran out. */
int llmdd_pool_init(llmdd_page_pool *pool, uint64_t pages);

/* Frees the pool's block records; the pool must be initialized again before use. */
void llmdd_pool_release(llmdd_page_pool *pool);

/* `pages` pages whose first page is a multiple of `align_pages` (a power of two), or NULL when
 * no free block can hold them or the host has no memory for block records. */
llmdd_pool_block *llmdd_pool_alloc(llmdd_page_pool *pool, uint64_t pages, uint64_t align_pages);

/* Returns a block from llmdd_pool_alloc to the pool. */
void llmdd_pool_free(llmdd_page_pool *pool, llmdd_pool_block *block);

/* Free pages, and pages of the largest free block. */
void llmdd_pool_free_pages(const llmdd_page_pool *pool, uint64_t *free_pages, uint64_t *largest_free_block);

#endif
