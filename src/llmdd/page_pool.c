/* The page allocator of page_pool.h. */
#include "page_pool.h"

#include <stdlib.h>
#include <string.h>

/* How many blocks of a request's own class are compared for the best fit. */
#define BEST_FIT_SCAN 16

static int highest_bit(uint64_t value) { return 63 - __builtin_clzll(value); }

/* The size class of a block of `pages` pages: exact below SL_COUNT pages, then SL_COUNT
 * subclasses per power of two. */
static void size_class(uint64_t pages, int *fl, int *sl) {
    if (pages < LLMDD_POOL_SL_COUNT) {
        *fl = 0;
        *sl = (int)pages;
        return;
    }
    int top = highest_bit(pages);
    *fl = top - LLMDD_POOL_SL_BITS + 1;
    *sl = (int)((pages >> (top - LLMDD_POOL_SL_BITS)) - LLMDD_POOL_SL_COUNT);
}

static void link_free(llmdd_page_pool *pool, llmdd_pool_block *block) {
    int fl, sl;
    size_class(block->pages, &fl, &sl);
    block->is_free = 1;
    block->prev_free = NULL;
    block->next_free = pool->free_lists[fl][sl];
    if (block->next_free) block->next_free->prev_free = block;
    pool->free_lists[fl][sl] = block;
    pool->class_bitmap |= 1ull << fl;
    pool->subclass_bitmap[fl] |= 1u << sl;
}

static void unlink_free(llmdd_page_pool *pool, llmdd_pool_block *block) {
    int fl, sl;
    size_class(block->pages, &fl, &sl);
    if (block->prev_free)
        block->prev_free->next_free = block->next_free;
    else
        pool->free_lists[fl][sl] = block->next_free;
    if (block->next_free) block->next_free->prev_free = block->prev_free;
    if (pool->free_lists[fl][sl] == NULL) {
        pool->subclass_bitmap[fl] &= ~(1u << sl);
        if (pool->subclass_bitmap[fl] == 0) pool->class_bitmap &= ~(1ull << fl);
    }
    block->is_free = 0;
}

static uint64_t padding_for(const llmdd_pool_block *block, uint64_t align_pages) {
    return (align_pages - block->start % align_pages) % align_pages;
}

static int fits(const llmdd_pool_block *block, uint64_t pages, uint64_t align_pages) {
    uint64_t padding = padding_for(block, align_pages);
    return block->pages >= padding && block->pages - padding >= pages;
}

/* The first block of the first non-empty class above (fl, sl), or NULL. */
static llmdd_pool_block *first_block_above(const llmdd_page_pool *pool, int fl, int sl) {
    uint32_t subclasses = sl + 1 < LLMDD_POOL_SL_COUNT ? pool->subclass_bitmap[fl] & (~0u << (sl + 1)) : 0;
    if (subclasses == 0) {
        uint64_t classes = fl + 1 < 64 ? pool->class_bitmap & (~0ull << (fl + 1)) : 0;
        if (classes == 0) return NULL;
        fl = __builtin_ctzll(classes);
        subclasses = pool->subclass_bitmap[fl];
    }
    return pool->free_lists[fl][__builtin_ctz(subclasses)];
}

static llmdd_pool_block *find_free_block(const llmdd_page_pool *pool, uint64_t pages, uint64_t align_pages) {
    int fl, sl;
    size_class(pages, &fl, &sl);
    llmdd_pool_block *best = NULL;
    int scanned = 0;
    for (llmdd_pool_block *block = pool->free_lists[fl][sl]; block && scanned < BEST_FIT_SCAN;
         block = block->next_free, scanned++) {
        if (fits(block, pages, align_pages) && (best == NULL || block->pages < best->pages)) best = block;
    }
    if (best) return best;
    /* Any block of a higher class is larger than `pages`; with alignment, walk up until the
     * padding fits too. */
    for (llmdd_pool_block *block = first_block_above(pool, fl, sl); block;) {
        if (fits(block, pages, align_pages)) return block;
        int block_fl, block_sl;
        size_class(block->pages, &block_fl, &block_sl);
        block = block->next_free ? block->next_free : first_block_above(pool, block_fl, block_sl);
    }
    /* Last, the rest of the request's own class: a fitting block there must not be missed. */
    for (llmdd_pool_block *block = pool->free_lists[fl][sl]; block; block = block->next_free)
        if (fits(block, pages, align_pages)) return block;
    return NULL;
}

static llmdd_pool_block *take_record(llmdd_page_pool *pool) {
    llmdd_pool_block *record = pool->spare;
    if (record) {
        pool->spare = record->next_free;
        return record;
    }
    return (llmdd_pool_block *)malloc(sizeof(llmdd_pool_block));
}

static void keep_record(llmdd_page_pool *pool, llmdd_pool_block *record) {
    record->next_free = pool->spare;
    pool->spare = record;
}

/* Makes sure two records are at hand, so that a split cannot fail half-way. */
static int reserve_records(llmdd_page_pool *pool) {
    for (int i = 0; i < 2; i++) {
        if (pool->spare && (i == 0 || pool->spare->next_free)) continue;
        llmdd_pool_block *record = (llmdd_pool_block *)malloc(sizeof(llmdd_pool_block));
        if (record == NULL) return -1;
        keep_record(pool, record);
    }
    return 0;
}

/* Cuts the first `pages` pages off `block` into a record of their own, placed before it. */
static llmdd_pool_block *split_front(llmdd_page_pool *pool, llmdd_pool_block *block, uint64_t pages) {
    llmdd_pool_block *front = take_record(pool);
    front->start = block->start;
    front->pages = pages;
    front->prev_in_memory = block->prev_in_memory;
    front->next_in_memory = block;
    if (front->prev_in_memory)
        front->prev_in_memory->next_in_memory = front;
    else
        pool->first = front;
    block->prev_in_memory = front;
    block->start += pages;
    block->pages -= pages;
    return front;
}

int llmdd_pool_init(llmdd_page_pool *pool, uint64_t pages) {
    memset(pool, 0, sizeof *pool);
    llmdd_pool_block *all = (llmdd_pool_block *)calloc(1, sizeof(llmdd_pool_block));
    if (all == NULL) return -1;
    all->pages = pages;
    pool->first = all;
    pool->total_pages = pool->free_pages = pages;
    link_free(pool, all);
    return 0;
}

void llmdd_pool_release(llmdd_page_pool *pool) {
    for (llmdd_pool_block *block = pool->first, *next; block; block = next) {
        next = block->next_in_memory;
        free(block);
    }
    for (llmdd_pool_block *record = pool->spare, *next; record; record = next) {
        next = record->next_free;
        free(record);
    }
    memset(pool, 0, sizeof *pool);
}

llmdd_pool_block *llmdd_pool_alloc(llmdd_page_pool *pool, uint64_t pages, uint64_t align_pages) {
    if (pages == 0 || align_pages == 0) return NULL;
    llmdd_pool_block *block = pages <= pool->free_pages ? find_free_block(pool, pages, align_pages) : NULL;
    if (block == NULL || reserve_records(pool) != 0) return NULL;
    unlink_free(pool, block);
    uint64_t padding = padding_for(block, align_pages);
    if (padding) link_free(pool, split_front(pool, block, padding));
    if (block->pages > pages) {
        llmdd_pool_block *taken = split_front(pool, block, pages);
        link_free(pool, block);
        block = taken;
    }
    block->is_free = 0;
    pool->free_pages -= pages;
    return block;
}

void llmdd_pool_free(llmdd_page_pool *pool, llmdd_pool_block *block) {
    pool->free_pages += block->pages;
    llmdd_pool_block *before = block->prev_in_memory, *after = block->next_in_memory;
    if (after && after->is_free) {
        unlink_free(pool, after);
        block->pages += after->pages;
        block->next_in_memory = after->next_in_memory;
        if (block->next_in_memory) block->next_in_memory->prev_in_memory = block;
        keep_record(pool, after);
    }
    if (before && before->is_free) {
        unlink_free(pool, before);
        before->pages += block->pages;
        before->next_in_memory = block->next_in_memory;
        if (before->next_in_memory) before->next_in_memory->prev_in_memory = before;
        keep_record(pool, block);
        block = before;
    }
    link_free(pool, block);
}

void llmdd_pool_free_pages(const llmdd_page_pool *pool, uint64_t *free_pages, uint64_t *largest_free_block) {
    *free_pages = pool->free_pages;
    *largest_free_block = 0;
    if (pool->class_bitmap) {
        int fl = highest_bit(pool->class_bitmap);
        int sl = highest_bit(pool->subclass_bitmap[fl]);
        for (llmdd_pool_block *block = pool->free_lists[fl][sl]; block; block = block->next_free)
            if (block->pages > *largest_free_block) *largest_free_block = block->pages;
    }
}
