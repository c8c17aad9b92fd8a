"""The C++ API's transfer calls of llmdd.LlmDataDist (LinkLlmClusters, PullKvCache, ...).

The engine hands each call here (CALLS): its arguments are converted first (C++ types: an
argument that is not one raises TypeError or ValueError before anything happens), then the
engine hands over its transfer service (EngineTransfers) and the call checks its rules (spec
section 1: a broken rule is a status) and drives the service's TransferAgent over the engine's
own caches, which it names by id only. A listening engine (llm.ListenIpInfo) serves its caches
to the clusters that link to it from Initialize on.
"""
import contextlib
import operator
import weakref

from .._datadist import LLMException
from .._desc import LLMStatusCode, Placement
from .._registry import CacheEntry
from .._transfer_types import CacheIndex, ClusterInfo, IpInfo, KvCacheExtParam
from ._agent import TransferAgent
from ._protocol import INT64_MAX, INT64_MIN, UINT32_MAX, UINT64_MAX

SUCCESS = LLMStatusCode.LLM_SUCCESS
PARAM_INVALID = LLMStatusCode.LLM_PARAM_INVALID
_DEFAULT_EXT_PARAM = KvCacheExtParam()

UINT8_MAX, UINT16_MAX = (1 << 8) - 1, (1 << 16) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _integer(name, value, low, high):
    """A plain int of a C++ integer type: TypeError for a non-integer, ValueError out of range."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    number = operator.index(value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {number}")
    return number


def _instance(name, value, expected):
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be a {expected.__name__}, not {type(value).__name__}")
    return value


def _items(name, values):
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple, not {type(values).__name__}")
    return tuple(values)


def _blocks(name, blocks):
    return [_integer(f"a block of {name}", block, 0, UINT64_MAX) for block in _items(name, blocks)]


def _ip_infos(name, ip_infos):
    converted = []
    for ip_info in _items(name, ip_infos):
        _instance(f"an item of {name}", ip_info, IpInfo)
        ip = _instance(f"an ip of {name}", ip_info.ip, str)
        converted.append((ip, _integer(f"a port of {name}", ip_info.port, 0, UINT16_MAX)))
    return converted


class _LinkTarget:
    """A ClusterInfo as the agent reads it: (ip, port) pairs."""

    def __init__(self, cluster):
        _instance("a cluster", cluster, ClusterInfo)
        self.remote_cluster_id = _integer("remote_cluster_id", cluster.remote_cluster_id, 0, UINT64_MAX)
        _integer("remote_role_type", cluster.remote_role_type, INT32_MIN, INT32_MAX)
        self.local_ip_infos = _ip_infos("local_ip_infos", cluster.local_ip_infos)
        self.remote_ip_infos = _ip_infos("remote_ip_infos", cluster.remote_ip_infos)


def _cache_index(name, index):
    """A CacheIndex as a key of the control protocol (a cache by id)."""
    _instance(name, index, CacheIndex)
    return {"kind": "id", "cluster_id": _integer(f"{name}.cluster_id", index.cluster_id, 0, UINT64_MAX),
            "cache_id": _integer(f"{name}.cache_id", index.cache_id, INT64_MIN, INT64_MAX),
            "batch_index": _integer(f"{name}.batch_index", index.batch_index, 0, UINT32_MAX)}


def _layer_range(name, pair):
    """(range, True) for an inclusive (first, last) pair of int32, (None, True) for (-1, -1)
    (every layer), and (range, False) for a pair that names no layers (LLM_PARAM_INVALID)."""
    first, last = (_integer(f"{name}[{i}]", value, INT32_MIN, INT32_MAX) for i, value in enumerate(pair))
    if (first, last) == (-1, -1):
        return None, True
    return range(first, last + 1), 0 <= first <= last


class _Layers:
    """A KvCacheExtParam as the agent takes it; `valid` False when a range names no layers."""

    def __init__(self, ext_param):
        ext_param = _DEFAULT_EXT_PARAM if ext_param is None else _instance("ext_param", ext_param, KvCacheExtParam)
        src_pair, dst_pair = _items("src_layer_range", ext_param.src_layer_range), \
            _items("dst_layer_range", ext_param.dst_layer_range)
        if len(src_pair) != 2 or len(dst_pair) != 2:
            raise ValueError("a layer range is a (first, last) pair")
        src_range, src_valid = _layer_range("src_layer_range", src_pair)
        dst_range, dst_valid = _layer_range("dst_layer_range", dst_pair)
        per_layer = _integer("tensor_num_per_layer", ext_param.tensor_num_per_layer, 0, UINT8_MAX)
        if src_range is None and dst_range is None:
            per_layer = 1   # no layers named: every tensor to its own (CANN checks the count only with ranges)
        self.arguments = {"src_layer_range": src_range, "dst_layer_range": dst_range,
                          "tensor_num_per_layer": per_layer}
        self.valid = src_valid and dst_valid


class EngineCaches:
    """The registry interface of a TransferAgent over one engine's own caches: by id only (the
    C++ API has no keys), for the engine's current initialization only. It holds the engine
    weakly: an engine dropped without Finalize is not kept alive by its listener."""

    def __init__(self, engine, remote_accessible):
        self._engine = weakref.ref(engine)
        self._initialization = engine._initialization
        self._remote_accessible = remote_accessible

    def _live_engine(self):
        engine = self._engine()
        if engine is None or not engine.initialized or engine._initialization != self._initialization:
            raise ValueError("the engine's initialization these caches belonged to is over")
        return engine

    def entry_of(self, cache):
        """The CacheEntry of a live cache of the engine; ValueError for any other."""
        return CacheEntry(self._live_engine()._layout(cache), False, self._remote_accessible)

    def entry(self, cache_id):
        """The entry of a cache the engine serves to its peers, or None."""
        try:
            layout = self._live_engine()._layout_by_id(cache_id)
        except ValueError:
            return None
        return None if layout is None else CacheEntry(layout, False, self._remote_accessible)

    def find(self, key):
        return None

    def pin(self, cache_id):
        """Holds cache `cache_id`'s memory while the `with` block runs; ValueError when the
        engine does not hold it. The id names one cache only within an initialization, so the
        initialization is checked again once the memory is held."""
        holder = self._live_engine().pin(cache_id)
        self._live_engine()
        return contextlib.nullcontext(holder)

    def release_key(self, key):
        return SUCCESS


class EngineTransfers:
    """The transfer service of one initialization of an engine: its agent, closed with the
    engine (Finalize, or the engine dropped)."""

    def __init__(self, engine, options):
        self.initialization = engine._initialization
        self.caches = EngineCaches(engine, options["remote_cache_accessible"])
        self.agent = TransferAgent(self.caches, engine.cluster_id, listen_ip_info=options["listen_ip_info"],
                                   protocol=options["protocol"], device_name=options["device_name"],
                                   sync_timeout_ms=options["sync_timeout_ms"], blocks_caches=False)
        self._closer = weakref.finalize(engine, self.agent.close)

    def close(self):
        self._closer()

    def abandon(self):
        """In a forked child: the links, threads and Mooncake engine are the parent's; never close them."""
        self._closer.detach()


# Each call converts its arguments (TypeError or ValueError for what is not of its C++ type; any
# Python code of theirs runs here, before the engine reads anything) and answers act(service):
# the engine's transfer service in, the call's status out.

def _status(call):
    try:
        return LLMStatusCode(call())
    except LLMException as error:   # a rule the agent checks by raising (timeouts, addresses)
        return LLMStatusCode(error.status_code)


def _link_call(clusters, rets, timeout_ms, move):
    targets = [_LinkTarget(cluster) for cluster in _items("clusters", clusters)]
    _instance("rets", rets, list)
    timeout_ms = _integer("timeout_in_millis", timeout_ms, INT32_MIN, INT32_MAX)

    def act(service):
        if not targets:   # CANN's link managers: "clusters size must > 0"
            status, statuses = PARAM_INVALID, []
        else:
            try:
                status, statuses = move(service.agent, targets, timeout_ms)
            except LLMException as error:
                status, statuses = LLMStatusCode(error.status_code), []
        rets[:] = statuses
        return status
    return act


def link(clusters, rets, timeout_ms):
    return _link_call(clusters, rets, timeout_ms, lambda agent, targets, timeout: agent.link(targets, timeout))


def unlink(clusters, rets, timeout_ms, force_flag):
    _instance("force_flag", force_flag, bool)
    return _link_call(clusters, rets, timeout_ms,
                      lambda agent, targets, timeout: agent.unlink(targets, timeout, force_flag))


def _transfer_call(local_cache, valid, move, push=False):
    """act(service): PARAM_INVALID for a broken rule, KV_CACHE_NOT_EXIST for a local cache the
    engine does not hold (a push's must be a device cache), else move(agent, entry)'s status."""
    def act(service):
        if not valid:
            return PARAM_INVALID
        try:
            entry = service.caches.entry_of(local_cache)
        except ValueError:
            return LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        if push and entry.placement != Placement.kDevice:
            return PARAM_INVALID
        return _status(lambda: move(service.agent, entry))
    return act


def pull_cache(index, dst_cache, batch_index, size, ext_param):
    key = _cache_index("src_cache_index", index)
    batch_index = _integer("batch_index", batch_index, 0, UINT32_MAX)
    size = _integer("size", size, INT64_MIN, INT64_MAX)
    layers = _Layers(ext_param)
    return _transfer_call(dst_cache, layers.valid and (size == -1 or size > 0), lambda agent, entry: agent.pull_cache(
        key["cluster_id"], key, entry, batch_index, size, **layers.arguments))


def _blocks_arguments(index_name, index, src_blocks, dst_blocks, ext_param):
    """(key, src_blocks, dst_blocks, layers, valid) of a blocks transfer; its rules: the remote
    batch index is 0, the block lists are non-empty and equally long."""
    key = _cache_index(index_name, index)
    src_blocks, dst_blocks = _blocks("src_blocks", src_blocks), _blocks("dst_blocks", dst_blocks)
    layers = _Layers(ext_param)
    valid = layers.valid and key["batch_index"] == 0 and bool(src_blocks) and len(src_blocks) == len(dst_blocks)
    return key, src_blocks, dst_blocks, layers, valid


def pull_blocks(index, dst_cache, src_blocks, dst_blocks, ext_param):
    key, src_blocks, dst_blocks, layers, valid = _blocks_arguments("src_cache_index", index, src_blocks, dst_blocks,
                                                                   ext_param)
    return _transfer_call(dst_cache, valid, lambda agent, entry: agent.pull_blocks(
        key["cluster_id"], key, entry, src_blocks, dst_blocks, **layers.arguments))


def push_cache(src_cache, index, src_batch_index, size, ext_param):
    key = _cache_index("dst_cache_index", index)
    src_batch_index = _integer("src_batch_index", src_batch_index, 0, UINT32_MAX)
    size = _integer("size", size, INT64_MIN, INT64_MAX)
    layers = _Layers(ext_param)
    return _transfer_call(src_cache, layers.valid and size == -1, lambda agent, entry: agent.push_cache(
        key["cluster_id"], key, entry, src_batch_index, size, **layers.arguments), push=True)


def push_blocks(src_cache, index, src_blocks, dst_blocks, ext_param):
    key, src_blocks, dst_blocks, layers, valid = _blocks_arguments("dst_cache_index", index, src_blocks, dst_blocks,
                                                                   ext_param)
    return _transfer_call(src_cache, valid, lambda agent, entry: agent.push_blocks(
        key["cluster_id"], key, entry, src_blocks, dst_blocks, **layers.arguments), push=True)


CALLS = {"link": link, "unlink": unlink, "pull_cache": pull_cache, "pull_blocks": pull_blocks,
         "push_cache": push_cache, "push_blocks": push_blocks}
