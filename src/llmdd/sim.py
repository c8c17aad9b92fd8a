"""Controls of llmdd's host runtime (the `sim` build) for tests: fault injection and counters.

On a build against CANN's runtime (-Druntime=acl) every function raises RuntimeError.
"""
from ._datadist import SIM_CALLS as CALLS
from ._datadist import _sim_call_count, _sim_device_usage, _sim_inject_failure

__all__ = ["CALLS", "inject_failure", "call_count", "device_usage"]


def inject_failure(call, nth=1, error=207001):
    """Make the nth next `call` (an ACL function name from CALLS) fail with ACL error `error`,
    with no side effect. nth=0 cancels. The default error is ACL_ERROR_RT_MEMORY_ALLOCATION."""
    _sim_inject_failure(call, nth, error)


def call_count(call):
    """How many times the process has made `call`, failed calls included."""
    return _sim_call_count(call)


def device_usage(device=0):
    """(bytes charged, live allocations) of a simulated device, charged as ACL charges:
    each allocation's size rounded up to 32 bytes, plus 32."""
    return _sim_device_usage(device)
