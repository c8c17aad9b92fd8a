from libc.stdint cimport uint64_t, uintptr_t


cdef class TensorView:
    cdef readonly object owner
    cdef readonly uintptr_t data_ptr
    cdef readonly uint64_t nbytes
    cdef readonly tuple shape
    cdef readonly object data_type
    cdef readonly tuple device
    cdef readonly bint host_accessible
    cdef readonly bint is_raw_bytes      # numpy and memoryview see uint8 bytes, for want of the type
    cdef bytes _buffer_format
    cdef str _typestr
    cdef int _ndim
    cdef Py_ssize_t _itemsize
    cdef Py_ssize_t _export_shape[32]
    cdef Py_ssize_t _export_strides[32]

    cdef int require_host_access(self) except -1


cdef TensorView make_view(object owner, uintptr_t address, uint64_t nbytes, tuple shape, object data_type,
                          object placement, int device_id, bint host_accessible)
