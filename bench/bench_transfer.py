"""Transfers over Mooncake's Transfer Engine (protocol tcp, 127.0.0.1) between this process (the
decoder) and a prompt process, beside memcpy of the same bytes measured in the same run:

- pull_cache of one 64 MiB cache (16 tensors x 4 MiB, one slab);
- pull_blocks of 64 tensors x 256 blocks of 64 KiB (1 GiB) with a scattered block table (both
  block lists are permutations, so no two blocks coalesce: 16,384 segments);
- beside each, bare Mooncake moving the same bytes the way a plain caller would: one engine of its
  own, batch_transfer_sync_read from the peer's first engine, 4,096 segments a call at most (the
  per-peer queue's half);
- link time (a link and unlink round trip on a started engine; the first link, which starts the
  engine, is reported apart);
- registration of a 16 GiB region (reserved, never touched) with a Mooncake engine;
- latency: PullKvBlocks (the C++ API) of 1, 8, 32 and 128 blocks of 16 KiB from a prompt engine in
  another process, back to back and after 50 ms idle, p50 and p99, each beside bare Mooncake
  reading the same blocks between two engines of its own, one in each process;
- layer-wise: the drop-in's transfer_cache_async of a 32-layer cache (2 tensors of 64 KiB a layer)
  released layer by layer with no compute between layers, by key and to raw addresses, beside
  push_cache of the same cache in one call and a memcpy of its 4 MiB;
- rank-table links: the drop-in's link() until query_register_mem_status answers OK, beside
  link_clusters between the same two processes.

Each throughput row reports GB/s (or ms) and its share of memcpy, each latency row its p50 and p99
and the load average; bench/latency_table.py prints the latency rows as a table of ratios to bare
Mooncake; bench/RESULTS.md has the numbers.
"""
import ctypes
import json
import mmap
import os
import sys
import time

import numpy
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from support.network import mooncake_missing  # noqa: E402
from support.patterns import cache_tensor, pattern  # noqa: E402
from support.peer import Peer  # noqa: E402
from support.registries import LocalRegistry  # noqa: E402

import llmdd  # noqa: E402
import llmdd.sim  # noqa: E402
from llmdd import CacheIndex, ClusterInfo, IpInfo, LLMStatusCode  # noqa: E402

pytestmark = pytest.mark.skipif(mooncake_missing() is not None, reason=str(mooncake_missing()))

PROMPT, DECODER, TEARDOWN_DECODER = 1, 2, 5
SAME_HOST_PROMPT, SAME_HOST_DECODER = 6, 7
CACHE_TENSORS, CACHE_TENSOR_BYTES = 16, 4 << 20
TENSORS, BLOCKS, BLOCK_BYTES = 64, 256, 64 << 10
REGION_BYTES = 16 << 30
ROUNDS = 5
memcpy_seconds = {}   # bytes -> median seconds of the memcpy row of this run


@pytest.fixture(scope="module")
def session():
    from llmdd.llm_datadist import BlocksCacheKey, CacheKeyByIdAndIndex
    from llmdd.transfer import TransferAgent
    prompt = Peer.agent(PROMPT)
    registry = LocalRegistry()
    agent = TransferAgent(registry, DECODER, sync_timeout_ms=30000)
    try:
        started = time.perf_counter()
        assert agent.link([prompt.cluster()], 5000)[0] == LLMStatusCode.LLM_SUCCESS
        first_link_s = time.perf_counter() - started
        cache = prompt.call("allocate", num_tensors=CACHE_TENSORS, batch=1, block_bytes=CACHE_TENSOR_BYTES, fill=False)
        blocks = prompt.call("allocate", num_tensors=TENSORS, batch=BLOCKS, block_bytes=BLOCK_BYTES, blocks=True,
                             keys=[{"kind": "blocks", "cluster_id": PROMPT, "model_id": 0}], fill=False)
        yield {
            "prompt": prompt, "registry": registry, "agent": agent, "first_link_s": first_link_s,
            "cache_key": CacheKeyByIdAndIndex(PROMPT, cache["cache_id"], 0),
            "blocks_key": BlocksCacheKey(PROMPT, 0), "blocks_id": blocks["cache_id"],
            "cache_dst": registry.allocate(CACHE_TENSORS, 1, CACHE_TENSOR_BYTES),
            "blocks_dst": registry.allocate(TENSORS, BLOCKS, BLOCK_BYTES, blocks=True),
        }
    finally:
        agent.close()
        prompt.close()


def report(benchmark, nbytes, label):
    if benchmark.stats is None:
        return
    seconds = benchmark.stats.stats.median
    line = f"{label}: {nbytes / seconds / 1e9:.2f} GB/s"
    if label == "memcpy":
        memcpy_seconds[nbytes] = seconds
    elif nbytes in memcpy_seconds:
        line += f", {memcpy_seconds[nbytes] / seconds:.0%} of memcpy ({nbytes / memcpy_seconds[nbytes] / 1e9:.2f} GB/s)"
    benchmark.extra_info["report"] = line


def touched(nbytes):
    buffer = numpy.empty(nbytes, numpy.uint8)
    buffer.fill(1)
    return buffer


@pytest.mark.benchmark(group="transfer-64MiB")
def test_memcpy_64_mib(benchmark):
    nbytes = CACHE_TENSORS * CACHE_TENSOR_BYTES
    src, dst = touched(nbytes), touched(nbytes)
    benchmark.pedantic(numpy.copyto, (dst, src), rounds=ROUNDS * 4, iterations=1, warmup_rounds=1)
    report(benchmark, nbytes, "memcpy")


@pytest.mark.benchmark(group="transfer-64MiB")
def test_pull_cache_64_mib(benchmark, session):
    agent, dst = session["agent"], session["cache_dst"]

    def pull():
        assert agent.pull_cache(PROMPT, session["cache_key"], dst, tensor_num_per_layer=1) == LLMStatusCode.LLM_SUCCESS
    benchmark.pedantic(pull, rounds=ROUNDS * 4, iterations=1, warmup_rounds=1)
    report(benchmark, CACHE_TENSORS * CACHE_TENSOR_BYTES, "pull_cache")


@pytest.fixture(scope="module")
def bare_engine(session):
    """A Mooncake TransferEngine of its own (no llmdd on the way) with both destinations registered."""
    from llmdd.transfer._mooncake import engine_module
    engine = engine_module().TransferEngine()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    for region in (*session["cache_dst"].regions, *session["blocks_dst"].regions):
        assert engine.register_memory(*region) == 0
    yield engine
    for region in (*session["cache_dst"].regions, *session["blocks_dst"].regions):
        engine.unregister_memory(region[0])


def bare_read(session, bare_engine, cache_id, local_addrs, remote_addrs_of, lengths):
    """batch_transfer_sync_read calls of at most 4,096 segments from a bare Mooncake engine in the
    peer process, with the peer's cache `cache_id` registered on it for the row (llmdd registers
    no source for a pull); remote_addrs_of(source tensor addresses) gives the remote addresses.
    Returns the read and what ends the row."""
    source = session["prompt"].run(
        "import mooncake.engine\n"
        "bare_engine = mooncake.engine.TransferEngine()\n"
        "assert bare_engine.initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '') == 0\n"
        f"entry = registry.entry({cache_id})\n"
        "for address, nbytes in entry.regions:\n"
        "    assert bare_engine.register_memory(address, nbytes) == 0\n"
        "result = {'port': bare_engine.get_rpc_port(), 'tensor_addrs': list(entry.tensor_addrs)}")
    peer = f"127.0.0.1:{source['port']}"
    remote_addrs = remote_addrs_of(source["tensor_addrs"])

    def read():
        for start in range(0, len(lengths), 4096):
            assert bare_engine.batch_transfer_sync_read(peer, local_addrs[start:start + 4096],
                                                        remote_addrs[start:start + 4096],
                                                        lengths[start:start + 4096]) == 0

    def end():
        session["prompt"].run("for address, _ in entry.regions:\n"
                              "    bare_engine.unregister_memory(address)\n"
                              "result = None")
    return read, end


@pytest.mark.benchmark(group="transfer-64MiB")
def test_mooncake_read_64_mib(benchmark, session, bare_engine):
    """Bare Mooncake: one batch_transfer_sync_read of the same 64 MiB (one segment)."""
    nbytes = CACHE_TENSORS * CACHE_TENSOR_BYTES
    read, unpin = bare_read(session, bare_engine, session["cache_key"].cache_id,
                            [session["cache_dst"].tensor_addrs[0]], lambda tensor_addrs: [tensor_addrs[0]], [nbytes])
    try:
        benchmark.pedantic(read, rounds=ROUNDS * 4, iterations=1, warmup_rounds=1)
    finally:
        unpin()
    report(benchmark, nbytes, "bare Mooncake, one sync read of one segment")


@pytest.mark.benchmark(group="transfer-blocks-1GiB")
def test_memcpy_1_gib(benchmark):
    nbytes = TENSORS * BLOCKS * BLOCK_BYTES
    src, dst = touched(nbytes), touched(nbytes)
    benchmark.pedantic(numpy.copyto, (dst, src), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    report(benchmark, nbytes, "memcpy")


def scattered_block_lists():
    rng = numpy.random.default_rng(1)
    return [int(b) for b in rng.permutation(BLOCKS)], [int(b) for b in rng.permutation(BLOCKS)]


@pytest.mark.benchmark(group="transfer-blocks-1GiB")
def test_pull_blocks_scattered_64_tensors_x_256_blocks(benchmark, session):
    agent, dst = session["agent"], session["blocks_dst"]
    src_blocks, dst_blocks = scattered_block_lists()

    def pull():
        status = agent.pull_blocks(PROMPT, session["blocks_key"], dst, src_blocks, dst_blocks,
                                   tensor_num_per_layer=1)
        assert status == LLMStatusCode.LLM_SUCCESS
    benchmark.pedantic(pull, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    report(benchmark, TENSORS * BLOCKS * BLOCK_BYTES, "pull_blocks, scattered")


@pytest.mark.benchmark(group="transfer-blocks-1GiB")
def test_mooncake_read_scattered_blocks(benchmark, session, bare_engine):
    """Bare Mooncake: the same 16,384 segments in 4 batch_transfer_sync_read calls."""
    dst = session["blocks_dst"]
    src_blocks, dst_blocks = scattered_block_lists()
    local_addrs = [dst.tensor_addrs[t] + b * BLOCK_BYTES for t in range(TENSORS) for b in dst_blocks]
    read, unpin = bare_read(session, bare_engine, session["blocks_id"], local_addrs,
                            lambda tensor_addrs: [tensor_addrs[t] + b * BLOCK_BYTES
                                                  for t in range(TENSORS) for b in src_blocks],
                            [BLOCK_BYTES] * len(local_addrs))
    try:
        benchmark.pedantic(read, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    finally:
        unpin()
    report(benchmark, TENSORS * BLOCKS * BLOCK_BYTES, "bare Mooncake, sync reads of the scattered blocks")


@pytest.fixture(scope="module")
def same_host_pair():
    """This process's decoder engine and a prompt engine in a peer process of this host, linked
    with llmdd.TransferPath auto (the default): their transfers move through the runtime's IPC
    memory. The same two caches as the session's, each side."""
    prompt = Peer.engine(SAME_HOST_PROMPT)
    try:
        with llmdd.LlmDataDist(SAME_HOST_DECODER, llmdd.LlmRole.kDecoder) as decoder:
            assert decoder.Initialize({"llm.SyncKvCacheWaitTime": "30000"}) == LLMStatusCode.LLM_SUCCESS
            cluster = ClusterInfo(SAME_HOST_PROMPT, 0, [], [IpInfo("127.0.0.1", prompt.port)])
            assert decoder.LinkLlmClusters([cluster], [], 3000) == LLMStatusCode.LLM_SUCCESS
            shapes = {"cache": (CACHE_TENSORS, 1, CACHE_TENSOR_BYTES), "blocks": (TENSORS, BLOCKS, BLOCK_BYTES)}
            pair = {"decoder": decoder}
            for name, (tensors, batch, block_bytes) in shapes.items():
                source_id = prompt.call("allocate", num_tensors=tensors, batch=batch, block_bytes=block_bytes)["cache_id"]
                destination = llmdd.Cache()
                desc = llmdd.CacheDesc(tensors, [batch, block_bytes], llmdd.DT_UINT8)
                assert decoder.AllocateCache(desc, destination) == LLMStatusCode.LLM_SUCCESS
                pair[name] = (CacheIndex(SAME_HOST_PROMPT, source_id, 0), destination)
            yield pair
            decoder.UnlinkLlmClusters([cluster], [], 3000)
    finally:
        prompt.close()


@pytest.mark.benchmark(group="transfer-64MiB")
def test_same_host_pull_cache_64_mib(benchmark, same_host_pair):
    """PullKvCache of the same 64 MiB between engines of one host: through IPC memory."""
    decoder, (source, destination) = same_host_pair["decoder"], same_host_pair["cache"]
    before = llmdd.sim.call_count("aclrtIpcMemGetExportKey")

    def pull():
        assert decoder.PullKvCache(source, destination) == LLMStatusCode.LLM_SUCCESS
    benchmark.pedantic(pull, rounds=ROUNDS * 4, iterations=1, warmup_rounds=1)
    assert llmdd.sim.call_count("aclrtIpcMemGetExportKey") > before   # it took the same-host path
    report(benchmark, CACHE_TENSORS * CACHE_TENSOR_BYTES, "same-host PullKvCache")


@pytest.mark.benchmark(group="transfer-blocks-1GiB")
def test_same_host_pull_blocks_scattered(benchmark, same_host_pair):
    """PullKvBlocks of the same scattered blocks between engines of one host: through IPC memory."""
    decoder, (source, destination) = same_host_pair["decoder"], same_host_pair["blocks"]
    src_blocks, dst_blocks = scattered_block_lists()
    before = llmdd.sim.call_count("aclrtIpcMemGetExportKey")

    def pull():
        assert decoder.PullKvBlocks(source, destination, src_blocks, dst_blocks) == LLMStatusCode.LLM_SUCCESS
    benchmark.pedantic(pull, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert llmdd.sim.call_count("aclrtIpcMemGetExportKey") > before
    report(benchmark, TENSORS * BLOCKS * BLOCK_BYTES, "same-host PullKvBlocks, scattered")


@pytest.mark.benchmark(group="transfer-link")
def test_link_and_unlink_on_loopback(benchmark, session):
    agent, cluster = session["agent"], session["prompt"].cluster()
    assert agent.unlink([cluster], 1000)[0] == LLMStatusCode.LLM_SUCCESS

    def link_unlink():
        assert agent.link([cluster], 1000)[0] == LLMStatusCode.LLM_SUCCESS
        assert agent.unlink([cluster], 1000)[0] == LLMStatusCode.LLM_SUCCESS
    benchmark.pedantic(link_unlink, rounds=50, iterations=1, warmup_rounds=2)
    assert agent.link([cluster], 1000)[0] == LLMStatusCode.LLM_SUCCESS
    if benchmark.stats is not None:
        benchmark.extra_info["report"] = (f"link + unlink {benchmark.stats.stats.median * 1e3:.2f} ms; first link "
                                          f"(starts the engine) {session['first_link_s'] * 1e3:.1f} ms")


@pytest.mark.benchmark(group="transfer-teardown")
def test_finalize_of_an_engine_that_linked_and_pulled(benchmark, session):
    """Finalize of a decoder engine right after it linked to the peer prompt and pulled (a serving
    engine restarting a worker waits for it): the Mooncake engines go back to the process idle."""
    prompt = session["prompt"]
    engine = llmdd.LlmDataDist(TEARDOWN_DECODER, llmdd.LlmRole.kDecoder)   # the session's decoder stays linked

    def linked_and_pulled():
        assert engine.Initialize({}) == LLMStatusCode.LLM_SUCCESS
        cluster = ClusterInfo(PROMPT, 0, [], [IpInfo("127.0.0.1", prompt.port)])
        assert engine.LinkLlmClusters([cluster], [], 3000) == LLMStatusCode.LLM_SUCCESS
        cache = llmdd.Cache()
        desc = llmdd.CacheDesc(CACHE_TENSORS, [1, CACHE_TENSOR_BYTES], llmdd.DT_UINT8)
        assert engine.AllocateCache(desc, cache) == LLMStatusCode.LLM_SUCCESS
        assert engine.PullKvCache(CacheIndex(PROMPT, session["cache_key"].cache_id, 0), cache) == \
            LLMStatusCode.LLM_SUCCESS
        return (), {}
    benchmark.pedantic(engine.Finalize, setup=linked_and_pulled, rounds=10, iterations=1)
    if benchmark.stats is not None:
        benchmark.extra_info["report"] = (f"Finalize after a link and a 64 MiB pull: "
                                          f"{benchmark.stats.stats.median * 1e3:.2f} ms, load {os.getloadavg()[0]:.2f}")


@pytest.mark.benchmark(group="transfer-register")
def test_register_a_16_gib_region(benchmark):
    from llmdd.transfer._mooncake import MooncakeEngines
    engine = MooncakeEngines("127.0.0.1", "tcp", "")
    # Reserved address space, never touched: registration must not touch the memory either.
    region = mmap.mmap(-1, REGION_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    rss_before = _rss_bytes()

    def register_unregister():
        assert engine.register_regions([(address, REGION_BYTES)])
        engine.unregister_regions([(address, REGION_BYTES)])
    try:
        benchmark.pedantic(register_unregister, rounds=20, iterations=1, warmup_rounds=1)
        grown = _rss_bytes() - rss_before
        if benchmark.stats is not None:
            benchmark.extra_info["report"] = (f"register + unregister 16 GiB: {benchmark.stats.stats.median * 1e3:.3f} ms, "
                                              f"RSS grew {grown >> 20} MiB")
    finally:
        engine.close()
        region.close()


def _rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Latency: PullKvBlocks of a few 16 KiB blocks, beside bare Mooncake reading the same blocks.
LATENCY_PROMPT, LATENCY_DECODER, LATENCY_SAME_HOST_DECODER = 3, 4, 8
LATENCY_PATHS = ("bare-mooncake", "llmdd-network", "llmdd-same-host")
LATENCY_BLOCK_BYTES, LATENCY_CACHE_BLOCKS = 16 << 10, 256
IDLE_SECONDS = 0.05
# Rounds a row times: enough that p99 is not the slowest round alone, few enough that an idle row
# (a 50 ms pause before each round, untimed) takes 5 s.
LATENCY_ROUNDS = {"back-to-back": 400, "after-50ms-idle": 100}
bare_latency = {}   # (blocks, wait) -> (p50, p99) seconds of the bare Mooncake row of this run


@pytest.fixture(scope="module")
def latency_pair():
    """Two decoder engines of this process linked to a prompt engine in a peer process (one cache
    of one tensor x 256 blocks of 16 KiB each side): one with llmdd.TransferPath network (Mooncake),
    one with the default (the same-host path: the runtime's IPC memory). Beside them a bare Mooncake
    engine in each process over the same source cache and a destination of its own. The bare
    engines start after the links, so they run with the Mooncake settings llmdd puts in the
    environment at its first link."""
    import mooncake.engine
    prompt = Peer.engine(LATENCY_PROMPT)
    cache_bytes = LATENCY_CACHE_BLOCKS * LATENCY_BLOCK_BYTES
    try:
        with llmdd.LlmDataDist(LATENCY_DECODER, llmdd.LlmRole.kDecoder) as decoder, \
                llmdd.LlmDataDist(LATENCY_SAME_HOST_DECODER, llmdd.LlmRole.kDecoder) as same_host_decoder:
            assert decoder.Initialize({"llm.SyncKvCacheWaitTime": "3000", "llmdd.TransferPath": "network"}) == \
                LLMStatusCode.LLM_SUCCESS
            assert same_host_decoder.Initialize({"llm.SyncKvCacheWaitTime": "3000"}) == LLMStatusCode.LLM_SUCCESS
            source_id = prompt.call("allocate", num_tensors=1, batch=LATENCY_CACHE_BLOCKS,
                                    block_bytes=LATENCY_BLOCK_BYTES)["cache_id"]
            cluster = ClusterInfo(LATENCY_PROMPT, 0, [], [IpInfo("127.0.0.1", prompt.port)])
            decoders = {"llmdd-network": decoder, "bare-mooncake": decoder, "llmdd-same-host": same_host_decoder}
            for engine in (decoder, same_host_decoder):
                assert engine.LinkLlmClusters([cluster], [], 3000) == LLMStatusCode.LLM_SUCCESS
            destinations = {}
            for path in LATENCY_PATHS:
                destinations[path] = llmdd.Cache()
                desc = llmdd.CacheDesc(1, [LATENCY_CACHE_BLOCKS, LATENCY_BLOCK_BYTES], llmdd.DT_UINT8)
                assert decoders[path].AllocateCache(desc, destinations[path]) == LLMStatusCode.LLM_SUCCESS
            bare_source = prompt.run(
                "import mooncake.engine\n"
                "bare_engine = mooncake.engine.TransferEngine()\n"
                "assert bare_engine.initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '') == 0\n"
                f"address = caches[{source_id}].tensor_addrs[0]\n"
                f"assert bare_engine.register_memory(address, {cache_bytes}) == 0\n"
                "result = {'port': bare_engine.get_rpc_port(), 'address': address}")
            bare_engine = mooncake.engine.TransferEngine()
            assert bare_engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
            bare_destination = destinations["bare-mooncake"].tensor_addrs[0]
            assert bare_engine.register_memory(bare_destination, cache_bytes) == 0
            try:
                yield {
                    "decoders": decoders, "source": CacheIndex(LATENCY_PROMPT, source_id, 0),
                    "destinations": destinations, "bare_engine": bare_engine,
                    "bare_peer": f"127.0.0.1:{bare_source['port']}", "bare_source": bare_source["address"],
                }
            finally:
                bare_engine.unregister_memory(bare_destination)
                for engine in (decoder, same_host_decoder):
                    engine.UnlinkLlmClusters([cluster], [], 3000)
    finally:
        prompt.close()


def latency_block_lists(count):
    """`count` distinct blocks a side; strides 3 and 5 (co-prime with 256) put no block after its
    neighbour on both sides, so each block is a segment of its own, for llmdd as for bare Mooncake."""
    return ([(3 * i) % LATENCY_CACHE_BLOCKS for i in range(count)],
            [(5 * i) % LATENCY_CACHE_BLOCKS for i in range(count)])


def latency_pull(pair, path, src_blocks, dst_blocks):
    """The call a row times: llmdd's PullKvBlocks (over Mooncake or the same-host path), or one
    batch_transfer_sync_read of the same blocks as bare Mooncake's caller would make it."""
    if path != "bare-mooncake":
        decoder, source, destination = pair["decoders"][path], pair["source"], pair["destinations"][path]

        def pull():
            assert decoder.PullKvBlocks(source, destination, src_blocks, dst_blocks) == LLMStatusCode.LLM_SUCCESS
        return pull
    engine, peer = pair["bare_engine"], pair["bare_peer"]
    local = [pair["destinations"][path].tensor_addrs[0] + b * LATENCY_BLOCK_BYTES for b in dst_blocks]
    remote = [pair["bare_source"] + b * LATENCY_BLOCK_BYTES for b in src_blocks]
    lengths = [LATENCY_BLOCK_BYTES] * len(src_blocks)

    def read():
        assert engine.batch_transfer_sync_read(peer, local, remote, lengths) == 0
    return read


def report_latency(benchmark, path, blocks, wait):
    """p50 and p99 of the row's rounds and the load average in extra_info (bench/latency_table.py
    reads them from --benchmark-json), and a line for the summary."""
    if benchmark.stats is None:
        return
    p50, p99 = (float(value) for value in numpy.percentile(benchmark.stats.stats.data, [50, 99]))
    load = os.getloadavg()[0]
    benchmark.extra_info.update({"path": path, "blocks": blocks, "wait": wait, "p50_s": p50, "p99_s": p99,
                                 "load_1min": load})
    line = f"p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, load {load:.2f}"
    if path == "bare-mooncake":
        bare_latency[blocks, wait] = p50, p99
    elif (blocks, wait) in bare_latency:
        bare_p50, bare_p99 = bare_latency[blocks, wait]
        line += f"; {p50 / bare_p50:.2f}x / {p99 / bare_p99:.2f}x bare Mooncake's p50 / p99"
    benchmark.extra_info["report"] = line


# The topmost parameter varies fastest: each llmdd row runs right after its bare Mooncake row.
@pytest.mark.parametrize("path", LATENCY_PATHS)
@pytest.mark.parametrize("wait", tuple(LATENCY_ROUNDS))
@pytest.mark.parametrize("blocks", (1, 8, 32, 128))
@pytest.mark.benchmark(group="transfer-latency")
def test_latency_of_16_kib_block_pulls(benchmark, latency_pair, blocks, wait, path):
    src_blocks, dst_blocks = latency_block_lists(blocks)
    destination = cache_tensor(latency_pair["destinations"][path], 0)
    destination[:] = 0
    pause = (lambda: time.sleep(IDLE_SECONDS)) if wait == "after-50ms-idle" else None
    benchmark.pedantic(latency_pull(latency_pair, path, src_blocks, dst_blocks), setup=pause,
                       rounds=LATENCY_ROUNDS[wait], iterations=1, warmup_rounds=2)
    source = pattern(LATENCY_PROMPT, latency_pair["source"].cache_id, 0, destination.size)
    for src_block, dst_block in zip(src_blocks, dst_blocks):
        assert numpy.array_equal(destination.reshape(-1, LATENCY_BLOCK_BYTES)[dst_block],
                                 source.reshape(-1, LATENCY_BLOCK_BYTES)[src_block])
    report_latency(benchmark, path, blocks, wait)


# Layer-wise pushes: the drop-in's transfer_cache_async of a cache released layer by layer with no
# compute between layers, beside push_cache of the same cache in one call and a memcpy of its bytes.
LAYERWISE_PROMPT, LAYERWISE_ADDRESSED_PROMPT, LAYERWISE_DECODER = 9, 10, 11
LAYERWISE_LAYERS, LAYERWISE_TENSOR_BYTES = 32, 64 << 10   # 2 tensors a layer: 128 KiB a layer, 4 MiB in all
LAYERWISE_ROUNDS = 20
layerwise_seconds = {}   # row label -> median seconds of this run


def _layerwise_decoder(port):
    """The decoder peer's snippet: one remote-accessible cache of the layer-wise shape, registered
    over numpy memory (as serving engines register torch tensors), listening on `port`."""
    tensors = 2 * LAYERWISE_LAYERS
    return f"""
config = LLMConfig()
config.device_id = 0
config.enable_cache_manager = True
config.enable_remote_cache_accessible = True
config.listen_ip_info = "127.0.0.1:{port}"
datadist = LLMDataDist(LLMRole.DECODER, {LAYERWISE_DECODER})
datadist.init(config.generate_options())
arrays = numpy.zeros(({tensors}, 1, {LAYERWISE_TENSOR_BYTES}), numpy.uint8)
cache = datadist.cache_manager.register_cache(CacheDesc({tensors}, [1, {LAYERWISE_TENSOR_BYTES}], DataType.DT_UINT8),
                                              [int(arrays[t].ctypes.data) for t in range({tensors})])
result = {{"cache_id": cache.cache_id, "addrs": [int(arrays[t].ctypes.data) for t in range({tensors})]}}
"""


@pytest.fixture(scope="module")
def layerwise_decoder():
    """The decoder peer process, which holds the destination cache: (peer, its cache id, its
    tensors' addresses, the port it listens on)."""
    from support.network import free_port
    decoder = Peer.dropin()
    try:
        port = free_port()
        destination = decoder.run(_layerwise_decoder(port))
        yield decoder, destination["cache_id"], destination["addrs"], port
    finally:
        decoder.close()


@pytest.fixture
def layerwise_pair(layerwise_decoder, request):
    """A prompt of this process (a process has one LLMDataDist: one a row), with its source
    cache over numpy memory, linked to the decoder peer; by key (enable_remote_cache_accessible,
    request.param True) or by raw addresses (without it)."""
    from llmdd.llm_datadist import (CacheDesc, CacheKeyByIdAndIndex, DataType, LLMClusterInfo, LLMConfig,
                                    LLMDataDist, LLMRole)
    decoder, cache_id, addrs, port = layerwise_decoder
    keyed = request.param
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.enable_remote_cache_accessible = keyed
    prompt = LLMDataDist(LLMRole.PROMPT, LAYERWISE_PROMPT if keyed else LAYERWISE_ADDRESSED_PROMPT)
    prompt.init(config.generate_options())
    try:
        tensors = 2 * LAYERWISE_LAYERS
        source = touched(tensors * LAYERWISE_TENSOR_BYTES).reshape(tensors, 1, LAYERWISE_TENSOR_BYTES)
        desc = CacheDesc(tensors, [1, LAYERWISE_TENSOR_BYTES], DataType.DT_UINT8)
        cache = prompt.cache_manager.register_cache(desc, [int(source[t].ctypes.data) for t in range(tensors)])
        cluster = LLMClusterInfo()
        cluster.remote_cluster_id = LAYERWISE_DECODER
        cluster.append_local_ip_info("127.0.0.1", 0)
        cluster.append_remote_ip_info("127.0.0.1", port)
        assert prompt.link_clusters([cluster], 5000)[0] == LLMStatusCode.LLM_SUCCESS
        yield {"decoder": decoder, "manager": prompt.cache_manager, "source": source, "cache": cache, "addrs": addrs,
               "key": CacheKeyByIdAndIndex(LAYERWISE_DECODER, cache_id, 0)}
    finally:
        prompt.finalize()


def _released_at_once():
    """A LayerSynchronizer whose layers are all computed already: no compute between layers."""
    from llmdd.llm_datadist import LayerSynchronizer

    class Released(LayerSynchronizer):
        def synchronize_layer(self, layer_index, timeout_in_millis):
            return True
    return Released()


def _layerwise_row(benchmark, pair, move, label, fill):
    """Times move() (one whole transfer of the cache), then checks the decoder holds the source's
    bytes (`fill` everywhere), and reports the median beside the push_cache and memcpy rows."""
    source = pair["source"]
    source.fill(fill)
    benchmark.pedantic(move, args=(pair["manager"], pair["cache"]), rounds=LAYERWISE_ROUNDS, iterations=1,
                       warmup_rounds=1)
    assert pair["decoder"].run(f"result = bool((arrays == {fill}).all())")
    if benchmark.stats is None:
        return
    seconds = benchmark.stats.stats.median
    layerwise_seconds[label] = seconds
    line = f"{label}: {seconds * 1e3:.2f} ms ({seconds / LAYERWISE_LAYERS * 1e3:.2f} ms a layer)"
    if label != "push_cache" and "push_cache" in layerwise_seconds:
        line += f", {seconds / layerwise_seconds['push_cache']:.1f}x push_cache"
    nbytes = source.nbytes
    if nbytes in memcpy_seconds:
        line += f", {memcpy_seconds[nbytes] / seconds:.1%} of memcpy"
    benchmark.extra_info["report"] = f"{line}, load {os.getloadavg()[0]:.2f}"


@pytest.mark.benchmark(group="transfer-layerwise")
def test_memcpy_of_a_layerwise_cache(benchmark):
    nbytes = 2 * LAYERWISE_LAYERS * LAYERWISE_TENSOR_BYTES
    src, dst = touched(nbytes), touched(nbytes)
    benchmark.pedantic(numpy.copyto, (dst, src), rounds=LAYERWISE_ROUNDS * 10, iterations=1, warmup_rounds=1)
    report(benchmark, nbytes, "memcpy")


@pytest.mark.parametrize("layerwise_pair", [True], indirect=True, ids=["by-key"])
@pytest.mark.benchmark(group="transfer-layerwise")
def test_push_cache_of_a_layerwise_cache_in_one_call(benchmark, layerwise_pair):
    key = layerwise_pair["key"]
    _layerwise_row(benchmark, layerwise_pair, lambda manager, cache: manager.push_cache(key, cache),
                   "push_cache", 1)


@pytest.mark.parametrize("layerwise_pair", [True], indirect=True, ids=["by-key"])
@pytest.mark.benchmark(group="transfer-layerwise")
def test_transfer_cache_async_by_key_released_layer_by_layer(benchmark, layerwise_pair):
    from llmdd.llm_datadist import TransferWithCacheKeyConfig
    layers = range(LAYERWISE_LAYERS)
    configs = [TransferWithCacheKeyConfig(layerwise_pair["key"], layers, layers)]

    def transfer(manager, cache):
        assert manager.transfer_cache_async(cache, _released_at_once(), configs).synchronize(30000) == \
            LLMStatusCode.LLM_SUCCESS
    _layerwise_row(benchmark, layerwise_pair, transfer, "transfer_cache_async by key", 2)


@pytest.mark.parametrize("layerwise_pair", [False], indirect=True, ids=["by-address"])
@pytest.mark.benchmark(group="transfer-layerwise")
def test_transfer_cache_async_to_raw_addresses_released_layer_by_layer(benchmark, layerwise_pair):
    from llmdd.llm_datadist import TransferConfig
    configs = [TransferConfig(LAYERWISE_DECODER, layerwise_pair["addrs"])]

    def transfer(manager, cache):
        assert manager.transfer_cache_async(cache, _released_at_once(), configs).synchronize(30000) == \
            LLMStatusCode.LLM_SUCCESS
    _layerwise_row(benchmark, layerwise_pair, transfer, "transfer_cache_async to raw addresses", 3)


# Rank-table links: from link() to query_register_mem_status OK, beside link_clusters, between this
# process (the decoder, rank 1, which links from 127.0.0.2) and a prompt peer (rank 0, which listens).
RANK_PROMPT, RANK_DECODER = 12, 13
RANK_LINK_ROUNDS = 20
RANK_POLL_S = 0.001   # clients sleep longer between polls; tight here, so the row is the link's own time
rank_link_seconds = {}


def _rank_table(prompt_ip, decoder_ip):
    """vLLM-Ascend's table for two devices of one server (version 1.2)."""
    devices = [{"device_id": "0", "device_ip": prompt_ip, "rank_id": "0", "super_device_id": "0"},
               {"device_id": "1", "device_ip": decoder_ip, "rank_id": "1", "super_device_id": "1"}]
    return json.dumps({"version": "1.2", "server_count": "1", "status": "completed",
                       "server_list": [{"device": devices, "server_id": "127.0.0.1"}]})


@pytest.fixture(scope="module")
def rank_table_prompt():
    """A prompt peer listening on llm.ListenIpInfo (for link_clusters) and, for link(), at
    llmdd.RankTablePort on 127.0.0.1: (peer, listen port, rank-table options)."""
    from support.network import free_port
    prompt = Peer.dropin()
    try:
        listen_port, options = free_port(), {"llmdd.RankTablePort": str(free_port())}
        prompt.run(f"""
config = LLMConfig()
config.device_id = 0
config.enable_cache_manager = True
config.ge_options = {options!r}
config.listen_ip_info = "127.0.0.1:{listen_port}"
datadist = LLMDataDist(LLMRole.PROMPT, {RANK_PROMPT})
datadist.init(config.generate_options())
result = None
""")
        yield prompt, listen_port, options
    finally:
        prompt.close()


@pytest.fixture
def rank_table_pair(rank_table_prompt):
    """The prompt peer and this process's decoder (cache-manager mode), new for each row: an
    agent's Mooncake engines listen where its first link came from, and the two rows link from
    different addresses."""
    from llmdd.llm_datadist import LLMConfig, LLMDataDist, LLMRole
    prompt, listen_port, options = rank_table_prompt
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.ge_options = options
    decoder = LLMDataDist(LLMRole.DECODER, RANK_DECODER)
    decoder.init(config.generate_options())
    try:
        yield {"prompt": prompt, "decoder": decoder, "listen_port": listen_port}
    finally:
        decoder.finalize()


def _report_link(benchmark, label):
    if benchmark.stats is None:
        return
    seconds = benchmark.stats.stats.median
    rank_link_seconds[label] = seconds
    line = f"{label}: {seconds * 1e3:.2f} ms"
    if label != "link_clusters" and "link_clusters" in rank_link_seconds:
        line += f", {seconds / rank_link_seconds['link_clusters']:.1f}x link_clusters"
    benchmark.extra_info["report"] = f"{line}, load {os.getloadavg()[0]:.2f}"


@pytest.mark.benchmark(group="transfer-rank-table-link")
def test_link_clusters_of_a_cache_manager(benchmark, rank_table_pair):
    from llmdd.llm_datadist import LLMClusterInfo
    decoder = rank_table_pair["decoder"]
    cluster = LLMClusterInfo()
    cluster.remote_cluster_id = RANK_PROMPT
    cluster.append_local_ip_info("127.0.0.1", 0)
    cluster.append_remote_ip_info("127.0.0.1", rank_table_pair["listen_port"])
    linked = []

    def unlinked():
        while linked:
            assert decoder.unlink_clusters([linked.pop()], 5000)[0] == LLMStatusCode.LLM_SUCCESS
        return (), {}

    def link():
        assert decoder.link_clusters([cluster], 5000) == (LLMStatusCode.LLM_SUCCESS, [LLMStatusCode.LLM_SUCCESS])
        linked.append(cluster)
    try:
        benchmark.pedantic(link, setup=unlinked, rounds=RANK_LINK_ROUNDS, iterations=1)
    finally:
        unlinked()
    _report_link(benchmark, "link_clusters")


@pytest.mark.benchmark(group="transfer-rank-table-link")
def test_rank_table_link_until_registered(benchmark, rank_table_pair):
    """link() on this side, then query_register_mem_status until OK, as vLLM-Ascend's connector
    polls; the prompt peer called link() with the same table just before (untimed)."""
    from llmdd.llm_datadist import RegisterMemStatus
    prompt, decoder = rank_table_pair["prompt"], rank_table_pair["decoder"]
    ranks, table = {RANK_PROMPT: 0, RANK_DECODER: 1}, _rank_table("127.0.0.1", "127.0.0.2")
    comms = []

    def prompt_linked():
        while comms:
            decoder_comm, prompt_comm = comms.pop()
            decoder.unlink(decoder_comm)
            prompt.run(f"datadist.unlink({prompt_comm})\nresult = None")
        prompt_comm = prompt.run(f"result = datadist.link('bench', {ranks!r}, {table!r})")
        return (prompt_comm,), {}

    def link(prompt_comm):
        comm_id = decoder.link("bench", ranks, table)
        comms.append((comm_id, prompt_comm))
        deadline = time.monotonic() + 30
        while decoder.query_register_mem_status(comm_id) != RegisterMemStatus.OK:
            assert time.monotonic() < deadline, "the comm is not linked after 30 s"
            time.sleep(RANK_POLL_S)
    try:
        benchmark.pedantic(link, setup=prompt_linked, rounds=RANK_LINK_ROUNDS, iterations=1)
    finally:
        for decoder_comm, prompt_comm in comms:
            decoder.unlink(decoder_comm)
            prompt.run(f"datadist.unlink({prompt_comm})\nresult = None")
    _report_link(benchmark, "link() until query_register_mem_status OK")
