"""CacheDesc: C++ defaults, Python type checks at assignment, and tensor sizes."""
import copy
import math
import pickle

import pytest
from support.caches import SIZED_TYPES

import llmdd
from llmdd import CacheDesc


def test_defaults_are_the_cpp_defaults():
    desc = CacheDesc()
    assert desc.num_tensors == 0
    assert desc.shape == []
    assert desc.data_type is llmdd.DT_UNDEFINED
    assert desc.placement is llmdd.CachePlacement.kDevice


def test_positional_order_is_the_python_packages():
    desc = CacheDesc(80, [1, 256], llmdd.DT_FLOAT16, llmdd.CachePlacement.kHost)
    assert (desc.num_tensors, desc.shape, desc.data_type, desc.placement) == (
        80, [1, 256], llmdd.DT_FLOAT16, llmdd.CachePlacement.kHost)


def test_keywords():
    desc = CacheDesc(shape=(2, 3), data_type=llmdd.DT_INT8, num_tensors=4)
    assert (desc.num_tensors, desc.shape, desc.data_type) == (4, [2, 3], llmdd.DT_INT8)


def test_fields_are_assignable_like_the_cpp_struct():
    desc = CacheDesc()
    desc.num_tensors = 80
    desc.data_type = llmdd.DT_FLOAT16
    desc.shape = [1, 256]
    desc.placement = llmdd.CachePlacement.kHost
    assert desc == CacheDesc(80, [1, 256], llmdd.DT_FLOAT16, llmdd.CachePlacement.kHost)


def test_shape_is_returned_as_a_copy():
    desc = CacheDesc(1, [4, 4], llmdd.DT_FLOAT)
    desc.shape.append(5)
    assert desc.shape == [4, 4]


@pytest.mark.parametrize("field,value", [
    ("num_tensors", "80"), ("num_tensors", 1.0), ("num_tensors", None), ("num_tensors", True),
    ("data_type", "DT_FLOAT16"), ("data_type", 1.5), ("data_type", None),
    ("placement", "device"), ("placement", None),
    ("shape", None), ("shape", "1,256"), ("shape", 256), ("shape", [1.0, 256]), ("shape", [1, "256"]),
    ("shape", [None]), ("shape", [True]), ("shape", {1: 2}),
])
def test_wrong_python_types_raise_type_error_naming_the_field(field, value):
    desc = CacheDesc()
    with pytest.raises(TypeError, match=field.split("_")[0]):
        setattr(desc, field, value)
    with pytest.raises(TypeError):
        CacheDesc(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("num_tensors", -1), ("num_tensors", 2**32), ("data_type", 2**31), ("data_type", -2**31 - 1),
    ("placement", -1), ("placement", 2**32), ("shape", [2**63]), ("shape", [1, -2**63 - 1]),
])
def test_values_outside_their_c_range_raise_value_error(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        setattr(CacheDesc(), field, value)


def test_a_failed_assignment_leaves_the_field_unchanged():
    desc = CacheDesc(3, [2, 2], llmdd.DT_FLOAT)
    for field, value in [("num_tensors", -1), ("shape", [1, "x"]), ("data_type", None)]:
        with pytest.raises((TypeError, ValueError)):
            setattr(desc, field, value)
    assert desc == CacheDesc(3, [2, 2], llmdd.DT_FLOAT)


def test_index_types_are_accepted():
    class Index:
        def __index__(self):
            return 7

    desc = CacheDesc(Index(), [Index()], llmdd.DT_INT8)
    assert desc.num_tensors == 7 and desc.shape == [7] and desc.size == 7


def test_semantic_values_are_accepted_at_assignment():
    # AllocateCache answers these with LLM_PARAM_INVALID, as in C++ (test_allocate.py).
    desc = CacheDesc(0, [0, -1], 5, 7)
    assert desc.data_type == 5 and desc.placement == 7 and desc.shape == [0, -1]


@pytest.mark.parametrize("data_type,bits", sorted(SIZED_TYPES.items()))
def test_size_is_bytes_of_one_tensor(data_type, bits):
    desc = CacheDesc(3, [3, 5], data_type)
    assert desc.size == math.ceil(15 * bits / 8)


def test_sub_byte_types_round_up():
    assert CacheDesc(1, [3], llmdd.DT_INT4).size == 2
    assert CacheDesc(1, [9], llmdd.DT_UINT1).size == 2
    assert CacheDesc(1, [5], llmdd.DT_FLOAT6_E3M2).size == 4
    assert CacheDesc(1, [8], llmdd.DT_UINT1).size == 1


def test_size_of_the_seed_tensor():
    assert CacheDesc(80, [1, 256], llmdd.DT_FLOAT16).size == 512


@pytest.mark.parametrize("desc", [
    CacheDesc(1, [], llmdd.DT_FLOAT16),
    CacheDesc(1, [0], llmdd.DT_FLOAT16),
    CacheDesc(1, [4], llmdd.DT_UNDEFINED),
    CacheDesc(1, [4], llmdd.DT_RESOURCE),
    CacheDesc(1, [2**62, 4], llmdd.DT_FLOAT),
    CacheDesc(1, [2**62], llmdd.DT_FLOAT16),
])
def test_size_raises_value_error_when_there_is_none(desc):
    with pytest.raises(ValueError):
        desc.size


def test_largest_tensor_that_fits_int64():
    assert CacheDesc(1, [2**62 - 1], llmdd.DT_INT16).size == 2**63 - 2
    with pytest.raises(ValueError):
        CacheDesc(1, [2**62], llmdd.DT_INT16).size


def test_equality_copy_and_pickle():
    desc = CacheDesc(80, [1, 256], llmdd.DT_FLOAT16)
    for twin in (copy.copy(desc), copy.deepcopy(desc), pickle.loads(pickle.dumps(desc))):
        assert twin == desc and twin is not desc
    assert desc != CacheDesc(80, [1, 256], llmdd.DT_BF16)
    assert desc != "not a desc"
    with pytest.raises(TypeError):
        hash(desc)


def test_repr_names_the_members():
    text = repr(CacheDesc(80, [1, 256], llmdd.DT_FLOAT16))
    assert text == ("CacheDesc(num_tensors=80, shape=[1, 256], data_type=DataType.DT_FLOAT16, "
                    "placement=CachePlacement.kDevice)")
    assert "data_type=99" in repr(CacheDesc(1, [1], 99))
