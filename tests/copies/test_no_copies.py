"""What owns or points at memory is neither copied nor pickled (a copy of an owner would free
its memory twice; a copy of a view could be forged over any address); what carries an error
between processes pickles intact."""
import copy
import pickle

import pytest

import llmdd
from support.caches import seed_desc

COPIERS = [copy.copy, copy.deepcopy, lambda value: pickle.loads(pickle.dumps(value))]


def memory_objects(engine):
    cache = engine.allocate_cache(seed_desc())
    view = cache.tensor(0)
    return {"engine": engine, "cache": cache, "view": view, "view.owner": view.owner}


@pytest.mark.parametrize("copier", COPIERS)
@pytest.mark.parametrize("name", ["engine", "cache", "view", "view.owner"])
def test_memory_owners_and_views_refuse_to_be_copied(engine, copier, name):
    objects = memory_objects(engine)
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        copier(objects[name])
    cache = objects["cache"]
    del objects
    # Still exactly one owner: the cache frees once, and nothing is left behind.
    assert engine.DeallocateCache(cache.cache_id) == llmdd.LLM_SUCCESS
    assert engine.memory_stats()["num_pending"] == 0
    assert engine.memory_stats()["bytes_in_use"] == 0


@pytest.mark.parametrize("copier", COPIERS)
def test_llm_exception_keeps_its_message_and_status_through_copies_and_pickles(engine, copier):
    with pytest.raises(llmdd.LLMException) as raised:
        engine.deallocate_cache(987654321)
    copied = copier(raised.value)
    assert type(copied) is llmdd.LLMException
    assert str(copied) == str(raised.value)
    assert copied.status_code is llmdd.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST


def test_llm_exception_takes_canns_form_and_llmdds():
    assert llmdd.LLMException("message").status_code is llmdd.LLMStatusCode.LLM_SUCCESS
    canns = llmdd.LLMException("message", status_code=llmdd.LLM_PARAM_INVALID)
    llmdds = llmdd.LLMException("message", llmdd.LLM_PARAM_INVALID)
    for error in (canns, llmdds):
        assert str(error) == "message"
        assert error.status_code is llmdd.LLMStatusCode.LLM_PARAM_INVALID
        assert pickle.loads(pickle.dumps(error)).status_code is llmdd.LLMStatusCode.LLM_PARAM_INVALID
    assert llmdd.LLMException("a", "b").args == ("a", "b")    # two messages, no status
