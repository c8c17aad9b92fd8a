"""The drop-in's names: CANN's enums (their own classes, CANN's member names and printing, the
engine's values), the exported types, the numpy tables on demand, and a light import."""
import enum
import pickle
import subprocess
import sys

import pytest

import llmdd
import llmdd.llm_datadist as llm_datadist
from llmdd.llm_datadist import DataType, LLMException, LLMRole, LLMStatusCode, Placement, Status

CANN_EXPORTS = (
    "LLMClusterInfo", "LLMStatusCode", "LLMException", "LLMRole", "LlmConfig", "LLMConfig", "DataType", "Status",
    "CacheDesc", "CacheKey", "CacheKeyByIdAndIndex", "KvCache", "Cache", "BlocksCacheKey", "LLMDataDist",
    "Placement", "RegisterMemStatus", "LayerSynchronizer", "TransferConfig", "CacheTask",
    "TransferWithCacheKeyConfig", "Memtype", "MemInfo", "KvCacheManager",
)


def test_every_name_cann_exports_is_exported():
    assert set(CANN_EXPORTS) <= set(llm_datadist.__all__)
    for name in llm_datadist.__all__:
        assert getattr(llm_datadist, name) is not None


def test_v2_list_names_cann_v2_packages_names_for_its_tests_to_bind():
    # CANN's __init__.py: v2_list, which its tests (test_cache_manager.py, test_remote_cache_accessible.py)
    # bind with `for item in v2_list: globals()[item] = getattr(llm_datadist, item)`.
    from llmdd.llm_datadist import v2_list
    assert sorted(v2_list) == sorted(name for name in CANN_EXPORTS if name != "KvCacheManager")
    for name in v2_list:
        assert getattr(llm_datadist, name) is not None


# CANN's modules and the names each defines (hicann/hixl src/python/llm_datadist/llm_datadist).
CANN_MODULES = {
    "status": ("LLMStatusCode", "LLMException", "Status"),
    "configs": ("LLMClusterInfo", "LLMRole", "LlmConfig"),
    "data_type": ("DataType",),
    "v2.llm_types": ("CacheDesc", "CacheKey", "CacheKeyByIdAndIndex", "KvCache", "Cache", "BlocksCacheKey",
                     "Placement", "RegisterMemStatus", "LayerSynchronizer", "TransferConfig", "CacheTask",
                     "TransferWithCacheKeyConfig", "Memtype", "MemInfo"),
    "v2.cache_manager": ("CacheManager",),
    "v2.llm_datadist": ("LLMDataDist",),
}


@pytest.mark.parametrize("module", sorted(CANN_MODULES))
def test_cann_submodules_give_their_names_as_the_package_does(module):
    import importlib
    submodule = importlib.import_module(f"llmdd.llm_datadist.{module}")
    for name in CANN_MODULES[module]:
        assert getattr(submodule, name) is getattr(llm_datadist, name)


def test_the_exception_is_llmdds():
    assert LLMException is llmdd.LLMException and issubclass(LLMException, RuntimeError)


@pytest.mark.parametrize("enum_type,member,name,text,value", [
    (LLMRole, LLMRole.PROMPT, "PROMPT", "LLMRole.PROMPT", 1),
    (LLMRole, LLMRole.DECODER, "DECODER", "LLMRole.DECODER", 2),
    (LLMRole, LLMRole.MIX, "MIX", "LLMRole.MIX", 3),
    (Placement, Placement.HOST, "HOST", "Placement.HOST", 0),
    (Placement, Placement.DEVICE, "DEVICE", "Placement.DEVICE", 1),
])
def test_roles_and_placements_print_cann_names(enum_type, member, name, text, value):
    assert (member.name, str(member), f"{member}", member.value) == (name, text, text, value)
    assert enum_type is not llmdd.LlmRole and enum_type is not llmdd.CachePlacement
    assert member == value


def test_the_engines_enums_keep_their_cpp_names():
    assert llmdd.LlmRole.kPrompt.name == "kPrompt" and llmdd.CachePlacement.kDevice.name == "kDevice"


def test_data_type_is_a_plain_enum_of_cann_members_with_engine_values():
    assert not issubclass(DataType, int) and issubclass(DataType, enum.Enum)
    assert DataType.DT_FLOAT16 != 1 and DataType.DT_FLOAT16.value == llmdd.DT_FLOAT16
    assert [member.name for member in DataType] == [
        "DT_FLOAT", "DT_FLOAT16", "DT_BF16", "DT_INT8", "DT_INT16", "DT_UINT16", "DT_UINT8", "DT_INT32", "DT_INT64",
        "DT_UINT32", "DT_UINT64", "DT_BOOL", "DT_DOUBLE", "DT_STRING"]
    for member in DataType:
        assert member.value == llmdd.DataType[member.name].value
    assert str(DataType.DT_BF16) == "DataType.DT_BF16"


def test_status_codes_use_cann_spellings_and_engine_values():
    assert LLMStatusCode.LLM_WAIT_PROCESS_TIMEOUT == llmdd.LLM_WAIT_PROC_TIMEOUT
    assert LLMStatusCode.LLM_SEQ_LENOVERLIMIT == llmdd.LLM_SEQ_LEN_OVER_LIMIT
    assert LLMStatusCode.LLM_PARAM_INVALID == 0x5010B005 and LLMStatusCode.LLM_FAILED == 0xFFFFFFFF
    assert (LLMStatusCode.LLM_DEVICE_MEM_ERROR, LLMStatusCode.LLM_UNKNOWN_ERROR) == (507053, -1)
    assert str(LLMStatusCode.LLM_SUCCESS) == "LLMStatusCode.LLM_SUCCESS"
    assert "LLM_CACHE_KEY_ALREADY_EXIST" not in LLMStatusCode.__members__  # not in CANN's Python package
    assert len(LLMStatusCode) == 29


def test_status_says_whether_it_is_ok():
    assert Status(LLMStatusCode.LLM_SUCCESS).is_ok()
    status = Status(LLMStatusCode.LLM_TIMEOUT)
    assert not status.is_ok() and status.status_code is LLMStatusCode.LLM_TIMEOUT


def test_enum_members_pickle_as_themselves():
    for member in (LLMRole.MIX, Placement.HOST, DataType.DT_INT8, LLMStatusCode.LLM_TIMEOUT):
        assert pickle.loads(pickle.dumps(member)) is member


def test_numpy_tables_come_on_first_use():
    import numpy

    assert llm_datadist.dtype_to_np_dtype[DataType.DT_FLOAT16] is numpy.float16
    assert llm_datadist.dtype_to_np_dtype[DataType.DT_BF16] is numpy.float16  # CANN's stand-in: numpy has no bf16
    assert len(llm_datadist.valid_np_dtypes) == 14
    assert llm_datadist.np_dtype_to_dtype[numpy.dtype(numpy.int64)] is DataType.DT_INT64
    assert DataType.DT_BF16 not in llm_datadist.np_dtype_to_dtype.values()


def test_v1_only_tensor_types_are_an_import_error():
    for name in ("Tensor", "TensorDesc"):
        with pytest.raises(ImportError, match="v1"):
            getattr(llm_datadist, name)
    with pytest.raises(AttributeError, match="has no attribute"):
        llm_datadist.NonExistentAttr


def test_import_of_the_drop_in_adds_nothing_but_enum_to_llmdd():
    # Compared with llmdd and enum imported first: an editable install's loader imports json
    # for itself, and llmdd builds its enums (and imports enum) only on first use. atexit, built
    # into the interpreter, registers the drop-in's finalization at exit, as CANN's package does.
    code = ("import sys, enum, atexit, llmdd\n"
            "before = set(sys.modules)\n"
            "import llmdd.llm_datadist\n"
            "print(sorted(name for name in set(sys.modules) - before if not name.startswith('llmdd.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_import_llmdd_does_not_import_the_drop_in():
    code = "import sys, llmdd\nprint([name for name in sys.modules if 'dropin' in name or 'llm_datadist' in name])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


INTEGER_CHECKS = {   # CANN's utils.utils integer checks and the C type each one stands for
    "check_uint8": (0, 2**8 - 1), "check_uint16": (0, 2**16 - 1), "check_int32": (-2**31, 2**31 - 1),
    "check_uint32": (0, 2**32 - 1), "check_int64": (-2**63, 2**63 - 1), "check_uint64": (0, 2**64 - 1),
}


@pytest.mark.parametrize("name", INTEGER_CHECKS)
def test_utils_has_canns_integer_checks_with_its_errors(name):
    from llmdd.llm_datadist.utils import utils
    check, (low, high) = getattr(utils, name), INTEGER_CHECKS[name]
    check("value", low)
    check("value", high)
    for outside in (low - 1, high + 1):
        with pytest.raises(ValueError):
            check("value", outside)
    with pytest.raises(TypeError):
        check("value", "1")


def test_utils_list_checks_check_every_item():
    from llmdd.llm_datadist.utils.utils import check_list_int32, check_list_int64, check_list_uint64
    check_list_int32("ids", [0, -1, 2**31 - 1])
    with pytest.raises(ValueError):
        check_list_int32("ids", [0, 1, 2**64 - 1])
    with pytest.raises(ValueError):
        check_list_int64("ids", [0, 2**63])
    with pytest.raises(ValueError):
        check_list_uint64("ids", [1, -1])
