"""CANN's status module: LLMStatusCode under CANN's names, LLMException, Status, and the one
mapping of an engine status to CANN's LLMStatusCode (status_of).

Every value is the engine's (llm_facts.h, docs/facts.md section 2), read without building the
engine's own enum (import cost); only the names are CANN's."""
from enum import IntEnum

from .. import _desc
from .._status import LLMException

__all__ = ["LLMStatusCode", "LLMException", "Status", "status_of", "reraised", "reraising", "not_enabled"]


def qualified_name(member):
    """CANN prints LLMStatusCode.LLM_SUCCESS, not the IntEnum's number."""
    return f"{type(member).__name__}.{member.name}"


_STATUSES = _desc.enum_values("LLMStatusCode")
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
LLMStatusCode.__str__ = qualified_name


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
    """CANN's LLMStatusCode for an engine status; a code CANN's package does not name is
    LLM_FAILED, as CANN maps it."""
    try:
        return LLMStatusCode(engine_status)
    except ValueError:
        return LLMStatusCode.LLM_FAILED


def reraised(error):
    """An engine LLMException again, with CANN's status code."""
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


def not_enabled(name):
    return LLMException(f"{name} is not implemented by llmdd yet: LLM_FEATURE_NOT_ENABLED",
                        LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
