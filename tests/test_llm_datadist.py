"""llmdd.llm_datadist: a drop-in for CANN's llm_datadist Python package (spec section 6)."""
import subprocess
import sys

import numpy
import pytest

import llmdd
import llmdd.llm_datadist as llm_datadist
from llmdd.llm_datadist import (
    BlocksCacheKey,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    DataType,
    LLMClusterInfo,
    LLMConfig,
    LLMDataDist,
    LLMException,
    LLMRole,
    LLMStatusCode,
    Placement,
)


@pytest.fixture
def datadist():
    engine = LLMDataDist(LLMRole.PROMPT, 0)
    config = LLMConfig()
    config.device_id = 0
    engine.init(config.generate_options())
    yield engine
    engine.finalize()


def test_the_packages_names_are_there():
    for name in ("LLMDataDist", "LLMConfig", "LlmConfig", "CacheDesc", "Cache", "KvCache", "CacheKey",
                 "CacheKeyByIdAndIndex", "BlocksCacheKey", "LLMClusterInfo", "LLMException", "LLMStatusCode",
                 "LLMRole", "Placement", "DataType"):
        assert hasattr(llm_datadist, name), name
    assert llm_datadist.LlmConfig is LLMConfig
    assert LLMException is llmdd.LLMException and issubclass(LLMException, RuntimeError)
    assert (LLMRole.PROMPT, LLMRole.DECODER, LLMRole.MIX) == (1, 2, 3)
    assert (Placement.HOST, Placement.DEVICE) == (0, 1)


def test_cache_desc_defaults_and_properties():
    desc = CacheDesc(4, [2, 16, 8, 128], DataType.DT_FLOAT16)
    assert desc.placement is Placement.DEVICE
    assert (desc.batch_dim_index, desc.batch_dim, desc.batch_size, desc.seq_len_dim_index) == (0, 0, 2, -1)
    assert desc.size == 2 * 16 * 8 * 128 * 2 and desc.kv_tensor_format is None
    desc.update_dim(1, 32)
    assert desc.shape == [2, 32, 8, 128] and desc.size == 2 * 32 * 8 * 128 * 2


@pytest.mark.parametrize("arguments,error", [
    (("4", [1], DataType.DT_INT8), TypeError),
    ((4.0, [1], DataType.DT_INT8), TypeError),
    ((-1, [1], DataType.DT_INT8), ValueError),
    ((2**32, [1], DataType.DT_INT8), ValueError),
    ((1, "1", DataType.DT_INT8), TypeError),
    ((1, [1.0], DataType.DT_INT8), TypeError),
    ((1, [2**63], DataType.DT_INT8), ValueError),
    ((1, [1], 1), TypeError),
    ((1, [1], DataType.DT_INT8, 1), TypeError),
    ((1, [1], DataType.DT_INT8, Placement.DEVICE, 1), ValueError),
    ((1, [], DataType.DT_INT8), ValueError),
    ((1, [1, 2], DataType.DT_INT8, Placement.DEVICE, 0, 2), ValueError),
    ((1, [1, 2], DataType.DT_INT8, Placement.DEVICE, 0, -2), ValueError),
])
def test_cache_desc_argument_checks(arguments, error):
    with pytest.raises(error):
        CacheDesc(*arguments)


def test_llm_config_generates_the_option_strings():
    config = LLMConfig()
    config.device_id = 3
    assert config.generate_options() == {"ge.exec.deviceId": "3", "ge.session_device_id": "3"}
    config.device_id = [0, 1]
    config.sync_kv_timeout = 2000
    config.enable_switch_role = True
    config.mem_pool_cfg = '{"memory_size": 1073741824}'
    config.global_resource_config = ""
    assert config.gen_options() == {
        "ge.exec.deviceId": "0;1", "ge.session_device_id": "0", "llm.SyncKvCacheWaitTime": "2000",
        "llm.EnableSwitchRole": "1", "llm.MemPoolConfig": '{"memory_size": 1073741824}',
        "llm.GlobalResourceConfig": "",
    }


def test_llm_config_rejects_bad_settings():
    config = LLMConfig()
    config.mem_utilization = 1.5
    with pytest.raises(LLMException):
        config.generate_options()
    config = LLMConfig()
    config.global_resource_config = {"not": "a str"}
    with pytest.raises(TypeError):
        config.generate_options()


def test_init_failures_raise_with_the_status():
    engine = LLMDataDist(LLMRole.DECODER, 1)
    with pytest.raises(LLMException) as raised:
        engine.init({"ge.exec.deviceId": "not a number"})
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    with pytest.raises(LLMException, match="init"):
        engine.cache_manager
    with pytest.raises(TypeError):
        LLMDataDist(1, 0)


def test_a_device_list_uses_its_first_device():
    engine = LLMDataDist(LLMRole.PROMPT, 0)
    config = LLMConfig()
    config.device_id = [2, 3]
    engine.init(config.generate_options())
    assert engine._engine.device_id == 2
    engine.finalize()


def test_v2_cache_manager_allocates_and_frees(datadist):
    desc = CacheDesc(8, [4, 16], DataType.DT_BF16)
    key = CacheKey(prompt_cluster_id=0, req_id=7)
    cache = datadist.cache_manager.allocate_cache(desc, cache_keys=[key])
    assert isinstance(cache, llm_datadist.Cache) and len(cache.tensor_addrs) == 8
    assert cache.cache_desc is desc and cache.cache_keys == (key,)
    datadist.cache_manager.deallocate_cache(cache)
    with pytest.raises(LLMException) as raised:
        datadist.cache_manager.deallocate_cache(cache)
    assert raised.value.status_code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST


def test_v1_kv_cache_manager_gives_per_device_addresses(datadist):
    cache = datadist.kv_cache_manager.allocate_cache(CacheDesc(2, [1, 8], DataType.DT_INT8))
    assert isinstance(cache, llm_datadist.KvCache)
    assert cache.per_device_tensor_addrs == [cache.tensor_addrs]
    datadist.kv_cache_manager.deallocate_cache(cache)


def test_allocation_errors_raise_llm_exception(datadist):
    with pytest.raises(LLMException) as raised:
        datadist.cache_manager.allocate_cache(CacheDesc(0, [1], DataType.DT_INT8))
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    with pytest.raises(TypeError):
        datadist.cache_manager.allocate_cache(CacheDesc(1, [1], DataType.DT_INT8), cache_keys=["key"])
    with pytest.raises(TypeError):
        datadist.cache_manager.allocate_cache("desc")


@pytest.mark.parametrize("method", ["pull_cache", "pull_blocks", "push_cache", "push_blocks", "register_cache"])
def test_unimplemented_cache_methods_say_so(datadist, method):
    with pytest.raises(LLMException, match=method) as raised:
        getattr(datadist.cache_manager, method)()
    assert raised.value.status_code is LLMStatusCode.LLM_FEATURE_NOT_ENABLED


@pytest.mark.parametrize("method", ["link_clusters", "unlink_clusters", "switch_role", "check_link_status"])
def test_unimplemented_engine_methods_say_so(datadist, method):
    with pytest.raises(LLMException) as raised:
        getattr(datadist, method)([])
    assert raised.value.status_code is LLMStatusCode.LLM_FEATURE_NOT_ENABLED


def test_key_types_are_values():
    assert CacheKey(1, 2) == CacheKey(1, 2, 0) and CacheKey(1, 2) != CacheKey(1, 3)
    assert len({CacheKeyByIdAndIndex(0, 5, 1), CacheKeyByIdAndIndex(0, 5, 1)}) == 1
    assert BlocksCacheKey(3) != CacheKey(3, 0)
    assert repr(BlocksCacheKey(3)) == "BlocksCacheKey(prompt_cluster_id=3, model_id=0)"
    with pytest.raises(TypeError):
        CacheKey("1", 2)


def test_cluster_info_takes_dotted_or_integer_ips():
    info = LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("10.0.0.1", 26000)
    info.append_remote_ip_info(0x0A000002, 26000)
    assert info.local_ip_info_list == [("10.0.0.1", 26000)]
    assert info.remote_ip_info_list == [("10.0.0.2", 26000)]


def test_vllm_ascend_connector_allocation_flow(datadist):
    # The allocation flow of vLLM-Ascend's original LLM-DataDist connector: one cache of
    # num_layers tensors of (1, num_tokens, kv_heads, head_dim) fp16 per request, viewed as
    # tensors, filled layer by layer, and freed.
    num_layers, num_tokens, kv_heads, head_dim = 4, 32, 8, 64
    desc = CacheDesc(num_layers, (1, num_tokens, kv_heads, head_dim), DataType.DT_FLOAT16, seq_len_dim_index=1)
    placement = Placement.DEVICE if llmdd.SIMULATED else Placement.HOST
    if placement is Placement.HOST:    # on an NPU build, view a host cache instead
        datadist.finalize()
        config = LLMConfig()
        config.host_mem_pool_cfg = '{"memory_size": 16777216}'
        datadist.init(config.generate_options())
        desc = CacheDesc(num_layers, (1, num_tokens, kv_heads, head_dim), DataType.DT_FLOAT16, placement, 0, 1)
    cache = datadist.kv_cache_manager.allocate_cache(desc, [CacheKey(0, req_id=42)])
    layers = [numpy.asarray(cache.tensor(layer)) for layer in range(num_layers)]
    for layer, kv in enumerate(layers):
        assert kv.shape == (1, num_tokens, kv_heads, head_dim) and kv.dtype == numpy.float16
        kv[:] = layer + 0.5
    assert [float(kv[0, desc.shape[1] - 1, 0, 0]) for kv in layers] == [0.5, 1.5, 2.5, 3.5]
    datadist.kv_cache_manager.deallocate_cache(cache)
    del layers


def test_import_of_the_drop_in_stays_light():
    code = ("import sys, llmdd.llm_datadist\n"
            "print([name for name in ('numpy', 'torch', 'json', 'dataclasses') if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
