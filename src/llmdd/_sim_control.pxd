# Test controls of llmdd's host runtime (sim/sim_control.h). Declarations only; on a build
# against CANN's runtime, runtime.h provides stubs that answer -1.
from libc.stdint cimport int32_t, uint64_t


cdef extern from "runtime.h" nogil:
    int LLMDD_SIM_CALL_COUNT
    const char* const llmdd_sim_call_names[]
    int llmdd_sim_inject_failure(int call, uint64_t nth, int error)
    uint64_t llmdd_sim_call_count(int call)
    int llmdd_sim_device_usage(int32_t device, uint64_t* bytes_charged, uint64_t* allocations)
    int llmdd_sim_ipc_import_bytes(const void* address, uint64_t* bytes)
