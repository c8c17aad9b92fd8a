"""llmdd's host runtime keeps ACL's observable rules; out of memory and injected failures."""
import os
import subprocess
import sys

import pytest
from support.caches import allocate_until_failure, seed_desc

import llmdd
import llmdd.sim
from llmdd import Cache, CacheDesc, LlmDataDist, LlmRole

pytestmark = pytest.mark.sim_only

ACL_ERROR_RT_MEMORY_ALLOCATION = 207001
ACL_ERROR_BAD_ALLOC = 200000
ACL_ERROR_RT_DEVICE_OOM = 207018
ACL_ERROR_INTERNAL_ERROR = 500000
ACL_ERROR_RT_CONTEXT_NULL = 107002


def charged(size):
    """What aclrtMalloc takes from the device for `size` bytes: round up to 32, plus 32."""
    return (size + 31) // 32 * 32 + 32


def slab_request(desc, alignment=512):
    """The bytes llmdd asks the runtime for: aligned tensors plus slack to align the first."""
    stride = (desc.size + alignment - 1) // alignment * alignment
    return stride * desc.num_tensors + alignment - 64


def test_one_runtime_allocation_per_cache_charged_as_acl_charges(engine):
    mallocs = llmdd.sim.call_count("aclrtMalloc")
    before = llmdd.sim.device_usage(0)
    free_before, total = engine.device_memory_info()
    cache = engine.allocate_cache(seed_desc())
    assert llmdd.sim.call_count("aclrtMalloc") == mallocs + 1
    used = charged(slab_request(seed_desc()))
    assert llmdd.sim.device_usage(0) == (before[0] + used, before[1] + 1)
    assert engine.device_memory_info() == (free_before - used, total)
    engine.deallocate_cache(cache)
    assert engine.device_memory_info() == (free_before, total)


def test_default_device_has_64_gib(engine):
    assert engine.device_memory_info()[1] == 64 << 30


def test_out_of_memory_and_memory_fully_back(device_memory):
    device_memory("1MiB")
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        assert dd.device_memory_info() == (1 << 20, 1 << 20)
        desc = CacheDesc(8, [16384], llmdd.DT_INT8)      # 8 x 16 KiB: 7 fit in 1 MiB
        caches, status, cache = allocate_until_failure(dd, desc)
        assert status == llmdd.LLM_DEVICE_OUT_OF_MEMORY
        assert cache.cache_id == -1 and cache.tensor_addrs == []
        assert len(caches) == (1 << 20) // charged(slab_request(desc))
        for cache in caches:
            assert dd.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
        assert dd.device_memory_info() == (1 << 20, 1 << 20)
        assert dd.allocate_cache(desc).cache_id > caches[-1].cache_id


def test_a_cache_larger_than_the_device_is_out_of_memory(engine):
    free_before, total = engine.device_memory_info()
    cache = Cache()
    assert engine.AllocateCache(CacheDesc(2, [total], llmdd.DT_INT8), cache) == llmdd.LLM_DEVICE_OUT_OF_MEMORY
    assert engine.device_memory_info() == (free_before, total)
    with pytest.raises(llmdd.LLMException, match="ACL error 207001: .*out of memory"):
        engine.allocate_cache(CacheDesc(2, [total], llmdd.DT_INT8))


@pytest.mark.parametrize("error", [ACL_ERROR_RT_MEMORY_ALLOCATION, ACL_ERROR_BAD_ALLOC, ACL_ERROR_RT_DEVICE_OOM])
def test_runtime_out_of_memory_errors_are_device_out_of_memory(engine, error):
    llmdd.sim.inject_failure("aclrtMalloc", 1, error)
    assert engine.AllocateCache(seed_desc(), Cache()) == llmdd.LLM_DEVICE_OUT_OF_MEMORY


def test_other_runtime_errors_are_failed(engine):
    llmdd.sim.inject_failure("aclrtMalloc", 1, ACL_ERROR_INTERNAL_ERROR)
    assert engine.AllocateCache(seed_desc(), Cache()) == llmdd.LLM_FAILED


def test_injected_failure_in_the_middle_of_a_run_of_caches(engine):
    free_before = engine.device_memory_info()[0]
    llmdd.sim.inject_failure("aclrtMalloc", 3)
    results = []
    for _ in range(5):
        cache = Cache()
        results.append((engine.AllocateCache(seed_desc(), cache), cache))
    statuses = [status for status, _ in results]
    assert statuses == [llmdd.LLM_SUCCESS] * 2 + [llmdd.LLM_DEVICE_OUT_OF_MEMORY] + [llmdd.LLM_SUCCESS] * 2
    assert results[2][1].cache_id == -1
    for status, cache in results:
        if status == llmdd.LLM_SUCCESS:
            assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    assert engine.device_memory_info()[0] == free_before


def test_a_failed_free_keeps_the_cache_for_a_retry(engine):
    cache = engine.allocate_cache(seed_desc())
    usage = llmdd.sim.device_usage(0)
    llmdd.sim.inject_failure("aclrtFree", 1, ACL_ERROR_INTERNAL_ERROR)
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_FAILED
    assert llmdd.sim.device_usage(0) == usage
    with pytest.raises(llmdd.LLMException, match="ACL error 500000: .*injected failure of aclrtFree"):
        llmdd.sim.inject_failure("aclrtFree", 1, ACL_ERROR_INTERNAL_ERROR)
        engine.deallocate_cache(cache)
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    assert llmdd.sim.device_usage(0)[1] == usage[1] - 1


def test_failures_while_initializing_leave_nothing_behind():
    for call in ("aclInit", "aclrtSetDevice", "aclrtCreateContext"):
        llmdd.sim.inject_failure(call, 1, ACL_ERROR_INTERNAL_ERROR)
        with LlmDataDist(0, LlmRole.kPrompt) as dd:
            assert dd.Initialize({}) == llmdd.LLM_FAILED
            assert not dd.initialized
            assert dd.Initialize({}) == llmdd.LLM_SUCCESS
            assert llmdd.sim.device_usage(0) == (0, 0)


def test_failed_frees_during_finalize_leave_no_memory_behind():
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        for _ in range(3):
            dd.allocate_cache(seed_desc())
        llmdd.sim.inject_failure("aclrtFree", 2, ACL_ERROR_INTERNAL_ERROR)
        dd.Finalize()
    with LlmDataDist(0, LlmRole.kPrompt) as witness:
        assert witness.Initialize({}) == llmdd.LLM_SUCCESS
        assert llmdd.sim.device_usage(0) == (0, 0)


def run_python(code, **environment):
    env = dict(os.environ, **environment)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


INFO = ("import llmdd\n"
        "dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)\n"
        "status = dd.Initialize({'llm.DeviceId': DEVICE})\n"
        "print(int(status), dd.device_memory_info()[1] if status == 0 else None)\n")


@pytest.mark.parametrize("text,total", [
    ("1073741824", 1 << 30), ("64GiB", 64 << 30), ("512KiB", 512 << 10), ("3M", 3 << 20), ("2GB", 2 * 10**9),
    ("1T", 1 << 40),
])
def test_device_memory_from_the_environment(text, total):
    result = run_python(INFO.replace("DEVICE", "'0'"), LLMDD_SIM_DEVICE_MEMORY=text)
    assert result.stdout.split() == ["0", str(total)]


@pytest.mark.parametrize("text", ["abc", "0", "-1", "1.5GiB", "10XB", "99999999999999999999999"])
def test_malformed_device_memory_fails_initialize(text):
    result = run_python(INFO.replace("DEVICE", "'0'"), LLMDD_SIM_DEVICE_MEMORY=text)
    assert result.stdout.split()[0] == str(int(llmdd.LLM_FAILED))


def test_device_count_from_the_environment():
    assert run_python(INFO.replace("DEVICE", "'1'"), LLMDD_SIM_DEVICE_COUNT="2").stdout.split()[0] == "0"
    assert (run_python(INFO.replace("DEVICE", "'2'"), LLMDD_SIM_DEVICE_COUNT="2").stdout.split()[0]
            == str(int(llmdd.LLM_PARAM_INVALID)))
    assert run_python(INFO.replace("DEVICE", "'7'")).stdout.split()[0] == "0"  # default: 8 devices
    assert run_python(INFO.replace("DEVICE", "'8'")).stdout.split()[0] == str(int(llmdd.LLM_PARAM_INVALID))


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_16_gib_cache_costs_no_host_memory_until_touched(engine):
    before = rss_bytes()
    cache = engine.allocate_cache(CacheDesc(16, [1 << 30], llmdd.DT_INT8))
    assert rss_bytes() - before < 64 << 20
    engine.deallocate_cache(cache)


def test_unknown_call_names_are_rejected():
    with pytest.raises(ValueError, match="aclrtMalloc"):
        llmdd.sim.inject_failure("malloc")
    assert "aclrtMalloc" in llmdd.sim.CALLS and "aclrtFree" in llmdd.sim.CALLS
