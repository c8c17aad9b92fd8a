"""CopyKvBlocks of 64 tensors x 256 blocks of 64 KiB (1 GiB) between device and host, beside
numpy fancy indexing of the same blocks and one large memcpy of the same bytes (the machine's
copy bandwidth). Device memory is host memory on the simulation, so numpy can read it."""
import numpy
import pytest

import llmdd
from llmdd import Cache, CacheDesc

TENSORS, BLOCKS, BLOCK_BYTES = 64, 256, 64 << 10
TOTAL_BYTES = TENSORS * BLOCKS * BLOCK_BYTES
ROUNDS = 5

pytestmark = pytest.mark.skipif(not llmdd.SIMULATED, reason="numpy reads device memory only on the simulation")


@pytest.fixture(scope="module")
def buffers():
    """A 1 GiB device cache, a 1 GiB caller-owned host cache, and numpy views of both."""
    with llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt) as dd:
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        device = dd.allocate_cache(CacheDesc(TENSORS, [BLOCKS, BLOCK_BYTES], llmdd.DT_INT8))
        host_memory = numpy.ones((TENSORS, BLOCKS, BLOCK_BYTES), numpy.uint8)
        host = Cache.create_cpu_cache(CacheDesc(TENSORS, [BLOCKS, BLOCK_BYTES], llmdd.DT_INT8, llmdd.CachePlacement.kHost),
                                      [tensor.ctypes.data for tensor in host_memory])
        device_views = [numpy.asarray(device.tensor(i)).view(numpy.uint8) for i in range(TENSORS)]
        for view in device_views:
            view.fill(7)
        yield dd, device, host, device_views, host_memory
        del device_views


def record_bandwidth(benchmark, label):
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["report"] = f"{label}: {TOTAL_BYTES / seconds / 1e9:.2f} GB/s"


@pytest.mark.benchmark(group="copy-1GiB")
def test_one_large_memcpy(benchmark, buffers):
    _, _, _, _, host_memory = buffers
    source = numpy.full_like(host_memory, 3)
    benchmark.pedantic(numpy.copyto, args=(host_memory, source), rounds=ROUNDS, iterations=1)
    record_bandwidth(benchmark, "one memcpy of 1 GiB")


def block_order(order):
    """(source blocks, destination blocks): all of them in order, or in a seeded random order."""
    if order == "consecutive":
        return numpy.arange(BLOCKS), numpy.arange(BLOCKS)
    rng = numpy.random.default_rng(20261127)
    return rng.permutation(BLOCKS), rng.permutation(BLOCKS)


@pytest.mark.benchmark(group="copy-1GiB")
@pytest.mark.parametrize("order", ["consecutive", "random"])
@pytest.mark.parametrize("direction", ["d2h", "h2d"])
def test_llmdd_copy_blocks(benchmark, buffers, direction, order):
    dd, device, host, _, _ = buffers
    src, dst = (device, host) if direction == "d2h" else (host, device)
    src_blocks, dst_blocks = (blocks.tolist() for blocks in block_order(order))
    benchmark.pedantic(dd.copy_blocks, args=(src, dst, src_blocks, [dst_blocks]), rounds=ROUNDS, iterations=1)
    record_bandwidth(benchmark, f"CopyKvBlocks {direction}, {order} blocks")


@pytest.mark.benchmark(group="copy-1GiB")
@pytest.mark.parametrize("order", ["consecutive", "random"])
def test_numpy_fancy_indexing(benchmark, buffers, order):
    _, _, _, device_views, host_memory = buffers
    src_blocks, dst_blocks = block_order(order)

    def copy_d2h():
        for tensor, view in enumerate(device_views):
            host_memory[tensor, dst_blocks] = view[src_blocks]

    benchmark.pedantic(copy_d2h, rounds=ROUNDS, iterations=1)
    record_bandwidth(benchmark, f"numpy fancy indexing d2h, {order} blocks")
