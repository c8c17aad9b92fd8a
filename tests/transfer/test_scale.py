"""Four hosts: two prompts and two decoders, each process in a network namespace of its own (a
bridge joins them), so every byte crosses the network path. Each decoder links to both prompts
and, round after round, pulls from both at once while the other decoder does the same; every
byte that lands is checked against the prompt's pattern. Needs root and `ip netns` (CI runs it
as root)."""
import numpy
import pytest
from support.namespaces import network_namespaces
from support.network import mooncake_missing
from support.patterns import pattern
from support.peer import Peer
from support.workers import run_workers

from llmdd import LLMStatusCode

S = LLMStatusCode
PROMPTS, DECODERS = (21, 22), (23, 24)
TENSORS, BLOCK = 2, 32 << 10
# Blocks a pull moves in each round (128 KiB to 1 MiB); each round fills destination blocks of its
# own, and together the rounds fill the whole cache.
ROUND_BLOCKS = (2, 6, 8, 16)
CACHE_BLOCKS = sum(ROUND_BLOCKS)


@pytest.fixture
def four_hosts():
    if mooncake_missing() is not None:
        pytest.skip(mooncake_missing())
    with network_namespaces(len(PROMPTS) + len(DECODERS)) as hosts:
        peers = []
        try:
            for cluster_id, (namespace, address) in zip(PROMPTS + DECODERS, hosts):
                peers.append(Peer.agent(cluster_id, address, prefix=("ip", "netns", "exec", namespace)))
            yield peers[:len(PROMPTS)], peers[len(PROMPTS):]
        finally:
            for peer in peers:
                peer.close()


def blocks_key(prompt):
    return {"kind": "blocks", "cluster_id": prompt.cluster_id, "model_id": 0}


def pull_plan(decoder, prompt):
    """[(src_blocks, dst_blocks)] for each round, from the pair's own seed: the source blocks
    drawn at random, the destination blocks a shuffle of all of them cut into the rounds."""
    rng = numpy.random.default_rng(decoder.cluster_id * 100 + prompt.cluster_id)
    shuffled = [int(b) for b in rng.permutation(CACHE_BLOCKS)]
    ends = numpy.cumsum(ROUND_BLOCKS)
    return [([int(b) for b in rng.choice(CACHE_BLOCKS, count, replace=False)], shuffled[end - count:end])
            for count, end in zip(ROUND_BLOCKS, ends)]


def test_two_decoders_pull_from_two_prompts_at_once_across_four_namespaces(four_hosts):
    prompts, decoders = four_hosts
    sources = {prompt.cluster_id: prompt.call("allocate", num_tensors=TENSORS, batch=CACHE_BLOCKS, block_bytes=BLOCK,
                                              blocks=True, keys=[blocks_key(prompt)])["cache_id"]
               for prompt in prompts}
    destinations = {(decoder.cluster_id, prompt.cluster_id):
                    decoder.call("allocate", num_tensors=TENSORS, batch=CACHE_BLOCKS, block_bytes=BLOCK,
                                 blocks=True, fill=False)["cache_id"]
                    for decoder in decoders for prompt in prompts}
    for decoder in decoders:
        for prompt in prompts:
            assert decoder.call("link", cluster_id=prompt.cluster_id, ip=prompt.ip, port=prompt.port,
                                local_ip=decoder.ip) == {"status": S.LLM_SUCCESS}
    plans = {(decoder.cluster_id, prompt.cluster_id): pull_plan(decoder, prompt)
             for decoder in decoders for prompt in prompts}

    def pull_rounds(index):
        decoder = decoders[index]
        for round_index in range(len(ROUND_BLOCKS)):
            pulls = [{"remote": prompt.cluster_id, "key": blocks_key(prompt),
                      "cache_id": destinations[decoder.cluster_id, prompt.cluster_id],
                      "src_blocks": plans[decoder.cluster_id, prompt.cluster_id][round_index][0],
                      "dst_blocks": plans[decoder.cluster_id, prompt.cluster_id][round_index][1]}
                     for prompt in prompts]
            statuses = decoder.call("pull_blocks_at_once", pulls=pulls)["statuses"]
            assert statuses == [S.LLM_SUCCESS] * len(prompts), f"decoder {decoder.cluster_id}, round {round_index}"

    assert run_workers(pull_rounds, len(decoders)) == []

    for decoder in decoders:
        for prompt in prompts:
            cache_id = destinations[decoder.cluster_id, prompt.cluster_id]
            for t in range(TENSORS):
                got = numpy.frombuffer(bytes.fromhex(decoder.call("tensor", cache_id=cache_id, index=t)["hex"]),
                                       numpy.uint8).reshape(CACHE_BLOCKS, BLOCK)
                source = pattern(prompt.cluster_id, sources[prompt.cluster_id], t,
                                 CACHE_BLOCKS * BLOCK).reshape(CACHE_BLOCKS, BLOCK)
                for src_blocks, dst_blocks in plans[decoder.cluster_id, prompt.cluster_id]:
                    for src_block, dst_block in zip(src_blocks, dst_blocks):
                        assert numpy.array_equal(got[dst_block], source[src_block]), \
                            (decoder.cluster_id, prompt.cluster_id, t, src_block, dst_block)
