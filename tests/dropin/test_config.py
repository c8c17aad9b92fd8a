"""The drop-in's LLMConfig and LLMClusterInfo: every setting checked as it is assigned, and the
option it emits (CANN's configs.py rules, docs/facts.md section 6)."""
import pytest

from llmdd.llm_datadist import LLMClusterInfo, LLMConfig, LlmConfig, LLMException, LLMRole, LLMStatusCode

UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1


def options_with(**settings):
    config = LLMConfig()
    for name, value in settings.items():
        setattr(config, name, value)
    return config.generate_options()


def test_llm_config_is_also_named_llmconfig():
    assert LlmConfig is LLMConfig
    assert LLMConfig.gen_options is LLMConfig.generate_options


def test_a_fresh_config_emits_only_the_memory_utilization():
    assert LLMConfig().generate_options() == {"llm.MemoryUtilization": "0.95"}


def test_a_misspelled_setting_is_an_attribute_error_not_dropped():
    config = LLMConfig()
    for misspelling in ("rdma_trafic_class", "link_total_times", "enable_cache_managers", "memory_utilization"):
        with pytest.raises(AttributeError):
            setattr(config, misspelling, 1)


@pytest.mark.parametrize("device_id,exec_ids,session_id", [
    (3, "3", "3"), ([0, 1], "0;1", "0"), ((4, 5), "4;5", "4"), (INT32_MAX, str(INT32_MAX), str(INT32_MAX)),
])
def test_device_ids_emit_the_exec_and_session_device(device_id, exec_ids, session_id):
    options = options_with(device_id=device_id)
    assert (options["ge.exec.deviceId"], options["ge.session_device_id"]) == (exec_ids, session_id)


@pytest.mark.parametrize("device_id,error", [
    ("0", TypeError), (1.0, TypeError), ([0, "1"], TypeError), (True, TypeError), (-1, LLMException),
    ([0, -1], LLMException), ([], LLMException), (INT32_MAX + 1, ValueError), ([0, 2**40], ValueError),
])
def test_bad_device_ids_are_refused_at_assignment(device_id, error):
    config = LLMConfig()
    with pytest.raises(error):
        config.device_id = device_id
    assert config.device_id is None


@pytest.mark.parametrize("timeout", [3000, "3000", 1, INT32_MAX, str(INT32_MAX)])
def test_sync_kv_timeout_takes_an_int_or_digits_and_emits_a_string(timeout):
    assert options_with(sync_kv_timeout=timeout)["llm.SyncKvCacheWaitTime"] == str(timeout)


@pytest.mark.parametrize("timeout,error", [
    (3000.0, TypeError), (None, TypeError), ("3e3", LLMException), ("-1", LLMException), ("", LLMException),
    (0, LLMException), ("0", LLMException), (-5, LLMException), (INT32_MAX + 1, ValueError),
    (str(INT32_MAX + 1), ValueError),
])
def test_bad_sync_kv_timeouts_are_refused(timeout, error):
    with pytest.raises(error):
        LLMConfig().sync_kv_timeout = timeout


@pytest.mark.parametrize("utilization", [0.0, 0.5, 1.0])
def test_mem_utilization_in_zero_to_one_is_emitted(utilization):
    config = LLMConfig()
    config.mem_utilization = utilization
    assert config.mem_utilization == utilization
    assert config.generate_options()["llm.MemoryUtilization"] == str(utilization)


@pytest.mark.parametrize("utilization,error", [(1.5, LLMException), (-0.1, LLMException), (1, TypeError),
                                               ("0.5", TypeError)])
def test_mem_utilization_outside_zero_to_one_is_refused_at_once(utilization, error):
    config = LLMConfig()
    with pytest.raises(error) as raised:
        config.mem_utilization = utilization
    if error is LLMException:
        assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    assert config.mem_utilization == 0.95


@pytest.mark.parametrize("name,key", [
    ("listen_ip_info", "llm.listenIpInfo"), ("deploy_res_path", "llm.deployResPath"),
    ("buf_pool_cfg", "llm.BufPoolCfg"), ("mem_pool_cfg", "llm.MemPoolConfig"),
    ("host_mem_pool_cfg", "llm.HostMemPoolConfig"),
])
def test_string_settings_are_emitted_when_not_empty(name, key):
    assert options_with(**{name: "value"})[key] == "value"
    assert key not in options_with(**{name: ""})


@pytest.mark.parametrize("name,key", [
    ("local_comm_res", "llm.LocalCommRes"), ("transfer_backend", "llm.TransferBackend"),
    ("global_resource_config", "llm.GlobalResourceConfig"),
])
def test_string_settings_are_emitted_once_set_even_empty(name, key):
    assert key not in options_with()
    assert options_with(**{name: ""})[key] == ""
    assert options_with(**{name: '{"a": 1}'})[key] == '{"a": 1}'


@pytest.mark.parametrize("name", [
    "listen_ip_info", "deploy_res_path", "buf_pool_cfg", "mem_pool_cfg", "host_mem_pool_cfg", "local_comm_res",
    "transfer_backend", "global_resource_config", "cluster_info",
])
@pytest.mark.parametrize("value", [123, {"key": "value"}, [1, 2], b"bytes"])
def test_string_settings_refuse_other_types_at_assignment(name, value):
    with pytest.raises(TypeError):
        setattr(LLMConfig(), name, value)


@pytest.mark.parametrize("name,key", [
    ("enable_cache_manager", "llm.EnableCacheManager"),
    ("enable_remote_cache_accessible", "llm.EnableRemoteCacheAccessible"),
])
def test_mode_flags_emit_zero_or_one_once_set(name, key):
    config = LLMConfig()
    assert getattr(config, name) is False and key not in config.generate_options()
    setattr(config, name, False)
    assert config.generate_options()[key] == "0"
    setattr(config, name, True)
    assert getattr(config, name) is True and config.generate_options()[key] == "1"


def test_switch_role_is_emitted_only_when_enabled():
    assert options_with(enable_switch_role=True)["llm.EnableSwitchRole"] == "1"
    assert "llm.EnableSwitchRole" not in options_with(enable_switch_role=False)


@pytest.mark.parametrize("name", ["enable_cache_manager", "enable_remote_cache_accessible", "enable_switch_role"])
@pytest.mark.parametrize("value", [1, "1", "True"])
def test_flags_take_only_bools(name, value):
    with pytest.raises(TypeError):
        setattr(LLMConfig(), name, value)


@pytest.mark.parametrize("name,key,default,low,high", [
    ("link_total_time", "llm.LinkTotalTime", 0, 0, UINT32_MAX),
    ("link_retry_count", "llm.LinkRetryCount", 1, 1, 100),
])
def test_link_settings_have_a_default_and_a_range(name, key, default, low, high):
    config = LLMConfig()
    assert getattr(config, name) == default and key not in config.generate_options()
    for value in (low, high):
        setattr(config, name, value)
        assert config.generate_options()[key] == str(value)
    for value in (low - 1, high + 1):
        with pytest.raises(LLMException):
            setattr(config, name, value)
    with pytest.raises(TypeError):
        setattr(config, name, "10")


@pytest.mark.parametrize("name,key", [("rdma_traffic_class", "llm.RdmaTrafficClass"),
                                      ("rdma_service_level", "llm.RdmaServiceLevel")])
def test_rdma_settings_are_uint32(name, key):
    assert options_with(**{name: 100})[key] == "100"
    assert options_with(**{name: UINT32_MAX})[key] == str(UINT32_MAX)
    for value in (-1, UINT32_MAX + 1):
        with pytest.raises(ValueError):
            setattr(LLMConfig(), name, value)
    for value in ("100", None, 1.0):
        with pytest.raises(TypeError):
            setattr(LLMConfig(), name, value)


def test_output_max_size_is_an_int_emitted_once_set():
    assert options_with(output_max_size=4096)["llm.OutputMaxSize"] == "4096"
    with pytest.raises(TypeError):
        LLMConfig().output_max_size = "4096"


def test_cluster_info_is_json_with_listen_ips_as_integers():
    config = LLMConfig()
    config.cluster_info = '{"cluster_id": 1, "listen_ip_info": [{"ip": "10.0.0.1", "port": 26000}]}'
    emitted = config.generate_options()["llm.ClusterInfo"]
    # CANN's integer form of an IPv4 address: its four bytes read little-endian.
    assert '"ip": 16777226' in emitted and '"port": 26000' in emitted
    with pytest.raises(ValueError):
        config.cluster_info = "not json"


def test_ge_options_are_merged_first_and_must_map_str_to_str():
    options = options_with(ge_options={"ge.flowGraphMemMaxSize": "1024", "ge.exec.deviceId": "7"}, device_id=1)
    assert options["ge.flowGraphMemMaxSize"] == "1024" and options["ge.exec.deviceId"] == "1"
    for bad in ({"key": 1}, {1: "value"}, [("key", "value")]):
        with pytest.raises(TypeError):
            LLMConfig().ge_options = bad


def test_generate_options_builds_a_new_dict_each_time():
    config = LLMConfig()
    config.enable_remote_cache_accessible = True
    first = config.generate_options()
    config.enable_remote_cache_accessible = None
    assert "llm.EnableRemoteCacheAccessible" in first and "llm.EnableRemoteCacheAccessible" not in config.options


def test_cluster_info_takes_ips_as_dotted_strings_or_integers():
    info = LLMClusterInfo()
    info.remote_cluster_id = 1
    info.remote_role_type = LLMRole.DECODER
    info.append_local_ip_info("10.0.0.1", 26000)
    info.append_remote_ip_info(0x0200000A, 65535)
    assert info.local_ip_info_list == [(0x0100000A, 26000)]
    assert info.remote_ip_info_list == [(0x0200000A, 65535)]
    assert (info.remote_cluster_id, info.remote_role_type) == (1, LLMRole.DECODER)


@pytest.mark.parametrize("ip,port,error", [
    ("10.0.0.1", 65536, ValueError), ("10.0.0.1", -1, ValueError), ("10.0.0.1", "80", TypeError),
    (1.5, 80, TypeError), ("10.0.0", 80, LLMException), ("10.0.0.256", 80, LLMException),
    ("host.example", 80, LLMException),
])
def test_cluster_info_refuses_bad_addresses(ip, port, error):
    info = LLMClusterInfo()
    with pytest.raises(error):
        info.append_local_ip_info(ip, port)
    assert info.local_ip_info_list == []


def test_cluster_info_ids_are_checked():
    info = LLMClusterInfo()
    with pytest.raises(ValueError):
        info.remote_cluster_id = -1
    with pytest.raises(TypeError):
        info.remote_role_type = "PROMPT"
    with pytest.raises(AttributeError):
        info.remote_cluster = 1
