# The runtime binding: the one part that calls ACL (as CuPy's runtime module is); the pools, the
# allocator and the engine call it. Built with the runtime runtime.h picks.
from libc.stdint cimport int32_t, uint32_t, uint64_t

from ._acl cimport aclError, aclrtContext, aclrtMemcpyKind, aclrtMemMallocPolicy


cdef enum:
    RUNTIME_ALIGNMENT = 64  # aclrtMalloc promises 64-byte-aligned starts, nothing more


# One engine's hold on the runtime: its device, a context of its own, and the runtime calls it
# makes, each on whichever thread calls (ACL binds contexts to threads).
@cython.final   # never subclassed: its methods are plain C calls, which the compiler may inline
cdef class DeviceRuntime:
    cdef int32_t device
    cdef aclrtContext context
    cdef aclrtMemMallocPolicy malloc_policy
    cdef int calls_in_flight        # calls running without the GIL; Finalize waits for them
    # What the last failed call said beyond its status, for LLMException: the runtime's error
    # code and message, or why an option was refused.
    cdef aclError last_error
    cdef str last_detail

    cdef uint32_t open(self, int32_t device, int malloc_policy)
    cdef void close(self)
    cdef void wait_for_calls(self)
    cdef aclError malloc(self, void** address, uint64_t nbytes, bint on_host)
    cdef aclError free(self, void* address, bint on_host)
    cdef aclError memory_info(self, size_t* free_bytes, size_t* total_bytes)
    # IPC memory, for transfers between engines of one host (docs/facts.md section 10)
    cdef aclError ipc_export(self, void* address, uint64_t nbytes, int32_t peer_pid, char* key)
    cdef aclError ipc_import(self, const char* key, bint peer_access, void** address)
    cdef aclError ipc_close(self, const char* key)
    cdef aclError copy_device_regions(self, const uint64_t* dsts, const uint64_t* srcs, const uint64_t* sizes,
                                      Py_ssize_t count)
    cdef aclError bind_context(self, aclrtContext* previous) noexcept nogil
    cdef void restore_context(self, aclrtContext previous) noexcept nogil
    cdef uint32_t failure(self, aclError error)
    cdef void explain(self, str detail)
    cdef object exception(self, uint32_t status, str call, bint initialized)


# aclrtMemcpy, for copies between caches (the caller binds the context and counts the call).
cdef aclError copy_memory(void* dst, const void* src, size_t count, aclrtMemcpyKind kind) noexcept nogil


# The pid this process has for the device's driver, which an exporter allows (aclrtDeviceGetBareTgid).
cdef aclError ipc_process_id(int32_t* pid) noexcept nogil


# After fork, in the child (LlmDataDist's fork handler calls it): no engine uses the runtime.
cdef void forget_users_in_child() noexcept
