"""Two hosts: a prompt and a decoder process in two network namespaces joined by a veth pair,
made and removed by the test (needs root and `ip netns`; CI runs it as root)."""
import pytest
from support.namespaces import network_namespaces
from support.network import mooncake_missing
from support.patterns import pattern
from support.peer import Peer

from llmdd import LLMStatusCode

S = LLMStatusCode
PROMPT, DECODER = 11, 12
BLOCK = 4096


@pytest.fixture
def two_hosts():
    if mooncake_missing() is not None:
        pytest.skip(mooncake_missing())
    with network_namespaces(2) as hosts:
        yield hosts


def test_pull_blocks_between_two_network_namespaces(two_hosts):
    (prompt_ns, prompt_ip), (decoder_ns, decoder_ip) = two_hosts
    prompt = Peer.agent(PROMPT, prompt_ip, prefix=("ip", "netns", "exec", prompt_ns))
    decoder = Peer.agent(DECODER, decoder_ip, prefix=("ip", "netns", "exec", decoder_ns))
    try:
        key = {"kind": "blocks", "cluster_id": PROMPT, "model_id": 0}
        src = prompt.call("allocate", num_tensors=4, batch=8, block_bytes=BLOCK, blocks=True, keys=[key])
        dst = decoder.call("allocate", num_tensors=4, batch=8, block_bytes=BLOCK, blocks=True)
        assert decoder.call("link", cluster_id=PROMPT, ip=prompt_ip, port=prompt.port, local_ip=decoder_ip) == \
            {"status": S.LLM_SUCCESS}
        answer = decoder.call("pull_blocks", remote=PROMPT, key=key, cache_id=dst["cache_id"], src_blocks=[6, 7, 1],
                              dst_blocks=[0, 1, 5])
        assert answer == {"status": S.LLM_SUCCESS}
        for t in range(4):
            got = bytes.fromhex(decoder.call("tensor", cache_id=dst["cache_id"], index=t)["hex"])
            expected = pattern(PROMPT, src["cache_id"], t, 8 * BLOCK).tobytes()
            own = pattern(DECODER, dst["cache_id"], t, 8 * BLOCK).tobytes()
            assert got[:2 * BLOCK] == expected[6 * BLOCK:]
            assert got[5 * BLOCK:6 * BLOCK] == expected[BLOCK:2 * BLOCK]
            assert got[2 * BLOCK:5 * BLOCK] == own[2 * BLOCK:5 * BLOCK]
    finally:
        prompt.close()
        decoder.close()
