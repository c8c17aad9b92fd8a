"""Tensor views: zero-copy exports to numpy, torch and memoryview, descriptors for transfer
engines, and the lifetime rule (memory outlives DeallocateCache and Finalize until the last
export is gone)."""
import ctypes
import gc

import numpy
import pytest
from support.caches import seed_desc

import llmdd
import llmdd.sim
from llmdd import Cache, CacheDesc, LlmDataDist, LlmRole

HOST_READABLE = llmdd.SIMULATED  # device memory is host memory only on the simulation

NUMPY_TYPES = [
    (llmdd.DT_FLOAT, numpy.float32), (llmdd.DT_FLOAT16, numpy.float16), (llmdd.DT_DOUBLE, numpy.float64),
    (llmdd.DT_INT8, numpy.int8), (llmdd.DT_INT16, numpy.int16), (llmdd.DT_INT32, numpy.int32),
    (llmdd.DT_INT64, numpy.int64), (llmdd.DT_UINT8, numpy.uint8), (llmdd.DT_UINT16, numpy.uint16),
    (llmdd.DT_UINT32, numpy.uint32), (llmdd.DT_UINT64, numpy.uint64), (llmdd.DT_BOOL, numpy.bool_),
    (llmdd.DT_COMPLEX64, numpy.complex64), (llmdd.DT_COMPLEX128, numpy.complex128),
]

host_only = pytest.mark.skipif(not HOST_READABLE, reason="device memory of runtime=acl is not host memory; "
                               "test_device_memory_is_not_exported covers that build")
# Host-pool caches are host memory on every build; device caches only on the simulation.
READABLE_PLACEMENTS = [llmdd.CachePlacement.kHost] + ([llmdd.CachePlacement.kDevice] if HOST_READABLE else [])


@pytest.fixture
def host_pool_engine():
    with LlmDataDist(0, LlmRole.kPrompt) as dd:
        assert dd.Initialize({"llm.HostMemPoolConfig": '{"memory_size": 16777216}'}) == llmdd.LLM_SUCCESS
        yield dd


def test_view_describes_its_tensor(engine):
    desc = CacheDesc(3, [2, 5], llmdd.DT_INT32)
    cache = engine.allocate_cache(desc)
    view = cache.tensor(2)
    assert view.data_ptr == cache.tensor_addrs[2]
    assert view.nbytes == desc.size == 40
    assert view.shape == (2, 5) and view.data_type is llmdd.DT_INT32
    assert view.device == (llmdd.CachePlacement.kDevice, engine.device_id)


@pytest.mark.parametrize("index", [3, 100, -1])
def test_out_of_range_index_is_index_error(engine, index):
    with pytest.raises(IndexError):
        engine.allocate_cache(CacheDesc(3, [4], llmdd.DT_INT8)).tensor(index)


def test_views_need_a_live_allocation(engine):
    with pytest.raises(ValueError, match="never allocated"):
        Cache().tensor(0)
    cache = engine.allocate_cache(seed_desc())
    engine.deallocate_cache(cache)
    for call in (lambda: cache.tensor(0), cache.to_descs, cache.region):
        with pytest.raises(ValueError, match="deallocated"):
            call()
    other = engine.allocate_cache(seed_desc())
    other.cache_id = other.cache_id   # set by hand: no longer vouched for by the engine
    with pytest.raises(ValueError, match="by hand"):
        other.tensor(0)


def test_views_end_with_finalize():
    dd = LlmDataDist(0, LlmRole.kPrompt)
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    cache = dd.allocate_cache(seed_desc())
    dd.Finalize()
    with pytest.raises(ValueError, match="finalized"):
        cache.tensor(0)


@pytest.mark.parametrize("placement", READABLE_PLACEMENTS)
@pytest.mark.parametrize("data_type,numpy_type", NUMPY_TYPES)
def test_numpy_sees_the_right_type_and_shares_memory(host_pool_engine, data_type, numpy_type, placement):
    desc = CacheDesc(2, [3, 4], data_type, placement)
    cache = host_pool_engine.allocate_cache(desc)
    array = numpy.asarray(cache.tensor(1))
    assert array.dtype == numpy_type and array.shape == (3, 4)
    assert array.ctypes.data == cache.tensor_addrs[1]
    ctypes.memset(cache.tensor_addrs[1], 0, desc.size)
    array.flat[5] = 1
    assert ctypes.string_at(cache.tensor_addrs[1] + 5 * array.itemsize, array.itemsize) != bytes(array.itemsize)


@host_only
@pytest.mark.parametrize("data_type,nbytes", [(llmdd.DT_BF16, 24), (llmdd.DT_INT4, 6), (llmdd.DT_FLOAT8_E4M3FN, 12)])
def test_types_numpy_lacks_come_out_as_raw_bytes(engine, data_type, nbytes):
    view = engine.allocate_cache(CacheDesc(1, [3, 4], data_type)).tensor(0)
    array = numpy.asarray(view)
    assert view.is_raw_bytes and array.dtype == numpy.uint8 and array.shape == (nbytes,)
    assert memoryview(view).nbytes == nbytes


@pytest.mark.parametrize("placement", READABLE_PLACEMENTS)
def test_memoryview_and_dlpack_share_memory(host_pool_engine, placement):
    desc = CacheDesc(1, [2, 3], llmdd.DT_FLOAT, placement)
    view = host_pool_engine.allocate_cache(desc).tensor(0)
    buffer = memoryview(view)
    assert (buffer.format, buffer.shape, buffer.strides, buffer.readonly) == ("f", (2, 3), (12, 4), False)
    from_dlpack = numpy.from_dlpack(view)
    buffer.cast("B")[:4] = numpy.float32(2.5).tobytes()
    assert from_dlpack[0, 0] == 2.5 and numpy.asarray(view)[0, 0] == 2.5
    assert view.__dlpack_device__() == (1, 0)
    simple = (ctypes.c_char * desc.size).from_buffer(view)       # a simple, writable request
    assert len(simple) == desc.size and simple.raw[:4] == numpy.float32(2.5).tobytes()


@host_only
def test_torch_and_numpy_see_each_others_writes(engine):
    torch = pytest.importorskip("torch", reason="torch is optional; CI installs it")
    cache = engine.allocate_cache(CacheDesc(2, [4, 8], llmdd.DT_FLOAT16))
    array = numpy.asarray(cache.tensor(0))
    tensor = torch.from_dlpack(cache.tensor(0))
    assert tensor.dtype == torch.float16 and tuple(tensor.shape) == (4, 8)
    assert tensor.data_ptr() == cache.tensor_addrs[0]
    array[:] = 1.5
    assert bool((tensor == 1.5).all())
    tensor[2, 3] = -4.0
    assert array[2, 3] == -4.0
    bf16 = torch.from_dlpack(engine.allocate_cache(CacheDesc(1, [8], llmdd.DT_BF16)).tensor(0))
    assert bf16.dtype == torch.bfloat16


def test_device_memory_is_not_exported(engine):
    view = engine.allocate_cache(seed_desc()).tensor(0)
    if HOST_READABLE:
        assert view.host_accessible
        return
    assert not view.host_accessible
    for export in (view.__dlpack__, view.__dlpack_device__, lambda: memoryview(view),
                   lambda: view.__array_interface__):
        with pytest.raises(BufferError, match="create_npu_tensors"):
            export()


def test_descriptors_for_transfer_engines(engine):
    desc = CacheDesc(4, [1000], llmdd.DT_FLOAT16)
    cache = engine.allocate_cache(desc)
    descs = cache.to_descs()
    assert descs == [(address, 2000, engine.device_id) for address in cache.tensor_addrs]
    rows = cache.to_descs(as_numpy=True)
    assert rows.dtype == numpy.uint64 and rows.shape == (4, 3) and rows.tolist() == [list(row) for row in descs]
    address, nbytes, device = cache.region()
    assert address == cache.tensor_addrs[0] and device == engine.device_id
    assert address + nbytes >= cache.tensor_addrs[-1] + desc.size and nbytes == 4 * 2048


@host_only
def test_deallocate_with_a_live_array_keeps_the_memory_until_the_array_is_gone(engine):
    cache = engine.allocate_cache(seed_desc())
    array = numpy.asarray(cache.tensor(0))
    held = engine.memory_stats()["bytes_in_use"]
    usage = llmdd.sim.device_usage(0)
    engine.deallocate_cache(cache)
    stats = engine.memory_stats()
    assert (stats["num_caches"], stats["bytes_in_use"], stats["num_pending"], stats["pending_bytes"]) == (0, 0, 1, held)
    assert llmdd.sim.device_usage(0) == usage
    array[:] = 3.0   # still the cache's memory, still allocated
    assert float(array.sum()) == 3.0 * 256
    del array
    gc.collect()
    stats = engine.memory_stats()
    assert (stats["num_pending"], stats["pending_bytes"]) == (0, 0)
    assert llmdd.sim.device_usage(0)[1] == usage[1] - 1


@host_only
def test_finalize_with_live_exports_waits_for_them():
    torch = pytest.importorskip("torch", reason="torch is optional; CI installs it")
    dd = LlmDataDist(0, LlmRole.kPrompt)
    assert dd.Initialize({"llm.MemPoolConfig": '{"memory_size": 16777216}'}) == llmdd.LLM_SUCCESS
    first, second = dd.allocate_cache(seed_desc()), dd.allocate_cache(seed_desc())
    array = numpy.asarray(first.tensor(0))
    tensor = torch.from_dlpack(second.tensor(3))
    dd.Finalize()
    assert not dd.initialized and dd.memory_stats()["num_pending"] == 2
    assert dd.Initialize({}) == llmdd.LLM_FAILED        # the last initialization is not over
    array[:] = 1.0
    tensor[:] = 2.0
    assert float(array.sum()) == 256.0 and float(tensor.sum()) == 512.0
    del array
    gc.collect()
    assert dd.memory_stats()["num_pending"] == 1
    del tensor
    gc.collect()
    assert dd.memory_stats()["num_pending"] == 0
    assert dd.Initialize({}) == llmdd.LLM_SUCCESS
    dd.Finalize()


@host_only
def test_an_unconsumed_dlpack_capsule_releases_its_reference(engine):
    cache = engine.allocate_cache(seed_desc())
    capsule = cache.tensor(0).__dlpack__()
    engine.deallocate_cache(cache)
    assert engine.memory_stats()["num_pending"] == 1
    del capsule
    gc.collect()
    assert engine.memory_stats()["num_pending"] == 0


def test_view_objects_cannot_be_made_by_hand():
    with pytest.raises(TypeError):
        llmdd.TensorView()


def test_a_view_in_a_garbage_cycle_is_collected_safely(engine):
    cache = engine.allocate_cache(seed_desc())
    view = cache.tensor(0)
    engine.deallocate_cache(cache)
    cycle = [view]
    cycle.append(cycle)
    del view, cycle
    gc.collect()
    stats = engine.memory_stats()
    assert (stats["num_pending"], stats["pending_bytes"]) == (0, 0)


@pytest.mark.sim_only
@pytest.mark.parametrize("export", ["view", "copy"])
def test_an_engine_dropped_with_exports_frees_everything_once_they_are_gone(export):
    with LlmDataDist(0, LlmRole.kPrompt) as witness:       # keeps the runtime up to read usage
        assert witness.Initialize({}) == llmdd.LLM_SUCCESS
        before = llmdd.sim.device_usage(0)
        dd = LlmDataDist(0, LlmRole.kPrompt)
        assert dd.Initialize({}) == llmdd.LLM_SUCCESS
        first, second = dd.allocate_cache(seed_desc()), dd.allocate_cache(seed_desc())
        view = first.tensor(0) if export == "view" else None
        if export == "copy":
            dd.copy_cache(first, second)
        del dd, first, second
        gc.collect()
        if view is not None:
            assert llmdd.sim.device_usage(0)[1] > before[1]      # the view still holds its memory
            del view
            gc.collect()
        assert llmdd.sim.device_usage(0) == before
