"""The drop-in's LLMDataDist: init's option rules, one initialized per process, the v1/v2 modes,
every method before init and after finalize, and the methods llmdd does not implement yet.
switch_role has test_switch_role.py."""
import pytest
from support.dropin import POOL, initialized

from llmdd.llm_datadist import LLMClusterInfo, LLMDataDist, LLMException, LLMRole, LLMStatusCode

NOT_ENABLED = LLMStatusCode.LLM_FEATURE_NOT_ENABLED


def cluster():
    info = LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 26000)
    info.append_remote_ip_info("127.0.0.1", 26001)
    return info


# name -> a call with good arguments, in the mode where CANN allows it
V2_CALLS = {
    "link": lambda datadist: datadist.link("link", {3: 0, 2: 1}, "{}"),
    "unlink": lambda datadist: datadist.unlink(1),
    "query_register_mem_status": lambda datadist: datadist.query_register_mem_status(1),
}
LINK_CALLS = {
    "link_clusters": lambda datadist: datadist.link_clusters([cluster()], 5000),
    "unlink_clusters": lambda datadist: datadist.unlink_clusters([cluster()], 5000, force=True),
}
V1_CALLS = {"check_link_status": lambda datadist: datadist.check_link_status(1), **LINK_CALLS}
ALL_CALLS = {**V2_CALLS, **V1_CALLS, "switch_role": lambda datadist: datadist.switch_role(LLMRole.DECODER),
             "cache_manager": lambda datadist: datadist.cache_manager,
             "kv_cache_manager": lambda datadist: datadist.kv_cache_manager}


def test_constructor_checks_role_and_cluster_id():
    assert LLMDataDist(LLMRole.DECODER, 2**64 - 1).cluster_id == 2**64 - 1
    with pytest.raises(TypeError):
        LLMDataDist(1, 0)
    with pytest.raises(ValueError):
        LLMDataDist(LLMRole.PROMPT, -1)
    with pytest.raises(TypeError):
        LLMDataDist(LLMRole.PROMPT, "0")


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
def test_every_method_before_init_raises_runtime_error(name):
    # llm_datadist.py, _check_is_inited: a RuntimeError, not an LLMException (which is one too).
    with pytest.raises(RuntimeError, match="init") as raised:
        ALL_CALLS[name](LLMDataDist(LLMRole.PROMPT, 0))
    assert type(raised.value) is RuntimeError


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
def test_every_method_after_finalize_raises_runtime_error(name):
    datadist = initialized()
    datadist.finalize()
    with pytest.raises(RuntimeError, match="init") as raised:
        ALL_CALLS[name](datadist)
    assert type(raised.value) is RuntimeError


def test_init_twice_is_a_no_op_and_finalize_twice_too(datadist_v1):
    datadist_v1.init({"ge.exec.deviceId": "not even checked"})
    datadist_v1.finalize()
    datadist_v1.finalize()
    LLMDataDist(LLMRole.PROMPT, 0).finalize()


def test_a_second_initialized_llmdatadist_is_refused_until_the_first_finalizes():
    first = initialized()
    second = LLMDataDist(LLMRole.DECODER, 1)
    with pytest.raises(LLMException) as raised:
        second.init({"ge.exec.deviceId": "0"})
    assert raised.value.status_code is LLMStatusCode.LLM_FAILED
    assert LLMDataDist.llm_engine_instance is first
    first.finalize()
    second.init({"ge.exec.deviceId": "0"})
    assert LLMDataDist.llm_engine_instance is second
    second.finalize()
    assert LLMDataDist.llm_engine_instance is None


@pytest.mark.parametrize("pool_sizes,error", [
    ("1.23", LLMException), ("-1", LLMException), ("1024,2048", LLMException), ("", LLMException), (123, TypeError),
])
def test_flow_graph_mem_max_size_must_be_one_pool_size_of_digits(pool_sizes, error):
    datadist = LLMDataDist(LLMRole.PROMPT, 0)
    with pytest.raises(error):
        datadist.init({"ge.exec.deviceId": "0", "ge.flowGraphMemMaxSize": pool_sizes})
    assert LLMDataDist.llm_engine_instance is None
    datadist.init({"ge.exec.deviceId": "0", "ge.flowGraphMemMaxSize": "1024"})
    datadist.finalize()


@pytest.mark.parametrize("options,message", [
    ({"llm.TransferBackend": "hixl", "llm.listenIpInfo": "127.0.0.1:26000"}, "EnableCacheManager"),
    ({"llm.TransferBackend": "hixl", "llm.EnableCacheManager": "1", "llm.MemPoolConfig": POOL}, "listenIpInfo"),
    ({"llm.TransferBackend": "hixl", "llm.EnableCacheManager": "1", "llm.EnableRemoteCacheAccessible": "0",
      "llm.listenIpInfo": "127.0.0.1:26000"}, "EnableRemoteCacheAccessible"),
    ({"llm.LocalCommRes": "{}", "llm.EnableCacheManager": "0"}, "EnableCacheManager"),
    ({"llm.EnableCacheManager": "1", "llm.listenIpInfo": "127.0.0.1"}, "ip:port"),
])
def test_init_applies_the_cache_manager_mode_rules(options, message):
    with pytest.raises(LLMException, match=message):
        LLMDataDist(LLMRole.PROMPT, 0).init({"ge.exec.deviceId": "0", **options})
    assert LLMDataDist.llm_engine_instance is None


def test_init_refuses_non_string_options():
    with pytest.raises(TypeError):
        LLMDataDist(LLMRole.PROMPT, 0).init({"ge.exec.deviceId": 0})
    with pytest.raises(TypeError):
        LLMDataDist(LLMRole.PROMPT, 0).init([("ge.exec.deviceId", "0")])


def test_engine_failures_carry_the_drop_ins_status():
    with pytest.raises(LLMException) as raised:
        LLMDataDist(LLMRole.PROMPT, 0).init({"ge.exec.deviceId": "not a number"})
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    assert LLMDataDist.llm_engine_instance is None


def test_local_comm_res_turns_on_cache_manager_mode():
    datadist = initialized(local_comm_res="", mem_pool_cfg=POOL)
    assert datadist.cache_manager is not None
    datadist.finalize()



def test_v2_mode_has_cache_manager_but_no_kv_cache_manager(datadist_v2):
    assert datadist_v2.cache_manager is datadist_v2.cache_manager
    with pytest.raises(LLMException, match="EnableCacheManager") as raised:
        datadist_v2.kv_cache_manager
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID


def test_v1_mode_has_kv_cache_manager_but_no_cache_manager(datadist_v1):
    assert datadist_v1.kv_cache_manager is not None
    with pytest.raises(LLMException, match="EnableCacheManager"):
        datadist_v1.cache_manager


def test_a_device_list_initializes_its_first_device():
    datadist = initialized(device_id=[2, 3])
    assert datadist._engine.device_id == 2
    datadist.finalize()


@pytest.mark.parametrize("name", sorted(V2_CALLS))
def test_rank_table_methods_are_cache_manager_mode_only(datadist_v1, name):
    with pytest.raises(LLMException) as raised:
        V2_CALLS[name](datadist_v1)
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID


def test_check_link_status_is_v1_mode_only(datadist_v2):
    with pytest.raises(LLMException) as raised:
        datadist_v2.check_link_status(1)
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID


@pytest.mark.parametrize("call,error", [
    (lambda datadist: datadist.link("", {3: 0, 2: 1}, "{}"), LLMException),
    (lambda datadist: datadist.link("a" * 128, {3: 0, 2: 1}, "{}"), LLMException),
    (lambda datadist: datadist.link("link", [3, 2], "{}"), TypeError),
    (lambda datadist: datadist.link("link", {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}, "{}"), LLMException),
    (lambda datadist: datadist.link("link", {3: 0}, "{}"), LLMException),
    (lambda datadist: datadist.link("link", {3: 1, 2: 0}, "{}"), LLMException),
    (lambda datadist: datadist.link("link", {3: 0, 2: 1}, 123), TypeError),
    (lambda datadist: datadist.link("link", {-3: 0, 2: 1}, "{}"), ValueError),
    (lambda datadist: datadist.unlink("1"), TypeError),
    (lambda datadist: datadist.query_register_mem_status(-1), ValueError),
    (lambda datadist: datadist.link_clusters([cluster()], 0), LLMException),
    (lambda datadist: datadist.link_clusters([cluster()], 2**31), ValueError),
    (lambda datadist: datadist.link_clusters("not a list", 5000), TypeError),
    (lambda datadist: datadist.link_clusters([LLMClusterInfo()], 5000), TypeError),
    (lambda datadist: datadist.unlink_clusters([cluster()], 5000, force="yes"), TypeError),
])
def test_unimplemented_methods_check_their_arguments_first(datadist_v2, call, error):
    with pytest.raises(error) as raised:
        call(datadist_v2)
    assert getattr(raised.value, "status_code", None) is not NOT_ENABLED


def test_link_clusters_needs_local_ips_without_local_comm_res(datadist_v2):
    info = LLMClusterInfo()
    info.remote_cluster_id = 1
    with pytest.raises(LLMException, match="local_ip_info_list is empty"):
        datadist_v2.link_clusters([info], 5000)


