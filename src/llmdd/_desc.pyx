# cython: language_level=3, boundscheck=False, wraparound=False
"""LLM-DataDist's enums and the CacheDesc value type.

The enums are built from the tables in llm_facts.h, so every value is written once, and on
first use rather than at import. CacheDesc checks Python types when a field is set
(TypeError/ValueError naming the field) and leaves the semantic rules (zero tensors, bad
dims, sizeless types, placement) to AllocateCache, which answers them with LLM_PARAM_INVALID
as the C++ library does.
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

import _thread

cdef enum:
    MAX_DIMS = 32  # the C++ library rejects shapes of this many dims or more (docs/facts.md section 4)


# The enums are built on first use, not at import: building IntEnums was three quarters of
# `import llmdd` (bench/RESULTS.md, "Import"), and a process pays for each enum only when it
# first reads one of its members. Module attributes go through __getattr__ below until then;
# Cython code uses enum_class and enum_member.
cdef tuple _ENUM_NAMES = ("LLMStatusCode", "DataType", "CachePlacement", "LlmRole")
cdef list _built_enums = [None, None, None, None]
cdef list _members_by_value = [None, None, None, None]
# Threads that reach an enum first together must get one class, not one each.
cdef object _enum_build_lock = _thread.allocate_lock()


cdef void _enum_rows(EnumKind kind, const llmdd_named_value** rows, int* count) noexcept:
    if kind == STATUS_ENUM:
        rows[0], count[0] = llmdd_status_rows, llmdd_status_row_count
    elif kind == DATA_TYPE_ENUM:
        rows[0], count[0] = llmdd_data_type_rows, llmdd_data_type_row_count
    elif kind == PLACEMENT_ENUM:
        rows[0], count[0] = llmdd_placement_rows, llmdd_placement_row_count
    else:
        rows[0], count[0] = llmdd_role_rows, llmdd_role_row_count


cdef list _row_names(EnumKind kind):
    cdef const llmdd_named_value* rows
    cdef int count
    _enum_rows(kind, &rows, &count)
    return [rows[i].name.decode("ascii") for i in range(count)]


cdef object _build_enum(EnumKind kind):
    """Builds enum `kind` from its llm_facts.h table and binds it, and for the status codes and
    data types its members (the C++ module constants), as attributes of this module."""
    import enum  # here rather than at import: until an enum is built llmdd needs none of it
    cdef const llmdd_named_value* rows
    cdef int count
    with _enum_build_lock:
        if _built_enums[kind] is not None:
            return _built_enums[kind]
        _enum_rows(kind, &rows, &count)
        # Rows that repeat a value become aliases (CachePlacement.DEVICE is CachePlacement.kDevice).
        members = [(rows[i].name.decode("ascii"), rows[i].value) for i in range(count)]
        built = enum.IntEnum(_ENUM_NAMES[kind], members, module="llmdd")
        module_attributes = globals()
        module_attributes[_ENUM_NAMES[kind]] = built
        if kind == STATUS_ENUM or kind == DATA_TYPE_ENUM:
            module_attributes.update(built.__members__)
        elif kind == PLACEMENT_ENUM:
            module_attributes["Placement"] = built
        else:
            module_attributes["LLMRole"] = built
        _members_by_value[kind] = {member.value: member for member in built}
        _built_enums[kind] = built
        return built


cdef object enum_class(EnumKind kind):
    """LLMStatusCode, DataType, CachePlacement or LlmRole, built on the first call."""
    built = _built_enums[kind]
    return _build_enum(kind) if built is None else built


cdef object enum_member(EnumKind kind, int64_t value):
    """The member of enum `kind` with `value`, or the bare int where no member has it."""
    by_value = _members_by_value[kind]
    if by_value is None:
        _build_enum(kind)
        by_value = _members_by_value[kind]
    return (<dict>by_value).get(value, value)


cdef dict _lazy_attribute_kinds():
    """Which enum each not-yet-built module attribute belongs to."""
    kinds = {"LLMStatusCode": STATUS_ENUM, "DataType": DATA_TYPE_ENUM, "CachePlacement": PLACEMENT_ENUM,
             "Placement": PLACEMENT_ENUM, "LlmRole": ROLE_ENUM, "LLMRole": ROLE_ENUM}
    for kind in (DATA_TYPE_ENUM, STATUS_ENUM):
        kinds.update(dict.fromkeys(_row_names(kind), kind))
    return kinds


cdef dict _lazy_attributes = _lazy_attribute_kinds()

__all__ = [
    "LLMStatusCode", "DataType", "CachePlacement", "Placement", "LlmRole", "LLMRole", "CacheDesc",
    *_row_names(DATA_TYPE_ENUM), *_row_names(STATUS_ENUM),
]


def enum_values(str name):
    """{member name: value} of enum `name` ("LLMStatusCode", "DataType", "CachePlacement" or
    "LlmRole"), read from its llm_facts.h table without building the enum (the drop-in builds
    enums of its own from these values)."""
    cdef const llmdd_named_value* rows
    cdef int count
    if name not in _ENUM_NAMES:
        raise ValueError(f"{name!r} is not one of {_ENUM_NAMES}")
    _enum_rows(<EnumKind>_ENUM_NAMES.index(name), &rows, &count)
    return {rows[i].name.decode("ascii"): rows[i].value for i in range(count)}


def __getattr__(name):
    """The enums and the module constants (DT_FLOAT16, LLM_SUCCESS, ...), built on first use."""
    kind = _lazy_attributes.get(name)
    if kind is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    enum_class(kind)
    return globals()[name]


def __dir__():
    return sorted({*globals(), *__all__})


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
        cdef int64_t dim, first_dim = 0
        cdef bint first = True
        for item in shape:
            if type(item) is not int:
                # An __index__ type (numpy.int64, say): keep plain ints, like C++ keeps int64_t.
                shape = tuple([as_integer(dim_value, "shape dim") for dim_value in shape])
                break
        for item in shape:
            dim = _checked_int64(item, "shape dim", INT64_MIN, INT64_MAX)
            if first:
                first_dim, first = dim, False   # the batch (or block count) the cache table keeps
            if dim <= 0:
                positive = False
            elif not overflow:
                if elements > UINT64_MAX // <uint64_t>dim:
                    overflow = True
                else:
                    elements *= <uint64_t>dim
        self._shape = shape
        self.fields.ndim = ndim
        self.fields.first_dim = first_dim
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
        return enum_member(DATA_TYPE_ENUM, self.fields.data_type)

    @data_type.setter
    def data_type(self, value):
        self.set_data_type(value)

    @property
    def placement(self):
        return enum_member(PLACEMENT_ENUM, self.fields.placement)

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
    if type(value) is int:
        return str(value)
    return f"{type(value).__name__}.{value.name}"


cdef uint32_t tensor_bytes(const DescFields* fields, uint64_t* nbytes) noexcept nogil:
    """LLM_SUCCESS and the bytes of one tensor, or LLM_PARAM_INVALID (docs/facts.md section 4)."""
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
