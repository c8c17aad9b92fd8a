"""AllocateCache's status against a small pure-Python model of LLM-DataDist's rules."""
import math

from support.caches import INT64_MAX, SIZED_TYPES, descriptors
from hypothesis import HealthCheck, given, settings

import llmdd
from llmdd import Cache


def expected_status(desc, free_bytes, alignment=512):
    """The status AllocateCache owes `desc` on a device with `free_bytes` free (docs/facts.md section 4)."""
    shape = desc.shape
    bits = SIZED_TYPES.get(desc.data_type, 0)
    if (desc.num_tensors == 0 or desc.placement != llmdd.CachePlacement.kDevice or not shape
            or len(shape) >= 32 or any(dim <= 0 for dim in shape) or bits == 0):
        return llmdd.LLM_PARAM_INVALID
    tensor_bytes = math.ceil(math.prod(shape) * bits / 8)
    stride = -(-tensor_bytes // alignment) * alignment
    if tensor_bytes > INT64_MAX or stride * desc.num_tensors > INT64_MAX:
        return llmdd.LLM_PARAM_INVALID
    request = stride * desc.num_tensors + alignment - 64
    if -(-request // 32) * 32 + 32 > free_bytes:
        return llmdd.LLM_DEVICE_OUT_OF_MEMORY
    return llmdd.LLM_SUCCESS


# One engine serves every example: each one frees what it took, and the test checks that.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(desc=descriptors)
def test_status_matches_the_model(engine, desc):
    free_bytes, _ = engine.device_memory_info()
    cache = Cache()
    status = engine.AllocateCache(desc, cache)
    assert status == expected_status(desc, free_bytes)
    if status == llmdd.LLM_SUCCESS:
        assert len(cache.tensor_addrs) == desc.num_tensors
        assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    else:
        assert cache.cache_id == -1
    assert engine.device_memory_info()[0] == free_bytes
