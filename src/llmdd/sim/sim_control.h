/* Controls of llmdd's host runtime that the real ACL runtime does not have: fault
 * injection and counters for tests. Compiled only into the simulation build. */
#ifndef LLMDD_SIM_CONTROL_H
#define LLMDD_SIM_CONTROL_H

#include <stdint.h>

/* Runtime calls whose failure can be injected and whose calls are counted. */
#define LLMDD_FOR_EACH_SIM_CALL(X)                       \
    X(LLMDD_SIM_INIT, "aclInit")                         \
    X(LLMDD_SIM_SET_DEVICE, "aclrtSetDevice")            \
    X(LLMDD_SIM_RESET_DEVICE, "aclrtResetDevice")        \
    X(LLMDD_SIM_CREATE_CONTEXT, "aclrtCreateContext")    \
    X(LLMDD_SIM_DESTROY_CONTEXT, "aclrtDestroyContext")  \
    X(LLMDD_SIM_SET_CURRENT_CONTEXT, "aclrtSetCurrentContext") \
    X(LLMDD_SIM_MALLOC, "aclrtMalloc")                   \
    X(LLMDD_SIM_FREE, "aclrtFree")                       \
    X(LLMDD_SIM_MALLOC_HOST, "aclrtMallocHost")          \
    X(LLMDD_SIM_FREE_HOST, "aclrtFreeHost")              \
    X(LLMDD_SIM_MEMSET, "aclrtMemset")                   \
    X(LLMDD_SIM_MEMCPY, "aclrtMemcpy")                   \
    X(LLMDD_SIM_IPC_EXPORT, "aclrtIpcMemGetExportKey")   \
    X(LLMDD_SIM_IPC_SET_PID, "aclrtIpcMemSetImportPid")  \
    X(LLMDD_SIM_IPC_IMPORT, "aclrtIpcMemImportByKey")    \
    X(LLMDD_SIM_IPC_CLOSE, "aclrtIpcMemClose")

#define LLMDD_AS_SIM_CALL_ENUM(call, name) call,
typedef enum { LLMDD_FOR_EACH_SIM_CALL(LLMDD_AS_SIM_CALL_ENUM) LLMDD_SIM_CALL_COUNT } llmdd_sim_call;

/* The ACL function name of each call, indexed by llmdd_sim_call. */
#define LLMDD_AS_SIM_CALL_NAME(call, name) name,
static const char *const llmdd_sim_call_names[] = {LLMDD_FOR_EACH_SIM_CALL(LLMDD_AS_SIM_CALL_NAME)};

/* Makes the nth next call of `call` (1 = the very next one) fail with `error`, without
 * side effects; nth 0 cancels. Returns 0, or -1 for an unknown call. */
int llmdd_sim_inject_failure(int call, uint64_t nth, int error);

/* How many times `call` has been made since the process started (failed calls included). */
uint64_t llmdd_sim_call_count(int call);

/* Device bytes charged and live allocations on `device`; -1 for an unknown device or
 * before aclInit. */
int llmdd_sim_device_usage(int32_t device, uint64_t *bytes_charged, uint64_t *allocations);

/* The bytes of the import mapped at `address` (aclrtIpcMemImportByKey's answer): 0 with the size,
 * -1 when no import is there. ACL has no such query; llmdd's transfers need it to bound the
 * copies a peer asks for to what the peer really exported. */
int llmdd_sim_ipc_import_bytes(const void *address, uint64_t *bytes);

#endif
