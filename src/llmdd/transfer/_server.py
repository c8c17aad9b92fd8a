"""What a side answers to its linked peer's requests. Both sides of a link serve: the one that
linked and the one that listened.

PULL: the peer exposed its cache to our writes; we pin the cache its key names, plan, write the
bytes into the peer's cache, unpin (and may release a CacheKey) and answer: one round trip, and
nothing of ours is ever exposed to the peer for a pull. RESOLVE and UNPIN bracket a push: the key's
cache (or, for a push to raw addresses, the caches holding them) is pinned and exposed to the
peer's writes only between them, and only when it is remote accessible. A layer-wise push keeps
each layer (KEEP) under one pin, from its first layer to its last.
"""
import contextlib
import itertools
import logging

from .._status import LLMException
from .._desc import LLMStatusCode
from . import _plan
from . import _protocol as wire
from ._writes import write_segments

log = logging.getLogger("llmdd.transfer")

MAX_PINS_PER_LINK = 256
# The most segments a PULL may plan (tensor pairs x block runs): a peer names up to 65,536 blocks
# and 16,384 tensors, whose product would take GBs to plan on the link's reader. 2**21 covers a
# pull of every block of a 160-tensor cache of 13,000 blocks.
MAX_PULL_SEGMENTS = 1 << 21
_SUCCESS = int(LLMStatusCode.LLM_SUCCESS)
_NOT_EXIST = int(LLMStatusCode.LLM_KV_CACHE_NOT_EXIST)
_PARAM_INVALID = int(LLMStatusCode.LLM_PARAM_INVALID)


def _plan_pull(source, source_batch_index, body):
    """The segments of a PULL from our cache `source` (a _plan.Layout) into the puller's; PlanError
    when the request breaks a rule. kind_rules: the puller's cache follows CANN's Python rules
    (blocks caches and whole caches apart), so ours must too."""
    destination = body["destination"]
    local = _plan.Layout(tuple(destination["tensor_addrs"]), destination["tensor_bytes"], destination["batch"],
                         destination["block_bytes"], destination["is_blocks_cache"],
                         tuple(tuple(region) for region in destination["regions"]))
    mode = body["mode"]
    if body["kind_rules"] and source.is_blocks_cache != (mode == "blocks"):
        raise _plan.PlanError(f"the source cache must {'' if mode == 'blocks' else 'not '}be a blocks cache")
    layer_ranges = [None if value is None else range(*value)
                    for value in (body["src_layer_range"], body["dst_layer_range"])]
    pairs = _plan.tensor_pairs(source, local, *layer_ranges, body["tensor_num_per_layer"])
    if len(pairs) * max(1, len(body["dst_blocks"])) > MAX_PULL_SEGMENTS:
        raise _plan.PlanError(f"{len(pairs)} tensors x {len(body['dst_blocks'])} blocks is more than "
                              f"{MAX_PULL_SEGMENTS} segments")
    if mode == "cache":
        segments = _plan.cache_segments(source, local, source_batch_index, body["batch_index"], body["size"], pairs)
    elif mode == "blocks":
        segments = _plan.blocks_segments(source, local, body["src_blocks"], body["dst_blocks"], pairs)
    else:
        segments = _plan.entry_to_blocks_segments(source, local, source_batch_index, body["dst_blocks"], pairs)
    return _plan.coalesce(segments, source.regions, local.regions)


class CacheServer:
    """Answers PULL, RESOLVE and UNPIN from `registry`. using_mooncake(): a context holding the
    agent's Mooncake engines (None once it closed). A push's pins (pin id -> a _Pin holding the
    cache's pin and window) live in the dict of the link they came on, so that a link that ends,
    however it ends, releases them."""

    def __init__(self, registry, using_mooncake, same_host):
        self._registry = registry
        self._using_mooncake = using_mooncake
        self._same_host = same_host   # this side's SameHostMemory, or None: the network path only
        self._pin_ids = itertools.count(1)   # next() of a count is atomic: readers share it

    def _lookup(self, fields):
        """(entry, batch index, the CacheKey a pull may release) of a wire key; entry None when
        nothing by that key lives here."""
        if fields["kind"] == "id":
            return self._registry.entry(fields["cache_id"]), fields["batch_index"], None
        key = wire.key_from_fields(fields)
        found = self._registry.find(key)
        if found is None:
            return None, 0, None
        return found[0], found[1], key if fields["kind"] == "cache" else None

    def _pin(self, entry, hold):
        """Pins `entry` into `hold`; False when it was deallocated since the lookup."""
        try:
            hold.enter_context(self._registry.pin(entry.cache_id))
        except (LLMException, LookupError, ValueError):
            return False
        return True

    def pull(self, body, peer_engine, peer_pid):
        """Writes what the PULL asks into the peer's exposed cache: at `peer_engine` with Mooncake,
        or through the IPC memory it exported for us (peer_pid: it shares this host's, else 0)."""
        if body["ipc"] is not None and not peer_pid:
            return {"status": _PARAM_INVALID}
        entry, batch_index, key = self._lookup(body["key"])
        if entry is None:
            return {"status": _NOT_EXIST}
        if body["release_key"] and key is None:
            return {"status": _PARAM_INVALID}
        with contextlib.ExitStack() as hold:
            if not self._pin(entry, hold):
                return {"status": _NOT_EXIST}
            source = _plan.Layout.of_entry(entry)
            try:
                segments = _plan_pull(source, batch_index, body)
            except _plan.PlanError as error:
                log.warning("a pull of cache %d refused: %s", entry.cache_id, error)
                return {"status": _PARAM_INVALID}
            engine = hold.enter_context(self._using_mooncake())
            status = write_segments(segments, body["ipc"], self._same_host, engine, peer_engine, source.regions)
            if status != LLMStatusCode.LLM_SUCCESS:
                return {"status": int(status)}
            # Dropped under the pin, so a cache already deallocated is freed when the pin goes.
            status = self._registry.release_key(key) if body["release_key"] else LLMStatusCode.LLM_SUCCESS
        return {"status": int(status)}

    @staticmethod
    def refused(status):
        return {"status": int(status), "pin": 0, "layout": None}

    def _push_target(self, fields):
        """(the caches a RESOLVE's key names, the target's Layout in their own addresses, the
        batch index it names), or the status refusing it. A key names one cache; memory names
        `batch` blocks at each address, each wholly inside a region of a remote-accessible cache."""
        if fields["kind"] != "memory":
            entry, batch_index, _ = self._lookup(fields)
            if entry is None:
                return _NOT_EXIST
            if not entry.remote_accessible:
                log.warning("a push into cache %d, which is not remote accessible", entry.cache_id)
                return _PARAM_INVALID
            return [entry], _plan.Layout.of_entry(entry), batch_index
        tensor_bytes = fields["batch"] * fields["block_bytes"]
        holders = self._registry.holding([(addr, tensor_bytes) for addr in fields["tensor_addrs"]],
                                         remote_accessible=True)
        if None in holders:
            log.warning("a push into memory outside every remote-accessible cache refused")
            return _PARAM_INVALID
        entries = list({entry.cache_id: entry for entry in holders}.values())
        regions = tuple(dict.fromkeys(tuple(region) for entry in entries for region in entry.regions))
        return entries, _plan.Layout(tuple(fields["tensor_addrs"]), tensor_bytes, fields["batch"],
                                     fields["block_bytes"], False, regions), 0

    def resolve(self, body, pins, peer_pid):
        """A push's first step: what the key names pinned and exposed to the peer's writes until
        UNPIN: exported as IPC memory for peer_pid when it shares this host's (and the runtime
        can), else through a Mooncake window. The layout answered is the target as the peer writes
        it: its own addresses (exported, or in-process), or a data-plane helper's mirror of it."""
        target = self._push_target(body["key"])
        if isinstance(target, int):
            return self.refused(target)
        entries, layout, batch_index = target
        if len(pins) >= MAX_PINS_PER_LINK:
            return self.refused(LLMStatusCode.LLM_LINK_BUSY)
        hold = contextlib.ExitStack()
        with contextlib.ExitStack() as undo:
            undo.push(hold)
            if not all(self._pin(entry, hold) for entry in entries):
                return self.refused(_NOT_EXIST)
            exported = self._same_host.export(layout.regions, peer_pid) if peer_pid and self._same_host else None
            window = None
            tensor_addrs, regions = list(layout.tensor_addrs), [list(region) for region in layout.regions]
            if exported is not None:
                hold.callback(self._same_host.close, [key for _, _, key in exported])
            else:
                engine = hold.enter_context(self._using_mooncake())
                window = None if engine is None else engine.expose(layout.regions)
                if window is None:
                    return self.refused(LLMStatusCode.LLM_FAILED)
                hold.callback(window.close)   # nothing copied back, unless UNPIN says what was written
                try:
                    tensor_addrs = [window.address(addr) for addr in layout.tensor_addrs]
                except LookupError as error:
                    log.warning("cache %d cannot be exposed: %s", entries[0].cache_id, error)
                    return self.refused(LLMStatusCode.LLM_FAILED)
                regions = [list(region) for region in window.regions]
            undo.pop_all()
        pin_id = next(self._pin_ids)
        pins[pin_id] = _Pin(hold, window, layout)
        answer = {"cache_id": entries[0].cache_id, "tensor_addrs": tensor_addrs,
                  "tensor_bytes": layout.tensor_bytes, "batch": layout.batch, "block_bytes": layout.block_bytes,
                  "is_blocks_cache": bool(layout.is_blocks_cache), "remote_accessible": True,
                  "batch_index": batch_index, "regions": regions, "ipc": exported}
        return {"status": _SUCCESS, "pin": pin_id, "layout": answer}

    @staticmethod
    def unpin(body, pins):
        """A push's end: the bytes UNPIN says were written are copied back into the cache (from a
        helper's mirror; in-process or exported they are in place), the window closes, the pin ends."""
        pin = pins.pop(body["pin"], None)
        if pin is None:
            return {"status": _PARAM_INVALID}
        status, written = _SUCCESS, ()
        if body["written"] is not None:
            written = _written_extents(pin, body["written"])
            if written is None:
                status, written = _PARAM_INVALID, ()
        if pin.window is not None:   # else the cache was exported: the bytes are in place
            pin.window.close(written)
        pin.hold.close()
        return {"status": status}

    @staticmethod
    def keep(body, pins):
        """A layer of a layer-wise push moved: the bytes KEEP says were written are copied back into
        the cache (from a helper's mirror) and the pin stays, exposed, for the next layer."""
        pin = pins.get(body["pin"])
        written = None if pin is None else _written_extents(pin, body["written"])
        if written is None:
            return {"status": _PARAM_INVALID}
        if pin.window is not None:
            pin.window.keep(written)
        return {"status": _SUCCESS}

    @staticmethod
    def release(pins):
        for pin in pins.values():
            pin.hold.close()
        pins.clear()


def _written_extents(pin, fields):
    """The (addr, nbytes) extents of the pinned target that UNPIN's or KEEP's `written` names;
    None when it names bytes outside the target."""
    layer_range = None if fields["dst_layer_range"] is None else range(*fields["dst_layer_range"])
    try:
        return _plan.destination_extents(pin.layout, fields["mode"], fields["batch_index"], fields["size"],
                                         fields["dst_blocks"], layer_range, fields["tensor_num_per_layer"])
    except _plan.PlanError as error:
        log.warning("a push names bytes outside its destination: %s", error)
        return None


class _Pin:
    """A push's pin on this side: what holds the cache (its pin, its window) and its layout."""

    __slots__ = ("hold", "window", "layout")

    def __init__(self, hold, window, layout):
        self.hold = hold
        self.window = window
        self.layout = layout
