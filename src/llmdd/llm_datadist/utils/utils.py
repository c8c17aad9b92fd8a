"""The drop-in's argument checks: llmdd's one dialect (llmdd._checks) with CANN's status for a
broken rule, and the few checks of CANN's own making."""
from ..._checks import check_int, check_ints, check_sequence, check_str_dict, check_type
from ..._checks import require as _require
from ..._limits import INT32, INT64, UINT8, UINT16, UINT32, UINT64
from ..status import LLMStatusCode

__all__ = ["check_int", "check_ints", "check_sequence", "check_str_dict", "check_type", "require", "check_not_none",
           "checked_property", "check_layer_range", "check_uint8", "check_uint16", "check_int32", "check_uint32",
           "check_int64", "check_uint64", "check_list_int32", "check_list_int64", "check_list_uint64"]


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


def _c_integer_check(bounds):
    def check(arg_name, arg_value):
        check_int(arg_name, arg_value, bounds)
    return check


def _c_integer_list_check(bounds):
    def check(arg_name, arg_value):
        for value in arg_value:
            check_int(arg_name, value, bounds)
    return check


# CANN's utils.utils names for its integer checks (its clients and tests import them): TypeError for
# a value that is not an int, ValueError for one outside the C type.
check_uint8, check_uint16 = _c_integer_check(UINT8), _c_integer_check(UINT16)
check_int32, check_uint32 = _c_integer_check(INT32), _c_integer_check(UINT32)
check_int64, check_uint64 = _c_integer_check(INT64), _c_integer_check(UINT64)
check_list_int32, check_list_int64 = _c_integer_list_check(INT32), _c_integer_list_check(INT64)
check_list_uint64 = _c_integer_list_check(UINT64)
