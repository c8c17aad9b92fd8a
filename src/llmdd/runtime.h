/* Which ACL runtime llmdd is built against: the one place that knows.
 *
 * meson's `runtime` option defines LLMDD_BACKEND_SIM to 1 (llmdd's host runtime, linked into
 * the extension) or 0 (CANN's <acl/acl.h> and libascendcl.so). The Cython code never knows
 * which; it reads LLMDD_SIMULATED to report the build. */
#ifndef LLMDD_RUNTIME_H
#define LLMDD_RUNTIME_H

#if LLMDD_BACKEND_SIM
#include "sim/acl_subset.h"
#include "sim/sim_control.h"
#define LLMDD_SIMULATED 1
#else
#include <acl/acl.h>
#define LLMDD_SIMULATED 0
/* The host runtime's test controls do not exist on a real runtime. */
#define LLMDD_FOR_EACH_SIM_CALL(X)
static const char *const llmdd_sim_call_names[] = {""};
enum { LLMDD_SIM_CALL_COUNT = 0 };
static inline int llmdd_sim_inject_failure(int call, uint64_t nth, int error) {
    (void)call, (void)nth, (void)error;
    return -1;
}
static inline uint64_t llmdd_sim_call_count(int call) {
    (void)call;
    return 0;
}
static inline int llmdd_sim_device_usage(int32_t device, uint64_t *bytes_charged, uint64_t *allocations) {
    (void)device, (void)bytes_charged, (void)allocations;
    return -1;
}
static inline int llmdd_sim_ipc_import_bytes(const void *address, uint64_t *bytes) {
    (void)address, (void)bytes;
    return -1;
}
#endif

#endif
