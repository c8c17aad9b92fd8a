# cython: language_level=3, boundscheck=False, wraparound=False
"""LLM-DataDist's enums and the CacheDesc value type.

The enums are built at import from the tables in llm_facts.h, so every value is written
once. CacheDesc checks Python types when a field is set (TypeError/ValueError naming the
field) and leaves the semantic rules (zero tensors, bad dims, sizeless types, placement) to
AllocateCache, which answers them with LLM_PARAM_INVALID as the C++ library does.
"""
from cpython.number cimport PyNumber_Index
from libc.stdint cimport INT32_MAX, INT32_MIN, INT64_MAX, UINT32_MAX, UINT64_MAX

from ._llm_facts cimport (
    DT_UNDEFINED,
    LLM_PARAM_INVALID,
    LLM_SUCCESS,
    LLMDD_kDevice,
    llmdd_data_type_bits,
    llmdd_data_type_row_count,
    llmdd_data_type_rows,
    llmdd_named_value,
    llmdd_placement_row_count,
    llmdd_placement_rows,
    llmdd_role_row_count,
    llmdd_role_rows,
    llmdd_status_row_count,
    llmdd_status_rows,
)

import enum

cdef enum:
    MAX_DIMS = 32  # the C++ library rejects shapes of this many dims or more (spec section 4)


cdef object _int_enum(str name, const llmdd_named_value* rows, int count):
    # Rows that repeat a value become aliases (CachePlacement.DEVICE is CachePlacement.kDevice).
    members = [(rows[i].name.decode("ascii"), rows[i].value) for i in range(count)]
    return enum.IntEnum(name, members, module="llmdd")


LLMStatusCode = _int_enum("LLMStatusCode", llmdd_status_rows, llmdd_status_row_count)
DataType = _int_enum("DataType", llmdd_data_type_rows, llmdd_data_type_row_count)
CachePlacement = _int_enum("CachePlacement", llmdd_placement_rows, llmdd_placement_row_count)
LlmRole = _int_enum("LlmRole", llmdd_role_rows, llmdd_role_row_count)
Placement = CachePlacement
LLMRole = LlmRole

# Module-level constants as in C++ (DT_FLOAT16, LLM_SUCCESS, ...).
globals().update(DataType.__members__)
globals().update(LLMStatusCode.__members__)

cdef dict _data_type_by_value = {member.value: member for member in DataType}
cdef dict _placement_by_value = {member.value: member for member in CachePlacement}

__all__ = [
    "LLMStatusCode", "DataType", "CachePlacement", "Placement", "LlmRole", "LLMRole", "CacheDesc",
    *DataType.__members__, *LLMStatusCode.__members__,
]


cdef object as_integer(object value, str field):
    """The int behind `value` (anything with __index__ but bool), or TypeError naming `field`."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{field} must be an int, not {type(value).__name__}")
    try:
        return PyNumber_Index(value)
    except TypeError:
        raise TypeError(f"{field} must be an int, not {type(value).__name__}") from None


cdef object _checked_range(object value, str field, object low, object high):
    number = as_integer(value, field)
    if not low <= number <= high:
        raise ValueError(f"{field} must be in [{low}, {high}], got {number}")
    return number


cdef class CacheDesc:
    """The description of a cache: num_tensors tensors of one shape and data type.

    Mirrors llm_datadist::CacheDesc: placement defaults to kDevice, num_tensors to 0,
    data_type to DT_UNDEFINED and shape to (); `shape` is the shape of ONE tensor.
    """

    def __cinit__(self):
        self._placement = LLMDD_kDevice
        self._data_type = DT_UNDEFINED
        self._shape = ()

    def __init__(self, num_tensors=0, shape=(), data_type=DT_UNDEFINED, placement=LLMDD_kDevice):
        self.num_tensors = num_tensors
        self.shape = shape
        self.data_type = data_type
        self.placement = placement

    @property
    def num_tensors(self):
        return self._num_tensors

    @num_tensors.setter
    def num_tensors(self, value):
        self._num_tensors = _checked_range(value, "num_tensors", 0, UINT32_MAX)

    @property
    def data_type(self):
        return _data_type_by_value.get(self._data_type, self._data_type)

    @data_type.setter
    def data_type(self, value):
        self._data_type = _checked_range(value, "data_type", INT32_MIN, INT32_MAX)

    @property
    def placement(self):
        return _placement_by_value.get(self._placement, self._placement)

    @placement.setter
    def placement(self, value):
        self._placement = _checked_range(value, "placement", 0, UINT32_MAX)

    @property
    def shape(self):
        """The shape of one tensor, as a new list (C++: std::vector<int64_t>)."""
        return list(self._shape)

    @shape.setter
    def shape(self, value):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"shape must be a list or tuple of ints, not {type(value).__name__}")
        cdef list dims = [_checked_range(item, "shape dim", -INT64_MAX - 1, INT64_MAX) for item in value]
        cdef bint positive = True
        cdef bint overflow = False
        cdef uint64_t elements = 1
        cdef int64_t dim
        for number in dims:
            dim = number
            if dim <= 0:
                positive = False
            elif not overflow:
                if elements > UINT64_MAX // <uint64_t>dim:
                    overflow = True
                else:
                    elements *= <uint64_t>dim
        self._shape = tuple(dims)
        self._ndim = len(dims)
        self._dims_positive = positive
        self._elements = elements
        self._elements_overflow = overflow

    @property
    def size(self):
        """Bytes of one tensor; ValueError when the shape or data type give it no size."""
        cdef uint64_t nbytes
        if self.tensor_bytes(&nbytes) != LLM_SUCCESS:
            raise ValueError(f"{self!r} has no valid tensor size")
        return nbytes

    cdef uint32_t tensor_bytes(self, uint64_t* nbytes) noexcept nogil:
        """LLM_SUCCESS and the bytes of one tensor, or LLM_PARAM_INVALID (spec section 4)."""
        cdef uint64_t bits = llmdd_data_type_bits(self._data_type)
        cdef uint64_t elements = self._elements
        cdef uint64_t whole_bytes
        if (self._num_tensors == 0 or self._ndim == 0 or self._ndim >= MAX_DIMS
                or not self._dims_positive or self._elements_overflow or bits == 0):
            return LLM_PARAM_INVALID
        # ceil(elements * bits / 8) without overflowing the product: whole groups of 8
        # elements take exactly `bits` bytes, the rest round up.
        if elements // 8 > <uint64_t>INT64_MAX // bits:
            return LLM_PARAM_INVALID
        whole_bytes = (elements // 8) * bits
        nbytes[0] = whole_bytes + ((elements % 8) * bits + 7) // 8
        if nbytes[0] > <uint64_t>INT64_MAX or nbytes[0] < whole_bytes:
            return LLM_PARAM_INVALID
        return LLM_SUCCESS

    cdef CacheDesc copy(self):
        cdef CacheDesc twin = CacheDesc.__new__(CacheDesc)
        twin._num_tensors = self._num_tensors
        twin._data_type = self._data_type
        twin._placement = self._placement
        twin._shape = self._shape
        twin._ndim = self._ndim
        twin._dims_positive = self._dims_positive
        twin._elements = self._elements
        twin._elements_overflow = self._elements_overflow
        return twin

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (CacheDesc, (self._num_tensors, self._shape, self._data_type, self._placement))

    def __eq__(self, other):
        if not isinstance(other, CacheDesc):
            return NotImplemented
        cdef CacheDesc that = other
        return (self._num_tensors == that._num_tensors and self._data_type == that._data_type
                and self._placement == that._placement and self._shape == that._shape)

    __hash__ = None  # mutable, like the C++ struct

    def __repr__(self):
        return (f"CacheDesc(num_tensors={self._num_tensors}, shape={list(self._shape)}, "
                f"data_type={_enum_text(self.data_type)}, placement={_enum_text(self.placement)})")


cdef str _enum_text(object value):
    """`DataType.DT_FLOAT16` for a member, the bare number for a value no member has."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return str(value)
