"""Exact numeric values of LLM-DataDist's status codes, data types and enums (docs/facts.md sections 1-3)."""
import ast
import pathlib

import pytest

import llmdd

STATUS_CODES = {
    "LLM_SUCCESS": 0, "LLM_FAILED": 0xFFFFFFFF,
    "LLM_WAIT_PROC_TIMEOUT": 1, "LLM_KV_CACHE_NOT_EXIST": 2, "LLM_REPEAT_REQUEST": 3,
    "LLM_REQUEST_ALREADY_COMPLETED": 4, "LLM_PARAM_INVALID": 5, "LLM_ENGINE_FINALIZED": 6,
    "LLM_NOT_YET_LINK": 7, "LLM_ALREADY_LINK": 8, "LLM_LINK_FAILED": 9, "LLM_UNLINK_FAILED": 10,
    "LLM_NOTIFY_PROMPT_UNLINK_FAILED": 11, "LLM_CLUSTER_NUM_EXCEED_LIMIT": 12, "LLM_PROCESSING_LINK": 13,
    "LLM_DEVICE_OUT_OF_MEMORY": 14, "LLM_PREFIX_ALREADY_EXIST": 15, "LLM_PREFIX_NOT_EXIST": 16,
    "LLM_SEQ_LEN_OVER_LIMIT": 17, "LLM_NO_FREE_BLOCK": 18, "LLM_BLOCKS_OUT_OF_MEMORY": 19,
    "LLM_CACHE_INCOMPATIBLE": 20, "LLM_CACHE_KEY_ALREADY_EXIST": 21, "LLM_COPY_CACHE_FAILED": 22,
    "LLM_CACHE_ID_ALREADY_EXIST": 23, "LLM_EXIST_LINK": 24, "LLM_FEATURE_NOT_ENABLED": 25,
    "LLM_TIMEOUT": 26, "LLM_LINK_BUSY": 27, "LLM_OUT_OF_MEMORY": 28,
}

DATA_TYPES = {
    "DT_FLOAT": 0, "DT_FLOAT16": 1, "DT_INT8": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 6,
    "DT_UINT16": 7, "DT_UINT32": 8, "DT_INT64": 9, "DT_UINT64": 10, "DT_DOUBLE": 11, "DT_BOOL": 12,
    "DT_STRING": 13, "DT_DUAL_SUB_INT8": 14, "DT_DUAL_SUB_UINT8": 15, "DT_COMPLEX64": 16,
    "DT_COMPLEX128": 17, "DT_QINT8": 18, "DT_QINT16": 19, "DT_QINT32": 20, "DT_QUINT8": 21,
    "DT_QUINT16": 22, "DT_RESOURCE": 23, "DT_STRING_REF": 24, "DT_DUAL": 25, "DT_VARIANT": 26,
    "DT_BF16": 27, "DT_UNDEFINED": 28, "DT_INT4": 29, "DT_UINT1": 30, "DT_INT2": 31, "DT_UINT2": 32,
    "DT_COMPLEX32": 33, "DT_HIFLOAT8": 34, "DT_FLOAT8_E5M2": 35, "DT_FLOAT8_E4M3FN": 36,
    "DT_FLOAT8_E8M0": 37, "DT_FLOAT6_E3M2": 38, "DT_FLOAT6_E2M3": 39, "DT_FLOAT4_E2M1": 40,
    "DT_FLOAT4_E1M2": 41, "DT_HIFLOAT4": 42,
}


def expected_status_value(name):
    value = STATUS_CODES[name]
    return value if name in ("LLM_SUCCESS", "LLM_FAILED") else 0x5010B000 | value


@pytest.mark.parametrize("name", STATUS_CODES)
def test_status_code_values(name):
    assert llmdd.LLMStatusCode[name] == expected_status_value(name)
    assert getattr(llmdd, name) is llmdd.LLMStatusCode[name]


def test_spot_values_from_the_spec():
    assert llmdd.LLM_PARAM_INVALID == 1343270917
    assert llmdd.LLM_DEVICE_OUT_OF_MEMORY == 1343270926 == 0x5010B00E


def test_python_package_only_status_codes():
    assert llmdd.LLMStatusCode.LLM_DEVICE_MEM_ERROR == 507053
    assert llmdd.LLMStatusCode.LLM_SUSPECT_REMOTE_ERROR == 507057
    assert llmdd.LLMStatusCode.LLM_UNKNOWN_ERROR == -1


def test_status_enum_has_nothing_else():
    expected = set(STATUS_CODES) | {"LLM_DEVICE_MEM_ERROR", "LLM_SUSPECT_REMOTE_ERROR", "LLM_UNKNOWN_ERROR"}
    assert set(llmdd.LLMStatusCode.__members__) == expected


@pytest.mark.parametrize("name", DATA_TYPES)
def test_data_type_values(name):
    assert llmdd.DataType[name] == DATA_TYPES[name]
    assert getattr(llmdd, name) is llmdd.DataType[name]


def test_data_type_enum_has_nothing_else():
    assert set(llmdd.DataType.__members__) == set(DATA_TYPES)


def test_placement_values_and_aliases():
    assert llmdd.CachePlacement.kHost == 0 and llmdd.CachePlacement.kDevice == 1
    assert llmdd.CachePlacement.DEVICE is llmdd.CachePlacement.kDevice
    assert llmdd.CachePlacement.HOST is llmdd.CachePlacement.kHost
    assert llmdd.Placement is llmdd.CachePlacement


def test_role_values_and_aliases():
    assert (llmdd.LlmRole.kPrompt, llmdd.LlmRole.kDecoder, llmdd.LlmRole.kMix) == (1, 2, 3)
    assert llmdd.LlmRole.PROMPT is llmdd.LlmRole.kPrompt
    assert llmdd.LlmRole.DECODER is llmdd.LlmRole.kDecoder
    assert llmdd.LlmRole.MIX is llmdd.LlmRole.kMix
    assert llmdd.LLMRole is llmdd.LlmRole


def stub_enum_values(class_name):
    """The member values a .pyi stub gives an enum class."""
    stub = pathlib.Path(llmdd.__file__).with_name("_desc.pyi")
    tree = ast.parse(stub.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                statement.targets[0].id: ast.literal_eval(statement.value)
                for statement in node.body
                if isinstance(statement, ast.Assign)
            }
    raise AssertionError(f"{class_name} is not in the stub")


@pytest.mark.parametrize("enum_name", ["LLMStatusCode", "DataType", "CachePlacement", "LlmRole"])
def test_type_stub_matches_the_runtime_enums(enum_name):
    runtime = {name: int(member) for name, member in getattr(llmdd, enum_name).__members__.items()}
    assert stub_enum_values(enum_name) == runtime
