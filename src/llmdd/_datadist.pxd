from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t

from ._acl cimport aclError, aclrtContext, aclrtMemMallocPolicy
from ._desc cimport CacheDesc, DescFields
from ._u64_table cimport llmdd_u64_table


cdef class Cache:
    cdef int64_t _cache_id
    # The descriptor: a CacheDesc once one was set or read, else kept as C fields and built
    # on first read, so that allocating makes no Python object the caller did not ask for.
    cdef CacheDesc _desc
    cdef DescFields _desc_fields
    cdef tuple _desc_shape
    # Tensor addresses. A cache the engine filled keeps them as first + i * stride; addresses
    # a caller set are kept as given, in _caller_addrs.
    cdef uintptr_t _first_addr
    cdef uint64_t _addr_stride
    cdef uint32_t _addr_count
    cdef tuple _caller_addrs

    cdef CacheDesc desc(self)


cdef class LlmDataDist:
    cdef readonly uint64_t cluster_id
    cdef int32_t _role
    cdef bint _initialized
    cdef int32_t _device
    cdef aclrtContext _context
    cdef llmdd_u64_table _caches      # cache_id -> (address from aclrtMalloc, bytes asked)
    cdef uint64_t _alignment
    cdef aclrtMemMallocPolicy _malloc_policy
    cdef int _runtime_calls_in_flight # calls running without the GIL; Finalize waits for them
    # What the last failed call said beyond its status, for LLMException: the runtime's
    # error code and message, or why an option was refused.
    cdef aclError _last_acl_error
    cdef str _last_error_detail

    cdef uint32_t initialize(self, int32_t device, uint64_t alignment, int malloc_policy)
    cdef uint32_t allocate(self, CacheDesc desc, Cache cache)
    cdef uint32_t deallocate(self, int64_t cache_id)
    cdef void finalize(self)
    cdef object exception(self, uint32_t status, str call)
    cdef aclError runtime_malloc(self, void** address, uint64_t nbytes)
    cdef aclError runtime_free(self, void* address)
    cdef aclError bind_context(self, aclrtContext* previous) noexcept nogil
    cdef void restore_context(self, aclrtContext previous) noexcept nogil
    cdef uint32_t runtime_failure(self, aclError error)
