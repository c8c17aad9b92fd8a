"""Argument checks, one dialect for every layer (numpy.random's _common): a wrong Python type is
TypeError, an int outside its C type is ValueError, and a broken rule of LLM-DataDist is
LLMException with the rule's status (require). Bounds are _limits' (low, high) pairs."""
import operator

from ._status import LLMException


def _type_names(types):
    return " or ".join(kind.__name__ for kind in types) if isinstance(types, tuple) else types.__name__


def require(condition, message, status):
    """LLMException(message, status) unless `condition` holds."""
    if not condition:
        raise LLMException(message, status)


def check_type(name, value, types):
    if not isinstance(value, types):
        raise TypeError(f"{name} only supports {_type_names(types)}, got {type(value).__name__}")
    return value


def check_int(name, value, bounds=None):
    """A Python int (not a bool), within bounds when given (CANN's Python checks), returned as an
    exact int: kept in keys and configs, an int subclass's __hash__ or __eq__ would run later,
    inside the transfer layer's locks."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} only supports int, got {type(value).__name__}")
        value = operator.index(value)   # an int subclass's value, no method of its own called
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name}={value} is outside [{bounds[0]}, {bounds[1]}]")
    return value


def to_int(name, value, bounds):
    """A value of a C++ integer type: anything with __index__ but a bool, as a plain int within
    bounds (the C++ API's conversion, so numpy integers pass)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    return check_int(name, operator.index(value), bounds)


def check_sequence(name, values, item_types, containers=(list, tuple)):
    """A list or tuple whose items are all item_types (a bool is no number)."""
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


def require_int(name, value, bounds, status):
    """A Python int within bounds, else LLMException(status): for a layer whose callers converted
    their arguments already, so that a bad one is a broken rule, not a Python error."""
    require(type(value) is int and bounds[0] <= value <= bounds[1],
            f"{name} {value!r} is not an int in [{bounds[0]}, {bounds[1]}]", status)
