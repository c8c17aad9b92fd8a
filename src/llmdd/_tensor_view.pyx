# cython: language_level=3, boundscheck=False, wraparound=False
"""TensorView: one tensor of a cache, shared without copying with numpy, torch and memoryview.

Host-accessible memory (every cache of the simulation build, and host caches) is exported
through the buffer protocol, __array_interface__ and DLPack (kDLCPU). Data types numpy or
DLPack lack come out as raw bytes (uint8, one dim of nbytes). Every export holds a reference
to the cache's memory owner, so no array or tensor ever outlives the memory it points at.
"""
cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport int64_t, uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc

from ._dlpack cimport (
    DLManagedTensor,
    kDLBfloat,
    kDLBool,
    kDLComplex,
    kDLCPU,
    kDLFloat,
    kDLInt,
    kDLUInt,
)

from ._llm_facts cimport (
    DT_BF16,
    DT_BOOL,
    DT_COMPLEX128,
    DT_COMPLEX64,
    DT_DOUBLE,
    DT_FLOAT,
    DT_FLOAT16,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_INT8,
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    DT_UINT8,
)

cdef enum:
    MAX_VIEW_DIMS = 32  # as TensorView's arrays in the .pxd; AllocateCache allows 31 dims

# How each data type is exported: (buffer format, numpy typestr, DLPack code, element bytes).
# A None format or typestr means that consumer lacks the type and gets raw bytes. Keyed by
# value, so DataType members (IntEnums) find their rows without DataType built at import.
cdef dict _formats = {
    DT_FLOAT: ("f", "<f4", kDLFloat, 4),
    DT_FLOAT16: ("e", "<f2", kDLFloat, 2),
    DT_DOUBLE: ("d", "<f8", kDLFloat, 8),
    DT_BF16: (None, None, kDLBfloat, 2),
    DT_INT8: ("b", "|i1", kDLInt, 1),
    DT_INT16: ("h", "<i2", kDLInt, 2),
    DT_INT32: ("i", "<i4", kDLInt, 4),
    DT_INT64: ("q", "<i8", kDLInt, 8),
    DT_UINT8: ("B", "|u1", kDLUInt, 1),
    DT_UINT16: ("H", "<u2", kDLUInt, 2),
    DT_UINT32: ("I", "<u4", kDLUInt, 4),
    DT_UINT64: ("Q", "<u8", kDLUInt, 8),
    DT_BOOL: ("?", "|b1", kDLBool, 1),
    DT_COMPLEX64: ("Zf", "<c8", kDLComplex, 8),
    DT_COMPLEX128: ("Zd", "<c16", kDLComplex, 16),
}
cdef tuple _raw_bytes = ("B", "|u1", kDLUInt, 1)

NPU_TENSOR_HINT = ("Ascend device memory has no DLPack device type and is not readable from the host. "
                   "On an Ascend host, wrap the addresses with torch_npu instead: "
                   "torchair.llm_datadist.create_npu_tensors(shape, dtype, cache.tensor_addrs)")


@cython.auto_pickle(False)
cdef class TensorView:
    """A view of one tensor of a cache: data_ptr, nbytes, shape, data_type and device.
    Neither copied nor pickled: a copy could forge a view of any address."""

    def __reduce__(self):
        raise TypeError("TensorView points at a cache's memory: it cannot be copied or pickled; "
                        "copy the data through numpy or torch instead")

    def __init__(self, *args, **kwargs):
        raise TypeError("TensorView is made by Cache.tensor(i)")

    def __repr__(self):
        return (f"TensorView(data_ptr={self.data_ptr:#x}, nbytes={self.nbytes}, shape={list(self.shape)}, "
                f"data_type={self.data_type!r}, device={self.device!r})")

    cdef int require_host_access(self) except -1:
        if not self.host_accessible:
            raise BufferError(NPU_TENSOR_HINT)
        return 0

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # Row-major and writable: every request can be met; give what each one asks for.
        self.require_host_access()
        buffer.buf = <void*>self.data_ptr
        buffer.obj = self
        buffer.len = self.nbytes
        buffer.readonly = 0
        buffer.itemsize = self._itemsize
        buffer.format = <char*>self._buffer_format if flags & PyBUF_FORMAT else <char*>NULL
        buffer.ndim = self._ndim if (flags & PyBUF_ND) == PyBUF_ND else 1
        buffer.shape = self._export_shape if (flags & PyBUF_ND) == PyBUF_ND else NULL
        buffer.strides = self._export_strides if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    @property
    def __array_interface__(self):
        self.require_host_access()
        shape = tuple([self._export_shape[i] for i in range(self._ndim)])
        return {"version": 3, "shape": shape, "typestr": self._typestr, "data": (self.data_ptr, False),
                "strides": None}

    def __dlpack_device__(self):
        self.require_host_access()
        return (kDLCPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self.require_host_access()
        if dl_device is not None and tuple(dl_device) != (kDLCPU, 0):
            raise BufferError(f"llmdd exports host memory as (kDLCPU, 0), not {dl_device!r}")
        if copy:
            raise BufferError("llmdd exports without copying; copy=True is not supported")
        return _dlpack_capsule(self)


cdef struct ManagedView:
    DLManagedTensor managed
    int64_t shape[MAX_VIEW_DIMS]


cdef void _delete_managed(DLManagedTensor* managed) noexcept nogil:
    # Consumers may call this from any thread, with or without the GIL.
    with gil:
        Py_DECREF(<object>managed.manager_ctx)
    free(managed)


cdef void _capsule_destructor(object capsule) noexcept:
    # A capsule nobody consumed still owns its tensor; a consumed one was renamed.
    if PyCapsule_IsValid(capsule, b"dltensor"):
        managed = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
        managed.deleter(managed)


cdef object _dlpack_capsule(TensorView view):
    cdef ManagedView* exported = <ManagedView*>malloc(sizeof(ManagedView))
    cdef tuple dtype = _formats.get(view.data_type, _raw_bytes)
    cdef bint raw = view.data_type not in _formats or len(view.shape) > MAX_VIEW_DIMS
    cdef int i
    if exported == NULL:
        raise MemoryError()
    ndim = 1 if raw else len(view.shape)
    for i in range(ndim):
        exported.shape[i] = view.nbytes if raw else view.shape[i]
    exported.managed.dl_tensor.data = <void*>view.data_ptr
    exported.managed.dl_tensor.device.device_type = kDLCPU
    exported.managed.dl_tensor.device.device_id = 0
    exported.managed.dl_tensor.ndim = ndim
    exported.managed.dl_tensor.dtype.code = <uint8_t>dtype[2]
    exported.managed.dl_tensor.dtype.bits = <uint8_t>(8 * dtype[3])
    exported.managed.dl_tensor.dtype.lanes = 1
    exported.managed.dl_tensor.shape = exported.shape
    exported.managed.dl_tensor.strides = NULL    # compact, row-major
    exported.managed.dl_tensor.byte_offset = 0
    exported.managed.manager_ctx = <void*>view
    exported.managed.deleter = _delete_managed
    Py_INCREF(view)
    try:
        return PyCapsule_New(&exported.managed, b"dltensor", _capsule_destructor)
    except BaseException:
        _delete_managed(&exported.managed)
        raise


cdef TensorView make_view(object owner, uintptr_t address, uint64_t nbytes, tuple shape, object data_type,
                          object placement, int device_id, bint host_accessible):
    """A view of nbytes at address, alive as long as `owner` is."""
    cdef TensorView view = TensorView.__new__(TensorView)
    cdef int i
    cdef Py_ssize_t stride
    buffer_format, typestr, _, itemsize = _formats.get(data_type, _raw_bytes)
    view.owner = owner
    view.data_ptr = address
    view.nbytes = nbytes
    view.shape = shape
    view.data_type = data_type
    view.device = (placement, device_id)
    view.host_accessible = host_accessible
    # numpy and the buffer protocol see raw bytes where they lack the type (DLPack may not).
    view.is_raw_bytes = data_type not in _formats or buffer_format is None or len(shape) > MAX_VIEW_DIMS
    if view.is_raw_bytes:
        buffer_format, typestr, itemsize = _raw_bytes[0], _raw_bytes[1], 1
        view._ndim = 1
        view._export_shape[0] = nbytes
    else:
        view._ndim = len(shape)
        for i in range(view._ndim):
            view._export_shape[i] = shape[i]
    view._buffer_format = buffer_format.encode("ascii")
    view._typestr = typestr
    view._itemsize = itemsize
    stride = itemsize
    for i in reversed(range(view._ndim)):
        view._export_strides[i] = stride
        stride *= view._export_shape[i]
    return view
