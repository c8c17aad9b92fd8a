"""The drop-in's argument checks: llmdd's one dialect (llmdd._checks) with CANN's status for a
broken rule, and the few checks of CANN's own making."""
from ..._checks import check_int, check_ints, check_sequence, check_str_dict, check_type
from ..._checks import require as _require
from ..status import LLMStatusCode

__all__ = ["check_int", "check_ints", "check_sequence", "check_str_dict", "check_type", "require", "check_not_none",
           "checked_property", "check_layer_range"]


def require(condition, message, status=LLMStatusCode.LLM_PARAM_INVALID):
    _require(condition, message, status)


def check_not_none(name, value, attribute):
    """CANN's type checks let None through to the first attribute read, so the documented error of
    a None argument is AttributeError (docs: register_cache, register_blocks_cache,
    Cache.create_cpu_cache, swap_blocks); `attribute` is the one CANN reads first."""
    if value is None:
        raise AttributeError(f"{name} is None: 'NoneType' object has no attribute '{attribute}'")
    return value


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
