"""The C++ API's transfer calls of llmdd.LlmDataDist (LinkLlmClusters, PullKvCache, ...).

The engine hands each call here (CALLS): its arguments are converted first (C++ types: an
argument that is not one raises TypeError or ValueError before anything happens), then the
engine hands over its one TransferService and the call checks its rules (docs/facts.md section 1:
a broken rule is a status) and drives the service's TransferAgent over the engine's caches,
which it names by id only.
"""
from .._cache_keys import IdKey
from .._checks import check_type, to_int
from .._desc import LLMStatusCode, Placement
from .._limits import INT32, INT64, UINT8, UINT16, UINT32, UINT64
from .._status import LLMException, engine_status
from .._transfer_types import CacheIndex, ClusterInfo, IpInfo, KvCacheExtParam
from ._agent import LinkTarget

SUCCESS = LLMStatusCode.LLM_SUCCESS
PARAM_INVALID = LLMStatusCode.LLM_PARAM_INVALID
_DEFAULT_EXT_PARAM = KvCacheExtParam()


def _items(name, values):
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple, not {type(values).__name__}")
    return tuple(values)


def _blocks(name, blocks):
    return [to_int(f"a block of {name}", block, UINT64) for block in _items(name, blocks)]


def _ip_infos(name, ip_infos):
    converted = []
    for ip_info in _items(name, ip_infos):
        check_type(f"an item of {name}", ip_info, IpInfo)
        ip = check_type(f"an ip of {name}", ip_info.ip, str)
        converted.append((ip, to_int(f"a port of {name}", ip_info.port, UINT16)))
    return converted


def _link_target(cluster):
    """A ClusterInfo, converted, as the agent takes it."""
    check_type("a cluster", cluster, ClusterInfo)
    remote_cluster_id = to_int("remote_cluster_id", cluster.remote_cluster_id, UINT64)
    to_int("remote_role_type", cluster.remote_role_type, INT32)
    return LinkTarget(remote_cluster_id, _ip_infos("local_ip_infos", cluster.local_ip_infos),
                      _ip_infos("remote_ip_infos", cluster.remote_ip_infos))


def _cache_index(name, index):
    """A CacheIndex as the key of a cache by id."""
    check_type(name, index, CacheIndex)
    return IdKey(to_int(f"{name}.cluster_id", index.cluster_id, UINT64),
                 to_int(f"{name}.cache_id", index.cache_id, INT64),
                 to_int(f"{name}.batch_index", index.batch_index, UINT32))


def _layer_range(name, pair):
    """(range, True) for an inclusive (first, last) pair of int32, (None, True) for (-1, -1)
    (every layer), and (range, False) for a pair that names no layers (LLM_PARAM_INVALID)."""
    first, last = (to_int(f"{name}[{i}]", value, INT32) for i, value in enumerate(pair))
    if (first, last) == (-1, -1):
        return None, True
    return range(first, last + 1), 0 <= first <= last


class _Layers:
    """A KvCacheExtParam as the agent takes it; `valid` False when a range names no layers."""

    def __init__(self, ext_param):
        ext_param = _DEFAULT_EXT_PARAM if ext_param is None else check_type("ext_param", ext_param, KvCacheExtParam)
        src_pair, dst_pair = _items("src_layer_range", ext_param.src_layer_range), \
            _items("dst_layer_range", ext_param.dst_layer_range)
        if len(src_pair) != 2 or len(dst_pair) != 2:
            raise ValueError("a layer range is a (first, last) pair")
        src_range, src_valid = _layer_range("src_layer_range", src_pair)
        dst_range, dst_valid = _layer_range("dst_layer_range", dst_pair)
        per_layer = to_int("tensor_num_per_layer", ext_param.tensor_num_per_layer, UINT8)
        if src_range is None and dst_range is None:
            per_layer = 1   # no layers named: every tensor to its own (CANN checks the count only with ranges)
        self.arguments = {"src_layer_range": src_range, "dst_layer_range": dst_range,
                          "tensor_num_per_layer": per_layer}
        self.valid = src_valid and dst_valid


# Each call converts its arguments (TypeError or ValueError for what is not of its C++ type; any
# Python code of theirs runs here, before the engine reads anything) and answers act(service):
# the engine's transfer service in, the call's status out.

def _status_of_call(call):
    try:
        return engine_status(call())
    except LLMException as error:   # a rule the agent checks by raising (timeouts, addresses)
        return engine_status(error.status_code)


def _link_call(clusters, rets, timeout_ms, move):
    targets = [_link_target(cluster) for cluster in _items("clusters", clusters)]
    check_type("rets", rets, list)
    timeout_ms = to_int("timeout_in_millis", timeout_ms, INT32)

    def act(service):
        if not targets:   # CANN's link managers: "clusters size must > 0"
            status, statuses = PARAM_INVALID, []
        else:
            try:
                status, statuses = move(service.agent, targets, timeout_ms)
            except LLMException as error:
                status, statuses = engine_status(error.status_code), []
        rets[:] = statuses
        return status
    return act


def link(clusters, rets, timeout_ms):
    return _link_call(clusters, rets, timeout_ms, lambda agent, targets, timeout: agent.link(targets, timeout))


def unlink(clusters, rets, timeout_ms, force_flag):
    check_type("force_flag", force_flag, bool)
    return _link_call(clusters, rets, timeout_ms,
                      lambda agent, targets, timeout: agent.unlink(targets, timeout, force_flag))


def _transfer_call(local_cache, valid, move, push=False):
    """act(service): PARAM_INVALID for a broken rule, KV_CACHE_NOT_EXIST for a local cache the
    engine does not hold (a push's must be a device cache), else move(agent, entry)'s status."""
    def act(service):
        if not valid:
            return PARAM_INVALID
        try:
            entry = service.registry.entry_of(local_cache)
        except ValueError:
            return LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        if push and entry.placement != Placement.kDevice:
            return PARAM_INVALID
        return _status_of_call(lambda: move(service.agent, entry))
    return act


def pull_cache(index, dst_cache, batch_index, size, ext_param):
    key = _cache_index("src_cache_index", index)
    batch_index = to_int("batch_index", batch_index, UINT32)
    size = to_int("size", size, INT64)
    layers = _Layers(ext_param)
    return _transfer_call(dst_cache, layers.valid and (size == -1 or size > 0), lambda agent, entry: agent.pull_cache(
        key.cluster_id, key, entry, batch_index, size, **layers.arguments))


def _blocks_arguments(index_name, index, src_blocks, dst_blocks, ext_param):
    """(key, src_blocks, dst_blocks, layers, valid) of a blocks transfer; its rules: the remote
    batch index is 0, the block lists are non-empty and equally long."""
    key = _cache_index(index_name, index)
    src_blocks, dst_blocks = _blocks("src_blocks", src_blocks), _blocks("dst_blocks", dst_blocks)
    layers = _Layers(ext_param)
    valid = layers.valid and key.batch_index == 0 and bool(src_blocks) and len(src_blocks) == len(dst_blocks)
    return key, src_blocks, dst_blocks, layers, valid


def pull_blocks(index, dst_cache, src_blocks, dst_blocks, ext_param):
    key, src_blocks, dst_blocks, layers, valid = _blocks_arguments("src_cache_index", index, src_blocks, dst_blocks,
                                                                   ext_param)
    return _transfer_call(dst_cache, valid, lambda agent, entry: agent.pull_blocks(
        key.cluster_id, key, entry, src_blocks, dst_blocks, **layers.arguments))


def push_cache(src_cache, index, src_batch_index, size, ext_param):
    key = _cache_index("dst_cache_index", index)
    src_batch_index = to_int("src_batch_index", src_batch_index, UINT32)
    size = to_int("size", size, INT64)
    layers = _Layers(ext_param)
    return _transfer_call(src_cache, layers.valid and size == -1, lambda agent, entry: agent.push_cache(
        key.cluster_id, key, entry, src_batch_index, size, **layers.arguments), push=True)


def push_blocks(src_cache, index, src_blocks, dst_blocks, ext_param):
    key, src_blocks, dst_blocks, layers, valid = _blocks_arguments("dst_cache_index", index, src_blocks, dst_blocks,
                                                                   ext_param)
    return _transfer_call(src_cache, valid, lambda agent, entry: agent.push_blocks(
        key.cluster_id, key, entry, src_blocks, dst_blocks, **layers.arguments), push=True)


CALLS = {"link": link, "unlink": unlink, "pull_cache": pull_cache, "pull_blocks": pull_blocks,
         "push_cache": push_cache, "push_blocks": push_blocks}
