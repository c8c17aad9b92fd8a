"""The engine's statuses, written once: LLMException and the one mapping of a status value to its
LLMStatusCode member (the values and names are llm_facts.h's, built into enums by _desc).

The enum is built on first use, not at import: `import llmdd` builds none (bench/RESULTS.md, "Import").
"""
from . import _desc


def status_member(code):
    """The LLMStatusCode member of a plain int status; anything else (a member of the drop-in's
    own LLMStatusCode, say) and a value no member has, as it is."""
    if type(code) is int:
        return _desc.LLMStatusCode._value2member_map_.get(code, code)
    return code


def engine_status(code):
    """The LLMStatusCode member of a status value; LLM_FAILED for a value that names none (a
    peer's status on the wire, say)."""
    member = _desc.LLMStatusCode._value2member_map_.get(int(code))
    return _desc.LLMStatusCode.LLM_FAILED if member is None else member


class LLMException(RuntimeError):
    """A call of the Pythonic layer failed; `status_code` is its LLMStatusCode.

    Takes CANN's form, LLMException(*args, status_code=LLM_SUCCESS), and llmdd's
    LLMException(message, status_code). Pickles and copies with its message and status, so
    that an engine error raised in a worker process reaches the parent intact."""

    def __init__(self, *args, status_code=None):
        if status_code is None and len(args) == 2 and isinstance(args[1], int) and not isinstance(args[1], bool):
            args, status_code = args[:1], args[1]
        super().__init__(*args)
        self.status_code = _desc.LLMStatusCode.LLM_SUCCESS if status_code is None else status_member(status_code)

    def __reduce__(self):
        return (type(self), self.args, {"status_code": self.status_code})
