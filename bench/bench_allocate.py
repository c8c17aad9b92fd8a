"""AllocateCache + DeallocateCache of the seed cache against numpy.empty of the same bytes,
and CacheDesc construction against a plain Python object of four fields."""
import types

import numpy
import pytest

import llmdd
from llmdd import CacheDesc


@pytest.mark.benchmark(group="round-trip")
def test_llmdd_allocate_and_deallocate(benchmark, engine, seed_round_trip):
    benchmark(seed_round_trip(engine))
    assert engine.memory_stats()["num_allocs"] > 0 == engine.memory_stats()["num_caches"]


@pytest.mark.benchmark(group="round-trip")
def test_llmdd_pool_allocate_and_deallocate(benchmark, pooled_engine, seed_round_trip):
    benchmark(seed_round_trip(pooled_engine))
    assert pooled_engine.memory_stats()["num_allocs"] > 0 == pooled_engine.memory_stats()["num_caches"]


@pytest.mark.benchmark(group="round-trip")
def test_llmdd_pythonic_allocate_and_deallocate(benchmark, engine):
    desc = CacheDesc(80, [1, 256], llmdd.DT_FLOAT16)
    allocate, deallocate = engine.allocate_cache, engine.deallocate_cache
    benchmark(lambda: deallocate(allocate(desc)))


@pytest.mark.benchmark(group="round-trip")
def test_numpy_empty_and_release(benchmark):
    empty, float16 = numpy.empty, numpy.float16
    benchmark(lambda: empty((80, 1, 256), float16))


@pytest.mark.benchmark(group="round-trip")
def test_torch_empty_and_release(benchmark):
    torch = pytest.importorskip("torch", reason="torch is optional: pip install torch==2.13.0")
    empty, float16 = torch.empty, torch.float16
    benchmark(lambda: empty((80, 1, 256), dtype=float16))


@pytest.mark.benchmark(group="descriptor")
def test_cache_desc_construction(benchmark):
    float16 = llmdd.DT_FLOAT16
    desc = benchmark(lambda: CacheDesc(80, [1, 256], float16))
    assert desc.size == 512


@pytest.mark.benchmark(group="descriptor")
def test_plain_python_object(benchmark):
    namespace, float16 = types.SimpleNamespace, llmdd.DT_FLOAT16
    benchmark(lambda: namespace(num_tensors=80, shape=[1, 256], data_type=float16, placement=1))
