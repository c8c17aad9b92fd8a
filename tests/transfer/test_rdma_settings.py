"""llm.RdmaTrafficClass and llm.RdmaServiceLevel reach Mooncake: over rdma, an engine's Mooncake
engines run with MC_IB_TC and MC_IB_SL set to them (the variables Mooncake's rdma transport reads
once a process, when it loads). In the data-plane helper they are the helper's environment; idle
engines go only to agents that ask for the same; other protocols ignore them; in-process engines
(llmdd.MooncakeInProcess) share this process's environment, so an engine whose settings it cannot
hold is refused.

This host has no RDMA device: Mooncake's rdma protocol, finding no HCA, moves the bytes over its
TCP transport, so these tests check what Mooncake is given, not what a NIC does with it."""
import numpy
import pytest
from support.network import free_port, mooncake_missing
from support.patterns import cache_tensor as tensor
from support.peer import Peer
from support.registries import LocalRegistry

import llmdd
from llmdd import CacheIndex, ClusterInfo, IpInfo
from llmdd._options import OptionError, parse_options
from llmdd.llm_datadist import LLMDataDist, LLMException, LLMRole
from llmdd.llm_datadist import LLMStatusCode as DropinStatus
from llmdd.transfer import TransferAgent

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

S = llmdd.LLMStatusCode
PROMPT, DECODER = 41, 42
VARIABLES = ("MC_IB_TC", "MC_IB_SL")
RDMA = {"llmdd.TransferProtocol": "rdma", "llmdd.TransferPath": "network"}


@pytest.fixture(autouse=True)
def no_rdma_variables(monkeypatch):
    """Helpers inherit this process's environment: none of the variables unless a test sets them."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def helper_variables(engines):
    """MC_IB_TC and MC_IB_SL as the data-plane helper of `engines` has them (absent: not there)."""
    with open(f"/proc/{engines.helper_pid}/environ", "rb") as environ:
        pairs = [entry.decode().partition("=") for entry in environ.read().split(b"\0") if entry]
    return {name: value for name, _, value in pairs if name in VARIABLES}


def agent_engines(engine):
    return engine._transfer_service().agent._mooncake


def test_over_rdma_the_settings_must_be_what_mooncake_takes():
    # CANN takes any uint32 (comm_link_manager.cc); Mooncake's config.cpp ignores, with a log line,
    # a traffic class outside [0, 255] and a service level outside [0, 15].
    for options in ({"llm.RdmaTrafficClass": "256"}, {"llm.RdmaServiceLevel": "16"},
                    {"llm.RdmaTrafficClass": "4294967295"}):
        with pytest.raises(OptionError):
            parse_options({"llmdd.TransferProtocol": "rdma", **options})
    taken = parse_options({"llmdd.TransferProtocol": "rdma", "llm.RdmaTrafficClass": "255",
                           "llm.RdmaServiceLevel": "15"}).transfer
    assert (taken.rdma_traffic_class, taken.rdma_service_level) == (255, 15)
    # Over tcp they change nothing, and CANN's own check is the only one.
    parse_options({"llm.RdmaTrafficClass": "4294967295", "llm.RdmaServiceLevel": "16"})
    datadist = LLMDataDist(LLMRole.PROMPT, PROMPT)
    try:
        with pytest.raises(LLMException) as raised:
            datadist.init({"ge.exec.deviceId": "0", "llm.EnableCacheManager": "1", **RDMA,
                           "llm.RdmaTrafficClass": "256"})
    finally:
        datadist.finalize()
    assert raised.value.status_code is DropinStatus.LLM_PARAM_INVALID
    with pytest.raises(LLMException) as raised:
        TransferAgent(LocalRegistry(), PROMPT, protocol="rdma", rdma_service_level=16)
    assert raised.value.status_code is S.LLM_PARAM_INVALID


def test_an_rdma_engines_helper_runs_with_its_traffic_class_and_service_level():
    port = free_port()
    prompt = llmdd.LlmDataDist(PROMPT, llmdd.LlmRole.kPrompt)
    decoder = llmdd.LlmDataDist(DECODER, llmdd.LlmRole.kDecoder)
    assert prompt.Initialize({**RDMA, "llm.ListenIpInfo": f"127.0.0.1:{port}", "llm.RdmaTrafficClass": "132",
                              "llm.RdmaServiceLevel": "4"}) == S.LLM_SUCCESS
    assert decoder.Initialize({**RDMA, "llm.RdmaTrafficClass": "96"}) == S.LLM_SUCCESS
    try:
        cluster = ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", port)])
        assert decoder.LinkLlmClusters([cluster], [], 30000) == S.LLM_SUCCESS
        desc = llmdd.CacheDesc(2, [4, 4096], llmdd.DT_UINT8)
        source, destination = llmdd.Cache(), llmdd.Cache()
        assert prompt.AllocateCache(desc, source) == S.LLM_SUCCESS
        assert decoder.AllocateCache(desc, destination) == S.LLM_SUCCESS
        tensor(source, 1)[:] = numpy.arange(4 * 4096, dtype=numpy.uint8)
        assert decoder.PullKvBlocks(CacheIndex(PROMPT, source.cache_id, 0), destination, [3], [0]) == S.LLM_SUCCESS
        assert (tensor(destination, 1)[:4096] == tensor(source, 1)[3 * 4096:]).all()
        assert helper_variables(agent_engines(prompt)) == {"MC_IB_TC": "132", "MC_IB_SL": "4"}
        assert helper_variables(agent_engines(decoder)) == {"MC_IB_TC": "96"}
        assert decoder.UnlinkLlmClusters([cluster], [], 3000) == S.LLM_SUCCESS
    finally:
        decoder.Finalize()
        prompt.Finalize()


def test_idle_engines_go_only_to_agents_that_ask_for_the_same_settings():
    def engines_of(**settings):
        with TransferAgent(LocalRegistry(), PROMPT, protocol="rdma", **settings) as agent:
            engines = agent._mooncake_for_host("127.0.0.1")
            return engines, engines.helper_pid, helper_variables(engines)   # handed back idle at the close

    first, first_pid, first_variables = engines_of(rdma_traffic_class=132)
    other, other_pid, other_variables = engines_of(rdma_traffic_class=132, rdma_service_level=4)
    plain, plain_pid, plain_variables = engines_of()
    again, again_pid, _ = engines_of(rdma_traffic_class=132)
    try:
        assert (first_variables, other_variables, plain_variables) == \
            ({"MC_IB_TC": "132"}, {"MC_IB_TC": "132", "MC_IB_SL": "4"}, {})
        assert len({first_pid, other_pid, plain_pid}) == 3
        assert again is first and again_pid == first_pid
    finally:
        for engines in (first, other, plain):   # none left idle for other tests
            engines.close()


def test_tcp_ignores_the_rdma_settings():
    # A tcp agent's engines are those of any tcp agent: no variable, and pooled with them.
    with TransferAgent(LocalRegistry(), PROMPT, rdma_traffic_class=132, rdma_service_level=4) as agent:
        engines = agent._mooncake_for_host("127.0.0.1")
        assert helper_variables(engines) == {}
        assert engines.kind == ("127.0.0.1", "tcp", "", (), "helper")
    with TransferAgent(LocalRegistry(), DECODER) as agent:
        assert agent._mooncake_for_host("127.0.0.1") is engines


# In-process engines share the process's environment, and Mooncake reads it once, when it loads:
# each case runs in a fresh process, with engines of the C++ API.
IN_PROCESS_ENGINES = f'''
import os
import llmdd
from llmdd import ClusterInfo, IpInfo
from support.network import free_port
S = llmdd.LLMStatusCode
RDMA = {RDMA!r}
engines = []

def start(cluster_id, listen=False, **rdma):
    options = {{**RDMA, "llmdd.MooncakeInProcess": "1", **rdma}}
    port = free_port()
    if listen:
        options["llm.ListenIpInfo"] = f"127.0.0.1:{{port}}"
    engine = llmdd.LlmDataDist(cluster_id, llmdd.LlmRole.kPrompt if listen else llmdd.LlmRole.kDecoder)
    assert engine.Initialize(options) == S.LLM_SUCCESS
    engines.append(engine)
    return engine, port

def link(engine, cluster_id, port):
    return S(engine.LinkLlmClusters([ClusterInfo(cluster_id, 0, [], [IpInfo("127.0.0.1", port)])], [], 30000)).name
'''
CLOSE = "for engine in engines: engine.Finalize()"


def in_process_peer(environment=""):
    peer = Peer.dropin()
    peer.run(f"import os\n{environment}\n{IN_PROCESS_ENGINES}")
    return peer


def test_in_process_engines_set_the_variables_mooncake_has_not_read_and_refuse_other_values():
    peer = in_process_peer()
    try:
        result = peer.run('''
prompt, port = start(1, listen=True, **{"llm.RdmaTrafficClass": "132", "llm.RdmaServiceLevel": "4"})
decoder, _ = start(2, **{"llm.RdmaTrafficClass": "132"})
linked = link(decoder, 1, port)
# Mooncake has read 132 and 4: an engine asking for another traffic class is refused; one asking
# for none, or the same, takes what Mooncake runs with.
other, _ = start(3, **{"llm.RdmaTrafficClass": "100"})
plain, _ = start(4)
result = [linked, os.environ.get("MC_IB_TC"), os.environ.get("MC_IB_SL"), link(other, 1, port), link(plain, 1, port)]
''')
        assert result == ["LLM_SUCCESS", "132", "4", "LLM_PARAM_INVALID", "LLM_SUCCESS"]
        peer.run(CLOSE)
    finally:
        peer.close()


def test_in_process_engines_refuse_a_setting_the_environment_has_otherwise():
    peer = in_process_peer('os.environ["MC_IB_TC"] = "100"')
    try:
        result = peer.run('''
prompt, port = start(1, listen=True)
refused, _ = start(2, **{"llm.RdmaTrafficClass": "132"})
equal, _ = start(3, **{"llm.RdmaTrafficClass": "100", "llm.RdmaServiceLevel": "3"})
# An engine that listens starts its transfers at Initialize, which answers the refusal then.
listener = llmdd.LlmDataDist(4, llmdd.LlmRole.kPrompt)
initialized = listener.Initialize({**RDMA, "llmdd.MooncakeInProcess": "1", "llm.RdmaTrafficClass": "132",
                                   "llm.ListenIpInfo": f"127.0.0.1:{free_port()}"})
result = [link(refused, 1, port), link(equal, 1, port), S(initialized).name, os.environ["MC_IB_TC"],
          os.environ.get("MC_IB_SL")]
''')
        assert result == ["LLM_PARAM_INVALID", "LLM_SUCCESS", "LLM_PARAM_INVALID", "100", "3"]
        peer.run(CLOSE)
    finally:
        peer.close()
