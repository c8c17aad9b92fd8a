"""What the data-plane helper process costs: Mooncake in a helper (the default) beside Mooncake in
the engine's process (llmdd.MooncakeInProcess=1), both measured in the same run, two processes on
127.0.0.1 (this one the decoder, a child the prompt, both sides placed alike):

- starting the engines (a helper: Python's start, llmdd's import, Mooncake's; in-process: Mooncake's);
- the first link (both sides start their engines);
- pull_blocks of 1 block of 16 KiB (p50 and p99 of back-to-back pulls);
- pull_cache of one 64 MiB cache (16 tensors x 4 MiB, one slab; median), beside memcpy.

    python bench/bench_dataplane.py
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from support.registries import Cluster, LocalRegistry  # noqa: E402

PROMPT, DECODER = 1, 2
SMALL_BLOCK = 16 << 10
CACHE_TENSORS, CACHE_TENSOR_BYTES = 16, 4 << 20
SMALL_ROUNDS, LARGE_ROUNDS = 300, 12


def prompt_side(in_process):
    """The prompt: a listening agent with a 1-block cache and a 64 MiB cache; prints its port."""
    from llmdd.llm_datadist import BlocksCacheKey
    from llmdd.transfer import TransferAgent
    registry = LocalRegistry()
    registry.allocate(1, 1, SMALL_BLOCK, blocks=True, keys=[BlocksCacheKey(PROMPT, 0)])
    large = registry.allocate(CACHE_TENSORS, 1, CACHE_TENSOR_BYTES)
    agent = TransferAgent(registry, PROMPT, "127.0.0.1:0", sync_timeout_ms=30000, mooncake_in_process=in_process)
    print(json.dumps({"port": agent.listen_address[1], "large": large.cache_id}), flush=True)
    sys.stdin.read()
    agent.close()


def measure(in_process):
    from llmdd import LLMStatusCode
    from llmdd.llm_datadist import BlocksCacheKey, CacheKeyByIdAndIndex
    from llmdd.transfer import TransferAgent
    prompt = subprocess.Popen([sys.executable, __file__, "prompt", str(int(in_process))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(prompt.stdout.readline())
        registry = LocalRegistry()
        small_dst = registry.allocate(1, 1, SMALL_BLOCK, blocks=True)
        large_dst = registry.allocate(CACHE_TENSORS, 1, CACHE_TENSOR_BYTES)
        with TransferAgent(registry, DECODER, sync_timeout_ms=30000, mooncake_in_process=in_process) as agent:
            began = time.perf_counter()
            assert agent.link([Cluster(PROMPT, "127.0.0.1", started["port"])], 60000)[0] == LLMStatusCode.LLM_SUCCESS
            first_link = time.perf_counter() - began
            small = []
            for _ in range(SMALL_ROUNDS):
                began = time.perf_counter()
                status = agent.pull_blocks(PROMPT, BlocksCacheKey(PROMPT, 0), small_dst, [0], [0],
                                           tensor_num_per_layer=1)
                small.append(time.perf_counter() - began)
                assert status == LLMStatusCode.LLM_SUCCESS
            large = []
            key = CacheKeyByIdAndIndex(PROMPT, started["large"], 0)
            for _ in range(LARGE_ROUNDS):
                began = time.perf_counter()
                status = agent.pull_cache(PROMPT, key, large_dst, tensor_num_per_layer=1)
                large.append(time.perf_counter() - began)
                assert status == LLMStatusCode.LLM_SUCCESS
    finally:
        prompt.stdin.close()
        prompt.wait(30)
    small.sort()
    return {"first link ms": first_link * 1e3, "16 KiB p50 us": small[len(small) // 2] * 1e6,
            "16 KiB p99 us": small[int(len(small) * 0.99)] * 1e6, "64 MiB ms": statistics.median(large[1:]) * 1e3}


def engine_start_ms(in_process):
    from llmdd.transfer._dataplane import DataPlane
    from llmdd.transfer._mooncake import MooncakeEngines
    began = time.perf_counter()
    engines = (MooncakeEngines if in_process else DataPlane)("127.0.0.1", "tcp", "")
    elapsed = time.perf_counter() - began
    if not in_process:
        engines.close()   # an in-process one takes seconds to stop: left to the exit
    return elapsed * 1e3


def memcpy_ms():
    source = numpy.ones(CACHE_TENSORS * CACHE_TENSOR_BYTES, numpy.uint8)
    destination = numpy.ones_like(source)
    times = []
    for _ in range(LARGE_ROUNDS):
        began = time.perf_counter()
        numpy.copyto(destination, source)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def main():
    print(f"load average before: {os.getloadavg()}")
    rows = {"in-process": {}, "helper": {}}
    for placement in rows:
        rows[placement]["engine start ms"] = engine_start_ms(placement == "in-process")
    for placement in rows:
        rows[placement].update(measure(placement == "in-process"))
    copy = memcpy_ms()
    print(f"load average after: {os.getloadavg()}; memcpy of 64 MiB: {copy:.1f} ms")
    print(f"{'':18}{'in-process':>12}{'helper':>12}{'ratio':>8}")
    for name in rows["helper"]:
        before, after = rows["in-process"][name], rows["helper"][name]
        print(f"{name:18}{before:12.1f}{after:12.1f}{after / before:8.2f}")
    for placement, row in rows.items():
        print(f"64 MiB {placement}: {64 * (1 << 20) / row['64 MiB ms'] / 1e6:.2f} GB/s, "
              f"{copy / row['64 MiB ms']:.0%} of memcpy")


if __name__ == "__main__":
    if sys.argv[1:2] == ["prompt"]:
        prompt_side(bool(int(sys.argv[2])))
    else:
        main()
