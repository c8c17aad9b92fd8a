# cython: language_level=3, boundscheck=False, wraparound=False
"""Cache and LlmDataDist: LLM-DataDist v1's cache allocation over the ACL runtime.

The C++-faithful methods (Initialize, AllocateCache, DeallocateCache, CopyKvCache,
CopyKvBlocks, Finalize) return status codes; the Pythonic ones (initialize, allocate_cache,
deallocate_cache, copy_cache, copy_blocks) raise LLMException. Typed cdef methods do the
work for both. Rules: docs/facts.md sections 4 and 5. The engine composes its
runtime binding (_runtime.DeviceRuntime: device, context, runtime calls) and, per
initialization, a CacheAllocator (_allocator: the cache table, pools, exports and statistics).
Copies: _copy.pxi. The transfer calls (LinkLlmClusters, PullKvCache, ...) run in
llmdd.transfer._cpp_api, imported on first use.
"""
cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport INT32_MAX, INT64_MAX, UINT64_MAX
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from ._acl cimport ACL_SUCCESS, LLMDD_ACL_IPC_KEY_BYTES, LLMDD_SIMULATED, aclError
from ._desc cimport (
    DATA_TYPE_ENUM,
    PLACEMENT_ENUM,
    ROLE_ENUM,
    STATUS_ENUM,
    as_integer,
    enum_class,
    enum_member,
    tensor_bytes,
)
from ._llm_facts cimport LLM_FAILED, LLM_KV_CACHE_NOT_EXIST, LLM_PARAM_INVALID, LLM_SUCCESS, LLMDD_kDevice, LLMDD_kHost
from ._tensor_view cimport make_view
from ._status import LLMException

# The engine's parts, each in a file of its own (declared in _datadist.pxd), compiled into this one
# module: the runtime binding (the one part that calls ACL, and the host runtime's test controls),
# the memory pools, the cache table and the allocator.
include "_runtime.pxi"
include "_pool.pxi"
include "_cache_table.pxi"
include "_allocator.pxi"


cdef extern from "<sched.h>" nogil:
    int sched_yield()


# LLMStatusCode.LLM_SUCCESS, kept from the first status returned (LLMStatusCode is built then,
# not at import) so that the success path costs no lookup.
cdef object _SUCCESS = None

# Engines initialized at least once, for the fork handler below.
cdef object _live_engines = None


def _abandon_engines_in_child():
    """After fork, in the child: the runtime state belongs to the parent. Every engine that
    was live is abandoned: it answers LLM_FAILED, and frees nothing on the device, ever, so
    the child cannot release or corrupt the parent's memory (docs/architecture.md, "Fork"). Engines first,
    while their allocators still say whether they were live; then the allocators, some of
    which outlive their engine; then the runtime's count of users."""
    for engine in list(_live_engines):
        if (<LlmDataDist>engine)._initialized or (<LlmDataDist>engine).teardown_pending():
            (<LlmDataDist>engine).abandon()
    abandon_allocators_in_child()
    forget_users_in_child()


cdef void _track_live_engine(LlmDataDist engine):
    global _live_engines
    if _live_engines is None:
        import os
        import weakref
        _live_engines = weakref.WeakSet()
        os.register_at_fork(after_in_child=_abandon_engines_in_child)
    _live_engines.add(engine)


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


cdef bint _in_range(object value, object low, object high):
    return low <= value <= high


cdef bytes _ipc_key(object key):
    """An IPC key as the runtime takes it, or None for a str no runtime makes (a peer's
    malformed key is a status, not an exception)."""
    if not isinstance(key, str):
        raise TypeError(f"an IPC key is a str, not {type(key).__name__}")
    if not (<str>key).isascii():
        return None
    encoded = (<str>key).encode("ascii")
    if not 0 < len(encoded) < LLMDD_ACL_IPC_KEY_BYTES or b"\0" in encoded:
        return None
    return encoded


cdef object _refuse_copy(object owner):
    raise TypeError(f"{type(owner).__name__} owns or points at memory: it cannot be copied or pickled")


cdef inline void _fill_cache(Cache cache, LlmDataDist engine, int64_t cache_id, CacheDesc desc,
                             uintptr_t first_addr, uint64_t stride, tuple caller_addrs):
    cache._cache_id = cache_id
    cache._engine = engine
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
        in cache-manager mode each engine numbers its caches from 1, so an id alone could name
        another engine's cache."""
        return self._engine is engine and self._generation == engine._generation

    cdef LlmDataDist live_engine(self):
        """The engine of a cache it allocated and still holds; ValueError otherwise."""
        if self._engine is None:
            raise ValueError("this Cache holds no memory llmdd allocated: it was never allocated, "
                             "or its cache_id or tensor_addrs were set by hand")
        if (not self._engine._initialized or not self.belongs_to(self._engine)
                or self._engine._caches.table.find(self._cache_id) == NULL):
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
                         data_type, placement, engine._runtime.device,
                         LLMDD_SIMULATED or self._desc_fields.placement == LLMDD_kHost)

    def to_descs(self, *, as_numpy=False):
        """(address, nbytes, device_id) of every tensor: the rows a transfer engine such as
        NIXL registers. as_numpy=True gives an N x 3 uint64 array (needs numpy)."""
        cdef LlmDataDist engine = self.live_engine()
        cdef uint64_t nbytes
        tensor_bytes(&self._desc_fields, &nbytes)
        descs = [(self.tensor_address(i), nbytes, engine._runtime.device) for i in range(self._addr_count)]
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
        return (self._first_addr, self._addr_stride * self._addr_count, engine._runtime.device)

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


@cython.no_gc_clear  # __dealloc__ finalizes through its runtime and allocator
@cython.auto_pickle(False)
cdef class EngineCore:
    """The typed work of an engine, which LlmDataDist's calls answer with: its lifecycle (set-up,
    Finalize, fork), its caches (allocate, register, free, export, describe) and its one transfer
    service. Not made on its own: every engine is an LlmDataDist."""

    def __reduce__(self):
        _refuse_copy(self)

    def __cinit__(self):
        self._runtime = DeviceRuntime.__new__(DeviceRuntime)

    @property
    def initialized(self):
        return self._initialized

    @property
    def device_id(self):
        """The device this engine allocates on; -1 before Initialize."""
        return self._runtime.device if self._initialized else -1

    cdef uint32_t set_up(self, parsed, services):
        """This initialization's allocator: the runtime, then the pools, all of them or none.
        Making the pools releases the GIL: other Initialize and Finalize calls wait meanwhile."""
        cdef CacheAllocator caches = CacheAllocator.__new__(CacheAllocator)
        cdef uint32_t status
        self._setting_up = True
        try:
            status = caches.open(self._runtime, parsed.device_id, parsed.malloc_policy, parsed.tensor_alignment,
                                 parsed.cache_manager_mode, parsed.device_pool, parsed.host_pool)
            if status == LLM_SUCCESS:
                if self._caches is not None:
                    caches.continue_ids_after(self._caches)
                self._caches = caches
                self._generation += 1
                # Before the engine says it is initialized: every call that sees it so finds them.
                services.initialization = self._generation
                self._services = services
                self._initialized = True
                _track_live_engine(self)
        finally:
            self._setting_up = False
        return status

    cdef void wait_for_set_up(self):
        """Wait out another thread's set-up of this engine (it releases the GIL while it
        allocates a pool), so that one Initialize sets up and the others see it done."""
        while self._setting_up:
            with nogil:
                sched_yield()

    cdef bint teardown_pending(self):
        """From Finalize to the teardown, which waits for the last exported memory."""
        return self._caches is not None and self._caches.teardown_pending

    cdef object teardown_pending_failure(self):
        self._runtime.explain(f"Finalize is running, or {self._caches.stats.num_pending} caches of the last "
                              f"initialization are still exported to views, arrays or tensors")
        return _status(LLM_FAILED)

    # Hot path: typed locals only, no Python object but the ones the caller gets back.
    cdef uint32_t allocate(self, CacheDesc desc, Cache cache):
        cdef int64_t cache_id
        cdef uintptr_t first_addr
        cdef uint64_t stride
        cdef uint32_t status
        self._runtime.last_error = ACL_SUCCESS
        if not self._initialized:
            return LLM_FAILED
        status = self._caches.allocate(&desc.fields, &cache_id, &first_addr, &stride)
        if status == LLM_SUCCESS:
            _fill_cache(cache, self, cache_id, desc, first_addr, stride, None)
        return status

    cdef uint32_t register(self, CacheDesc desc, object addrs, Cache cache):
        cdef int64_t cache_id
        cdef uint32_t status
        # Convert the Python argument first: an address's __index__ may run any code.
        if not isinstance(addrs, (list, tuple)):
            raise TypeError(f"addrs must be a list or tuple of ints, not {type(addrs).__name__}")
        tensor_addrs = tuple([as_integer(addr, "tensor address") for addr in tuple(addrs)])
        self._runtime.last_error = ACL_SUCCESS
        if not self._initialized:
            return LLM_FAILED
        status = self._caches.register(&desc.fields, tensor_addrs, &cache_id)
        if status == LLM_SUCCESS:
            _fill_cache(cache, self, cache_id, desc, tensor_addrs[0], 0, tensor_addrs)
        return status

    cdef uint32_t deallocate(self, int64_t cache_id, bint registered):
        self._runtime.last_error = ACL_SUCCESS
        if not self._initialized:
            return LLM_FAILED
        return self._caches.free(cache_id, registered)

    cdef _CacheMemory export_memory(self, int64_t cache_id):
        """The owner of a live cache's memory (views, copies and transfers hold it)."""
        if self._caches is None:
            raise ValueError(f"cache {cache_id} is not allocated: it was deallocated or its engine finalized")
        return self._caches.export(cache_id)

    def pin(self, int64_t cache_id):
        """An object that holds cache `cache_id`'s memory for as long as it lives: a
        DeallocateCache meanwhile frees the memory when it is dropped (how a transfer keeps the
        caches it moves). ValueError for a cache this engine does not hold."""
        return self.export_memory(cache_id)

    # What llmdd.transfer reads of the engine's caches. Statuses of the transfer calls below.

    def _registry(self):
        """This initialization's one CacheRegistry, made on first need; the drop-in's cache managers
        and the transfer service use it. LLMException when the engine is not initialized."""
        if not self._initialized:
            raise self.exception(LLM_FAILED, "registry")
        return self._services.registry()

    def _transfer_service(self):
        """This initialization's one TransferService (llmdd.transfer), made on first need; the
        drop-in's calls use it as the C++ API's do. LLMException when the engine is not initialized."""
        if not self._initialized:
            raise self.exception(LLM_FAILED, "transfer")
        return self._services.service()

    def _holds(self, Cache cache not None):
        """Whether this engine's current initialization allocated or registered `cache` (its id
        alone could name a cache of another engine, or of an earlier initialization)."""
        return cache.belongs_to(self)

    @property
    def _initialization(self):
        """Counts this engine's initializations: a cache id names one cache only within one."""
        return self._generation

    def _layout_by_id(self, int64_t cache_id):
        """The CacheLayout of live cache `cache_id` (allocated or registered) of this engine's
        current initialization, or None."""
        if not self._initialized:
            return None
        return self._caches.table.layout(cache_id)

    def _layout(self, Cache cache not None):
        """The CacheLayout of a live cache of this engine's current initialization; ValueError
        for any other cache."""
        if cache.live_engine() is not self:
            raise ValueError(f"cache {cache._cache_id} belongs to another engine")
        return self._caches.table.layout(cache._cache_id)

    # Same-host transfers through the runtime's IPC memory (docs/facts.md section 10): the
    # transfer layer exports device memory of this engine to one peer process (the pid from the
    # peer's _ipc_pid), the peer imports the key and copies with _ipc_copy, and both close the key,
    # the importer first, the exporter before the memory is freed. Each answers a status, with the
    # runtime's error kept for LLMException; TypeError only for an argument of the wrong type.

    def _ipc_pid(self):
        """(status, pid): the pid under which this process imports, for exporters to allow."""
        cdef int32_t pid = -1
        cdef aclError error
        if not self._initialized:
            return _status(LLM_FAILED), -1
        error = ipc_process_id(&pid)
        if error != ACL_SUCCESS:
            return _status(self._runtime.failure(error)), -1
        return _status(LLM_SUCCESS), pid

    def _ipc_export(self, address, nbytes, peer_pid):
        """(status, key): device bytes [address, address + nbytes) exported to process `peer_pid`
        alone; key is '' unless the status is LLM_SUCCESS. The bytes are a runtime allocation, or
        part of one from a page boundary on (ACL's driver: a device page, 2 MiB for huge pages; the
        host runtime: 4 KiB, and only allocations of 1 MiB or more)."""
        cdef char key[LLMDD_ACL_IPC_KEY_BYTES]
        cdef aclError error
        address = as_integer(address, "address")
        nbytes = as_integer(nbytes, "nbytes")
        peer_pid = as_integer(peer_pid, "peer_pid")
        if not self._initialized:
            return _status(LLM_FAILED), ""
        if (not _in_range(address, 1, <uintptr_t>-1) or not _in_range(nbytes, 1, <uintptr_t>-1 - address)
                or not _in_range(peer_pid, 1, INT32_MAX)):
            return _status(LLM_PARAM_INVALID), ""
        self._runtime.last_error = ACL_SUCCESS
        error = self._runtime.ipc_export(<void*><uintptr_t>address, nbytes, peer_pid, key)
        if error != ACL_SUCCESS:
            return _status(self._runtime.failure(error)), ""
        return _status(LLM_SUCCESS), key.decode("ascii")

    def _ipc_import(self, key, peer_access=False):
        """(status, address, nbytes): the exported bytes `key` names, mapped into this process;
        address is 0 unless the status is LLM_SUCCESS. nbytes: how many bytes the export holds, 0
        where the runtime does not say (ACL has no such query; the host runtime does). Importing
        a key again hands out the same address, and each import is closed on its own.
        `peer_access`: the exporter is on another device."""
        cdef void* address = NULL
        cdef uint64_t nbytes = 0
        cdef aclError error
        encoded = _ipc_key(key)
        if not self._initialized:
            return _status(LLM_FAILED), 0, 0
        if encoded is None:
            return _status(LLM_PARAM_INVALID), 0, 0
        self._runtime.last_error = ACL_SUCCESS
        error = self._runtime.ipc_import(encoded, bool(peer_access), &address)
        if error != ACL_SUCCESS:
            return _status(self._runtime.failure(error)), 0, 0
        if llmdd_sim_ipc_import_bytes(address, &nbytes) != 0:
            nbytes = 0
        return _status(LLM_SUCCESS), <uintptr_t>address, nbytes

    def _ipc_close(self, key):
        """Status of closing `key`: one import of it made by this process, or its export (which
        no process can import from then on)."""
        cdef aclError error
        encoded = _ipc_key(key)
        if not self._initialized:
            return _status(LLM_FAILED)
        if encoded is None:
            return _status(LLM_PARAM_INVALID)
        self._runtime.last_error = ACL_SUCCESS
        error = self._runtime.ipc_close(encoded)
        return _status(self._runtime.failure(error) if error != ACL_SUCCESS else LLM_SUCCESS)

    def _ipc_copy(self, dst_addrs, src_addrs, sizes):
        """Status of the device-to-device copies of sizes[i] bytes from src_addrs[i] to
        dst_addrs[i], in order; a failure stops the rest. Either side may be imported memory."""
        cdef Py_ssize_t count, i
        cdef uint64_t* regions = NULL     # destinations, then sources, then sizes
        cdef aclError error
        dst_addrs, src_addrs, sizes = tuple(dst_addrs), tuple(src_addrs), tuple(sizes)
        count = len(dst_addrs)
        if not self._initialized:
            return _status(LLM_FAILED)
        if count == 0 or len(src_addrs) != count or len(sizes) != count:
            return _status(LLM_PARAM_INVALID)
        regions = <uint64_t*>malloc(3 * count * sizeof(uint64_t))
        if regions == NULL:
            raise MemoryError()
        try:
            for i in range(count):
                dst, src, size = (as_integer(dst_addrs[i], "dst address"), as_integer(src_addrs[i], "src address"),
                                  as_integer(sizes[i], "size"))
                if (not _in_range(size, 1, <uintptr_t>-1) or not _in_range(dst, 1, <uintptr_t>-1 - size)
                        or not _in_range(src, 1, <uintptr_t>-1 - size)):
                    return _status(LLM_PARAM_INVALID)
                regions[i], regions[count + i], regions[2 * count + i] = dst, src, size
            self._runtime.last_error = ACL_SUCCESS
            error = self._runtime.copy_device_regions(regions, regions + count, regions + 2 * count, count)
            return _status(self._runtime.failure(error) if error != ACL_SUCCESS else LLM_SUCCESS)
        finally:
            free(regions)

    cdef object transfer_call(self, str call, tuple arguments):
        """Convert the arguments (their Python code may run, even re-enter this engine), then
        look at the engine's state, then act with this initialization's transfer service."""
        from .transfer._cpp_api import CALLS
        act = CALLS[call](*arguments)
        self._runtime.last_error = ACL_SUCCESS
        if not self._initialized:
            return _status(LLM_FAILED)
        return self._services.act(act)

    cdef uint32_t start_listening(self):
        """Serve this engine's caches to the clusters that link to it (llm.ListenIpInfo) from
        Initialize on; a listener that cannot start fails the Initialize, which finalizes the
        engine again (nothing half-made stays)."""
        try:
            self._services.service()
        except LLMException as error:
            self._services.stop()
            self.finalize()
            self._runtime.last_detail = str(error)
            return error.status_code
        return LLM_SUCCESS

    cdef void finalize_with_transfers(self):
        if self._services is not None:   # links end before the caches go; no new service is made
            self._services.stop()
        self.finalize()

    cdef void finalize(self):
        self.wait_for_set_up()   # an Initialize under way on another thread finishes first
        if not self._initialized:
            return
        # New calls fail from here on, and Initialize answers LLM_FAILED until the teardown.
        self._initialized = False
        self._caches.close()

    cdef void abandon(self):
        """Forget the runtime state without a runtime call (a forked child's copy of it); the
        fork handler abandons the allocator on its own."""
        self._initialized = False
        self._abandoned = True
        if self._services is not None:
            self._services.abandon()

    def __dealloc__(self):
        self.finalize()

    cdef object exception(self, uint32_t status, str call):
        return self._runtime.exception(status, call, self._initialized)


@cython.auto_pickle(False)
cdef class LlmDataDist(EngineCore):
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

    def Initialize(self, options):
        """Set up the runtime on the device the options name. A second call is a no-op."""
        self.wait_for_set_up()
        if self._initialized:
            return _status(LLM_SUCCESS)
        if self._abandoned:
            self._runtime.explain("this engine was initialized before a fork; make a new one in this process")
            return _status(LLM_FAILED)
        if self.teardown_pending():
            return self.teardown_pending_failure()
        from ._engine_services import EngineServices   # not at import: `import llmdd` stays light
        from ._options import OptionError, parse_options
        try:
            parsed = parse_options(options)
        except OptionError as error:
            self._runtime.explain(str(error))
            return error.status_code
        services = EngineServices(self, parsed.transfer)
        # That ran Python code: another thread may have begun a set-up or Finalize.
        self.wait_for_set_up()
        if self._initialized:
            return _status(LLM_SUCCESS)
        if self.teardown_pending():
            return self.teardown_pending_failure()
        status = self.set_up(parsed, services)
        if status == LLM_SUCCESS and parsed.transfer.listen_ip_info:
            status = self.start_listening()
        return _status(status)

    def AllocateCache(self, CacheDesc cache_desc not None, Cache cache not None):
        """Allocate cache_desc.num_tensors tensors; fill `cache` on LLM_SUCCESS."""
        return _status(self.allocate(cache_desc, cache))

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

    # Transfers between clusters (docs/facts.md section 1) run in llmdd.transfer: sockets, threads and
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

    def SetRole(self, role, options=None):
        """Take `role` (an LlmRole), and serve linking peers on options' llm.ListenIpInfo from now
        on, or none without it: the listener starts, moves to a new address or stops (the role
        itself changes nothing else, as in LLM-DataDist v2). LLM_EXIST_LINK while any link, made
        either way, is up: unlink first. LLM_PARAM_INVALID for a malformed address."""
        new_role = enum_class(ROLE_ENUM)(as_integer(role, "role"))
        from ._options import OptionError, parse_role_options
        malformed = None
        try:
            listen_ip_info = parse_role_options({} if options is None else options)
        except OptionError as error:
            malformed = error
        self._runtime.last_error = ACL_SUCCESS
        if not self._initialized:
            return _status(LLM_FAILED)
        if malformed is not None:
            self._runtime.explain(str(malformed))
            return malformed.status_code
        status = self._services.listen(listen_ip_info)
        if status == LLM_SUCCESS:
            self._role = new_role
        return _status(status)

    def set_role(self, role, options=None):
        """SetRole, raising LLMException unless it succeeds."""
        status = self.SetRole(role, options)
        if status != LLM_SUCCESS:
            raise self.exception(status, "set_role")

    def Finalize(self):
        """End this engine's links, free every cache it holds and release the device. Later
        calls answer LLM_FAILED until the next Initialize. Memory still exported to views,
        arrays or tensors (or pinned by a transfer) is freed, and the device released, when the
        last of them is gone."""
        self.finalize_with_transfers()

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
        """Free a cache given as a Cache or a cache_id; LLMException when it cannot be freed. A
        Cache another engine, or an earlier initialization of this one, allocated is none of this
        initialization's caches, whatever its id (LLM_KV_CACHE_NOT_EXIST)."""
        cdef uint32_t status
        if not isinstance(cache, Cache):
            status = self.deallocate(as_integer(cache, "cache"), False)
        elif (<Cache>cache)._engine is None or (<Cache>cache).belongs_to(self) or not self._initialized:
            status = self.deallocate((<Cache>cache)._cache_id, False)
        else:
            status = LLM_KV_CACHE_NOT_EXIST
        if status != LLM_SUCCESS:
            raise self.exception(status, "deallocate_cache")

    def CopyKvCache(self, Cache src not None, Cache dst not None, uint32_t src_batch_index=0,
                    uint32_t dst_batch_index=0, uint64_t offset=0, int64_t size=-1):
        """Copy batch entry src_batch_index of every tensor of src to dst_batch_index of dst,
        from byte `offset`, `size` bytes (-1: the rest of the entry). Device to device and
        device to host only."""
        return _status(_copy_kv_cache(self, src, dst, src_batch_index, dst_batch_index, offset, size))

    def CopyKvBlocks(self, Cache src not None, Cache dst not None, src_blocks, dst_blocks_list):
        """Copy block src_blocks[k] (block: shape[0] splits a tensor) of every tensor of src to
        block dst_blocks[k] of dst, for each dst_blocks in dst_blocks_list. D2D, D2H and H2D."""
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

    def memory_stats(self):
        """The engine's allocation statistics, exact and read without a runtime call.

        bytes_in_use / peak_bytes_in_use: device bytes held for live caches (whole pages from a
        pool; the slab and its alignment slack without one); host_bytes_in_use and its peak:
        the same for host-pool caches; num_caches, num_allocs, num_frees; num_failed_allocs:
        AllocateCache calls that found no memory or met a runtime error. With a pool also
        pool_bytes, pool_free_bytes and largest_free_block (host_ prefixed for the host pool).
        """
        cdef MemoryStats none
        if self._caches is None:
            memset(&none, 0, sizeof(none))
            return dict(none)
        return self._caches.memory_stats(self._initialized)

    def reset_peak_memory_stats(self):
        """Make the peaks the current values."""
        if self._caches is not None:
            self._caches.reset_peaks()

    def device_memory_info(self):
        """(free, total) bytes of the engine's device, from aclrtGetMemInfo."""
        cdef size_t free_bytes = 0, total_bytes = 0
        cdef aclError error
        if not self._initialized:
            raise self.exception(LLM_FAILED, "device_memory_info")
        error = self._runtime.memory_info(&free_bytes, &total_bytes)
        if error != ACL_SUCCESS:
            raise self.exception(self._runtime.failure(error), "device_memory_info")
        return free_bytes, total_bytes

    def __repr__(self):
        state = f"device {self._runtime.device}" if self._initialized else "not initialized"
        return f"LlmDataDist(cluster_id={self.cluster_id}, role={enum_class(ROLE_ENUM)(self._role)!r}, {state})"

include "_copy.pxi"
