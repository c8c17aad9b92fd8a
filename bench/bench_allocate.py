"""AllocateCache + DeallocateCache of the seed cache against numpy.empty of the same bytes,
and CacheDesc construction against a plain Python object of four fields. Each group's rows
run with one calibration, made on its baseline (conftest.calibrate)."""
import types

import numpy
import pytest
from conftest import calibrate, run_calibrated

import llmdd
from llmdd import CacheDesc


def numpy_round_trip():
    empty, float16 = numpy.empty, numpy.float16
    return lambda: empty((80, 1, 256), float16)


def plain_python_descriptor():
    namespace, float16 = types.SimpleNamespace, llmdd.DT_FLOAT16
    return lambda: namespace(num_tensors=80, shape=[1, 256], data_type=float16, placement=1)


@pytest.fixture(scope="module")
def round_trip_timing():
    return calibrate(numpy_round_trip())


@pytest.fixture(scope="module")
def descriptor_timing():
    return calibrate(plain_python_descriptor())


@pytest.mark.benchmark(group="round-trip")
def test_llmdd_allocate_and_deallocate(benchmark, engine, seed_round_trip, round_trip_timing):
    run_calibrated(benchmark, seed_round_trip(engine), round_trip_timing)
    assert engine.memory_stats()["num_allocs"] > 0 == engine.memory_stats()["num_caches"]


@pytest.mark.benchmark(group="round-trip")
def test_llmdd_pool_allocate_and_deallocate(benchmark, pooled_engine, seed_round_trip, round_trip_timing):
    run_calibrated(benchmark, seed_round_trip(pooled_engine), round_trip_timing)
    assert pooled_engine.memory_stats()["num_allocs"] > 0 == pooled_engine.memory_stats()["num_caches"]


@pytest.mark.benchmark(group="round-trip")
def test_llmdd_pythonic_allocate_and_deallocate(benchmark, engine, round_trip_timing):
    desc = CacheDesc(80, [1, 256], llmdd.DT_FLOAT16)
    allocate, deallocate = engine.allocate_cache, engine.deallocate_cache
    run_calibrated(benchmark, lambda: deallocate(allocate(desc)), round_trip_timing)


@pytest.mark.benchmark(group="round-trip")
def test_numpy_empty_and_release(benchmark, round_trip_timing):
    run_calibrated(benchmark, numpy_round_trip(), round_trip_timing)


@pytest.mark.benchmark(group="round-trip")
def test_torch_empty_and_release(benchmark, round_trip_timing):
    torch = pytest.importorskip("torch", reason="torch is optional: pip install torch==2.13.0")
    empty, float16 = torch.empty, torch.float16
    run_calibrated(benchmark, lambda: empty((80, 1, 256), dtype=float16), round_trip_timing)


@pytest.mark.benchmark(group="descriptor")
def test_cache_desc_construction(benchmark, descriptor_timing):
    float16 = llmdd.DT_FLOAT16
    run_calibrated(benchmark, lambda: CacheDesc(80, [1, 256], float16), descriptor_timing)
    assert CacheDesc(80, [1, 256], float16).size == 512


@pytest.mark.benchmark(group="descriptor")
def test_plain_python_object(benchmark, descriptor_timing):
    run_calibrated(benchmark, plain_python_descriptor(), descriptor_timing)
