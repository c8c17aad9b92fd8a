"""CANN's data_type module: DataType, and CANN's numpy dtype tables (built, and numpy imported,
on first use)."""
from enum import Enum

from .. import _desc

_DATA_TYPES = _desc.enum_values("DataType")

# CANN's DataType is a plain Enum over these 14 of the engine's types: no int comparisons.
DataType = Enum("DataType", [(name, _DATA_TYPES[name]) for name in (
    "DT_FLOAT", "DT_FLOAT16", "DT_BF16", "DT_INT8", "DT_INT16", "DT_UINT16", "DT_UINT8", "DT_INT32", "DT_INT64",
    "DT_UINT32", "DT_UINT64", "DT_BOOL", "DT_DOUBLE", "DT_STRING")], module="llmdd.llm_datadist")

NUMPY_TABLES = ("dtype_to_np_dtype", "valid_np_dtypes", "np_dtype_to_dtype")


def __getattr__(name):
    if name not in NUMPY_TABLES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import numpy

    # CANN's own table: BF16 shows as numpy.float16 (numpy has no bfloat16), and so has no way back.
    dtype_to_np_dtype = {
        DataType.DT_FLOAT: numpy.float32, DataType.DT_FLOAT16: numpy.float16, DataType.DT_BF16: numpy.float16,
        DataType.DT_INT8: numpy.int8, DataType.DT_INT16: numpy.int16, DataType.DT_UINT16: numpy.uint16,
        DataType.DT_UINT8: numpy.uint8, DataType.DT_INT32: numpy.int32, DataType.DT_INT64: numpy.int64,
        DataType.DT_UINT32: numpy.uint32, DataType.DT_UINT64: numpy.uint64, DataType.DT_BOOL: numpy.bool_,
        DataType.DT_DOUBLE: numpy.double, DataType.DT_STRING: numpy.bytes_,
    }
    globals().update(
        dtype_to_np_dtype=dtype_to_np_dtype,
        valid_np_dtypes=list(dtype_to_np_dtype.values()),
        np_dtype_to_dtype={numpy.dtype(np_type): data_type for data_type, np_type in dtype_to_np_dtype.items()
                           if data_type is not DataType.DT_BF16},
    )
    return globals()[name]
