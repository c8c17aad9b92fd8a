"""The Pythonic layer: allocate_cache / deallocate_cache raise LLMException with the status."""
import pytest
from support.caches import seed_desc

import llmdd
from llmdd import CacheDesc, LLMException


def test_allocate_cache_returns_a_filled_cache(engine):
    cache = engine.allocate_cache(seed_desc())
    assert isinstance(cache, llmdd.Cache)
    assert cache.cache_id >= 1 and len(cache.tensor_addrs) == 80 and cache.cache_desc == seed_desc()


def test_deallocate_cache_takes_a_cache_or_an_id(engine):
    first, second = engine.allocate_cache(seed_desc()), engine.allocate_cache(seed_desc())
    engine.deallocate_cache(first)
    engine.deallocate_cache(second.cache_id)
    assert engine.DeallocateCache(first.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST
    assert engine.DeallocateCache(second.cache_id) == llmdd.LLM_KV_CACHE_NOT_EXIST


def test_llm_exception_is_a_runtime_error_with_the_status_code(engine):
    with pytest.raises(LLMException) as raised:
        engine.allocate_cache(CacheDesc(0, [1], llmdd.DT_INT8))
    assert isinstance(raised.value, RuntimeError)
    assert raised.value.status_code is llmdd.LLM_PARAM_INVALID
    assert "allocate_cache failed: LLM_PARAM_INVALID (0x5010b005)" in str(raised.value)


def test_deallocating_an_unknown_cache_raises(engine):
    with pytest.raises(LLMException) as raised:
        engine.deallocate_cache(123456789)
    assert raised.value.status_code is llmdd.LLM_KV_CACHE_NOT_EXIST


def test_calls_on_an_engine_that_is_not_initialized_raise():
    dd = llmdd.LlmDataDist(0, llmdd.LlmRole.kPrompt)
    with pytest.raises(LLMException, match="not initialized") as raised:
        dd.allocate_cache(seed_desc())
    assert raised.value.status_code is llmdd.LLM_FAILED
    with pytest.raises(LLMException, match="not initialized"):
        dd.device_memory_info()


def test_wrong_argument_types_raise_type_error(engine):
    with pytest.raises(TypeError):
        engine.allocate_cache([80, [1, 256]])
    with pytest.raises(TypeError, match="cache"):
        engine.deallocate_cache("1")
