# The runtime binding: every ACL call llmdd makes is made here (CuPy's pattern: one runtime part
# the others call, so the switch between runtimes touches nothing else).
#
# Which runtime: runtime.h, the one switch. What it keeps: how many engines use the runtime
# (aclInit for the first, aclFinalize after the last, and only if llmdd's aclInit set ACL up),
# and per engine (DeviceRuntime) the device, its own context, the calls in flight that Finalize
# waits for, and the last runtime error for LLMException. The host runtime's test controls are
# in _sim_control.pxi, included here because they reach the runtime this module links.
from ._acl cimport (
    ACL_ERROR_BAD_ALLOC,
    ACL_ERROR_INVALID_DEVICE,
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_RT_DEVICE_OOM,
    ACL_ERROR_RT_INVALID_DEVICEID,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_HBM_MEM,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT,
    ACL_RT_IPC_MEM_IMPORT_FLAG_DEFAULT,
    ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS,
    ACL_SUCCESS,
    LLMDD_ACL_IPC_KEY_BYTES,
    LLMDD_SIMULATED,
    aclFinalize,
    aclGetRecentErrMsg,
    aclInit,
    aclrtCreateContext,
    aclrtDestroyContext,
    aclrtDeviceGetBareTgid,
    aclrtFree,
    aclrtFreeHost,
    aclrtGetCurrentContext,
    aclrtGetMemInfo,
    aclrtGetVersion,
    aclrtIpcMemClose,
    aclrtIpcMemGetExportKey,
    aclrtIpcMemImportByKey,
    aclrtIpcMemSetImportPid,
    aclrtMalloc,
    aclrtMallocHost,
    aclrtMemcpy,
    aclrtResetDevice,
    aclrtSetCurrentContext,
    aclrtSetDevice,
)
from ._llm_facts cimport LLM_DEVICE_OUT_OF_MEMORY, LLM_FAILED, LLM_PARAM_INVALID, LLM_SUCCESS


cdef extern from "<sched.h>" nogil:
    int sched_yield()


BACKEND = "sim" if LLMDD_SIMULATED else "acl"
SIMULATED = bool(LLMDD_SIMULATED)

# Engines between Initialize and their teardown. The GIL guards both.
cdef int _users = 0
cdef bint _acl_initialized_by_llmdd = False


cdef void forget_users_in_child() noexcept:
    """After fork, in the child: the runtime state is the parent's, and the parent's engines
    never call the runtime here again (they are abandoned), so nothing is left to finalize."""
    global _users, _acl_initialized_by_llmdd
    _users = 0
    _acl_initialized_by_llmdd = False


cdef aclError _join() noexcept:
    """One more engine uses the runtime: the first sets ACL up."""
    global _users, _acl_initialized_by_llmdd
    cdef aclError error
    if _users == 0:
        error = aclInit(NULL)
        if error != ACL_SUCCESS and error != ACL_ERROR_REPEAT_INITIALIZE:
            return error
        # REPEAT_INITIALIZE: the host process (torch_npu, say) set ACL up; it stays theirs.
        _acl_initialized_by_llmdd = error == ACL_SUCCESS
    _users += 1
    return ACL_SUCCESS


cdef void _leave() noexcept:
    """An engine stops using the runtime: the last one out finalizes ACL if llmdd set it up."""
    global _users, _acl_initialized_by_llmdd
    _users -= 1
    if _users == 0 and _acl_initialized_by_llmdd:
        aclFinalize()
        _acl_initialized_by_llmdd = False


def runtime_version():
    """(major, minor, patch) of the ACL runtime, from aclrtGetVersion; None if it says no."""
    cdef int32_t major = 0, minor = 0, patch = 0
    if aclrtGetVersion(&major, &minor, &patch) != ACL_SUCCESS:
        return None
    return major, minor, patch


cdef aclError copy_memory(void* dst, const void* src, size_t count, aclrtMemcpyKind kind) noexcept nogil:
    return aclrtMemcpy(dst, count, src, count, kind)


cdef aclError ipc_process_id(int32_t* pid) noexcept nogil:
    return aclrtDeviceGetBareTgid(pid)


cdef class DeviceRuntime:
    """An engine's device and context, between open (Initialize) and close (its teardown).
    The GIL is released while the runtime works; calls_in_flight counts such calls."""

    cdef uint32_t open(self, int32_t device, int malloc_policy):
        """Join the runtime's users, set the device and make a context: all or none. The
        engine joins before its first call that may release the GIL, so that another engine's
        teardown never finalizes ACL under this set-up."""
        cdef aclError error
        cdef aclrtContext previous = NULL
        cdef aclrtContext context = NULL
        cdef uint32_t status
        self.last_error = ACL_SUCCESS
        error = _join()
        if error != ACL_SUCCESS:
            return self.failure(error)
        # aclrtSetDevice and aclrtCreateContext both change the thread's current context:
        # put the caller's back afterwards.
        if aclrtGetCurrentContext(&previous) != ACL_SUCCESS:
            previous = NULL
        error = aclrtSetDevice(device)
        if error == ACL_SUCCESS:
            error = aclrtCreateContext(&context, device)
            if error != ACL_SUCCESS:
                aclrtResetDevice(device)
        if previous != NULL:
            aclrtSetCurrentContext(previous)
        if error != ACL_SUCCESS:
            status = self.failure(error)   # before aclFinalize can clear the runtime's message
            _leave()
            return status
        self.device = device
        self.context = context
        self.malloc_policy = <aclrtMemMallocPolicy>malloc_policy
        return LLM_SUCCESS

    cdef void close(self):
        """Release the context and the device, and leave the runtime's users."""
        aclrtDestroyContext(self.context)
        self.context = NULL
        aclrtResetDevice(self.device)
        _leave()

    cdef void wait_for_calls(self):
        """Wait for the runtime calls other threads make without the GIL to end."""
        while self.calls_in_flight:
            with nogil:
                sched_yield()

    cdef aclError malloc(self, void** address, uint64_t nbytes, bint on_host):
        cdef aclError error
        cdef aclrtContext previous = NULL
        self.calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                if on_host:
                    error = aclrtMallocHost(address, <size_t>nbytes)
                else:
                    error = aclrtMalloc(address, <size_t>nbytes, self.malloc_policy)
                self.restore_context(previous)
        self.calls_in_flight -= 1
        return error

    cdef aclError free(self, void* address, bint on_host):
        cdef aclError error
        cdef aclrtContext previous = NULL
        self.calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                error = aclrtFreeHost(address) if on_host else aclrtFree(address)
                self.restore_context(previous)
        self.calls_in_flight -= 1
        return error

    cdef aclError memory_info(self, size_t* free_bytes, size_t* total_bytes):
        """(free, total) bytes of the device, from aclrtGetMemInfo."""
        cdef aclError error
        cdef aclrtContext previous = NULL
        self.calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                error = aclrtGetMemInfo(ACL_HBM_MEM, free_bytes, total_bytes)
                self.restore_context(previous)
        self.calls_in_flight -= 1
        return error

    # IPC memory: the same-host path (docs/facts.md section 10). An exporter allows one pid, the
    # importer maps the key, both close it (the importer first), and the importer copies between
    # its memory and the imported bytes with device-to-device copies.

    cdef aclError ipc_export(self, void* address, uint64_t nbytes, int32_t peer_pid, char* key):
        """Export device bytes [address, address + nbytes) to process `peer_pid` alone; `key`
        (LLMDD_ACL_IPC_KEY_BYTES bytes) receives the key. An export whose pid cannot be set is
        closed again: no export is ever left open to every process."""
        cdef aclError error
        cdef aclrtContext previous = NULL
        self.calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                error = aclrtIpcMemGetExportKey(address, <size_t>nbytes, key, LLMDD_ACL_IPC_KEY_BYTES,
                                                ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT)
                if error == ACL_SUCCESS:
                    error = aclrtIpcMemSetImportPid(key, &peer_pid, 1)
                    if error != ACL_SUCCESS:
                        aclrtIpcMemClose(key)
                self.restore_context(previous)
        self.calls_in_flight -= 1
        return error

    cdef aclError ipc_import(self, const char* key, bint peer_access, void** address):
        """Map another process's export into this one. `peer_access`: the exporter's device is
        another one, and the runtime is to enable access to it."""
        cdef aclError error
        cdef aclrtContext previous = NULL
        cdef uint64_t flags = ACL_RT_IPC_MEM_IMPORT_FLAG_DEFAULT
        if peer_access:
            flags = ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS
        self.calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                error = aclrtIpcMemImportByKey(address, key, flags)
                self.restore_context(previous)
        self.calls_in_flight -= 1
        return error

    cdef aclError ipc_close(self, const char* key):
        """Close a key this process imported (one import of it) or exported (the export)."""
        cdef aclError error
        cdef aclrtContext previous = NULL
        self.calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                error = aclrtIpcMemClose(key)
                self.restore_context(previous)
        self.calls_in_flight -= 1
        return error

    cdef aclError copy_device_regions(self, const uint64_t* dsts, const uint64_t* srcs, const uint64_t* sizes,
                                      Py_ssize_t count):
        """Device-to-device copies of sizes[i] bytes from srcs[i] to dsts[i], in order, up to the
        first that fails."""
        cdef aclError error
        cdef aclrtContext previous = NULL
        cdef Py_ssize_t i
        self.calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                for i in range(count):
                    error = copy_memory(<void*><uintptr_t>dsts[i], <const void*><uintptr_t>srcs[i],
                                        <size_t>sizes[i], ACL_MEMCPY_DEVICE_TO_DEVICE)
                    if error != ACL_SUCCESS:
                        break
                self.restore_context(previous)
        self.calls_in_flight -= 1
        return error

    cdef aclError bind_context(self, aclrtContext* previous) noexcept nogil:
        if aclrtGetCurrentContext(previous) != ACL_SUCCESS:
            previous[0] = NULL
        if previous[0] == self.context:
            return ACL_SUCCESS
        return aclrtSetCurrentContext(self.context)

    cdef void restore_context(self, aclrtContext previous) noexcept nogil:
        # A thread that had no context keeps the engine's: the next call skips the switch.
        if previous != NULL and previous != self.context:
            aclrtSetCurrentContext(previous)

    cdef uint32_t failure(self, aclError error):
        """Record a failed runtime call for LLMException and map it to a status (issue #3)."""
        cdef const char* message = aclGetRecentErrMsg()
        self.last_error = error
        self.last_detail = message.decode("utf-8", "replace") if message != NULL else "no message"
        if error == ACL_ERROR_RT_MEMORY_ALLOCATION or error == ACL_ERROR_BAD_ALLOC or error == ACL_ERROR_RT_DEVICE_OOM:
            return LLM_DEVICE_OUT_OF_MEMORY
        if error == ACL_ERROR_RT_INVALID_DEVICEID or error == ACL_ERROR_INVALID_DEVICE:
            return LLM_PARAM_INVALID
        return LLM_FAILED

    cdef void explain(self, str detail):
        """A call failed for a reason of llmdd's, not the runtime's."""
        self.last_error = ACL_SUCCESS
        self.last_detail = detail

    cdef object exception(self, uint32_t status, str call, bint initialized):
        """The LLMException of a call that answered `status` on an engine over this runtime, with
        what the runtime said of it."""
        from ._status import LLMException, status_member
        status_code = status_member(status)
        name = getattr(status_code, "name", "unknown status")
        message = f"{call} failed: {name} ({status:#010x})"
        if status == LLM_FAILED and not initialized:
            message += "; the engine is not initialized"
        elif self.last_error != ACL_SUCCESS:
            message += f"; ACL error {self.last_error}: {self.last_detail}"
        return LLMException(message, status_code=status_code)


include "_sim_control.pxi"
