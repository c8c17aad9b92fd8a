"""CANN's v2/llm_datadist module: LLMDataDist over llmdd's engine.

One LLMDataDist is one llmdd.LlmDataDist engine: init passes CANN's options to the engine as they
are (the engine listens where CANN's would), and the cache manager and the links (link_clusters,
and the rank-table comms of link) act through the engine's one CacheRegistry and one
TransferService, in both of CANN's modes; switch_role is the engine's SetRole. No CANN method is
missing. As CANN's, the module finalizes the process's initialized LLMDataDist at exit
(_shutdown_handler).
"""
import atexit

from ... import _datadist
from ... import _options as keys
from ..._limits import INT32, UINT32, UINT64
from ..configs import LLMClusterInfo, LLMRole
from ..status import LLMException, LLMStatusCode, reraising, status_of
from ..utils.utils import check_int, check_sequence, check_str_dict, check_type, require
from .cache_manager import CacheManager, KvCacheManager
from .llm_types import RegisterMemStatus

__all__ = ["LLMDataDist"]

_MAX_COMM_NAME = 128
_MAX_RANK_TABLE_NODES = 4


def _plain_str(name, value):
    """A str argument checked, as an exact str: the rank-table links compare it under their lock,
    where a str subclass's __eq__ calling back into them would hang (check_int's ints are exact)."""
    return str.__str__(check_type(name, value, str))


def _dotted(ip):
    """CANN's integer form of an IPv4 address (its bytes little-endian) as a dotted string."""
    require(0 <= ip < 1 << 32, f"ip {ip} is not an IPv4 address")
    return ".".join(str(part) for part in ip.to_bytes(4, "little"))


class LLMDataDist:
    """CANN's Python LLMDataDist(role, cluster_id) over llmdd's engine. One may be initialized
    per process at a time, as in CANN."""

    llm_engine_instance = None  # the initialized LLMDataDist of this process (CANN's name)

    def __init__(self, role, cluster_id):
        check_type("role", role, LLMRole)
        check_int("cluster_id", cluster_id, UINT64)
        self._role = role
        self._engine = _datadist.LlmDataDist(cluster_id, role.value)
        self._manager = None
        self._cache_manager_mode = False
        self._options = {}  # the options of the current initialization, after CANN's rules
        self._has_linked = False

    @property
    def cluster_id(self):
        return self._engine.cluster_id

    @property
    def role(self):
        return self._role

    def init(self, options):
        """Initialize with an options dict (LLMConfig.generate_options()); LLMException on
        failure, and when another LLMDataDist of this process is initialized. Again: a no-op.
        A device list selects its first device: llmdd's engine allocates on one device."""
        if self._engine.initialized:
            return
        require(LLMDataDist.llm_engine_instance is None, "another LLMDataDist is initialized in this process",
                LLMStatusCode.LLM_FAILED)
        options = dict(self._checked_options(options))
        for key in keys.DEVICE_ID_KEYS:
            if ";" in options.get(key, ""):
                options[key] = options[key].split(";")[0]
        with reraising:   # a prompt side (llm.listenIpInfo) serves its caches from here on
            self._engine.initialize(options)
        manager_type = CacheManager if self._cache_manager_mode else KvCacheManager
        self._manager = manager_type(self, options)
        self._options = options
        self._has_linked = False
        LLMDataDist.llm_engine_instance = self

    def _transfer_agent(self, call):
        """The TransferAgent of the engine's one transfer service (either mode); an LLMException
        naming `call` when it cannot be had."""
        try:
            return self._engine._transfer_service().agent
        except LLMException as error:
            raise LLMException(f"{call}: {error}", status_of(error.status_code)) from None

    def _checked_options(self, options):
        """CANN's option rules before the engine sees them; sets the cache-manager mode."""
        check_str_dict("options", options)
        pool_sizes = options.get(keys.FLOW_GRAPH_MEM_MAX_SIZE)
        if pool_sizes is not None:
            require("," not in pool_sizes, f"{keys.FLOW_GRAPH_MEM_MAX_SIZE} takes one pool size, got {pool_sizes!r}")
            require(pool_sizes.isascii() and pool_sizes.isdigit(),
                    f"{keys.FLOW_GRAPH_MEM_MAX_SIZE} must be digits, got {pool_sizes!r}")
        options = dict(options)
        if keys.LOCAL_COMM_RES in options:  # local communication resources imply both modes
            options.setdefault(keys.ENABLE_CACHE_MANAGER, "1")
            options.setdefault(keys.ENABLE_REMOTE_CACHE_ACCESSIBLE, "1")
        cache_manager_mode = options.get(keys.ENABLE_CACHE_MANAGER) == "1"
        require(cache_manager_mode or keys.LOCAL_COMM_RES not in options,
                f"{keys.LOCAL_COMM_RES} needs {keys.ENABLE_CACHE_MANAGER}=1")
        if keys.TRANSFER_BACKEND in options:
            require(cache_manager_mode, f"{keys.TRANSFER_BACKEND} needs {keys.ENABLE_CACHE_MANAGER}=1")
            options.setdefault(keys.ENABLE_REMOTE_CACHE_ACCESSIBLE, "1")
            require(options[keys.ENABLE_REMOTE_CACHE_ACCESSIBLE] == "1",
                    f"{keys.TRANSFER_BACKEND} needs {keys.ENABLE_REMOTE_CACHE_ACCESSIBLE}=1")
            require(keys.PY_LISTEN_IP_INFO in options, f"{keys.TRANSFER_BACKEND} needs {keys.PY_LISTEN_IP_INFO}")
        if cache_manager_mode and keys.PY_LISTEN_IP_INFO in options:
            _check_listen_ip_info(options[keys.PY_LISTEN_IP_INFO])
        if not cache_manager_mode:
            listen_ip_info = _v1_listen_ip_info(options, self._role)
            for key in keys.LISTEN_IP_INFO_KEYS:
                options.pop(key, None)
            if listen_ip_info is not None:   # the engine serves a v1 prompt's caches from init on
                options[keys.PY_LISTEN_IP_INFO] = listen_ip_info
        require(options.get(keys.ENABLE_REMOTE_CACHE_ACCESSIBLE, "0") in ("0", "1"),
                f"{keys.ENABLE_REMOTE_CACHE_ACCESSIBLE} must be '0' or '1', "
                f"got {options.get(keys.ENABLE_REMOTE_CACHE_ACCESSIBLE)!r}")
        self._cache_manager_mode = cache_manager_mode
        return options

    def finalize(self):
        """Release everything; a no-op when not initialized."""
        if not self._engine.initialized:
            return
        with self._manager._ending_tasks():   # layer-wise transfers stop, then the links end under them
            self._engine.Finalize()   # links and served pins end before the caches go
        self._manager = None
        if LLMDataDist.llm_engine_instance is self:
            LLMDataDist.llm_engine_instance = None

    def _owns_live_manager(self, manager):
        """Whether `manager` belongs to this LLMDataDist's current initialization."""
        return manager is self._manager and self._engine.initialized

    def _require_initialized(self):
        # CANN raises RuntimeError here, not LLMException (llm_datadist.py, _check_is_inited).
        if not self._engine.initialized:
            raise RuntimeError("LLMDataDist is not initialized: call init first")

    def _require_mode(self, name, cache_manager_mode):
        self._require_initialized()
        require(self._cache_manager_mode == cache_manager_mode,
                f"{name} is {'only' if cache_manager_mode else 'not'} available with {keys.ENABLE_CACHE_MANAGER}=1 "
                "(LLMConfig.enable_cache_manager)")

    @property
    def cache_manager(self):
        """v2's CacheManager: only with enable_cache_manager."""
        self._require_mode("cache_manager", True)
        return self._manager

    @property
    def kv_cache_manager(self):
        """v1's KvCacheManager: only without enable_cache_manager."""
        self._require_mode("kv_cache_manager", False)
        return self._manager

    def link(self, comm_name, cluster_rank_info, rank_table):
        """Link this cluster with the others of `cluster_rank_info` ({cluster id: rank}) by the
        endpoints `rank_table` (HCCL's JSON) names, as a comm: its id, at once; the links are made
        in the background (query_register_mem_status). Every cluster calls it with the same
        arguments. A name a comm has already raises LLM_ALREADY_LINK (llmdd's answer, where CANN
        leaves it to HCCL). Registrations are restricted from now on, as after CANN's link."""
        self._require_mode("link", True)
        comm_name = _plain_str("comm_name", comm_name)
        require(0 < len(comm_name) < _MAX_COMM_NAME, f"comm_name must have 1 to {_MAX_COMM_NAME - 1} characters")
        check_type("cluster_rank_info", cluster_rank_info, dict)
        require(len(cluster_rank_info) <= _MAX_RANK_TABLE_NODES,
                f"cluster_rank_info has more than {_MAX_RANK_TABLE_NODES} clusters")
        # One copy, checked as it is made: the comms get what the checks saw.
        rank_info = {check_int("cluster_rank_info key", cluster_id, UINT64):
                     check_int("cluster_rank_info value", rank, UINT32)
                     for cluster_id, rank in list(cluster_rank_info.items())}
        rank_table = _plain_str("rank_table", rank_table)
        ranks = list(rank_info.values())
        require(len(ranks) > 1, "cluster_rank_info needs at least 2 clusters")
        require(ranks == sorted(ranks), "the ranks of cluster_rank_info must be in order")
        status, comm_id = self._rank_table_links().link(comm_name, rank_info, rank_table)
        require(status == LLMStatusCode.LLM_SUCCESS, f"link of comm {comm_name!r} failed: {status_of(status).name}",
                status_of(status))
        self._has_linked = True   # CANN's set_is_call_linked
        return comm_id

    def unlink(self, comm_id):
        """End a comm that link() made: its links that no other comm names end on this side
        (the peer's with the connection); LLM_NOT_YET_LINK for an id no comm has."""
        self._require_mode("unlink", True)
        comm_id = check_int("comm_id", comm_id, UINT64)
        status = self._rank_table_links().unlink(comm_id)
        require(status == LLMStatusCode.LLM_SUCCESS, f"unlink of comm {comm_id} failed: {status_of(status).name}",
                status_of(status))

    def query_register_mem_status(self, comm_id):
        """The RegisterMemStatus of a comm: PREPARING while its links are being made, then OK, or
        FAILED when llm.LinkTotalTime passed first; LLM_NOT_YET_LINK for an id no comm has."""
        self._require_mode("query_register_mem_status", True)
        comm_id = check_int("comm_id", comm_id, UINT64)
        status, register_status = self._rank_table_links().status(comm_id)
        require(status == LLMStatusCode.LLM_SUCCESS,
                f"query_register_mem_status of comm {comm_id} failed: {status_of(status).name}", status_of(status))
        # CANN's mapping: a state it does not name is FAILED.
        return RegisterMemStatus._value2member_map_.get(register_status, RegisterMemStatus.FAILED)

    def _rank_table_links(self):
        """The rank-table links (comms) of the engine's transfer service."""
        with reraising:
            return self._engine._transfer_service().rank_table_links

    def check_link_status(self, remote_cluster_id):
        """None when the link this decoder made to a cluster is up (v1 mode); else LLMException:
        LLM_NOT_YET_LINK for a cluster it has not linked, LLM_LINK_FAILED for a link whose peer
        is gone (its connection closed, or silent past the keepalive limit)."""
        self._require_mode("check_link_status", False)
        check_int("remote_cluster_id", remote_cluster_id, UINT64)
        # v1's CheckLinkStatus is the decoder's, the side that links (llm_datadist.cc CheckLinkStatus).
        require(self._role == LLMRole.DECODER, f"check_link_status is a DECODER's call, not a {self._role.name}'s")
        from ...transfer._agent import link_status   # loaded with the agent
        status = status_of(link_status(self._transfer_agent("check_link_status"), remote_cluster_id))
        if status != LLMStatusCode.LLM_SUCCESS:
            raise LLMException(f"check_link_status of cluster {remote_cluster_id} failed: {status.name}", status)

    def _check_clusters(self, clusters, timeout):
        self._require_initialized()
        check_int("timeout", timeout, INT32)
        require(timeout > 0, f"timeout must be > 0, got {timeout}")
        check_sequence("clusters", clusters, LLMClusterInfo)
        for cluster in clusters:
            check_int("remote_cluster_id", cluster.remote_cluster_id, UINT64)

    def link_clusters(self, clusters, timeout=3000):
        """Link to clusters (LLMClusterInfo), returning (status, [status per cluster]); a link
        serves both sides, which may each pull, push and unlink on it."""
        self._check_clusters(clusters, timeout)
        if self._cache_manager_mode and not self._options.get(keys.LOCAL_COMM_RES):
            for cluster in clusters:
                require(bool(cluster.local_ip_info_list), "local_ip_info_list is empty: call append_local_ip_info "
                                                          f"(or set {keys.LOCAL_COMM_RES})")
        elif not self._cache_manager_mode and (self._role != LLMRole.DECODER or not _v1_clusters_well_formed(clusters)):
            # v1's link is the decoder's (llm_datadist.cc LinkClusters): a status, as its C++ answers.
            return LLMStatusCode.LLM_PARAM_INVALID, []
        # Registrations stay as they were: CANN restricts them after link() only.
        return self._linked("link_clusters", clusters, lambda agent, targets: agent.link(targets, timeout))

    def unlink_clusters(self, clusters, timeout=3000, force=False):
        """Unlink clusters, returning (status, [status per cluster]); force tears down only this side."""
        self._check_clusters(clusters, timeout)
        check_type("force", force, bool)
        if not self._cache_manager_mode and not _v1_clusters_well_formed(clusters):
            return LLMStatusCode.LLM_PARAM_INVALID, []
        # The hixl backend names the clusters to unlink by id alone (hixl_transfer_engine.cc).
        by_id = keys.TRANSFER_BACKEND in self._options
        if not self._cache_manager_mode:
            with reraising:
                linked = set(self._transfer_agent("unlink_clusters").linked_clusters())
        status, statuses = self._linked("unlink_clusters", clusters,
                                        lambda agent, targets: agent.unlink(targets, timeout, force, by_id=by_id))
        if self._cache_manager_mode:
            return status, statuses
        # v1 answers LLM_NOT_YET_LINK for a cluster it had not linked, and the call succeeds all the
        # same (ge's v1 link_manager.cc UnlinkClusters); the agent answers SUCCESS for one.
        return status, [LLMStatusCode.LLM_NOT_YET_LINK
                        if each == LLMStatusCode.LLM_SUCCESS and cluster.remote_cluster_id not in linked else each
                        for cluster, each in zip(clusters, statuses)]

    def _linked(self, call, clusters, link):
        """(status, [status per cluster]) of link(agent, link targets), in the drop-in's status codes."""
        if not clusters:
            # CANN's link managers refuse an empty list with a status, not an exception
            # (llm_link_manager.cc, hixl_transfer_engine.cc: "clusters size must > 0").
            return LLMStatusCode.LLM_PARAM_INVALID, []
        with reraising:
            agent = self._transfer_agent(call)
            from ...transfer._agent import LinkTarget   # loaded with the agent, on the first link
            status, statuses = link(agent, [
                LinkTarget(cluster.remote_cluster_id, [(_dotted(ip), port) for ip, port in cluster.local_ip_info_list],
                           [(_dotted(ip), port) for ip, port in cluster.remote_ip_info_list])
                for cluster in clusters])
        return status_of(status), [status_of(each) for each in statuses]

    def switch_role(self, role, switch_options=None):
        """Change this cluster's role; refused while a link, made either way, is up
        (LLM_EXIST_LINK). Cache-manager mode listens on switch_options' llm.listenIpInfo from
        then on, and on nothing without it, whatever the role (llm_link_manager.cc, SwitchRole);
        with llm.TransferBackend the listener stays where init put it. v1 mode needs a new role,
        and llm.listenIpInfo for PROMPT, on which a PROMPT listens; it needs
        LLMConfig.enable_switch_role (else LLM_FEATURE_NOT_ENABLED, docs LLMStatusCode.md)."""
        self._require_initialized()
        check_type("role", role, LLMRole)
        if not self._cache_manager_mode:
            require(role != self._role, f"the role is already {role.name}")
        if switch_options is not None:
            check_type("switch_options", switch_options, dict)
        listen_ip_info = (switch_options or {}).get(keys.PY_LISTEN_IP_INFO)
        if self._cache_manager_mode:
            if listen_ip_info is not None:
                _check_listen_ip_info(listen_ip_info)
            if keys.TRANSFER_BACKEND in self._options:
                # hixl_transfer_engine.cc, SwitchRole: the listener cannot move, and links may stay.
                require(listen_ip_info in (None, self._options[keys.PY_LISTEN_IP_INFO]),
                        f"with {keys.TRANSFER_BACKEND} the listener stays on "
                        f"{self._options[keys.PY_LISTEN_IP_INFO]}", LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
                self._role = role
                return
        else:
            if role == LLMRole.PROMPT:
                require(listen_ip_info is not None, f"switching to PROMPT needs {keys.PY_LISTEN_IP_INFO} "
                                                    "in switch_options")
                _check_listen_ip_info(listen_ip_info)
            else:
                listen_ip_info = None   # only a PROMPT listens in v1 (llm_datadist.py passes no address)
            require(self._options.get(keys.ENABLE_SWITCH_ROLE) == "1",
                    f"switch_role needs {keys.ENABLE_SWITCH_ROLE}=1 (LLMConfig.enable_switch_role) in v1 mode",
                    LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
        role_options = {} if listen_ip_info is None else {keys.PY_LISTEN_IP_INFO: listen_ip_info}
        with reraising:
            self._engine.set_role(role.value, role_options)
        self._role = role


def _v1_clusters_well_formed(clusters):
    """v1's rule for the clusters of a link or unlink (link_manager.cc CheckClusterInfo): at least
    one, each with as many local as remote ip infos, one per device (llmdd's one), and the same
    local ip infos on all."""
    return bool(clusters) and all(
        len(cluster.local_ip_info_list) == len(cluster.remote_ip_info_list) == 1
        and cluster.local_ip_info_list == clusters[0].local_ip_info_list for cluster in clusters)


def _v1_listen_ip_info(options, role):
    """Where a v1 prompt serves its caches, as the engine's "ip:port" (its first device's), or None.
    v1 listens where llm.ClusterInfo's listen_ip_info says, else where llm.listenIpInfo does, one
    "ip:port" per device (v2/config.py gen_cluster_info_if_not_exist); only a prompt listens."""
    if role != LLMRole.PROMPT:
        return None
    if keys.CLUSTER_INFO in options:
        return _cluster_info_listen_ip_info(options[keys.CLUSTER_INFO])
    listen_ip_info = options.get(keys.PY_LISTEN_IP_INFO)
    if listen_ip_info is None:
        return None
    devices = next((options[key] for key in keys.DEVICE_ID_KEYS if key in options), "0").split(";")
    per_device = listen_ip_info.split(";")
    require(len(per_device) == len(devices),
            f"{keys.PY_LISTEN_IP_INFO} has {len(per_device)} ip infos for {len(devices)} devices")
    for each in per_device:
        _check_listen_ip_info(each)
    return per_device[0]


def _cluster_info_listen_ip_info(cluster_info):
    """The first listen_ip_info of llm.ClusterInfo ({"ip": CANN's integer form, "port": ...}) as
    "ip:port"; a prompt's cluster info must name one (flow_graph_manager.cc DeployInfo)."""
    import json   # only for this option: keeps init light
    try:
        listen = json.loads(cluster_info)["listen_ip_info"][0]
        ip, port = listen["ip"], listen["port"]
    except (ValueError, TypeError, LookupError):
        ip = port = None
    require(type(ip) is int and type(port) is int,
            f"{keys.CLUSTER_INFO} names no listen_ip_info {{'ip': int, 'port': int}} for a prompt: {cluster_info!r}")
    return f"{_dotted(ip)}:{port}"


def _check_listen_ip_info(listen_ip_info):
    """'ip:port', as cache-manager mode splits it."""
    check_type(keys.PY_LISTEN_IP_INFO, listen_ip_info, str)
    parts = listen_ip_info.split(":")
    require(len(parts) == 2 and parts[1].isascii() and parts[1].isdigit(),
            f"{keys.PY_LISTEN_IP_INFO}={listen_ip_info!r} is not 'ip:port'")


def _shutdown_handler():
    """At exit, finalize the process's initialized LLMDataDist, as CANN's package does: its links
    end and its listener closes before the interpreter goes. An LLMException (another framework
    may have finalized it already) is logged, not raised."""
    datadist = LLMDataDist.llm_engine_instance
    if datadist is None:
        return
    import logging   # at exit only: importing the drop-in stays light
    log = logging.getLogger("llmdd.llm_datadist")
    log.info("finalizing the LLMDataDist of cluster %s at exit", datadist.cluster_id)
    try:
        datadist.finalize()
    except LLMException as error:
        log.warning("finalizing the LLMDataDist at exit failed: %s", error)


atexit.register(_shutdown_handler)
