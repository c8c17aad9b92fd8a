"""Mover: the pulls and pushes of a TransferAgent over its links.

Each checks its arguments and the rules of its caches. A pull exposes the local cache to the
peer's writes and asks the peer to write what its key names into it (PULL: the peer plans and
moves the bytes; _server). A push asks the peer what its key names (RESOLVE: the peer pins the
cache and exposes it), plans the segments (_plan), moves them in one Mooncake batch write, and
lets the peer unpin (UNPIN). A layer push (the drop-in's transfer_cache_async, one layer at a
time) is a push by key, or to raw addresses the peer checks against its remote-accessible memory
(RESOLVE by memory); the layers of one transfer into one destination share a HeldDestination,
resolved once and kept layer by layer (KEEP). Statuses are llmdd's LLMStatusCode members; nothing
moves until every rule has been checked.
"""
import contextlib
import logging

from .._cache_keys import _Key
from .._checks import require, require_int
from .._desc import LLMStatusCode
from .._limits import INT64, TENSOR_NUM_PER_LAYER, UINT32, UINT64
from .._status import LLMException, engine_status
from . import _plan
from . import _protocol as wire
from ._channel import LinkFailure
from ._writes import write_segments

log = logging.getLogger("llmdd.transfer")

SUCCESS = LLMStatusCode.LLM_SUCCESS
PARAM_INVALID = LLMStatusCode.LLM_PARAM_INVALID
# A pull waits for its answer the sync wait (llm.SyncKvCacheWaitTime) and the time its bytes take
# at this rate: a peer that stopped is noticed about as soon as the sync wait says, a large pull
# on a slow network still completes.
SLOWEST_BYTES_PER_S = 100e6


def _check_int(name, value, bounds):
    require_int(name, value, bounds, PARAM_INVALID)


def _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer):
    for name, layer_range in (("src_layer_range", src_layer_range), ("dst_layer_range", dst_layer_range)):
        require(layer_range is None or isinstance(layer_range, range),
                f"{name} must be a range or None, not {type(layer_range).__name__}", PARAM_INVALID)
    _check_int("tensor_num_per_layer", tensor_num_per_layer, UINT32)


def _check_blocks(name, blocks):
    require(isinstance(blocks, (list, tuple)) and all(type(b) is int for b in blocks),
            f"{name} must be a list or tuple of ints", PARAM_INVALID)
    return list(blocks)


def _check_key(key):
    require(isinstance(key, _Key), f"a cache key is a CacheKey, BlocksCacheKey or CacheKeyByIdAndIndex, not "
            f"{type(key).__name__}", PARAM_INVALID)
    return key


def _kind_rules(entry):
    """Whether CANN's Python rules hold for a transfer with local cache `entry`: blocks caches and
    whole caches apart. A cache of the C++ API (is_blocks_cache None) takes blocks of any cache."""
    return entry.is_blocks_cache is not None


def _require_kind(layout, blocks, side):
    if layout.is_blocks_cache != blocks:
        raise _plan.PlanError(f"the {side} cache must {'' if blocks else 'not '}be a blocks cache")


def _wire_layer_range(layer_range):
    return None if layer_range is None else [layer_range.start, layer_range.stop, layer_range.step]


def _written(mode, batch_index, size, dst_blocks, dst_layer_range, tensor_num_per_layer):
    """UNPIN's `written`: the destination's side of a push that moved, from which the peer finds
    the bytes it copies back (_plan.destination_extents), whatever the number of segments."""
    return {"mode": mode, "batch_index": batch_index, "size": size, "dst_blocks": list(dst_blocks),
            "dst_layer_range": _wire_layer_range(dst_layer_range), "tensor_num_per_layer": tensor_num_per_layer}


def _most_bytes(entry, mode, request):
    """The most bytes a pull into `entry` may write: every tensor's blocks or batch entry."""
    entries = 1 if mode == "cache" else len(request["dst_blocks"])
    return len(entry.tensor_addrs) * entries * entry.block_bytes


class HeldDestination:
    """The destination of one layer-wise transfer on one link (a config of transfer_cache_async):
    RESOLVEd at its first layer and held, pinned and exposed by the peer, until its last layer or
    Mover.release_destination, so that each further layer costs a write and a KEEP rather than a
    RESOLVE, a write and an UNPIN. addresses: every raw address the transfer names, resolved at
    once (a TransferConfig's), or None for a destination by key."""

    __slots__ = ("addresses", "link", "target", "pin", "layout")

    def __init__(self, addresses=None):
        self.addresses = None if addresses is None else list(addresses)
        self.forget()

    def hold(self, link, target, pin, layout):
        self.link, self.target, self.pin, self.layout = link, target, pin, layout

    def forget(self):
        self.link = self.target = self.pin = self.layout = None

    def layer_of(self, dst_addrs):
        """Which layer of `addresses` (len(dst_addrs) a layer) dst_addrs are, or None (also for a
        destination by key)."""
        if self.addresses is None:
            return None
        count = len(dst_addrs)
        for layer, start in enumerate(range(0, len(self.addresses) - count + 1, count)):
            if self.addresses[start:start + count] == dst_addrs:
                return layer
        return None


class Mover:
    """Pulls and pushes over an agent's links. registry: the agent's (entry, find, pin,
    release_key); link_for(cluster id): the link a transfer takes, or None; using_mooncake(): a
    context that holds the agent's Mooncake engines for one transfer (None once the agent closed);
    sync_timeout_s bounds each control round trip; same_host: the agent's SameHostMemory, or None.
    Which rules a transfer follows is its local cache's (_kind_rules)."""

    def __init__(self, registry, link_for, using_mooncake, sync_timeout_s, same_host):
        self._registry = registry
        self._same_host = same_host   # this side's SameHostMemory, or None: the network path only
        self._link_for = link_for
        self._using_mooncake = using_mooncake
        self._sync_timeout_s = sync_timeout_s

    def pull_cache(self, remote_cluster_id, key, dst_entry, batch_index=0, size=-1, src_layer_range=None,
                   dst_layer_range=None, tensor_num_per_layer=TENSOR_NUM_PER_LAYER):
        """One batch entry of the remote cache `key` names (a CacheKey or CacheKeyByIdAndIndex)
        into entry batch_index of dst_entry. A CacheKey's reference is dropped after a success."""
        kind_rules = _kind_rules(dst_entry)
        _check_key(key)
        _check_int("batch_index", batch_index, UINT32)
        _check_int("size", size, (-1, INT64[1]))
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        if key.KIND == "blocks" or size == 0 or (kind_rules and dst_entry.is_blocks_cache):
            return PARAM_INVALID
        return self._pull(remote_cluster_id, dst_entry, key, "cache", kind_rules, batch_index=batch_index, size=size,
                          src_blocks=[], dst_blocks=[], src_layer_range=src_layer_range,
                          dst_layer_range=dst_layer_range, tensor_num_per_layer=tensor_num_per_layer)

    def pull_blocks(self, remote_cluster_id, src_key, dst_entry, src_blocks=(), dst_blocks=(),
                    src_layer_range=None, dst_layer_range=None, tensor_num_per_layer=TENSOR_NUM_PER_LAYER):
        """Blocks src_blocks of the remote blocks cache (a BlocksCacheKey; under the C++ API's
        rules, any key naming a cache) into dst_blocks of dst_entry; with no src_blocks the
        remote batch entry the key names is cut into dst_blocks."""
        kind_rules = _kind_rules(dst_entry)
        _check_key(src_key)
        src_blocks, dst_blocks = _check_blocks("src_blocks", src_blocks), _check_blocks("dst_blocks", dst_blocks)
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        by_blocks = bool(src_blocks)
        if not dst_blocks or (kind_rules and (not dst_entry.is_blocks_cache
                                              or by_blocks != (src_key.KIND == "blocks"))):
            return PARAM_INVALID
        return self._pull(remote_cluster_id, dst_entry, src_key, "blocks" if by_blocks else "entry_blocks",
                          kind_rules, batch_index=0, size=-1, src_blocks=src_blocks, dst_blocks=dst_blocks,
                          src_layer_range=src_layer_range, dst_layer_range=dst_layer_range,
                          tensor_num_per_layer=tensor_num_per_layer)

    def push_cache(self, remote_cluster_id, dst_key, src_entry, src_batch_index=0, size=-1, src_layer_range=None,
                   dst_layer_range=None, tensor_num_per_layer=TENSOR_NUM_PER_LAYER):
        """Entry src_batch_index of src_entry into the remote_accessible cache dst_key names (a
        CacheKeyByIdAndIndex); size must be -1, as in CANN."""
        kind_rules = _kind_rules(src_entry)
        _check_key(dst_key)
        _check_int("src_batch_index", src_batch_index, UINT32)
        _check_int("size", size, (-1, INT64[1]))
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        if dst_key.KIND != "id" or size != -1 or (kind_rules and src_entry.is_blocks_cache):
            return PARAM_INVALID
        local = _plan.Layout.of_entry(src_entry)

        def plan(remote, remote_batch_index):
            if kind_rules:
                _require_kind(remote, False, "destination")
            pairs = _plan.tensor_pairs(local, remote, src_layer_range, dst_layer_range, tensor_num_per_layer)
            segments = _plan.cache_segments(local, remote, src_batch_index, remote_batch_index, size, pairs)
            # size is -1: each tensor's whole source entry, local.block_bytes bytes.
            return segments, _written("cache", remote_batch_index, local.block_bytes, [], dst_layer_range,
                                      tensor_num_per_layer)
        return self._push(remote_cluster_id, wire.key_fields(dst_key), src_entry, plan)

    def push_blocks(self, remote_cluster_id, dst_key, src_entry, src_blocks=(), dst_blocks=(),
                    src_layer_range=None, dst_layer_range=None, tensor_num_per_layer=TENSOR_NUM_PER_LAYER):
        """Blocks src_blocks of src_entry into dst_blocks of the remote_accessible blocks cache
        dst_key (a BlocksCacheKey; under the C++ API's rules, a key by id) names."""
        kind_rules = _kind_rules(src_entry)
        _check_key(dst_key)
        src_blocks, dst_blocks = _check_blocks("src_blocks", src_blocks), _check_blocks("dst_blocks", dst_blocks)
        _check_layer_arguments(src_layer_range, dst_layer_range, tensor_num_per_layer)
        if not dst_blocks or (kind_rules and (dst_key.KIND != "blocks" or not src_entry.is_blocks_cache)):
            return PARAM_INVALID
        local = _plan.Layout.of_entry(src_entry)

        def plan(remote, remote_batch_index):
            if kind_rules:
                _require_kind(remote, True, "destination")
            pairs = _plan.tensor_pairs(local, remote, src_layer_range, dst_layer_range, tensor_num_per_layer)
            segments = _plan.blocks_segments(local, remote, src_blocks, dst_blocks, pairs)
            return segments, _written("blocks", 0, -1, dst_blocks, dst_layer_range, tensor_num_per_layer)
        return self._push(remote_cluster_id, wire.key_fields(dst_key), src_entry, plan)

    def push_layer(self, remote_cluster_id, dst_key, src_entry, src_layer, dst_layer, src_batch_index=0,
                   src_blocks=(), dst_blocks=(), dst_block_bytes=0, tensor_num_per_layer=TENSOR_NUM_PER_LAYER,
                   held=None, release=True):
        """Layer src_layer of src_entry into layer dst_layer of the remote-accessible cache dst_key
        names (a BlocksCacheKey or a key by id): one step of a layer-wise transfer, by CANN's
        TransferCache rules (_check_layer_blocks). held: the transfer's HeldDestination (None: a
        push of its own), released after this layer when `release`."""
        _check_key(dst_key)
        _check_int("dst_layer", dst_layer, UINT32)
        checked = _check_layer_arguments_of(src_entry, src_layer, src_batch_index, src_blocks, dst_blocks,
                                            dst_block_bytes, tensor_num_per_layer)
        if checked is None or dst_key.KIND == "cache":
            return PARAM_INVALID
        plan = _layer_plan(*checked, dst_layer, remote_kind_rules=_kind_rules(src_entry))
        return self._push(remote_cluster_id, wire.key_fields(dst_key), src_entry, plan, held, release)

    def push_layer_to_addresses(self, remote_cluster_id, dst_addrs, src_entry, src_layer, src_batch_index=0,
                                src_blocks=(), dst_blocks=(), dst_block_bytes=0,
                                tensor_num_per_layer=TENSOR_NUM_PER_LAYER, held=None, release=True):
        """Layer src_layer of src_entry into the peer's memory at dst_addrs, one address a tensor of
        the layer (CANN's TransferConfig): the peer takes the write only when every address's
        bytes lie inside its remote-accessible memory (RESOLVE by memory). held, release: as
        push_layer's; dst_addrs must then be one layer of held.addresses, all of which the peer
        checks at the first layer."""
        require(isinstance(dst_addrs, (list, tuple)) and all(type(addr) is int for addr in dst_addrs),
                "dst_addrs must be a list or tuple of ints", PARAM_INVALID)
        checked = _check_layer_arguments_of(src_entry, src_layer, src_batch_index, src_blocks, dst_blocks,
                                            dst_block_bytes, tensor_num_per_layer)
        if checked is None or len(dst_addrs) != tensor_num_per_layer:
            return PARAM_INVALID
        local, _, _, src_blocks, dst_blocks, _, _ = checked
        dst_layer, named = (0, dst_addrs) if held is None else (held.layer_of(list(dst_addrs)), held.addresses)
        if dst_layer is None:
            return PARAM_INVALID
        # The peer's memory as a layout of the named layers: an entry, or blocks up to the last one named.
        batch = max(dst_blocks) + 1 if dst_blocks else 1
        block_bytes = dst_block_bytes if dst_blocks and not src_blocks else local.block_bytes
        target = wire.memory_fields(remote_cluster_id, named, batch, block_bytes)
        if not wire.is_push_target(target):
            return PARAM_INVALID
        plan = _layer_plan(*checked, dst_layer, remote_kind_rules=False)
        return self._push(remote_cluster_id, target, src_entry, plan, held, release)

    @staticmethod
    def hold_destination(dst_addrs=None):
        """A HeldDestination for one layer-wise transfer's pushes into one destination."""
        return HeldDestination(dst_addrs)

    def release_destination(self, held):
        """Ends the pin `held` holds, if any (UNPIN, keeping nothing more): every way a layer-wise
        transfer ends. Never raises; a link that ended took the pin with it."""
        if held.link is not None:
            self._unpin(held, None, SUCCESS)

    def _may_transfer(self, local_entry):
        """In remote-access mode (llm.EnableRemoteCacheAccessible) a pull or push moves only
        remote-accessible local caches: v2's transfer client refuses the others with
        LLM_PARAM_INVALID (data_transfer_client.cc PullCacheByGet, layer_wise_transfer_job.cc)."""
        if self._registry.remote_cache_accessible and not local_entry.remote_accessible:
            log.warning("a transfer with cache %d refused: it is not remote accessible", local_entry.cache_id)
            return False
        return True

    def _pin_local(self, entry, hold):
        try:
            hold.enter_context(self._registry.pin(entry.cache_id))
        except LLMException as error:
            return engine_status(error.status_code)
        except (LookupError, ValueError):   # the registry's answer for a cache it does not hold
            return LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        return SUCCESS

    def _engine_and_pin(self, local_entry, hold):
        """(the agent's Mooncake engines, SUCCESS), both held in `hold` for one transfer; (None,
        LLM_LINK_FAILED) when the agent closed, or its data-plane helper died, since the link was
        looked up; or the pin's failure."""
        engine = hold.enter_context(self._using_mooncake())
        if engine is None:
            return None, LLMStatusCode.LLM_LINK_FAILED
        return engine, self._pin_local(local_entry, hold)

    def _pull(self, remote_cluster_id, local_entry, key, mode, kind_rules, **request):
        """One PULL: local_entry is pinned and exposed to the peer's writes until the peer answers
        (it plans, writes and unpins its own cache: one round trip). The peer checks what depends
        on its cache; what a pull names that no wire message can carry, or that does not fit the
        local cache, is refused here."""
        blocks = (request["src_blocks"], request["dst_blocks"])
        layer_ranges = [_wire_layer_range(request["src_layer_range"]), _wire_layer_range(request["dst_layer_range"])]
        if not all(len(side) <= wire.MAX_BLOCKS and all(0 <= block <= UINT64[1] for block in side) for side in blocks) \
                or not all(wire.is_layer_range(layer_range) for layer_range in layer_ranges):
            return PARAM_INVALID
        link = self._link_for(remote_cluster_id)
        if link is None:
            return LLMStatusCode.LLM_NOT_YET_LINK
        if not self._may_transfer(local_entry):
            return PARAM_INVALID
        try:
            # What the peer may write here: staged before PULL, copied back after its success.
            extents = _plan.destination_extents(_plan.Layout.of_entry(local_entry), mode, request["batch_index"],
                                                request["size"], request["dst_blocks"], request["dst_layer_range"],
                                                request["tensor_num_per_layer"])
        except _plan.PlanError as error:
            log.warning("a pull into cache %d refused: %s", local_entry.cache_id, error)
            return PARAM_INVALID
        regions = [tuple(region) for region in local_entry.regions]
        with link.transfer_lock, contextlib.ExitStack() as hold:
            engine, status = self._engine_and_pin(local_entry, hold)
            if status != SUCCESS:
                return status
            # Exposed to the peer's writes for this pull only: exported to its pid alone when it
            # shares this host's IPC memory and the runtime can export the cache, else through a
            # Mooncake window (a data-plane helper's mirror of the cache, or the cache in-process).
            exported = self._same_host.export(regions, link.peer_pid) if link.peer_pid and self._same_host else None
            window = None
            if exported is not None:
                hold.callback(self._same_host.close, [key for _, _, key in exported])
            else:
                window = engine.expose(regions)
                if window is None:
                    return LLMStatusCode.LLM_FAILED
                hold.callback(window.close)   # nothing copied back, unless the pull succeeds below
            destination = _exposed_layout(window, local_entry)
            # What a success may leave unwritten must come back as it was: through a helper's
            # mirror, the bytes are staged there first (in-process, there is nothing to stage).
            if destination is None or not (window is None or _plan.writes_every_extent(mode, request["size"])
                                           or window.stage(extents)):
                return LLMStatusCode.LLM_FAILED
            body = dict(request, key=wire.key_fields(key), release_key=mode == "cache" and key.KIND == "cache",
                        mode=mode, kind_rules=kind_rules, destination=destination, src_layer_range=layer_ranges[0],
                        dst_layer_range=layer_ranges[1], src_blocks=blocks[0], dst_blocks=blocks[1], ipc=exported)
            # The answer comes once the bytes have moved: the wait is the sync wait and the time
            # the most bytes this pull may write take at the slowest rate we accept.
            timeout_s = self._sync_timeout_s + _most_bytes(local_entry, mode, request) / SLOWEST_BYTES_PER_S
            try:
                reply = link.request(wire.MessageType.PULL, body, timeout_s)
            except LinkFailure as failure:
                return failure.status
            status = engine_status(reply["status"])
            if window is not None:
                window.close(extents if status == SUCCESS else ())
            return status

    def _push(self, remote_cluster_id, target, local_entry, plan, held=None, release=True):
        """RESOLVE `target` (a wire key, or memory: the peer pins what it names and exposes it to
        our writes), plan, one batch write, UNPIN. Everything is checked before a byte moves.
        Into a HeldDestination, RESOLVE comes only when it holds no pin on this link for this
        target, and a success without `release` ends in KEEP: the pin stays for the next layer."""
        held = HeldDestination() if held is None else held
        link = self._link_for(remote_cluster_id)
        if held.link is not None and (held.link is not link or link.broken or held.target != target):
            # The link ended (its pin with it) or was made again, or another target is named.
            self.release_destination(held)
        if link is None:
            return LLMStatusCode.LLM_NOT_YET_LINK
        if not self._may_transfer(local_entry):
            return PARAM_INVALID
        with link.transfer_lock, contextlib.ExitStack() as hold:
            engine, status = self._engine_and_pin(local_entry, hold)
            if status != SUCCESS:
                return status
            if held.link is None:
                try:
                    reply = link.request(wire.MessageType.RESOLVE, {"key": target}, self._sync_timeout_s)
                except LinkFailure as failure:
                    return failure.status
                if reply["status"] != SUCCESS or reply["layout"] is None:
                    return engine_status(reply["status"])
                held.hold(link, target, reply["pin"], reply["layout"])
            status, written = self._write(link, engine, held.layout, local_entry, plan)
            if release or status != SUCCESS:
                return self._unpin(held, written, status)
            return self._keep(held, written)

    def _unpin(self, held, written, status):
        """UNPIN of the pin `held` holds, which it forgets: `status` (the push's), or the
        UNPIN's failure after a success."""
        link, pin = held.link, held.pin
        held.forget()
        try:
            unpinned = link.request(wire.MessageType.UNPIN, {"pin": pin, "written": written}, self._sync_timeout_s)
        except LinkFailure as failure:
            # The peer drops the pin with the connection.
            return failure.status if status == SUCCESS else status
        if status == SUCCESS and unpinned["status"] != SUCCESS:
            return engine_status(unpinned["status"])
        return status

    def _keep(self, held, written):
        """KEEP of what a layer wrote into `held`, whose pin stays: SUCCESS, or the failure, the
        pin then ended."""
        try:
            kept = held.link.request(wire.MessageType.KEEP, {"pin": held.pin, "written": written},
                                     self._sync_timeout_s)
        except LinkFailure as failure:
            held.forget()   # the peer drops the pin with the connection
            return failure.status
        if kept["status"] != SUCCESS:
            return self._unpin(held, None, engine_status(kept["status"]))
        return SUCCESS

    def _write(self, link, engine, layout_fields, local_entry, plan):
        """(status, UNPIN's `written`: None unless every byte moved)."""
        remote = _plan.Layout(tuple(layout_fields["tensor_addrs"]), layout_fields["tensor_bytes"],
                              layout_fields["batch"], layout_fields["block_bytes"], layout_fields["is_blocks_cache"],
                              tuple(tuple(region) for region in layout_fields["regions"]))
        try:
            segments, written = plan(remote, layout_fields["batch_index"])
        except _plan.PlanError as error:
            log.warning("transfer with cluster %d refused: %s", link.remote_cluster_id, error)
            return PARAM_INVALID, None
        local_regions = tuple(tuple(region) for region in local_entry.regions)
        segments = _plan.coalesce(segments, local_regions, remote.regions)
        # The caller holds link.transfer_lock: one transfer at a time per link, so that the batches
        # of two never overflow Mooncake's per-peer queue together (_mooncake.TCP_QUEUE_VARIABLE).
        exported = layout_fields["ipc"] if link.peer_pid else None
        status = write_segments(segments, exported, self._same_host, engine, link.peer_engine, local_regions)
        return status, written if status == SUCCESS else None


def _check_layer_blocks(local, src_blocks, dst_blocks, dst_block_bytes):
    """CANN's three layer transfers (layer_wise_transfer_job.cc, Prepare): no blocks, the source's
    batch entry into the destination's; dst_blocks alone, the entry cut into blocks of
    dst_block_bytes (> 0, under a tensor); both, blocks into blocks of the source's block size
    (dst_block_bytes 0 or that size) from a blocks cache. PlanError otherwise."""
    if not dst_blocks:
        if src_blocks or dst_block_bytes:
            raise _plan.PlanError("src_blocks and dst_block_bytes need dst_blocks")
    elif not src_blocks:
        if not 0 < dst_block_bytes < local.tensor_bytes:
            raise _plan.PlanError(f"dst_block_bytes {dst_block_bytes} is not in (0, {local.tensor_bytes})")
    elif dst_block_bytes not in (0, local.block_bytes) or local.is_blocks_cache is False:
        raise _plan.PlanError("blocks go from a blocks cache into blocks of its block size")


def _check_layer_arguments_of(src_entry, src_layer, src_batch_index, src_blocks, dst_blocks, dst_block_bytes,
                              tensor_num_per_layer):
    """(local layout and the checked arguments) of a layer push, or None when they break a rule
    (LLM_PARAM_INVALID); LLMException for arguments of the wrong type."""
    _check_int("src_layer", src_layer, UINT32)
    _check_int("src_batch_index", src_batch_index, UINT32)
    _check_int("dst_block_bytes", dst_block_bytes, (0, INT64[1]))
    _check_int("tensor_num_per_layer", tensor_num_per_layer, UINT32)
    src_blocks, dst_blocks = _check_blocks("src_blocks", src_blocks), _check_blocks("dst_blocks", dst_blocks)
    local = _plan.Layout.of_entry(src_entry)
    if not all(len(side) <= wire.MAX_BLOCKS and all(0 <= block <= UINT64[1] for block in side)
               for side in (src_blocks, dst_blocks)):
        return None
    try:
        _check_layer_blocks(local, src_blocks, dst_blocks, dst_block_bytes)
    except _plan.PlanError as error:
        log.warning("a layer push of cache %d refused: %s", src_entry.cache_id, error)
        return None
    return local, src_layer, src_batch_index, src_blocks, dst_blocks, dst_block_bytes, tensor_num_per_layer


def _layer_plan(local, src_layer, src_batch_index, src_blocks, dst_blocks, dst_block_bytes, tensor_num_per_layer,
                dst_layer, remote_kind_rules):
    """The plan of one layer push (arguments from _check_layer_arguments_of) into layer dst_layer
    of the peer's layout; remote_kind_rules: the peer's cache must be a blocks cache to take blocks."""
    n = tensor_num_per_layer
    dst_layers = range(dst_layer, dst_layer + 1)

    def plan(remote, remote_batch_index):
        pairs = _plan.tensor_pairs(local, remote, range(src_layer, src_layer + 1), dst_layers, n)
        if not dst_blocks:
            segments = _plan.cache_segments(local, remote, src_batch_index, remote_batch_index, -1, pairs)
            return segments, _written("cache", remote_batch_index, local.block_bytes, [], dst_layers, n)
        if remote_kind_rules:
            _require_kind(remote, True, "destination")
        if not src_blocks:
            if remote.block_bytes != dst_block_bytes:
                raise _plan.PlanError(f"dst_block_bytes {dst_block_bytes} is not the destination's block size "
                                      f"{remote.block_bytes}")
            segments = _plan.entry_to_blocks_segments(local, remote, src_batch_index, dst_blocks, pairs)
            return segments, _written("entry_blocks", 0, local.block_bytes, dst_blocks, dst_layers, n)
        segments = _plan.blocks_segments(local, remote, src_blocks, dst_blocks, pairs)
        return segments, _written("blocks", 0, -1, dst_blocks, dst_layers, n)
    return plan


def _exposed_layout(window, entry):
    """PULL's `destination`: the cache as the peer writes it, through `window` (None: the cache's
    own addresses, exported to the peer); None when a tensor lies outside the cache's regions
    (which no registry allows)."""
    if window is None:
        return {"tensor_addrs": list(entry.tensor_addrs), "tensor_bytes": entry.tensor_bytes, "batch": entry.batch,
                "block_bytes": entry.block_bytes, "is_blocks_cache": bool(entry.is_blocks_cache),
                "regions": [list(region) for region in entry.regions]}
    try:
        tensor_addrs = [window.address(addr) for addr in entry.tensor_addrs]
    except LookupError as error:
        log.warning("cache %d cannot be exposed: %s", entry.cache_id, error)
        return None
    return {"tensor_addrs": tensor_addrs, "tensor_bytes": entry.tensor_bytes, "batch": entry.batch,
            "block_bytes": entry.block_bytes, "is_blocks_cache": bool(entry.is_blocks_cache),
            "regions": [list(region) for region in window.regions]}
