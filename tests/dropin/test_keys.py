"""The drop-in's cache keys: CANN's arguments (cluster_id or prompt_cluster_id, prefix_id),
uint64 values, and value semantics so caches can be indexed by them."""
import pytest

from llmdd.llm_datadist import BlocksCacheKey, CacheKey, CacheKeyByIdAndIndex, CacheManager, LLMException, LLMStatusCode

NO_ID = 2**64 - 1


def test_cache_key_positional_and_keyword_forms_agree():
    key = CacheKey(1, 2, 3, 4)
    assert (key.cluster_id, key.prompt_cluster_id, key.req_id, key.model_id, key.prefix_id) == (1, 1, 2, 3, 4)
    assert CacheKey(cluster_id=1, req_id=2, model_id=3, prefix_id=4) == key
    assert CacheKey(prompt_cluster_id=1, req_id=2, model_id=3, prefix_id=4) == key


def test_cache_key_defaults_are_model_zero_and_no_prefix():
    key = CacheKey(5, 6)
    assert (key.model_id, key.prefix_id) == (0, NO_ID)


@pytest.mark.parametrize("args,kwargs,message", [
    ((), {"req_id": 1}, "cluster_id is required"),
    ((1,), {}, "req_id is required"),
    ((), {"cluster_id": 1, "req_id": 1, "prefix_id1": 1}, "Unsupported"),
    ((1, 2, 3, 4, 5), {}, "at most 4"),
    ((1, 2), {"cluster_id": 1}, "twice"),
    ((), {"cluster_id": 1, "prompt_cluster_id": 1, "req_id": 2}, "twice"),
])
def test_cache_key_argument_mistakes_are_param_invalid(args, kwargs, message):
    with pytest.raises(LLMException, match=message) as raised:
        CacheKey(*args, **kwargs)
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID


@pytest.mark.parametrize("args,error", [
    ((-1, 1), ValueError), ((1, -1), ValueError), ((1, 1, 2**64), ValueError), ((1, 1, 0, 2**64), ValueError),
    (("1", 1), TypeError), ((1, 1.0), TypeError), ((True, 1), TypeError),
])
def test_cache_key_values_must_be_uint64(args, error):
    with pytest.raises(error):
        CacheKey(*args)


def test_blocks_cache_key_forms():
    assert BlocksCacheKey(1) == BlocksCacheKey(cluster_id=1, model_id=0) == BlocksCacheKey(prompt_cluster_id=1)
    key = BlocksCacheKey(1, 100)
    assert (key.cluster_id, key.prompt_cluster_id, key.model_id) == (1, 1, 100)
    with pytest.raises(LLMException, match="cluster_id is required"):
        BlocksCacheKey(model_id=1)
    with pytest.raises(LLMException, match="Unsupported"):
        BlocksCacheKey(1, req_id=1)
    with pytest.raises(LLMException):
        BlocksCacheKey(1, 2, 3)
    with pytest.raises(TypeError, match="only support"):
        BlocksCacheKey("aa")
    with pytest.raises(ValueError):
        BlocksCacheKey(-1)


def test_cache_key_by_id_and_index_ranges():
    key = CacheKeyByIdAndIndex(2, -1, 7)
    assert (key.cluster_id, key.cache_id, key.batch_index) == (2, -1, 7)
    assert CacheKeyByIdAndIndex(2, 5).batch_index == 0
    for args in ((-1, 0), (0, 2**63), (0, 0, 2**32)):
        with pytest.raises(ValueError):
            CacheKeyByIdAndIndex(*args)
    with pytest.raises(TypeError):
        CacheKeyByIdAndIndex(0, "5")


def test_keys_are_hashable_values():
    index = {CacheKey(1, 2): "a", BlocksCacheKey(1): "b", CacheKeyByIdAndIndex(1, 2): "c"}
    assert index[CacheKey(prompt_cluster_id=1, req_id=2)] == "a"
    assert index[BlocksCacheKey(cluster_id=1, model_id=0)] == "b"
    assert index[CacheKeyByIdAndIndex(1, 2, 0)] == "c"
    assert CacheKey(1, 2) != CacheKey(1, 3) and CacheKey(1, 2) != CacheKey(1, 2, 0, 5)
    assert BlocksCacheKey(1) != CacheKeyByIdAndIndex(1, 0)


def test_keys_are_immutable():
    key = CacheKey(1, 2)
    with pytest.raises(AttributeError):
        key.req_id = 3
    with pytest.raises(AttributeError):
        BlocksCacheKey(1).model_id = 3
    assert key == CacheKey(1, 2)


def test_keys_print_their_fields():
    assert repr(CacheKey(1, 2)) == f"CacheKey(cluster_id=1, req_id=2, prefix_id={NO_ID}, model_id=0)"
    assert repr(BlocksCacheKey(3)) == "BlocksCacheKey(cluster_id=3, model_id=0)"
    assert repr(CacheKeyByIdAndIndex(1, 2, 3)) == "CacheKeyByIdAndIndex(cluster_id=1, cache_id=2, batch_index=3)"


@pytest.mark.parametrize("key", [CacheKey(0, 1), CacheKey(0, NO_ID, prefix_id=1), CacheKey(0, NO_ID - 1)])
def test_check_cache_key_accepts_exactly_one_valid_id(key):
    CacheManager.check_cache_key(key)


@pytest.mark.parametrize("key", [CacheKey(0, NO_ID), CacheKey(0, 1, prefix_id=2)])
def test_check_cache_key_refuses_none_or_both(key):
    with pytest.raises(LLMException) as raised:
        CacheManager.check_cache_key(key)
    assert raised.value.status_code is LLMStatusCode.LLM_PARAM_INVALID


@pytest.mark.parametrize("key", [CacheKey(1, 2, model_id=3), BlocksCacheKey(4, 5), CacheKeyByIdAndIndex(6, 7, 8)])
def test_keys_pickle_and_copy_as_the_same_value(key):
    import copy
    import pickle
    for again in (pickle.loads(pickle.dumps(key)), copy.copy(key), copy.deepcopy(key)):
        assert again == key and type(again) is type(key) and hash(again) == hash(key)
