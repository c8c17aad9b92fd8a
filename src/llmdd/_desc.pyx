# cython: language_level=3, boundscheck=False, wraparound=False
"""LLM-DataDist's enums and the CacheDesc value type.

The enums are built at import from the tables in llm_facts.h, so every value is written
once. CacheDesc checks Python types when a field is set (TypeError/ValueError naming the
field) and leaves the semantic rules (zero tensors, bad dims, sizeless types, placement) to
AllocateCache, which answers them with LLM_PARAM_INVALID as the C++ library does.
"""
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.number cimport PyNumber_Index
from cpython.list cimport PyList_AsTuple
from libc.stdint cimport INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, UINT32_MAX, UINT64_MAX

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


cdef int64_t _checked_int64(object value, str field, int64_t low, int64_t high) except? -1:
    """`value` as a C integer in [low, high]: TypeError for a non-integer, ValueError outside."""
    cdef int overflow = 0
    cdef long long number = PyLong_AsLongLongAndOverflow(as_integer(value, field), &overflow)
    if overflow == 0 and low <= number <= high:
        return number
    raise ValueError(f"{field} must be in [{low}, {high}], got {as_integer(value, field)}")


cdef class CacheDesc:
    """The description of a cache: num_tensors tensors of one shape and data type.

    Mirrors llm_datadist::CacheDesc: placement defaults to kDevice, num_tensors to 0,
    data_type to DT_UNDEFINED and shape to (); `shape` is the shape of ONE tensor.
    """

    def __cinit__(self):
        self.fields.placement = LLMDD_kDevice
        self.fields.data_type = DT_UNDEFINED
        self.fields.dims_positive = True
        self.fields.elements = 1
        self._shape = ()

    def __init__(self, num_tensors=0, shape=(), data_type=DT_UNDEFINED, placement=LLMDD_kDevice):
        self.set_num_tensors(num_tensors)
        self.set_shape(shape)
        self.set_data_type(data_type)
        self.set_placement(placement)

    cdef int set_num_tensors(self, object value) except -1:
        self.fields.num_tensors = <uint32_t>_checked_int64(value, "num_tensors", 0, UINT32_MAX)

    cdef int set_data_type(self, object value) except -1:
        self.fields.data_type = _checked_int64(value, "data_type", INT32_MIN, INT32_MAX)

    cdef int set_placement(self, object value) except -1:
        self.fields.placement = <uint32_t>_checked_int64(value, "placement", 0, UINT32_MAX)

    cdef int set_shape(self, object value) except -1:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"shape must be a list or tuple of ints, not {type(value).__name__}")
        # An exact tuple of what the list holds (a subclass's __len__ or __iter__ may lie),
        # and ndim counted from that tuple: the dims stored are the dims counted.
        cdef tuple shape
        if type(value) is tuple:
            shape = value
        elif isinstance(value, list):
            shape = PyList_AsTuple(value)
        else:
            shape = PyList_AsTuple(list(value))
        cdef Py_ssize_t ndim = len(shape)
        cdef bint positive = True
        cdef bint overflow = False
        cdef uint64_t elements = 1
        cdef int64_t dim
        for item in shape:
            if type(item) is not int:
                # An __index__ type (numpy.int64, say): keep plain ints, like C++ keeps int64_t.
                shape = tuple([as_integer(dim_value, "shape dim") for dim_value in shape])
                break
        for item in shape:
            dim = _checked_int64(item, "shape dim", INT64_MIN, INT64_MAX)
            if dim <= 0:
                positive = False
            elif not overflow:
                if elements > UINT64_MAX // <uint64_t>dim:
                    overflow = True
                else:
                    elements *= <uint64_t>dim
        self._shape = shape
        self.fields.ndim = ndim
        self.fields.dims_positive = positive
        self.fields.elements = elements
        self.fields.elements_overflow = overflow

    @property
    def num_tensors(self):
        return self.fields.num_tensors

    @num_tensors.setter
    def num_tensors(self, value):
        self.set_num_tensors(value)

    @property
    def data_type(self):
        return _data_type_by_value.get(self.fields.data_type, self.fields.data_type)

    @data_type.setter
    def data_type(self, value):
        self.set_data_type(value)

    @property
    def placement(self):
        return _placement_by_value.get(self.fields.placement, self.fields.placement)

    @placement.setter
    def placement(self, value):
        self.set_placement(value)

    @property
    def shape(self):
        """The shape of one tensor, as a new list (C++: std::vector<int64_t>)."""
        return list(self._shape)

    @shape.setter
    def shape(self, value):
        self.set_shape(value)

    @property
    def size(self):
        """Bytes of one tensor; ValueError when the shape or data type give it no size."""
        cdef uint64_t nbytes
        if tensor_bytes(&self.fields, &nbytes) != LLM_SUCCESS:
            raise ValueError(f"{self!r} has no valid tensor size")
        return nbytes

    @staticmethod
    cdef CacheDesc from_fields(const DescFields* fields, tuple shape):
        cdef CacheDesc desc = CacheDesc.__new__(CacheDesc)
        desc.fields = fields[0]
        desc._shape = shape
        return desc

    def __copy__(self):
        return CacheDesc.from_fields(&self.fields, self._shape)

    def __deepcopy__(self, memo):
        return CacheDesc.from_fields(&self.fields, self._shape)

    def __reduce__(self):
        return (CacheDesc, (self.fields.num_tensors, self._shape, self.fields.data_type, self.fields.placement))

    def __eq__(self, other):
        if not isinstance(other, CacheDesc):
            return NotImplemented
        cdef CacheDesc that = other
        return (self.fields.num_tensors == that.fields.num_tensors and self.fields.data_type == that.fields.data_type
                and self.fields.placement == that.fields.placement and self._shape == that._shape)

    __hash__ = None  # mutable, like the C++ struct

    def __repr__(self):
        return (f"CacheDesc(num_tensors={self.fields.num_tensors}, shape={list(self._shape)}, "
                f"data_type={_enum_text(self.data_type)}, placement={_enum_text(self.placement)})")


cdef str _enum_text(object value):
    """`DataType.DT_FLOAT16` for a member, the bare number for a value no member has."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return str(value)


cdef uint32_t tensor_bytes(const DescFields* fields, uint64_t* nbytes) noexcept nogil:
    """LLM_SUCCESS and the bytes of one tensor, or LLM_PARAM_INVALID (spec section 4)."""
    cdef uint64_t bits = llmdd_data_type_bits(fields.data_type)
    cdef uint64_t elements = fields.elements
    cdef uint64_t whole_bytes
    if (fields.num_tensors == 0 or fields.ndim == 0 or fields.ndim >= MAX_DIMS
            or not fields.dims_positive or fields.elements_overflow or bits == 0):
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
