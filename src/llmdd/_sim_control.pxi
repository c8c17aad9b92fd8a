# Test controls of llmdd's host runtime, included into _runtime so that they reach the
# runtime linked into that extension. llmdd.sim is their public face.
from ._sim_control cimport (
    LLMDD_SIM_CALL_COUNT,
    llmdd_sim_call_count,
    llmdd_sim_call_names,
    llmdd_sim_device_usage,
    llmdd_sim_inject_failure,
    llmdd_sim_ipc_import_bytes,
)

SIM_CALLS = tuple(llmdd_sim_call_names[i].decode("ascii") for i in range(LLMDD_SIM_CALL_COUNT))


cdef int _require_simulation() except -1:
    if not LLMDD_SIMULATED:
        raise RuntimeError("llmdd was built with -Druntime=acl: the host runtime's controls do not exist")
    return 0


cdef int _sim_call_index(str call) except -1:
    _require_simulation()
    if call not in SIM_CALLS:
        raise ValueError(f"{call!r} is not one of the runtime calls {SIM_CALLS}")
    return SIM_CALLS.index(call)


def _sim_inject_failure(str call, uint64_t nth, int error):
    llmdd_sim_inject_failure(_sim_call_index(call), nth, error)


def _sim_call_count(str call):
    return llmdd_sim_call_count(_sim_call_index(call))


def _sim_device_usage(int32_t device):
    cdef uint64_t bytes_charged, allocations
    _require_simulation()
    if llmdd_sim_device_usage(device, &bytes_charged, &allocations) != 0:
        raise ValueError(f"device {device} does not exist, or the runtime is not initialized")
    return bytes_charged, allocations
