"""LLMDataDist.switch_role between processes: CANN's switch_role_sample.py replayed with numpy memory,
the listener it starts, moves and stops, and its refusals (links up, v1's rules, the hixl backend).

Sources are cited as <file>:<line> of the hixl repository; "docs" is docs/zh/api/python/.
"""
import numpy
import pytest
from support.dropin import LOCALHOST, cluster_info, failure, options
from support.network import free_port, listening, mooncake_missing
from support.patterns import pattern
from support.peer import Peer

from llmdd.llm_datadist import (
    BlocksCacheKey,
    CacheDesc,   # with DataType and Placement: DESC is evaluated here
    DataType,
    LLMConfig,
    LLMException,
    LLMRole,
    LLMStatusCode,
    Placement,
)

pytestmark = [pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing())),
              pytest.mark.sim_only]   # numpy memory stands for device memory only on the sim build

SUCCESS = LLMStatusCode.LLM_SUCCESS
EXIST_LINK = LLMStatusCode.LLM_EXIST_LINK
DESC = "CacheDesc(num_tensors=2, shape=[3, 10], data_type=DataType.DT_FLOAT, placement=Placement.DEVICE)"


def cluster_snippet(remote_cluster_id, remote_port=None, local_port=None):
    """cluster_info as a peer snippet, binding `cluster`."""
    lines = ["cluster = LLMClusterInfo()", f"cluster.remote_cluster_id = {remote_cluster_id}"]
    if local_port is not None:
        lines.append(f"cluster.append_local_ip_info('{LOCALHOST}', {local_port})")
    if remote_port is not None:
        lines.append(f"cluster.append_remote_ip_info('{LOCALHOST}', {remote_port})")
    return "\n".join(lines)


def listen_options(port):
    """switch_role_sample.py:175-179: the options of an LLMConfig with only listen_ip_info set."""
    config = LLMConfig()
    config.listen_ip_info = f"{LOCALHOST}:{port}"
    return config.generate_options()


@pytest.fixture
def peer():
    """A drop-in peer process, ended (and checked) afterwards."""
    started = Peer.dropin()
    yield started
    started.close(check=True)


def test_switch_role_sample_swaps_client_and_server(local, peer):
    # switch_role_sample.py: local_comm_res = "" on both sides, only the prompt (cluster 0) listens at init.
    prompt_port, decoder_port = free_port(), free_port()
    peer.run("config = LLMConfig()\nconfig.device_id = 0\nconfig.local_comm_res = ''\n"
             f"config.listen_ip_info = '{LOCALHOST}:{prompt_port}'\n"
             "datadist = LLMDataDist(LLMRole.PROMPT, 0)\ndatadist.init(config.generate_options())\n"
             "manager = datadist.cache_manager\n"
             "tensor = numpy.ones((3, 10), numpy.float32)\ntensor2 = numpy.ones((3, 10), numpy.float32)\n"
             "memory(tensor.ctypes.data, 120)[:] = pattern(0, 120)\n"
             "memory(tensor2.ctypes.data, 120)[:] = pattern(1, 120)\n"
             f"cache = manager.register_blocks_cache({DESC}, [int(tensor.ctypes.data), int(tensor2.ctypes.data)], "
             "BlocksCacheKey(0, 0))")
    decoder = local(LLMRole.DECODER, 1, local_comm_res="")
    manager = decoder.cache_manager
    tensors = [numpy.zeros((3, 10), numpy.float32) for _ in range(2)]
    cache = manager.register_blocks_cache(eval(DESC), [int(t.ctypes.data) for t in tensors], BlocksCacheKey(1, 0))

    # switch_role_sample.py:140-156: the decoder links to the prompt, pulls blocks [0, 1] into [0, 2], unlinks.
    assert decoder.link_clusters([cluster_info(0, prompt_port, local_port=decoder_port)], 5000) == (SUCCESS, [SUCCESS])
    manager.pull_blocks(BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 2])
    for index, tensor in enumerate(tensors):
        served = pattern(index, 120).tobytes()
        assert tensor[0].tobytes() + tensor[2].tobytes() == served[:80] and not tensor[1].any()
    assert decoder.unlink_clusters([cluster_info(0, prompt_port)], 5000) == (SUCCESS, [SUCCESS])

    # switch_role_sample.py:96: the prompt becomes a client, which closes its listener.
    assert peer.run("datadist.switch_role(LLMRole.DECODER)\nresult = str(datadist.role)") == "LLMRole.DECODER"
    assert not listening(prompt_port)
    # switch_role_sample.py:175-179: the decoder becomes a server on its listen_ip_info.
    assert not listening(decoder_port)
    decoder.switch_role(LLMRole.PROMPT, listen_options(decoder_port))
    assert decoder.role is LLMRole.PROMPT and listening(decoder_port)

    # switch_role_sample.py:99-108: the former prompt links to the former decoder, which pushes (:187-195).
    assert peer.run(cluster_snippet(1, decoder_port, local_port=prompt_port) +
                    "\nresult = datadist.link_clusters([cluster], 5000)") == [0, [0]]
    tensors[0][...] = 5
    tensors[1][...] = 6
    manager.push_blocks(BlocksCacheKey(0, 0), cache, src_blocks=[0, 1, 2], dst_blocks=[0, 1, 2],
                        src_layer_range=range(0, 2), dst_layer_range=range(0, 2), tensor_num_per_layer=1)
    assert peer.run("result = [float(tensor.min()), float(tensor.max()), float(tensor2.min()), "
                    "float(tensor2.max())]") == [5, 5, 6, 6]
    # switch_role_sample.py:113-120: the former prompt force-unlinks, unregisters and finalizes.
    assert peer.run(cluster_snippet(1) + "\nresult = datadist.unlink_clusters([cluster], 5000, force=True)") \
        == [0, [0]]
    peer.run("manager.unregister_cache(cache.cache_id)\ndatadist.finalize()")
    manager.unregister_cache(cache.cache_id)


def test_switch_role_is_refused_while_a_link_made_either_way_is_up(local, peer):
    # docs LLMDataDist.md (switch_role) and llm_link_manager.cc:102-103: LLM_EXIST_LINK while any link is up.
    port = free_port()
    server = local(LLMRole.PROMPT, 0, local_comm_res="", listen_ip_info=f"{LOCALHOST}:{port}")
    assert peer.run("config = LLMConfig()\nconfig.device_id = 0\nconfig.local_comm_res = ''\n"
                    "datadist = LLMDataDist(LLMRole.DECODER, 1)\ndatadist.init(config.generate_options())\n" +
                    cluster_snippet(0, port, local_port=0) + "\nresult = datadist.link_clusters([cluster], 5000)") \
        == [0, [0]]
    assert failure(server.switch_role, LLMRole.DECODER) is EXIST_LINK
    assert server.role is LLMRole.PROMPT and listening(port)          # nothing changed
    assert peer.failure("datadist.switch_role(LLMRole.PROMPT)") == ("LLMException", EXIST_LINK)
    assert peer.run("result = str(datadist.role)") == "LLMRole.DECODER"
    assert peer.run(cluster_snippet(0, port) + "\nresult = datadist.unlink_clusters([cluster], 5000)") == [0, [0]]
    peer.run("datadist.switch_role(LLMRole.PROMPT)")                # both ends of the link are gone
    server.switch_role(LLMRole.DECODER)
    assert server.role is LLMRole.DECODER and not listening(port)


def test_a_new_listen_ip_info_moves_the_listener_and_the_same_one_keeps_it(local, peer):
    # llm_link_manager.cc:105-125: another port stops the listener and starts one there; the same port does nothing.
    first, second = free_port(), free_port()
    datadist = local(LLMRole.PROMPT, 0, enable_cache_manager=True, listen_ip_info=f"{LOCALHOST}:{first}")
    datadist.switch_role(LLMRole.PROMPT, listen_options(first))
    assert listening(first)
    datadist.switch_role(LLMRole.MIX, listen_options(second))
    assert datadist.role is LLMRole.MIX and listening(second) and not listening(first)
    # A MIX serves links as any role does: a peer links to it and unlinks.
    peer.run("config = LLMConfig()\nconfig.device_id = 0\nconfig.enable_cache_manager = True\n"
             "datadist = LLMDataDist(LLMRole.DECODER, 1)\ndatadist.init(config.generate_options())")
    assert peer.run(cluster_snippet(0, second, local_port=0) + "\nresult = datadist.link_clusters([cluster], 5000)") \
        == [0, [0]]
    assert peer.run(cluster_snippet(0, second) + "\nresult = datadist.unlink_clusters([cluster], 5000)") == [0, [0]]
    # No listen_ip_info: a client, whatever the role (docs LLMDataDist.md, switch_role's switch_options).
    datadist.switch_role(LLMRole.PROMPT)
    assert datadist.role is LLMRole.PROMPT and not listening(second)
    assert peer.run(cluster_snippet(0, second, local_port=0) +
                    "\nresult = datadist.link_clusters([cluster], 2000)")[0] != 0


def test_a_listen_ip_info_no_host_has_leaves_nothing_listening(local):
    port = free_port()
    datadist = local(LLMRole.PROMPT, 0, enable_cache_manager=True, listen_ip_info=f"{LOCALHOST}:{port}")
    assert failure(datadist.switch_role, LLMRole.PROMPT, {"llm.listenIpInfo": "192.0.2.1:26000"}) \
        is LLMStatusCode.LLM_PARAM_INVALID
    assert datadist.role is LLMRole.PROMPT and not listening(port)
    datadist.switch_role(LLMRole.PROMPT, listen_options(port))       # and it may listen again
    assert listening(port)


def test_v1_needs_enable_switch_role_and_then_a_prompt_listens_and_the_other_roles_do_not(local, peer):
    port = free_port()
    datadist = local(LLMRole.DECODER, 1)
    # docs LLMStatusCode.md (LLM_FEATURE_NOT_ENABLED): a switch_role without LLMConfig.enable_switch_role.
    assert failure(datadist.switch_role, LLMRole.MIX) is LLMStatusCode.LLM_FEATURE_NOT_ENABLED
    assert datadist.role is LLMRole.DECODER
    datadist.finalize()
    datadist.init(options(enable_switch_role=True))
    # llm_datadist.py:370-386: a new role, and llm.listenIpInfo for PROMPT.
    assert failure(datadist.switch_role, LLMRole.DECODER) is LLMStatusCode.LLM_PARAM_INVALID
    assert failure(datadist.switch_role, LLMRole.PROMPT, {}) is LLMStatusCode.LLM_PARAM_INVALID
    datadist.switch_role(LLMRole.PROMPT, listen_options(port))
    assert datadist.role is LLMRole.PROMPT and listening(port)
    assert peer.run("config = LLMConfig()\nconfig.device_id = 0\nconfig.enable_cache_manager = True\n"
                    "datadist = LLMDataDist(LLMRole.DECODER, 2)\ndatadist.init(config.generate_options())\n" +
                    cluster_snippet(1, port, local_port=0) + "\nresult = datadist.link_clusters([cluster], 5000)") \
        == [0, [0]]
    assert failure(datadist.switch_role, LLMRole.MIX) is EXIST_LINK
    assert peer.run(cluster_snippet(1, port) + "\nresult = datadist.unlink_clusters([cluster], 5000)") == [0, [0]]
    datadist.switch_role(LLMRole.MIX, listen_options(port))          # only a PROMPT takes the address
    assert datadist.role is LLMRole.MIX and not listening(port)


def test_with_the_hixl_backend_the_listener_stays(local):
    port = free_port()
    datadist = local(LLMRole.PROMPT, 0, local_comm_res="", transfer_backend="hixl",
                     listen_ip_info=f"{LOCALHOST}:{port}")
    # hixl_transfer_engine.cc:249-263 and docs LLMDataDist.md: another address is LLM_FEATURE_NOT_ENABLED.
    assert failure(datadist.switch_role, LLMRole.DECODER, listen_options(free_port())) \
        is LLMStatusCode.LLM_FEATURE_NOT_ENABLED
    datadist.switch_role(LLMRole.DECODER, listen_options(port))
    datadist.switch_role(LLMRole.MIX)
    assert datadist.role is LLMRole.MIX and listening(port)


@pytest.mark.parametrize("call,error", [
    (lambda datadist: datadist.switch_role("DECODER"), TypeError),
    (lambda datadist: datadist.switch_role(LLMRole.DECODER, "not a dict"), TypeError),
    (lambda datadist: datadist.switch_role(LLMRole.DECODER, {"llm.listenIpInfo": 26000}), TypeError),
    (lambda datadist: datadist.switch_role(LLMRole.DECODER, {"llm.listenIpInfo": "nowhere"}), LLMException),
])
def test_switch_role_checks_its_arguments(local, call, error):
    datadist = local(LLMRole.PROMPT, 0, enable_cache_manager=True)
    with pytest.raises(error):
        call(datadist)
    assert datadist.role is LLMRole.PROMPT

