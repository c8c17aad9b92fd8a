# cython: language_level=3, boundscheck=False, wraparound=False
"""Cache and LlmDataDist: LLM-DataDist v1's cache allocation over the ACL runtime.

The C++-faithful methods (Initialize, AllocateCache, DeallocateCache, CopyKvCache,
CopyKvBlocks, Finalize) return status codes; the Pythonic ones (initialize, allocate_cache,
deallocate_cache, copy_cache, copy_blocks) raise LLMException. Typed cdef methods do the
work for both. Rules: shared/spec/llm-datadist.md sections 4 and 5. The engine keeps its
caches in a C hash table, carves them from memory pools (page_pool.c) when configured, and
keeps exported memory alive for its views (_CacheMemory). Copies: _copy.pxi. The transfer calls
(LinkLlmClusters, PullKvCache, ...) run in llmdd.transfer._cpp_api, imported on first use.
"""
cimport cython
from cpython.ref cimport Py_INCREF, Py_REFCNT, PyObject
from libc.stdint cimport INT64_MAX, INT64_MIN, SIZE_MAX, UINT64_MAX

from ._acl cimport (
    ACL_ERROR_BAD_ALLOC,
    ACL_ERROR_INVALID_DEVICE,
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_RT_DEVICE_OOM,
    ACL_ERROR_RT_INVALID_DEVICEID,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_HBM_MEM,
    ACL_SUCCESS,
    LLMDD_SIMULATED,
    aclFinalize,
    aclGetRecentErrMsg,
    aclInit,
    aclrtCreateContext,
    aclrtDestroyContext,
    aclrtFree,
    aclrtFreeHost,
    aclrtGetCurrentContext,
    aclrtGetMemInfo,
    aclrtGetVersion,
    aclrtMalloc,
    aclrtMallocHost,
    aclrtResetDevice,
    aclrtSetCurrentContext,
    aclrtSetDevice,
)
from ._desc cimport (
    DATA_TYPE_ENUM,
    PLACEMENT_ENUM,
    ROLE_ENUM,
    STATUS_ENUM,
    CacheDesc,
    DescFields,
    as_integer,
    enum_class,
    enum_member,
    tensor_bytes,
)
from ._llm_facts cimport (
    LLM_DEVICE_OUT_OF_MEMORY,
    LLM_FAILED,
    LLM_KV_CACHE_NOT_EXIST,
    LLM_PARAM_INVALID,
    LLM_SUCCESS,
    LLMDD_kDevice,
    LLMDD_kHost,
)
from ._page_pool cimport (
    llmdd_pool_alloc,
    llmdd_pool_block,
    llmdd_pool_free,
    llmdd_pool_free_pages,
    llmdd_pool_init,
    llmdd_pool_release,
)
from ._tensor_view cimport make_view
from ._status import LLMException, status_member as _status_member
from ._u64_table cimport llmdd_u64_erase, llmdd_u64_find, llmdd_u64_insert, llmdd_u64_release, llmdd_u64_slot


cdef extern from "<sched.h>" nogil:
    int sched_yield()


BACKEND = "sim" if LLMDD_SIMULATED else "acl"
SIMULATED = bool(LLMDD_SIMULATED)

cdef enum:
    RUNTIME_ALIGNMENT = 64  # aclrtMalloc promises 64-byte-aligned starts, nothing more

# A cache table entry is (memory, held_bytes << 3 | EXPORTED? | CacheSource). Memory is the
# address from aclrtMalloc or the pool block. Once a view was made of the cache, or a copy
# holds it, the EXPORTED bit is set and the engine's _exports dict has the _CacheMemory that
# owns the memory from then on (a dict the garbage collector sees, so an engine and its
# exports dropped together are collected).
cdef enum CacheSource:
    FROM_RUNTIME = 0
    FROM_DEVICE_POOL = 1
    FROM_HOST_POOL = 2
    FROM_CALLER = 3        # a registered cache: the caller's memory, never allocated or freed by llmdd

cdef enum:
    SOURCE_BITS = 3
    EXPORTED = 4
    HELD_SHIFT = 3

# No device holds 2**60 bytes; the cap keeps held_bytes << HELD_SHIFT inside 64 bits.
cdef uint64_t MAX_HELD_BYTES = 1ULL << 60

# LLMStatusCode.LLM_SUCCESS, kept from the first status returned (LLMStatusCode is built then,
# not at import) so that the success path costs no lookup.
cdef object _SUCCESS = None

# cache_id comes from one process-wide counter starting at 1 (spec section 4, v1); in cache-manager
# mode (llm.EnableCacheManager=1, v2) each engine counts its own from 1, as v2's cache engine does.
# The GIL guards both.
cdef int64_t _next_cache_id = 1
# Engines between Initialize and Finalize; llmdd calls aclFinalize when the last one leaves,
# and only if llmdd's own aclInit was the one that initialized ACL.
cdef int _initialized_engines = 0
cdef bint _acl_initialized_by_llmdd = False

# Engines between Initialize and teardown, for the fork handler below.
cdef object _live_engines = None


cdef void _leave_runtime():
    """An engine stops using the runtime: the last one out finalizes ACL if llmdd set it up."""
    global _initialized_engines, _acl_initialized_by_llmdd
    _initialized_engines -= 1
    if _initialized_engines == 0 and _acl_initialized_by_llmdd:
        aclFinalize()
        _acl_initialized_by_llmdd = False


def _abandon_engines_in_child():
    """After fork, in the child: the runtime state belongs to the parent. Every engine that
    was live is abandoned: it answers LLM_FAILED, and frees nothing on the device, ever, so
    the child cannot release or corrupt the parent's memory (README, "fork")."""
    global _initialized_engines, _acl_initialized_by_llmdd
    for engine in list(_live_engines):
        (<LlmDataDist>engine).abandon()
    _live_engines.clear()
    _initialized_engines = 0
    _acl_initialized_by_llmdd = False


cdef void _track_live_engine(LlmDataDist engine):
    global _live_engines
    if _live_engines is None:
        import os
        import weakref
        _live_engines = weakref.WeakSet()
        os.register_at_fork(after_in_child=_abandon_engines_in_child)
    _live_engines.add(engine)


cdef dict _pool_stats(MemoryPool* pool, str prefix):
    cdef uint64_t free_pages, largest_pages
    llmdd_pool_free_pages(&pool.pages, &free_pages, &largest_pages)
    return {
        f"{prefix}pool_bytes": pool.pages.total_pages << pool.page_shift,
        f"{prefix}pool_free_bytes": free_pages << pool.page_shift,
        f"{prefix}largest_free_block": largest_pages << pool.page_shift,
    }


def runtime_version():
    """(major, minor, patch) of the ACL runtime, from aclrtGetVersion; None if it says no."""
    cdef int32_t major = 0, minor = 0, patch = 0
    if aclrtGetVersion(&major, &minor, &patch) != ACL_SUCCESS:
        return None
    return major, minor, patch


cdef object _data_type_member(int64_t value):
    return enum_member(DATA_TYPE_ENUM, value)


cdef inline object _status(uint32_t code):
    """The LLMStatusCode member of a status; the success path costs no lookup."""
    global _SUCCESS
    if code == LLM_SUCCESS:
        if _SUCCESS is None:
            _SUCCESS = enum_member(STATUS_ENUM, LLM_SUCCESS)
        return _SUCCESS
    return enum_member(STATUS_ENUM, code)


cdef object _refuse_copy(object owner):
    raise TypeError(f"{type(owner).__name__} owns or points at memory: it cannot be copied or pickled")


cdef inline bint _round_up(uint64_t value, uint64_t alignment, uint64_t* rounded) noexcept nogil:
    """value rounded up to a power-of-two alignment; False when that overflows."""
    if value > UINT64_MAX - (alignment - 1):
        return False
    rounded[0] = (value + alignment - 1) & ~(alignment - 1)
    return True


cdef inline void _fill_cache(Cache cache, LlmDataDist engine, int64_t cache_id, CacheDesc desc,
                             uintptr_t first_addr, uint64_t stride, tuple caller_addrs):
    cache._cache_id = cache_id
    cache._engine = engine
    if engine is not None:
        cache._generation = engine._generation
    cache._first_addr = first_addr
    cache._addr_stride = stride
    cache._addr_count = desc.fields.num_tensors
    cache._caller_addrs = caller_addrs
    cache._desc_fields = desc.fields
    cache._desc_shape = desc._shape
    cache._desc = None


@cython.auto_pickle(False)
cdef class Cache:
    """A cache: its id, num_tensors tensor addresses and a copy of its CacheDesc.

    Mirrors llm_datadist::Cache: a default Cache has cache_id -1 and no addresses. It points
    at memory, so it is neither copied nor pickled (a copy would outlive a deallocation
    unnoticed, a pickle would carry addresses into another process).
    """

    def __reduce__(self):
        _refuse_copy(self)

    def __cinit__(self):
        self._cache_id = -1

    cdef CacheDesc desc(self):
        if self._desc is None:
            self._desc = (CacheDesc() if self._desc_shape is None
                          else CacheDesc.from_fields(&self._desc_fields, self._desc_shape))
        return self._desc

    @property
    def cache_id(self):
        return self._cache_id

    @cache_id.setter
    def cache_id(self, value):
        number = as_integer(value, "cache_id")
        if not -INT64_MAX - 1 <= number <= INT64_MAX:
            raise ValueError(f"cache_id must fit in int64, got {number}")
        self._cache_id = number
        self._engine = None  # no longer the engine's allocation

    @property
    def tensor_addrs(self):
        """The tensor addresses, as a new list (built only when read)."""
        if self._caller_addrs is not None:
            return list(self._caller_addrs)
        return [self._first_addr + i * self._addr_stride for i in range(self._addr_count)]

    @tensor_addrs.setter
    def tensor_addrs(self, value):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"tensor_addrs must be a list or tuple of ints, not {type(value).__name__}")
        addrs = tuple([as_integer(addr, "tensor address") for addr in value])
        for addr in addrs:
            if not 0 <= addr <= <uintptr_t>UINT64_MAX:
                raise ValueError(f"tensor address {addr} is not a 64-bit unsigned address")
        self._caller_addrs = addrs
        self._addr_count = len(addrs)
        self._engine = None

    @property
    def cache_desc(self):
        return self.desc()

    @cache_desc.setter
    def cache_desc(self, value):
        if not isinstance(value, CacheDesc):
            raise TypeError(f"cache_desc must be a CacheDesc, not {type(value).__name__}")
        self._desc = value

    cdef uintptr_t tensor_address(self, uint32_t index):
        """Tensor `index`'s address: from the slab, or as given for a registered cache."""
        if self._caller_addrs is not None:
            return self._caller_addrs[index]
        return self._first_addr + index * self._addr_stride

    cdef bint belongs_to(self, LlmDataDist engine):
        """Whether `engine` allocated (or registered) this cache in its current initialization:
        cache ids start again at 1 after a re-Initialize in cache-manager mode, so an id alone
        could name a newer cache."""
        return self._engine is engine and self._generation == engine._generation

    cdef LlmDataDist live_engine(self):
        """The engine of a cache it allocated and still holds; ValueError otherwise."""
        if self._engine is None:
            raise ValueError("this Cache holds no memory llmdd allocated: it was never allocated, "
                             "or its cache_id or tensor_addrs were set by hand")
        if (not self._engine._initialized or not self.belongs_to(self._engine)
                or llmdd_u64_find(&self._engine._caches, <uint64_t>self._cache_id) == NULL):
            raise ValueError(f"cache {self._cache_id} is not allocated: it was deallocated or its engine finalized")
        return self._engine

    def tensor(self, Py_ssize_t index):
        """A view of tensor `index`, sharing its memory with numpy, torch and memoryview
        where the host can read it. The memory lives as long as any export of it."""
        cdef LlmDataDist engine = self.live_engine()
        cdef uint64_t nbytes
        if not 0 <= index < self._addr_count:
            raise IndexError(f"tensor index {index} is out of range for {self._addr_count} tensors")
        # The Python values first (building an enum runs Python code), then the export, then
        # the address with no Python code between: the address is of the memory exported.
        placement = enum_member(PLACEMENT_ENUM, self._desc_fields.placement)
        data_type = _data_type_member(self._desc_fields.data_type)
        memory = engine.export_memory(self._cache_id)
        tensor_bytes(&self._desc_fields, &nbytes)
        return make_view(memory, self.tensor_address(index), nbytes, self._desc_shape,
                         data_type, placement, engine._device, SIMULATED or self._desc_fields.placement == LLMDD_kHost)

    def to_descs(self, *, as_numpy=False):
        """(address, nbytes, device_id) of every tensor: the rows a transfer engine such as
        NIXL registers. as_numpy=True gives an N x 3 uint64 array (needs numpy)."""
        cdef LlmDataDist engine = self.live_engine()
        cdef uint64_t nbytes
        tensor_bytes(&self._desc_fields, &nbytes)
        descs = [(self.tensor_address(i), nbytes, engine._device) for i in range(self._addr_count)]
        if as_numpy:
            import numpy
            return numpy.array(descs, dtype=numpy.uint64).reshape(len(descs), 3)
        return descs

    def region(self):
        """(address, nbytes, device_id) of the whole slab holding every tensor, so a transfer
        engine can register one region instead of num_tensors. A registered cache has no slab
        (ValueError): its tensors are where the caller put them."""
        cdef LlmDataDist engine = self.live_engine()
        if self._caller_addrs is not None:
            raise ValueError(f"cache {self._cache_id} is registered memory, not one slab: use to_descs()")
        return (self._first_addr, self._addr_stride * self._addr_count, engine._device)

    @staticmethod
    def create_cpu_cache(CacheDesc cache_desc not None, addrs):
        """A host cache over memory the caller owns (placement kHost), for copies to and from
        device caches. Checked: one non-NULL address per tensor. Not checkable: that each
        address has room for a tensor and outlives the Cache; that is the caller's promise."""
        if cache_desc.fields.placement != LLMDD_kHost:
            raise ValueError("create_cpu_cache needs a CacheDesc with placement kHost")
        cache = Cache()
        cache.tensor_addrs = addrs
        if len(cache._caller_addrs) != cache_desc.fields.num_tensors:
            raise ValueError(f"{len(cache._caller_addrs)} addresses for {cache_desc.fields.num_tensors} tensors")
        if 0 in cache._caller_addrs:
            raise ValueError("a tensor address is 0")
        cache._desc = CacheDesc.from_fields(&cache_desc.fields, cache_desc._shape)
        return cache

    def __repr__(self):
        return f"Cache(cache_id={self._cache_id}, num_tensors={self._addr_count}, cache_desc={self.desc()!r})"


@cython.no_gc_clear  # __dealloc__ needs self.engine, whatever order a collection clears things in
@cython.auto_pickle(False)  # a copy would be a second owner: a double free
cdef class _CacheMemory:
    """Owns a cache's memory once it was exported (see LlmDataDist.export_memory)."""

    def __reduce__(self):
        _refuse_copy(self)

    def __dealloc__(self):
        if self.released and self.engine is not None:
            self.engine.free_pending(self.record, self.held)


@cython.auto_pickle(False)
cdef class LlmDataDist:
    """One LLM-DataDist engine: a cluster id, a role, a device and the caches it allocated.

    Nothing touches the runtime before Initialize. Use it as a context manager to Finalize
    on exit. Dropping an engine without Finalize frees what it holds. It owns memory, so it
    is neither copied nor pickled.
    """

    def __reduce__(self):
        _refuse_copy(self)

    def __init__(self, cluster_id, role):
        number = as_integer(cluster_id, "cluster_id")
        if not 0 <= number <= UINT64_MAX:
            raise ValueError(f"cluster_id must fit in uint64, got {number}")
        self.cluster_id = number
        self._role = enum_class(ROLE_ENUM)(as_integer(role, "role"))  # ValueError for a value that is no role

    @property
    def role(self):
        return enum_class(ROLE_ENUM)(self._role)

    @property
    def initialized(self):
        return self._initialized

    @property
    def device_id(self):
        """The device this engine allocates on; -1 before Initialize."""
        return self._device if self._initialized else -1

    def Initialize(self, options):
        """Set up the runtime on the device the options name. A second call is a no-op."""
        self.wait_for_set_up()
        if self._initialized:
            return _status(LLM_SUCCESS)
        if self._abandoned:
            self._last_acl_error = ACL_SUCCESS
            self._last_error_detail = "this engine was initialized before a fork; make a new one in this process"
            return _status(LLM_FAILED)
        if self._teardown_pending:
            return self.teardown_pending_failure()
        from ._options import OptionError, parse_options
        try:
            parsed = parse_options(options)
        except OptionError as error:
            self._last_acl_error = ACL_SUCCESS
            self._last_error_detail = str(error)
            return error.status_code
        # parse_options ran Python code: another thread may have begun a set-up or Finalize.
        self.wait_for_set_up()
        if self._initialized:
            return _status(LLM_SUCCESS)
        if self._teardown_pending:
            return self.teardown_pending_failure()
        self._own_cache_ids = parsed.cache_manager_mode
        self._next_own_cache_id = 1
        self._transfer_options = parsed.transfer
        # An engine serves its caches by id to linked peers when it listens or opened them to
        # remote access; it keeps what it serves from Initialize on (bind_cache).
        self._served = ({} if parsed.transfer.listen_ip_info or parsed.transfer.remote_cache_accessible
                        else None)
        status = self.set_up(parsed.device_id, parsed.tensor_alignment, parsed.malloc_policy, parsed.device_pool,
                             parsed.host_pool)
        if status == LLM_SUCCESS and parsed.transfer.listen_ip_info:
            status = self.start_listening()
        return _status(status)

    cdef uint32_t start_listening(self):
        """Serve this engine's caches to the clusters that link to it (llm.ListenIpInfo) from
        Initialize on; a listener that cannot start fails the Initialize, which finalizes the
        engine again (nothing half-made stays)."""
        cdef uint64_t generation = self._generation
        try:
            self.transfer_service()
        except LLMException as error:
            self.stop_transfers()
            self.finalize()
            self._last_error_detail = str(error)
            return error.status_code
        if self._generation != generation or not self._initialized:
            self.stop_transfers()   # a Finalize on another thread came first
            return LLM_FAILED
        return LLM_SUCCESS

    cdef object transfer_service(self):
        """This initialization's llmdd.transfer service, made on first need. Making it runs
        Python code (sockets, threads): what another thread did meanwhile is looked at after."""
        cdef uint64_t generation = self._generation
        if self._transfers is not None and self._transfers.initialization != generation:
            self.stop_transfers()   # an earlier initialization's, left by a race with its Finalize
        if self._transfers is None:
            from .transfer._service import TransferService
            service = TransferService(self, self._transfer_options)
            if (self._transfers is not None or self._generation != generation or not self._initialized
                    or self._stopping_transfers):
                service.close()     # another thread made one, or the engine was finalized
                if self._transfers is None:
                    raise LLMException("the engine was finalized", status_code=_status(LLM_FAILED))
            else:
                self._transfers = service
        return self._transfers

    cdef void stop_transfers(self):
        """End the links and the listener before the caches go (transfers under way end first)."""
        transfers, self._transfers = self._transfers, None
        if transfers is not None:
            transfers.close()

    cdef object teardown_pending_failure(self):
        self._last_acl_error = ACL_SUCCESS
        self._last_error_detail = (f"Finalize is running, or {self._stats.num_pending} caches of the last initialization are still "
                                   f"exported to views, arrays or tensors")
        return _status(LLM_FAILED)

    cdef void wait_for_set_up(self):
        """Wait out another thread's set-up of this engine (it releases the GIL while it
        allocates a pool), so that one Initialize sets up and the others see it done."""
        while self._setting_up:
            with nogil:
                sched_yield()

    cdef uint32_t set_up(self, int32_t device, uint64_t alignment, int malloc_policy, device_pool, host_pool):
        """The engine joins the runtime's users before its first call that may release the
        GIL, so that another engine's teardown never finalizes ACL under this set-up."""
        global _initialized_engines, _acl_initialized_by_llmdd
        cdef aclError error
        cdef uint32_t status
        self._last_acl_error = ACL_SUCCESS
        if _initialized_engines == 0:
            error = aclInit(NULL)
            if error != ACL_SUCCESS and error != ACL_ERROR_REPEAT_INITIALIZE:
                return self.runtime_failure(error)
            # REPEAT_INITIALIZE: the host process (torch_npu, say) set ACL up; it stays theirs.
            _acl_initialized_by_llmdd = error == ACL_SUCCESS
        _initialized_engines += 1
        self._setting_up = True
        status = self.open_device(device, alignment, malloc_policy, device_pool, host_pool)
        if status == LLM_SUCCESS:
            self._stats = MemoryStats()
            self._generation += 1
            self._initialized = True
            _track_live_engine(self)
        else:
            _leave_runtime()
        self._setting_up = False
        return status

    cdef uint32_t open_device(self, int32_t device, uint64_t alignment, int malloc_policy, device_pool, host_pool):
        """The device, a context of the engine's own and its pools: all of them or none."""
        cdef aclError error
        cdef aclrtContext previous = NULL
        cdef aclrtContext context = NULL
        cdef uint32_t status = LLM_SUCCESS
        # aclrtSetDevice and aclrtCreateContext both change the thread's current context:
        # put the caller's back afterwards.
        if aclrtGetCurrentContext(&previous) != ACL_SUCCESS:
            previous = NULL
        error = aclrtSetDevice(device)
        if error == ACL_SUCCESS:
            error = aclrtCreateContext(&context, device)
            if error != ACL_SUCCESS:
                aclrtResetDevice(device)
        if previous != NULL:
            aclrtSetCurrentContext(previous)
        if error != ACL_SUCCESS:
            return self.runtime_failure(error)
        self._device = device
        self._context = context
        self._alignment = alignment
        self._malloc_policy = <aclrtMemMallocPolicy>malloc_policy
        if device_pool is not None:
            status = self.create_pool(&self._device_pool, False, device_pool.memory_size, device_pool.page_shift)
        if status == LLM_SUCCESS and host_pool is not None:
            status = self.create_pool(&self._host_pool, True, host_pool.memory_size, host_pool.page_shift)
        if status != LLM_SUCCESS:
            self.destroy_pool(&self._device_pool)
            aclrtDestroyContext(context)
            self._context = NULL
            aclrtResetDevice(device)
        return status

    cdef uint32_t create_pool(self, MemoryPool* pool, bint on_host, uint64_t memory_size, uint64_t page_shift):
        """One runtime allocation of the pool's whole pages, plus slack to align page 0."""
        cdef uint64_t pages = memory_size >> page_shift
        cdef void* memory = NULL
        cdef uint64_t base
        cdef aclError error = self.runtime_malloc(&memory, (pages << page_shift) + self._alignment - RUNTIME_ALIGNMENT,
                                                  on_host)
        if error != ACL_SUCCESS:
            return self.runtime_failure(error)
        if llmdd_pool_init(&pool.pages, pages) != 0:
            self.runtime_free(memory, on_host)
            return LLM_FAILED  # no host memory for the pool's records
        _round_up(<uintptr_t>memory, self._alignment, &base)
        pool.memory = memory
        pool.base = <uintptr_t>base
        pool.page_shift = page_shift
        pool.on_host = on_host
        pool.active = True
        return LLM_SUCCESS

    cdef void destroy_pool(self, MemoryPool* pool):
        if not pool.active:
            return
        llmdd_pool_release(&pool.pages)
        self.runtime_free(pool.memory, pool.on_host)
        pool.active = False

    def AllocateCache(self, CacheDesc cache_desc not None, Cache cache not None):
        """Allocate cache_desc.num_tensors tensors; fill `cache` on LLM_SUCCESS."""
        return _status(self.allocate(cache_desc, cache))

    # Hot path: typed locals only, no Python object but the ones the caller gets back.
    cdef uint32_t allocate(self, CacheDesc desc, Cache cache):
        cdef int64_t cache_id
        cdef uint64_t nbytes, stride, slab_bytes, held_bytes, first_tensor, pages, align_pages
        cdef void* address = NULL
        cdef aclError error
        cdef MemoryPool* pool = NULL
        cdef llmdd_pool_block* block = NULL
        cdef uint64_t record
        cdef CacheSource source
        self._last_acl_error = ACL_SUCCESS
        if not self._initialized:
            return LLM_FAILED
        # Device caches, and host caches only from a host pool (LLM-DataDist v2); without
        # one, "only support device cache" (spec section 4).
        if desc.fields.placement == LLMDD_kDevice:
            if self._device_pool.active:
                pool = &self._device_pool
        elif desc.fields.placement == LLMDD_kHost and self._host_pool.active:
            pool = &self._host_pool
        else:
            return LLM_PARAM_INVALID
        if tensor_bytes(&desc.fields, &nbytes) != LLM_SUCCESS:
            return LLM_PARAM_INVALID
        # One slab per cache: tensors at aligned offsets, one allocation, one region to
        # register with a transfer engine. Its size, like a tensor's, must fit in int64.
        if (not _round_up(nbytes, self._alignment, &stride)
                or stride > <uint64_t>INT64_MAX // desc.fields.num_tensors):
            return LLM_PARAM_INVALID
        slab_bytes = stride * desc.fields.num_tensors
        if pool != NULL:
            # Whole pages, starting at a multiple of the alignment (pages are powers of two).
            pages = (slab_bytes + (1ULL << pool.page_shift) - 1) >> pool.page_shift
            align_pages = self._alignment >> pool.page_shift
            block = llmdd_pool_alloc(&pool.pages, pages, align_pages if align_pages > 1 else 1)
            if block == NULL:
                self._stats.num_failed_allocs += 1
                return LLM_DEVICE_OUT_OF_MEMORY  # CANN v2 says LLM_OUT_OF_MEMORY here
            first_tensor = pool.base + (block.start << pool.page_shift)
            held_bytes = pages << pool.page_shift
            record = <uintptr_t>block
            source = FROM_HOST_POOL if pool.on_host else FROM_DEVICE_POOL
        else:
            # The runtime only promises 64-byte starts: ask for slack to align the first tensor.
            held_bytes = slab_bytes + self._alignment - RUNTIME_ALIGNMENT
            if held_bytes > <uint64_t>SIZE_MAX:
                return LLM_PARAM_INVALID
            if held_bytes > MAX_HELD_BYTES:
                self._stats.num_failed_allocs += 1
                return LLM_DEVICE_OUT_OF_MEMORY
            error = self.runtime_malloc(&address, held_bytes, False)
            if error != ACL_SUCCESS:
                self._stats.num_failed_allocs += 1
                return self.runtime_failure(error)
            _round_up(<uintptr_t>address, self._alignment, &first_tensor)  # within the slack
            record = <uintptr_t>address
            source = FROM_RUNTIME
        cache_id = self._next_own_cache_id if self._own_cache_ids else _next_cache_id
        if llmdd_u64_insert(&self._caches, <uint64_t>cache_id, record, held_bytes << HELD_SHIFT | source) != 0:
            if pool != NULL:
                llmdd_pool_free(&pool.pages, block)
            else:
                self.runtime_free(address, False)
            return LLM_FAILED  # the host is out of memory for the cache table
        self.count_allocation(pool != NULL and pool.on_host, held_bytes)
        self.bind_cache(cache, cache_id, desc, <uintptr_t>first_tensor, stride, None)
        return LLM_SUCCESS

    cdef inline void bind_cache(self, Cache cache, int64_t cache_id, CacheDesc desc, uintptr_t first_addr,
                                uint64_t stride, tuple caller_addrs):
        """Fill `cache` with the id just inserted in the table (and take that id) and its tensors:
        first_addr + i * stride, or caller_addrs as given for a registered cache."""
        global _next_cache_id
        cdef Cache twin
        cdef uint64_t generation
        if self._own_cache_ids:
            self._next_own_cache_id = cache_id + 1
        else:
            _next_cache_id = cache_id + 1
        _fill_cache(cache, self, cache_id, desc, first_addr, stride, caller_addrs)
        if self._served is not None:
            # An engine that serves its caches describes them to peers by id, whatever the caller
            # does with its own Cache object: it keeps a twin nobody else sees. The twin holds no
            # engine (no reference cycle: a dropped engine goes at once). Making it may run a
            # collection, and so any code, even a Finalize: the dict is looked up again after.
            generation = self._generation
            twin = Cache.__new__(Cache)
            _fill_cache(twin, None, cache_id, desc, first_addr, stride, caller_addrs)
            twin._generation = generation
            if self._served is not None and self._generation == generation:
                self._served[cache_id] = twin

    cdef inline void count_allocation(self, bint on_host, uint64_t nbytes):
        self._stats.num_caches += 1
        self._stats.num_allocs += 1
        if on_host:
            self._stats.host_bytes_in_use += nbytes
            if self._stats.host_bytes_in_use > self._stats.peak_host_bytes_in_use:
                self._stats.peak_host_bytes_in_use = self._stats.host_bytes_in_use
        else:
            self._stats.bytes_in_use += nbytes
            if self._stats.bytes_in_use > self._stats.peak_bytes_in_use:
                self._stats.peak_bytes_in_use = self._stats.bytes_in_use

    def DeallocateCache(self, int64_t cache_id):
        """Free a cache this engine allocated; LLM_KV_CACHE_NOT_EXIST for an id it does not
        hold, LLM_PARAM_INVALID for a registered cache (UnregisterKvCache forgets those)."""
        return _status(self.deallocate(cache_id, False))

    def RegisterKvCache(self, CacheDesc cache_desc not None, addrs, Cache cache not None):
        """Make memory the caller owns (one address per tensor: device memory, or on the sim
        build any host memory the caller keeps alive) a cache this engine knows by id, for
        copies, views and transfers. Nothing is copied, allocated or touched; fills `cache` on
        LLM_SUCCESS. UnregisterKvCache forgets it again and never frees it (LLM-DataDist v2)."""
        return _status(self.register(cache_desc, addrs, cache))

    def UnregisterKvCache(self, int64_t cache_id):
        """Forget a registered cache (its memory stays the caller's); LLM_KV_CACHE_NOT_EXIST for
        an id this engine does not hold, LLM_PARAM_INVALID for an allocated cache."""
        return _status(self.deallocate(cache_id, True))

    cdef uint32_t register(self, CacheDesc desc, object addrs, Cache cache):
        cdef uint64_t nbytes
        cdef int64_t cache_id
        cdef Py_ssize_t i
        # Convert the Python argument first: an address's __index__ may run any code.
        if not isinstance(addrs, (list, tuple)):
            raise TypeError(f"addrs must be a list or tuple of ints, not {type(addrs).__name__}")
        tensor_addrs = tuple([as_integer(addr, "tensor address") for addr in tuple(addrs)])
        self._last_acl_error = ACL_SUCCESS
        if not self._initialized:
            return LLM_FAILED
        if (tensor_bytes(&desc.fields, &nbytes) != LLM_SUCCESS or len(tensor_addrs) != desc.fields.num_tensors
                or (desc.fields.placement != LLMDD_kDevice and desc.fields.placement != LLMDD_kHost)):
            return LLM_PARAM_INVALID
        for i in range(len(tensor_addrs)):
            if not 0 < tensor_addrs[i] <= <uintptr_t>UINT64_MAX:
                return LLM_PARAM_INVALID
        cache_id = self._next_own_cache_id if self._own_cache_ids else _next_cache_id
        if llmdd_u64_insert(&self._caches, <uint64_t>cache_id, tensor_addrs[0], FROM_CALLER) != 0:
            return LLM_FAILED  # the host is out of memory for the cache table
        self.bind_cache(cache, cache_id, desc, tensor_addrs[0], 0, tensor_addrs)
        return LLM_SUCCESS

    def pin(self, int64_t cache_id):
        """An object that holds cache `cache_id`'s memory for as long as it lives: a
        DeallocateCache meanwhile frees the memory when it is dropped (how a transfer keeps the
        caches it moves). ValueError for a cache this engine does not hold."""
        return self.export_memory(cache_id)

    # What llmdd.transfer reads of the engine's caches. Statuses of the transfer calls below.

    def _transfer_service(self):
        """This initialization's one TransferService (llmdd.transfer), made on first need; the
        drop-in's calls use it as the C++ API's do. LLMException when the engine is not initialized."""
        if not self._initialized or self._stopping_transfers:
            raise self.exception(LLM_FAILED, "transfer")
        return self.transfer_service()

    @property
    def _remote_cache_accessible(self):
        """Whether peers may write into this engine's caches (llm.EnableRemoteCacheAccessible)."""
        return self._transfer_options is not None and self._transfer_options.remote_cache_accessible

    @property
    def _initialization(self):
        """Counts this engine's initializations: a cache id names one cache only within one."""
        return self._generation

    def _layout_by_id(self, int64_t cache_id):
        """The CacheLayout of live cache `cache_id` of this engine's current initialization, or None."""
        if self._served is None or not self._initialized:
            return None
        twin = self._served.get(cache_id)
        slot = llmdd_u64_find(&self._caches, <uint64_t>cache_id) if cache_id > 0 else NULL
        if twin is None or slot == NULL:
            return None
        return self.layout_of(<Cache>twin, slot)

    def _layout(self, Cache cache not None):
        """The CacheLayout of a live cache of this engine's current initialization; ValueError
        for any other cache."""
        if cache.live_engine() is not self:
            raise ValueError(f"cache {cache._cache_id} belongs to another engine")
        return self.layout_of(cache, llmdd_u64_find(&self._caches, <uint64_t>cache._cache_id))

    cdef object layout_of(self, Cache cache, llmdd_u64_slot* slot):
        cdef uint64_t nbytes
        cdef uint32_t i
        registered = (slot.second & SOURCE_BITS) == FROM_CALLER
        tensor_bytes(&cache._desc_fields, &nbytes)
        addrs = tuple([cache.tensor_address(i) for i in range(cache._addr_count)])
        if registered:
            regions = tuple([(addr, nbytes) for addr in addrs])
        else:
            regions = ((cache._first_addr, cache._addr_stride * cache._addr_count),)
        from ._cache_layout import CacheLayout
        return CacheLayout(cache._cache_id, addrs, nbytes, cache._desc_shape[0], cache._desc_fields.placement,
                           registered, regions)

    # Transfers between clusters (spec section 1) run in llmdd.transfer: sockets, threads and
    # Mooncake's Transfer Engine. An argument that is not of the C++ type raises TypeError or
    # ValueError before anything happens; each rule of the call answers its status.

    def LinkLlmClusters(self, clusters, rets, timeout_in_millis=1000):
        """Link to each ClusterInfo's remote cluster (at most 16 a call); `rets` (a list) is
        filled with a status per cluster: LLM_ALREADY_LINK, LLM_LINK_FAILED, LLM_TIMEOUT. A link
        serves both sides: either may pull, push and unlink. LLM_SUCCESS when every one linked."""
        return self.transfer_call("link", (clusters, rets, timeout_in_millis))

    def UnlinkLlmClusters(self, clusters, rets, timeout_in_millis=1000, force_flag=False):
        """End the links with clusters (made by either side); `rets` gets a status per cluster
        (LLM_UNLINK_FAILED when the peer cannot be told; force_flag tears down this side only;
        a cluster not linked is LLM_SUCCESS). Transfers on a link end before it does."""
        return self.transfer_call("unlink", (clusters, rets, timeout_in_millis, force_flag))

    def PullKvCache(self, src_cache_index, Cache dst_cache not None, batch_index=0, size=-1, ext_param=None):
        """Read batch entry src_cache_index.batch_index of the remote cache src_cache_index names
        (cluster and cache id) into entry batch_index of dst_cache: `size` bytes of each tensor
        (-1: all), layers as ext_param (KvCacheExtParam) says."""
        return self.transfer_call("pull_cache", (src_cache_index, dst_cache, batch_index, size, ext_param))

    def PullKvBlocks(self, src_cache_index, Cache dst_cache not None, src_blocks, dst_blocks, ext_param=None):
        """Read blocks src_blocks (batch entries) of the remote cache into blocks dst_blocks of dst_cache."""
        return self.transfer_call("pull_blocks", (src_cache_index, dst_cache, src_blocks, dst_blocks, ext_param))

    def PushKvCache(self, Cache src_cache not None, dst_cache_index, src_batch_index=0, size=-1, ext_param=None):
        """Write entry src_batch_index of the device cache src_cache into the remote cache
        dst_cache_index names (its engine set llm.EnableRemoteCacheAccessible); size must be -1."""
        return self.transfer_call("push_cache", (src_cache, dst_cache_index, src_batch_index, size, ext_param))

    def PushKvBlocks(self, Cache src_cache not None, dst_cache_index, src_blocks, dst_blocks, ext_param=None):
        """Write blocks src_blocks of the device cache src_cache into blocks dst_blocks of the remote cache."""
        return self.transfer_call("push_blocks", (src_cache, dst_cache_index, src_blocks, dst_blocks, ext_param))

    cdef object transfer_call(self, str call, tuple arguments):
        """Convert the arguments (their Python code may run, even re-enter this engine), then
        look at the engine's state, then act with this initialization's transfer service."""
        from .transfer._cpp_api import CALLS
        act = CALLS[call](*arguments)
        self._last_acl_error = ACL_SUCCESS
        if not self._initialized or self._stopping_transfers:
            return _status(LLM_FAILED)
        try:
            service = self.transfer_service()
        except LLMException as error:
            return _status_member(error.status_code)
        return act(service)

    cdef uint32_t deallocate(self, int64_t cache_id, bint registered):
        cdef llmdd_u64_slot* slot
        cdef uint64_t record, held
        cdef _CacheMemory memory
        cdef aclError error
        self._last_acl_error = ACL_SUCCESS
        if not self._initialized:
            return LLM_FAILED
        slot = llmdd_u64_find(&self._caches, <uint64_t>cache_id) if cache_id > 0 else NULL
        if slot == NULL:
            return LLM_KV_CACHE_NOT_EXIST
        if registered != ((slot.second & SOURCE_BITS) == FROM_CALLER):
            return LLM_PARAM_INVALID   # registered caches are unregistered, allocated ones deallocated
        if slot.second & EXPORTED:
            memory = <_CacheMemory>self._exports[cache_id]
            if Py_REFCNT(memory) > 2:   # more than _exports and `memory`: a live view, array, tensor or copy
                llmdd_u64_erase(&self._caches, slot)
                del self._exports[cache_id]
                self.release_exported(memory)
                self.count_free(memory.held)
                self.stop_serving(cache_id)
                return LLM_SUCCESS
            # Every export is gone: free the memory now, so that the status says how that went.
            del self._exports[cache_id]
            slot.second &= ~(<uint64_t>EXPORTED)
        record = slot.first
        held = slot.second
        llmdd_u64_erase(&self._caches, slot)
        if (held & SOURCE_BITS) == FROM_RUNTIME:
            error = self.runtime_free(<void*>record, False)
            if error != ACL_SUCCESS:
                # The runtime still holds the memory: keep the cache so a retry can free it.
                # The erase left room, so this insert cannot fail.
                llmdd_u64_insert(&self._caches, <uint64_t>cache_id, record, held)
                return self.runtime_failure(error)
        else:
            self.release_memory(record, held)
        self.count_free(held)
        self.stop_serving(cache_id)
        return LLM_SUCCESS

    cdef inline void stop_serving(self, int64_t cache_id):
        if self._served is not None:
            self._served.pop(cache_id, None)

    cdef inline void count_free(self, uint64_t held):
        if (held & SOURCE_BITS) == FROM_CALLER:
            return   # registered memory is the caller's: memory_stats never counted it
        self._stats.num_caches -= 1
        self._stats.num_frees += 1
        if (held & SOURCE_BITS) == FROM_HOST_POOL:
            self._stats.host_bytes_in_use -= held >> HELD_SHIFT
        else:
            self._stats.bytes_in_use -= held >> HELD_SHIFT

    cdef void release_memory(self, uint64_t record, uint64_t held):
        """Give a cache's memory back to where it came from. A failed aclrtFree leaves the
        memory to aclrtResetDevice, which releases what the process still holds."""
        cdef CacheSource source = <CacheSource>(held & SOURCE_BITS)
        if source == FROM_CALLER:
            return
        if source == FROM_RUNTIME:
            self.runtime_free(<void*>record, False)
        elif source == FROM_HOST_POOL:
            llmdd_pool_free(&self._host_pool.pages, <llmdd_pool_block*>record)
        else:
            llmdd_pool_free(&self._device_pool.pages, <llmdd_pool_block*>record)

    # Exported memory: the lifetime rule of views (README, "Tensor views"). Memory a view,
    # array or tensor was made of outlives DeallocateCache and Finalize, counted as pending,
    # until the last export is gone; so nothing ever points at freed memory.

    cdef _CacheMemory export_memory(self, int64_t cache_id):
        """The owner of a live cache's memory, made on the first export. The new object is
        made before the table is read: making it may run a garbage collection, and so any
        Python code, which may deallocate the cache."""
        cdef _CacheMemory memory = _CacheMemory.__new__(_CacheMemory)
        cdef llmdd_u64_slot* slot
        if self._exports is None:
            self._exports = {}
        slot = llmdd_u64_find(&self._caches, <uint64_t>cache_id) if cache_id > 0 else NULL
        if not self._initialized or slot == NULL:
            raise ValueError(f"cache {cache_id} is not allocated: it was deallocated or its engine finalized")
        if slot.second & EXPORTED:
            return self._exports[cache_id]
        memory.engine = self
        memory.record = slot.first
        memory.held = slot.second
        slot.second |= EXPORTED
        self._exports[cache_id] = memory   # an int key into an existing dict: no collection runs here
        return memory

    cdef void release_exported(self, _CacheMemory memory):
        """The engine lets go of exported memory; it is freed with the last export (which
        may be the caller's reference, dropped right after)."""
        memory.released = True
        self._stats.pending_bytes += memory.held >> HELD_SHIFT
        self._stats.num_pending += 1

    cdef void free_pending(self, uint64_t record, uint64_t held):
        """The last export of released memory is gone: free it, and finish a Finalize that
        was waiting for it."""
        if self._abandoned:
            return  # a forked child: the memory is the parent's
        self.release_memory(record, held)
        self._stats.pending_bytes -= held >> HELD_SHIFT
        self._stats.num_pending -= 1
        if self._stats.num_pending == 0 and self._teardown_pending and not self._finalizing:
            self.teardown()

    def Finalize(self):
        """End this engine's links, free every cache it holds and release the device. Later
        calls answer LLM_FAILED until the next Initialize. Memory still exported to views,
        arrays or tensors (or pinned by a transfer) is freed, and the device released, when the
        last of them is gone."""
        self.finalize_with_transfers()

    cdef void finalize_with_transfers(self):
        # Transfer calls answer LLM_FAILED from here on: none makes a new service meanwhile.
        self._stopping_transfers = True
        try:
            self.stop_transfers()
        finally:
            self._stopping_transfers = False
        self.finalize()

    cdef void finalize(self):
        cdef uint64_t i
        cdef llmdd_u64_slot* slot
        cdef dict exports
        self.wait_for_set_up()   # an Initialize under way on another thread finishes first
        if not self._initialized:
            return
        # New calls fail from here on, and Initialize answers LLM_FAILED until the teardown.
        self._initialized = False
        self._teardown_pending = True
        self._finalizing = True
        while self._runtime_calls_in_flight:
            with nogil:
                sched_yield()
        exports = self._exports or {}
        self._exports = None
        for i in range(self._caches.capacity):
            slot = &self._caches.slots[i]
            if slot.key != 0:
                if slot.second & EXPORTED and <int64_t>slot.key in exports:
                    self.release_exported(exports[<int64_t>slot.key])
                elif slot.second & EXPORTED or (slot.second & SOURCE_BITS) == FROM_RUNTIME:
                    # (an export whose owner a garbage collection already took is gone too)
                    self.release_memory(slot.first, slot.second)  # pool caches go with their pool
                self.count_free(slot.second)
        llmdd_u64_release(&self._caches)
        self._served = None
        exports.clear()     # exports nobody else holds free their memory here
        self._finalizing = False
        if self._stats.num_pending == 0:
            self.teardown()

    cdef void abandon(self):
        """Forget the runtime state without a runtime call (a forked child's copy of it)."""
        for memory in (self._exports or {}).values():
            (<_CacheMemory>memory).released = False
        self._exports = None
        llmdd_u64_release(&self._caches)
        if self._device_pool.active:
            llmdd_pool_release(&self._device_pool.pages)
            self._device_pool.active = False
        if self._host_pool.active:
            llmdd_pool_release(&self._host_pool.pages)
            self._host_pool.active = False
        self._initialized = False
        self._teardown_pending = False
        self._abandoned = True
        self._served = None
        if self._transfers is not None:
            # Its threads, sockets and Mooncake engine are the parent's: this child must never
            # close them (a shutdown would end the parent's links) nor destroy the engine
            # (Mooncake's destructor waits for threads this process does not have), so the
            # service is kept alive to the end of the process.
            self._transfers.abandon()
            Py_INCREF(self._transfers)
            self._transfers = None

    cdef void teardown(self):
        """Release the pools, the context and the device, once no exported memory is left.
        Freeing a pool releases the GIL: _teardown_pending stays set to the very end, so an
        Initialize on another thread answers LLM_FAILED rather than set up under the teardown."""
        if _live_engines is not None:
            _live_engines.discard(self)
        self.destroy_pool(&self._device_pool)
        self.destroy_pool(&self._host_pool)
        aclrtDestroyContext(self._context)
        self._context = NULL
        aclrtResetDevice(self._device)
        _leave_runtime()
        self._teardown_pending = False

    def __dealloc__(self):
        self.finalize()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.finalize_with_transfers()
        return False

    # The Pythonic layer: same engine, exceptions instead of status codes.

    def allocate_cache(self, CacheDesc cache_desc not None):
        """A new Cache for cache_desc; LLMException when AllocateCache would not succeed."""
        cdef Cache cache = Cache.__new__(Cache)
        cdef uint32_t status = self.allocate(cache_desc, cache)
        if status != LLM_SUCCESS:
            raise self.exception(status, "allocate_cache")
        return cache

    def deallocate_cache(self, cache):
        """Free a cache given as a Cache or a cache_id; LLMException when it cannot be freed."""
        cdef int64_t cache_id = (<Cache>cache)._cache_id if isinstance(cache, Cache) else as_integer(cache, "cache")
        cdef uint32_t status = self.deallocate(cache_id, False)
        if status != LLM_SUCCESS:
            raise self.exception(status, "deallocate_cache")

    def CopyKvCache(self, Cache src not None, Cache dst not None, uint32_t src_batch_index=0,
                    uint32_t dst_batch_index=0, uint64_t offset=0, int64_t size=-1):
        """Copy batch entry src_batch_index of every tensor of src to dst_batch_index of dst,
        from byte `offset`, `size` bytes (-1: the rest of the entry). Device to device and
        device to host only."""
        self._last_acl_error = ACL_SUCCESS
        if not self._initialized:
            return _status(LLM_FAILED)
        return _status(_copy_kv_cache(self, src, dst, src_batch_index, dst_batch_index, offset, size))

    def CopyKvBlocks(self, Cache src not None, Cache dst not None, src_blocks, dst_blocks_list):
        """Copy block src_blocks[k] (block: shape[0] splits a tensor) of every tensor of src to
        block dst_blocks[k] of dst, for each dst_blocks in dst_blocks_list. D2D, D2H and H2D."""
        self._last_acl_error = ACL_SUCCESS
        if not self._initialized:
            return _status(LLM_FAILED)
        return _status(_copy_kv_blocks(self, src, dst, src_blocks, dst_blocks_list))

    def copy_cache(self, Cache src not None, Cache dst not None, src_batch_index=0, dst_batch_index=0,
                   offset=0, size=-1):
        """CopyKvCache, raising LLMException unless it succeeds."""
        status = self.CopyKvCache(src, dst, src_batch_index, dst_batch_index, offset, size)
        if status != LLM_SUCCESS:
            raise self.exception(status, "copy_cache")

    def copy_blocks(self, Cache src not None, Cache dst not None, src_blocks, dst_blocks_list):
        """CopyKvBlocks, raising LLMException unless it succeeds."""
        status = self.CopyKvBlocks(src, dst, src_blocks, dst_blocks_list)
        if status != LLM_SUCCESS:
            raise self.exception(status, "copy_blocks")

    def initialize(self, options):
        """Initialize, raising LLMException (with the runtime's error) unless it succeeds."""
        cdef uint32_t status = self.Initialize(options)
        if status != LLM_SUCCESS:
            raise self.exception(status, "initialize")

    def _exception(self, status, str call):
        """The LLMException for a status this engine just returned, with what it knows."""
        return self.exception(status, call)

    cdef object exception(self, uint32_t status, str call):
        status_code = _status(status)
        name = status_code.name if isinstance(status_code, enum_class(STATUS_ENUM)) else "unknown status"
        message = f"{call} failed: {name} ({status:#010x})"
        if status == LLM_FAILED and not self._initialized:
            message += "; the engine is not initialized"
        elif self._last_acl_error != ACL_SUCCESS:
            message += f"; ACL error {self._last_acl_error}: {self._last_error_detail}"
        return LLMException(message, status_code=status_code)

    # Runtime calls. The engine's context is bound on whichever thread calls (ACL binds
    # contexts to threads) and the caller's context is put back after. The GIL is released
    # while the runtime works; Finalize waits for such calls to end.

    cdef aclError runtime_malloc(self, void** address, uint64_t nbytes, bint on_host):
        cdef aclError error
        cdef aclrtContext previous = NULL
        self._runtime_calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                if on_host:
                    error = aclrtMallocHost(address, <size_t>nbytes)
                else:
                    error = aclrtMalloc(address, <size_t>nbytes, self._malloc_policy)
                self.restore_context(previous)
        self._runtime_calls_in_flight -= 1
        return error

    cdef aclError runtime_free(self, void* address, bint on_host):
        cdef aclError error
        cdef aclrtContext previous = NULL
        self._runtime_calls_in_flight += 1
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                error = aclrtFreeHost(address) if on_host else aclrtFree(address)
                self.restore_context(previous)
        self._runtime_calls_in_flight -= 1
        return error

    cdef aclError bind_context(self, aclrtContext* previous) noexcept nogil:
        if aclrtGetCurrentContext(previous) != ACL_SUCCESS:
            previous[0] = NULL
        if previous[0] == self._context:
            return ACL_SUCCESS
        return aclrtSetCurrentContext(self._context)

    cdef void restore_context(self, aclrtContext previous) noexcept nogil:
        # A thread that had no context keeps the engine's: the next call skips the switch.
        if previous != NULL and previous != self._context:
            aclrtSetCurrentContext(previous)

    cdef uint32_t runtime_failure(self, aclError error):
        """Record a failed runtime call for LLMException and map it to a status (issue #3)."""
        cdef const char* message = aclGetRecentErrMsg()
        self._last_acl_error = error
        self._last_error_detail = message.decode("utf-8", "replace") if message != NULL else "no message"
        if error == ACL_ERROR_RT_MEMORY_ALLOCATION or error == ACL_ERROR_BAD_ALLOC or error == ACL_ERROR_RT_DEVICE_OOM:
            return LLM_DEVICE_OUT_OF_MEMORY
        if error == ACL_ERROR_RT_INVALID_DEVICEID or error == ACL_ERROR_INVALID_DEVICE:
            return LLM_PARAM_INVALID
        return LLM_FAILED

    def memory_stats(self):
        """The engine's allocation statistics, exact and read without a runtime call.

        bytes_in_use / peak_bytes_in_use: device bytes held for live caches (whole pages from a
        pool; the slab and its alignment slack without one); host_bytes_in_use and its peak:
        the same for host-pool caches; num_caches, num_allocs, num_frees; num_failed_allocs:
        AllocateCache calls that found no memory or met a runtime error. With a pool also
        pool_bytes, pool_free_bytes and largest_free_block (host_ prefixed for the host pool).
        """
        stats = dict(self._stats)
        if self._initialized and self._device_pool.active:
            stats.update(_pool_stats(&self._device_pool, ""))
        if self._initialized and self._host_pool.active:
            stats.update(_pool_stats(&self._host_pool, "host_"))
        return stats

    def reset_peak_memory_stats(self):
        """Make the peaks the current values."""
        self._stats.peak_bytes_in_use = self._stats.bytes_in_use
        self._stats.peak_host_bytes_in_use = self._stats.host_bytes_in_use

    def device_memory_info(self):
        """(free, total) bytes of the engine's device, from aclrtGetMemInfo."""
        cdef size_t free_bytes = 0, total_bytes = 0
        cdef aclError error
        cdef aclrtContext previous = NULL
        if not self._initialized:
            raise self.exception(LLM_FAILED, "device_memory_info")
        self._runtime_calls_in_flight += 1   # so that Finalize waits for it
        with nogil:
            error = self.bind_context(&previous)
            if error == ACL_SUCCESS:
                error = aclrtGetMemInfo(ACL_HBM_MEM, &free_bytes, &total_bytes)
                self.restore_context(previous)
        self._runtime_calls_in_flight -= 1
        if error != ACL_SUCCESS:
            raise self.exception(self.runtime_failure(error), "device_memory_info")
        return free_bytes, total_bytes

    def __repr__(self):
        state = f"device {self._device}" if self._initialized else "not initialized"
        return f"LlmDataDist(cluster_id={self.cluster_id}, role={enum_class(ROLE_ENUM)(self._role)!r}, {state})"


include "_copy.pxi"
include "_sim_control.pxi"
