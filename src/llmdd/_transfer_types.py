"""The C++ API's transfer structs (docs/facts.md section 1): IpInfo, ClusterInfo, CacheIndex, KvCacheExtParam;
and the state of a rank-table link, CANN's RegisterMemoryStatus.

Plain values with the C++ field names, defaults and order, mutable like the structs. They are
checked where they are used (LlmDataDist's transfer calls convert every field first): a field
that is not of its C++ type raises TypeError or ValueError there, a value against a rule of the
call answers a status.
"""

# A rank-table link's state, as query_register_mem_status answers it (CANN's llm_inner_types.h).
REGISTER_MEMORY_STATUSES = {"OK": 0, "PREPARING": 1, "FAILED": 2}


class _Struct:
    __slots__ = ()

    def _fields(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None   # mutable, as the C++ struct

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self):
        return type(self), self._fields()


class IpInfo(_Struct):
    """An IPv4 address ("a.b.c.d") and a port."""

    __slots__ = ("ip", "port")

    def __init__(self, ip="", port=0):
        self.ip = ip
        self.port = port


class ClusterInfo(_Struct):
    """The cluster to link to: its id, role and one IpInfo each side (the local one may be left out)."""

    __slots__ = ("remote_cluster_id", "remote_role_type", "local_ip_infos", "remote_ip_infos")

    def __init__(self, remote_cluster_id=0, remote_role_type=0, local_ip_infos=None, remote_ip_infos=None):
        self.remote_cluster_id = remote_cluster_id
        self.remote_role_type = remote_role_type   # 0: prompt, 1: decoder
        self.local_ip_infos = [] if local_ip_infos is None else local_ip_infos
        self.remote_ip_infos = [] if remote_ip_infos is None else remote_ip_infos


class CacheIndex(_Struct):
    """A remote cache: the linked cluster, the cache's id there and a batch entry of it."""

    __slots__ = ("cluster_id", "cache_id", "batch_index")

    def __init__(self, cluster_id=0, cache_id=-1, batch_index=0):
        self.cluster_id = cluster_id
        self.cache_id = cache_id
        self.batch_index = batch_index


class KvCacheExtParam(_Struct):
    """Which layers a transfer moves: inclusive (first, last) layer ranges of each side, (-1, -1)
    for all, a layer being tensor_num_per_layer consecutive tensors."""

    __slots__ = ("src_layer_range", "dst_layer_range", "tensor_num_per_layer")

    def __init__(self, src_layer_range=(-1, -1), dst_layer_range=(-1, -1), tensor_num_per_layer=2):
        self.src_layer_range = src_layer_range
        self.dst_layer_range = dst_layer_range
        self.tensor_num_per_layer = tensor_num_per_layer
