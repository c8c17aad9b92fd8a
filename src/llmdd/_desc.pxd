from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef class CacheDesc:
    cdef uint32_t _num_tensors
    cdef int64_t _data_type
    cdef uint32_t _placement
    cdef tuple _shape
    # Derived from _shape when it is set, so AllocateCache reads C fields only.
    cdef Py_ssize_t _ndim
    cdef bint _dims_positive
    cdef uint64_t _elements          # product of the dims, when it fits
    cdef bint _elements_overflow

    cdef uint32_t tensor_bytes(self, uint64_t* nbytes) noexcept nogil
    cdef CacheDesc copy(self)


cdef object as_integer(object value, str field)
