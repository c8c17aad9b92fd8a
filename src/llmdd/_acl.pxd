# The ACL runtime subset llmdd calls, declared as in acl/acl.h (docs/facts.md sections 7 and 10).
# Declarations only. runtime.h decides whether CANN's runtime or llmdd's host runtime
# provides them.
from libc.stdint cimport int32_t, uint32_t, uint64_t


cdef extern from "runtime.h" nogil:
    int LLMDD_SIMULATED

    ctypedef int aclError
    ctypedef void* aclrtContext

    enum:
        ACL_SUCCESS
        ACL_ERROR_INVALID_PARAM
        ACL_ERROR_REPEAT_INITIALIZE
        ACL_ERROR_BAD_ALLOC
        ACL_ERROR_INVALID_DEVICE
        ACL_ERROR_RT_INVALID_DEVICEID
        ACL_ERROR_RT_MEMORY_ALLOCATION
        ACL_ERROR_RT_DEVICE_OOM
        ACL_ERROR_RT_PARAM_INVALID

    # IPC memory flags (acl_rt.h)
    enum:
        ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT
        ACL_RT_IPC_MEM_IMPORT_FLAG_DEFAULT
        ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS

    ctypedef enum aclrtMemMallocPolicy:
        ACL_MEM_MALLOC_HUGE_FIRST
        ACL_MEM_MALLOC_HUGE_ONLY
        ACL_MEM_MALLOC_NORMAL_ONLY

    ctypedef enum aclrtMemcpyKind:
        ACL_MEMCPY_HOST_TO_HOST
        ACL_MEMCPY_HOST_TO_DEVICE
        ACL_MEMCPY_DEVICE_TO_HOST
        ACL_MEMCPY_DEVICE_TO_DEVICE

    ctypedef enum aclrtMemAttr:
        ACL_DDR_MEM
        ACL_HBM_MEM

    # Set-up and teardown
    aclError aclInit(const char* configPath)
    aclError aclFinalize()
    const char* aclGetRecentErrMsg()

    # Devices
    aclError aclrtSetDevice(int32_t deviceId)
    aclError aclrtResetDevice(int32_t deviceId)
    aclError aclrtGetDevice(int32_t* deviceId)
    aclError aclrtGetDeviceCount(uint32_t* count)
    aclError aclrtGetVersion(int32_t* majorVersion, int32_t* minorVersion, int32_t* patchVersion)

    # Contexts
    aclError aclrtCreateContext(aclrtContext* context, int32_t deviceId)
    aclError aclrtDestroyContext(aclrtContext context)
    aclError aclrtSetCurrentContext(aclrtContext context)
    aclError aclrtGetCurrentContext(aclrtContext* context)

    # Memory
    aclError aclrtMalloc(void** devPtr, size_t size, aclrtMemMallocPolicy policy)
    aclError aclrtFree(void* devPtr)
    aclError aclrtMallocHost(void** hostPtr, size_t size)
    aclError aclrtFreeHost(void* hostPtr)
    aclError aclrtMemset(void* devPtr, size_t maxCount, int32_t value, size_t count)
    aclError aclrtMemcpy(void* dst, size_t destMax, const void* src, size_t count, aclrtMemcpyKind kind)
    aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t* free, size_t* total)

    # IPC memory: device memory shared with another process of the host
    aclError aclrtIpcMemGetExportKey(void* devPtr, size_t size, char* key, size_t len, uint64_t flags)
    aclError aclrtIpcMemSetImportPid(const char* key, int32_t* pid, size_t num)
    aclError aclrtIpcMemImportByKey(void** devPtr, const char* key, uint64_t flags)
    aclError aclrtIpcMemClose(const char* key)
    aclError aclrtDeviceGetBareTgid(int32_t* pid)


cdef extern from "acl_ipc.h" nogil:
    enum:
        LLMDD_ACL_IPC_KEY_BYTES   # the key buffer aclrtIpcMemGetExportKey fills
