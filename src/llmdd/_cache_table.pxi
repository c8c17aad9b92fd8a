# CacheTable: the records of an initialization's live caches, by id.
#
# A u64_table maps a cache id to its record; records come from a free list, so that the
# allocation path makes no Python object and, once warm, no host allocation either.
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from ._u64_table cimport llmdd_u64_erase, llmdd_u64_find, llmdd_u64_insert, llmdd_u64_release, llmdd_u64_slot


cdef class CacheTable:
    """Every method runs no Python code (but layout, which reads first): the GIL serializes them."""

    def __dealloc__(self):
        cdef CacheRecord* record
        self.clear()
        while self.free_records != NULL:
            record = self.free_records
            self.free_records = record.next_free
            free(record)

    # Hot path of AllocateCache.
    cdef CacheRecord* add(self, int64_t cache_id) noexcept:
        """A new record for an absent cache_id > 0, with only cache_id set; NULL when the host
        is out of memory (the table is unchanged)."""
        cdef CacheRecord* record = self.free_records
        if record == NULL:
            record = <CacheRecord*>malloc(sizeof(CacheRecord))
            if record == NULL:
                return NULL
        else:
            self.free_records = record.next_free
        if llmdd_u64_insert(&self.index, <uint64_t>cache_id, <uintptr_t>record, 0) != 0:
            record.next_free = self.free_records
            self.free_records = record
            return NULL
        record.cache_id = cache_id
        record.caller_addrs = NULL
        return record

    cdef CacheRecord* find(self, int64_t cache_id) noexcept:
        cdef llmdd_u64_slot* slot = llmdd_u64_find(&self.index, <uint64_t>cache_id) if cache_id > 0 else NULL
        return NULL if slot == NULL else <CacheRecord*>slot.first

    cdef void remove(self, CacheRecord* record) noexcept:
        llmdd_u64_erase(&self.index, llmdd_u64_find(&self.index, <uint64_t>record.cache_id))
        free(record.caller_addrs)
        record.caller_addrs = NULL
        record.next_free = self.free_records
        self.free_records = record

    cdef CacheRecord* at(self, uint64_t slot) noexcept:
        """The record in slot `slot` (0 <= slot < index.capacity), or NULL for an empty one."""
        return NULL if self.index.slots[slot].key == 0 else <CacheRecord*>self.index.slots[slot].first

    cdef void clear(self) noexcept:
        """Forget every record (their memory is the caller's business)."""
        cdef uint64_t slot
        cdef CacheRecord* record
        for slot in range(self.index.capacity):
            record = self.at(slot)
            if record != NULL:
                free(record.caller_addrs)
                record.caller_addrs = NULL
                record.next_free = self.free_records
                self.free_records = record
        llmdd_u64_release(&self.index)

    cdef object layout(self, int64_t cache_id):
        """The CacheLayout of live cache `cache_id`, or None. The record is copied before any
        Python object is made: making one may run a garbage collection, and so any code, even
        a DeallocateCache of this cache."""
        cdef CacheRecord* record = self.find(cache_id)
        cdef CacheRecord cache
        cdef uintptr_t* caller_addrs = NULL
        cdef uint32_t i
        if record == NULL:
            return None
        cache = record[0]
        if cache.caller_addrs != NULL:
            caller_addrs = <uintptr_t*>malloc(cache.num_tensors * sizeof(uintptr_t))
            if caller_addrs == NULL:
                raise MemoryError()
            memcpy(caller_addrs, cache.caller_addrs, cache.num_tensors * sizeof(uintptr_t))
        try:
            if caller_addrs != NULL:
                addrs = tuple([caller_addrs[i] for i in range(cache.num_tensors)])
                regions = tuple([(addr, cache.tensor_bytes) for addr in addrs])
            else:
                addrs = tuple([cache.first_addr + i * cache.stride for i in range(cache.num_tensors)])
                regions = ((cache.first_addr, cache.stride * cache.num_tensors),)
        finally:
            free(caller_addrs)
        from ._cache_layout import CacheLayout
        return CacheLayout(cache_id, addrs, cache.tensor_bytes, cache.batch, cache.placement,
                           cache.memory.source == FROM_CALLER, regions)
