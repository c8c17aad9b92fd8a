from libc.stdint cimport int64_t, uint32_t, uint64_t


# A CacheDesc's values as C data: what AllocateCache reads, and what a Cache keeps of the
# descriptor it was allocated for. The shape's derived facts are computed when it is set.
cdef struct DescFields:
    uint32_t num_tensors
    int64_t data_type
    uint32_t placement
    Py_ssize_t ndim
    int64_t first_dim             # shape[0] (0 for shape ()): the batch entries, or blocks, of a tensor
    bint dims_positive
    uint64_t elements             # product of the dims, when it fits
    bint elements_overflow


cdef uint32_t tensor_bytes(const DescFields* fields, uint64_t* nbytes) noexcept nogil


cdef class CacheDesc:
    cdef DescFields fields
    cdef tuple _shape

    cdef int set_num_tensors(self, object value) except -1
    cdef int set_data_type(self, object value) except -1
    cdef int set_placement(self, object value) except -1
    cdef int set_shape(self, object value) except -1

    @staticmethod
    cdef CacheDesc from_fields(const DescFields* fields, tuple shape)


cdef object as_integer(object value, str field)


# The four enums are built on first use (_desc.pyx says why); other modules reach them here.
cdef enum EnumKind:
    STATUS_ENUM
    DATA_TYPE_ENUM
    PLACEMENT_ENUM
    ROLE_ENUM

cdef object enum_class(EnumKind kind)
cdef object enum_member(EnumKind kind, int64_t value)
