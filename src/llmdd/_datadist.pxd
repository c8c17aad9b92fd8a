from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t

from ._acl cimport aclError, aclrtContext, aclrtMemMallocPolicy
from ._desc cimport CacheDesc, DescFields
from ._page_pool cimport llmdd_page_pool
from ._u64_table cimport llmdd_u64_slot, llmdd_u64_table


# A memory pool (llm.MemPoolConfig / llm.HostMemPoolConfig): one runtime allocation at
# Initialize, carved into caches by the page allocator.
cdef struct MemoryPool:
    bint active
    bint on_host
    llmdd_page_pool pages
    void* memory            # from aclrtMalloc or aclrtMallocHost
    uintptr_t base          # page 0, aligned to the engine's tensor alignment
    uint64_t page_shift


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


cdef class LlmDataDist


cdef class Cache:
    cdef int64_t _cache_id
    cdef LlmDataDist _engine          # that allocated it; None for a Cache the caller filled
    cdef uint64_t _generation         # the engine's initialization it was allocated in
    # The descriptor: a CacheDesc once one was set or read, else kept as C fields and built
    # on first read, so that allocating makes no Python object the caller did not ask for.
    cdef CacheDesc _desc
    cdef DescFields _desc_fields
    cdef tuple _desc_shape
    # Tensor addresses. A cache the engine allocated keeps them as first + i * stride; addresses
    # a caller set, or registered, are kept as given, in _caller_addrs.
    cdef uintptr_t _first_addr
    cdef uint64_t _addr_stride
    cdef uint32_t _addr_count
    cdef tuple _caller_addrs

    cdef CacheDesc desc(self)
    cdef uintptr_t tensor_address(self, uint32_t index)
    cdef LlmDataDist live_engine(self)
    cdef bint belongs_to(self, LlmDataDist engine)


# A cache's memory once a view of it was made: the views, arrays and tensors hold it, and it
# is freed when the engine has released it and the last of them is gone.
cdef class _CacheMemory:
    cdef LlmDataDist engine
    cdef uint64_t record
    cdef uint64_t held
    cdef bint released


cdef class LlmDataDist:
    cdef readonly uint64_t cluster_id
    cdef int32_t _role
    cdef bint _initialized
    cdef int32_t _device
    cdef aclrtContext _context
    cdef llmdd_u64_table _caches      # cache_id -> (memory, held bytes << 3 | flags): see _datadist.pyx
    cdef dict _exports                # cache_id -> _CacheMemory of exported caches
    cdef MemoryPool _device_pool
    cdef MemoryPool _host_pool
    cdef MemoryStats _stats
    cdef uint64_t _alignment
    cdef aclrtMemMallocPolicy _malloc_policy
    cdef bint _own_cache_ids          # cache-manager mode (v2): ids count from 1 in each engine
    cdef int64_t _next_own_cache_id
    cdef int _runtime_calls_in_flight # calls running without the GIL; Finalize waits for them
    cdef bint _setting_up             # inside Initialize's set-up: other Initialize and Finalize calls wait
    cdef bint _teardown_pending       # from Finalize to the end of the teardown (after the last export)
    cdef bint _finalizing             # inside Finalize: the teardown comes at its end
    cdef bint _abandoned              # initialized before a fork, and this is the child
    cdef uint64_t _generation         # counts initializations: a Cache of an earlier one is not this one's
    # Transfers between clusters (llmdd.transfer): the service, made at Initialize when the
    # engine listens (llm.ListenIpInfo) or on the first link, and the caches it serves by id.
    cdef object _transfer_options
    cdef object _transfers
    cdef dict _served                 # cache_id -> a Cache twin, when it serves its caches to peers
    cdef bint _stopping_transfers     # inside Finalize's ending of the links
    cdef object __weakref__
    # What the last failed call said beyond its status, for LLMException: the runtime's
    # error code and message, or why an option was refused.
    cdef aclError _last_acl_error
    cdef str _last_error_detail

    cdef uint32_t set_up(self, int32_t device, uint64_t alignment, int malloc_policy, device_pool, host_pool)
    cdef uint32_t open_device(self, int32_t device, uint64_t alignment, int malloc_policy, device_pool, host_pool)
    cdef void wait_for_set_up(self)
    cdef object teardown_pending_failure(self)
    cdef uint32_t create_pool(self, MemoryPool* pool, bint on_host, uint64_t memory_size, uint64_t page_shift)
    cdef void destroy_pool(self, MemoryPool* pool)
    cdef uint32_t allocate(self, CacheDesc desc, Cache cache)
    cdef void bind_cache(self, Cache cache, int64_t cache_id, CacheDesc desc, uintptr_t first_addr, uint64_t stride,
                         tuple caller_addrs)
    cdef void count_allocation(self, bint on_host, uint64_t nbytes)
    cdef void count_free(self, uint64_t held)
    cdef uint32_t register(self, CacheDesc desc, object addrs, Cache cache)
    cdef uint32_t deallocate(self, int64_t cache_id, bint registered)
    cdef void finalize(self)
    cdef void stop_transfers(self)
    cdef uint32_t start_listening(self)
    cdef void stop_serving(self, int64_t cache_id)
    cdef object transfer_service(self)
    cdef object transfer_call(self, str call, tuple arguments)
    cdef void finalize_with_transfers(self)
    cdef object layout_of(self, Cache cache, llmdd_u64_slot* slot)
    cdef void teardown(self)
    cdef void abandon(self)
    cdef void release_memory(self, uint64_t record, uint64_t held)
    cdef _CacheMemory export_memory(self, int64_t cache_id)
    cdef void release_exported(self, _CacheMemory memory)
    cdef void free_pending(self, uint64_t record, uint64_t held)
    cdef object exception(self, uint32_t status, str call)
    cdef aclError runtime_malloc(self, void** address, uint64_t nbytes, bint on_host)
    cdef aclError runtime_free(self, void* address, bint on_host)
    cdef aclError bind_context(self, aclrtContext* previous) noexcept nogil
    cdef void restore_context(self, aclrtContext previous) noexcept nogil
    cdef uint32_t runtime_failure(self, aclError error)
