"""What a side answers to its linked peer's requests: RESOLVE (which cache does this key name, and
how is it laid out: pinned, and its memory registered with the Mooncake engine, until UNPIN) and
UNPIN (which may release a CacheKey after a pull). Both sides of a link serve: the one that
linked and the one that listened.
"""
import contextlib
import itertools
import logging

from .._status import LLMException
from .._desc import LLMStatusCode
from . import _protocol as wire

log = logging.getLogger("llmdd.transfer")

MAX_PINS_PER_LINK = 256
_SUCCESS = int(LLMStatusCode.LLM_SUCCESS)


class Pin:
    __slots__ = ("hold", "key")

    def __init__(self, hold, key):
        self.hold = hold    # an ExitStack holding registry.pin(cache_id)
        self.key = key      # the CacheKey a pull may release afterwards, else None


class CacheServer:
    """Answers RESOLVE and UNPIN from `registry`; pins live in the dict of the link they came on,
    so that a link that ends, however it ends, releases them."""

    def __init__(self, registry, register_regions):
        self._registry = registry
        self._register_regions = register_regions   # False once the agent closed
        self._pin_ids = itertools.count(1)   # next() of a count is atomic: readers share it

    @staticmethod
    def refused(status):
        return {"status": int(status), "pin": 0, "layout": None}

    def resolve(self, body, pins):
        not_found = self.refused(LLMStatusCode.LLM_KV_CACHE_NOT_EXIST)
        fields = body["key"]
        key = None   # a key by id names no key to find or release
        if fields["kind"] == "id":
            entry, batch_index = self._registry.entry(fields["cache_id"]), fields["batch_index"]
        else:
            key = wire.key_from_fields(fields)
            found = self._registry.find(key)
            entry, batch_index = found if found is not None else (None, 0)
        if entry is None:
            return not_found
        if body["write"] and not entry.remote_accessible:
            log.warning("a push into cache %d, which is not remote accessible", entry.cache_id)
            return dict(not_found, status=int(LLMStatusCode.LLM_PARAM_INVALID))
        if len(pins) >= MAX_PINS_PER_LINK:
            return dict(not_found, status=int(LLMStatusCode.LLM_LINK_BUSY))
        hold = contextlib.ExitStack()
        try:
            hold.enter_context(self._registry.pin(entry.cache_id))
        except (LLMException, LookupError, ValueError):
            return not_found   # deallocated between the lookup and the pin
        if not self._register_regions(entry.regions):
            hold.close()
            return dict(not_found, status=int(LLMStatusCode.LLM_FAILED))
        pin_id = next(self._pin_ids)
        pins[pin_id] = Pin(hold, key if fields["kind"] == "cache" else None)
        layout = {"cache_id": entry.cache_id, "tensor_addrs": list(entry.tensor_addrs),
                  "tensor_bytes": entry.tensor_bytes, "batch": entry.batch, "block_bytes": entry.block_bytes,
                  "is_blocks_cache": bool(entry.is_blocks_cache), "remote_accessible": bool(entry.remote_accessible),
                  "batch_index": batch_index, "regions": [list(region) for region in entry.regions]}
        return {"status": _SUCCESS, "pin": pin_id, "layout": layout}

    def unpin(self, body, pins):
        pin = pins.pop(body["pin"], None)
        if pin is None:
            return {"status": int(LLMStatusCode.LLM_PARAM_INVALID)}
        status = _SUCCESS
        with pin.hold:
            # Dropped under the pin, so a cache already deallocated is freed when the pin goes.
            if body["release_key"]:
                if pin.key is None:
                    status = int(LLMStatusCode.LLM_PARAM_INVALID)
                else:
                    status = int(self._registry.release_key(pin.key))
        return {"status": status}

    @staticmethod
    def release(pins):
        for pin in pins.values():
            pin.hold.close()
        pins.clear()
