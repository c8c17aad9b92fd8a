cimport cython
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t

from ._desc cimport CacheDesc, DescFields

# The engine's parts, declared each in a file of its own and compiled into this one module (one
# extension module to load, not five: import cost): the runtime binding, pools, the cache table
# and the allocator.
include "_runtime_decl.pxi"
include "_pool_decl.pxi"
include "_cache_table_decl.pxi"
include "_allocator_decl.pxi"


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


# The engine composes a DeviceRuntime (its device and context), a CacheAllocator per
# initialization (its caches, pools and exports) and, once needed, a transfer service.
# EngineCore does the typed work; LlmDataDist is its public face (the C++-style and Pythonic calls).
cdef class EngineCore:
    cdef readonly uint64_t cluster_id
    cdef int32_t _role
    cdef bint _initialized
    cdef DeviceRuntime _runtime
    cdef CacheAllocator _caches       # the current (or last) initialization's; None before the first
    cdef bint _setting_up             # inside Initialize's set-up: other Initialize and Finalize calls wait
    cdef bint _abandoned              # initialized before a fork, and this is the child
    cdef uint64_t _generation         # counts initializations: a Cache of an earlier one is not this one's
    # This initialization's registry and transfer service (_engine_services), each made on first
    # need: the service at Initialize when the engine listens (llm.ListenIpInfo), or on the first link.
    cdef object _services
    cdef object __weakref__

    cdef uint32_t set_up(self, parsed, services)
    cdef void wait_for_set_up(self)
    cdef bint teardown_pending(self)
    cdef object teardown_pending_failure(self)
    cdef uint32_t allocate(self, CacheDesc desc, Cache cache)
    cdef uint32_t register(self, CacheDesc desc, object addrs, Cache cache)
    cdef uint32_t deallocate(self, int64_t cache_id, bint registered)
    cdef _CacheMemory export_memory(self, int64_t cache_id)
    cdef void finalize(self)
    cdef void finalize_with_transfers(self)
    cdef void abandon(self)
    cdef uint32_t start_listening(self)
    cdef object transfer_call(self, str call, tuple arguments)
    cdef object exception(self, uint32_t status, str call)


cdef class LlmDataDist(EngineCore):
    pass
