"""The drop-in's enums, status helpers and argument checks, under CANN's Python names.

The enums are the drop-in's own classes with the member names of CANN's `llm_datadist`
package (shared/spec/llm-datadist.md section 6); every value is taken from the engine's enums,
so each number is still written once (llm_facts.h). Argument checks follow CANN's split: a wrong
Python type is TypeError, an int outside its C type is ValueError, a rule of LLM-DataDist is
LLMException(LLM_PARAM_INVALID).
"""
from enum import Enum, IntEnum

from . import _desc
from ._datadist import LLMException
from ._registry import INVALID_ID  # noqa: F401 - CANN's "no id" for req_id and prefix_id, for the key types

UINT16 = (0, (1 << 16) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64 = (0, (1 << 64) - 1)


# The engine's values, read without building the engine's own enums (import cost).
_ROLES, _PLACEMENTS = _desc.enum_values("LlmRole"), _desc.enum_values("CachePlacement")
_DATA_TYPES, _STATUSES = _desc.enum_values("DataType"), _desc.enum_values("LLMStatusCode")


def _qualified_name(member):
    return f"{type(member).__name__}.{member.name}"


class LLMRole(IntEnum):
    PROMPT = _ROLES["PROMPT"]
    DECODER = _ROLES["DECODER"]
    MIX = _ROLES["MIX"]

    __str__ = _qualified_name  # CANN prints LLMRole.PROMPT, not the IntEnum's "1"


class Placement(IntEnum):
    HOST = _PLACEMENTS["HOST"]
    DEVICE = _PLACEMENTS["DEVICE"]

    __str__ = _qualified_name


# CANN's DataType is a plain Enum over these 14 of the engine's types: no int comparisons.
DataType = Enum("DataType", [(name, _DATA_TYPES[name]) for name in (
    "DT_FLOAT", "DT_FLOAT16", "DT_BF16", "DT_INT8", "DT_INT16", "DT_UINT16", "DT_UINT8", "DT_INT32", "DT_INT64",
    "DT_UINT32", "DT_UINT64", "DT_BOOL", "DT_DOUBLE", "DT_STRING")], module="llmdd.llm_datadist")

# CANN's member names; two are spelled differently from the C++ header's, which the engine keeps.
_CANN_STATUS_SPELLINGS = {"LLM_WAIT_PROCESS_TIMEOUT": "LLM_WAIT_PROC_TIMEOUT",
                          "LLM_SEQ_LENOVERLIMIT": "LLM_SEQ_LEN_OVER_LIMIT"}
LLMStatusCode = IntEnum("LLMStatusCode", [
    (name, _STATUSES[_CANN_STATUS_SPELLINGS.get(name, name)]) for name in (
        "LLM_SUCCESS", "LLM_FAILED", "LLM_PARAM_INVALID", "LLM_WAIT_PROCESS_TIMEOUT", "LLM_KV_CACHE_NOT_EXIST",
        "LLM_REPEAT_REQUEST", "LLM_REQUEST_ALREADY_COMPLETED", "LLM_ENGINE_FINALIZED", "LLM_NOT_YET_LINK",
        "LLM_ALREADY_LINK", "LLM_LINK_FAILED", "LLM_UNLINK_FAILED", "LLM_NOTIFY_PROMPT_UNLINK_FAILED",
        "LLM_CLUSTER_NUM_EXCEED_LIMIT", "LLM_PROCESSING_LINK", "LLM_DEVICE_OUT_OF_MEMORY",
        "LLM_PREFIX_ALREADY_EXIST", "LLM_PREFIX_NOT_EXIST", "LLM_SEQ_LENOVERLIMIT", "LLM_NO_FREE_BLOCK",
        "LLM_BLOCKS_OUT_OF_MEMORY", "LLM_EXIST_LINK", "LLM_FEATURE_NOT_ENABLED", "LLM_TIMEOUT", "LLM_LINK_BUSY",
        "LLM_OUT_OF_MEMORY", "LLM_DEVICE_MEM_ERROR", "LLM_SUSPECT_REMOTE_ERROR", "LLM_UNKNOWN_ERROR")],
    module="llmdd.llm_datadist")
LLMStatusCode.__str__ = _qualified_name
PARAM_INVALID = LLMStatusCode.LLM_PARAM_INVALID


class RegisterMemStatus(Enum):
    OK = 0
    PREPARING = 1
    FAILED = 2


class Memtype(Enum):
    MEM_TYPE_DEVICE = 0
    MEM_TYPE_HOST = 1


class Status:
    """A status code with is_ok()."""

    __slots__ = ("_status_code",)

    def __init__(self, status):
        self._status_code = status

    def is_ok(self):
        return self._status_code == LLMStatusCode.LLM_SUCCESS

    @property
    def status_code(self):
        return self._status_code


def status_of(engine_status):
    """The drop-in's LLMStatusCode for an engine status; a code CANN's package does not name is
    LLM_FAILED, as CANN maps it."""
    try:
        return LLMStatusCode(engine_status)
    except ValueError:
        return LLMStatusCode.LLM_FAILED


def reraised(error):
    """An engine LLMException again, with the drop-in's status code."""
    return LLMException(str(error), status_of(error.status_code))


class _Reraising:
    """`with reraising:` raises an engine LLMException of the block again as reraised() does."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, LLMException):
            raise reraised(error) from None
        return False


reraising = _Reraising()


def require(condition, message, status=PARAM_INVALID):
    if not condition:
        raise LLMException(message, status)


def not_enabled(name):
    return LLMException(f"{name} is not implemented by llmdd yet: LLM_FEATURE_NOT_ENABLED",
                        LLMStatusCode.LLM_FEATURE_NOT_ENABLED)


def _type_names(types):
    return " or ".join(kind.__name__ for kind in types) if isinstance(types, tuple) else types.__name__


def check_not_none(name, value, attribute):
    """CANN's type checks let None through to the first attribute read, so the documented error of
    a None argument is AttributeError (docs: register_cache, register_blocks_cache,
    Cache.create_cpu_cache, swap_blocks); `attribute` is the one CANN reads first."""
    if value is None:
        raise AttributeError(f"{name} is None: 'NoneType' object has no attribute '{attribute}'")
    return value


def check_type(name, value, types):
    if not isinstance(value, types):
        raise TypeError(f"{name} only supports {_type_names(types)}, got {type(value).__name__}")
    return value


def check_int(name, value, bounds=None):
    """An int (not a bool), within bounds (low, high) when given: TypeError, else ValueError."""
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} only supports int, got {type(value).__name__}")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name}={value} is outside [{bounds[0]}, {bounds[1]}]")
    return value


def check_sequence(name, values, item_types, containers=(list, tuple)):
    """A list or tuple whose items are all item_types."""
    check_type(name, values, containers)
    for item in values:
        if isinstance(item, bool) or not isinstance(item, item_types):
            raise TypeError(f"{name} only supports items of {_type_names(item_types)}, got {type(item).__name__}")
    return values


def check_ints(name, values, bounds=None, containers=(list, tuple)):
    check_sequence(name, values, int, containers)
    for value in values:
        check_int(name, value, bounds)
    return values


def check_str_dict(name, mapping):
    check_type(name, mapping, dict)
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{name} only supports str to str, got {key!r}: {value!r}")
    return mapping


def checked_property(name, check, default=None):
    """A property kept in the slot `_name`, whose setter stores check(name, value); the getter
    gives `default` while the slot holds None."""
    slot = "_" + name

    def getter(self):
        value = getattr(self, slot)
        return default if value is None else value

    def setter(self, value):
        setattr(self, slot, check(name, value))

    return property(getter, setter)


def check_layer_range(name, layer_range):
    """None, or a range of step 1 with 0 <= start < stop."""
    if layer_range is None:
        return None
    check_type(name, layer_range, range)
    require(layer_range.step == 1, f"{name} must have step 1, got {layer_range}")
    require(0 <= layer_range.start < layer_range.stop, f"{name} must have 0 <= start < stop, got {layer_range}")
    return layer_range
