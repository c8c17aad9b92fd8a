"""CANN's configs module: LLMRole, LLMConfig (LlmConfig) and LLMClusterInfo; CANN's settings, each
checked as it is assigned.

Every property of CANN's LlmConfig is here with its check and the option it emits. LLMConfig has
__slots__, so a misspelled setting is an AttributeError, never kept and silently dropped.
"""
from enum import IntEnum

from .. import _desc
from .. import _options as keys
from .._limits import INT32, UINT16, UINT32, UINT64
from .status import qualified_name
from .utils.utils import check_int, check_ints, check_str_dict, check_type, checked_property, require

_ROLES = _desc.enum_values("LlmRole")


class LLMRole(IntEnum):
    PROMPT = _ROLES["PROMPT"]
    DECODER = _ROLES["DECODER"]
    MIX = _ROLES["MIX"]

    __str__ = qualified_name  # CANN prints LLMRole.PROMPT, not the IntEnum's "1"


def _optional(check, *arguments):
    """check(name, value, *arguments) for a value; None clears the setting."""
    return lambda name, value: None if value is None else check(name, value, *arguments)


def _ranged(low, high):
    """An int setting whose range is an LLM-DataDist rule (LLMException), not a C type (ValueError)."""
    def checked(name, value):
        check_int(name, value)
        require(low <= value <= high, f"{name} must be in [{low}, {high}], got {value}")
        return value

    return checked


def _zero_or_one(flag):
    return "1" if flag else "0"


class LLMConfig:
    """Options for LLMDataDist.init: set properties, then generate_options()."""

    __slots__ = ("_ge_options", "_device_id", "_listen_ip_info", "_deploy_res_path", "_buf_pool_cfg",
                 "_output_max_size", "_mem_utilization", "_cluster_info", "_sync_kv_timeout", "_enable_switch_role",
                 "_link_total_time", "_link_retry_count", "_enable_cache_manager", "_enable_remote_cache_accessible",
                 "_mem_pool_cfg", "_host_mem_pool_cfg", "_rdma_traffic_class", "_rdma_service_level",
                 "_local_comm_res", "_transfer_backend", "_global_resource_config")

    def __init__(self):
        for slot in self.__slots__:
            setattr(self, slot, None)
        self._ge_options = {}
        self._mem_utilization = 0.95  # CANN's default, emitted as llm.MemoryUtilization

    listen_ip_info = checked_property("listen_ip_info", _optional(check_type, str))
    deploy_res_path = checked_property("deploy_res_path", _optional(check_type, str))
    buf_pool_cfg = checked_property("buf_pool_cfg", _optional(check_type, str))
    mem_pool_cfg = checked_property("mem_pool_cfg", _optional(check_type, str))
    host_mem_pool_cfg = checked_property("host_mem_pool_cfg", _optional(check_type, str))
    local_comm_res = checked_property("local_comm_res", _optional(check_type, str))
    transfer_backend = checked_property("transfer_backend", _optional(check_type, str))
    global_resource_config = checked_property("global_resource_config", _optional(check_type, str))
    # Flags read False until set; CANN emits the last two only once set, as "0" or "1".
    enable_switch_role = checked_property("enable_switch_role", _optional(check_type, bool), False)
    enable_cache_manager = checked_property("enable_cache_manager", _optional(check_type, bool), False)
    enable_remote_cache_accessible = checked_property("enable_remote_cache_accessible", _optional(check_type, bool),
                                                      False)
    output_max_size = checked_property("output_max_size", _optional(check_int))
    link_total_time = checked_property("link_total_time", _ranged(*UINT32), 0)
    link_retry_count = checked_property("link_retry_count", _ranged(1, 100), 1)
    rdma_traffic_class = checked_property("rdma_traffic_class", lambda name, value: check_int(name, value, UINT32))
    rdma_service_level = checked_property("rdma_service_level", lambda name, value: check_int(name, value, UINT32))

    @property
    def ge_options(self):
        return self._ge_options

    @ge_options.setter
    def ge_options(self, ge_options):
        self._ge_options = {} if ge_options is None else check_str_dict("ge_options", ge_options)

    @property
    def device_id(self):
        return self._device_id

    @device_id.setter
    def device_id(self, device_id):
        """One device id, or a list/tuple of them (a non-empty one): each >= 0 and an int32."""
        if device_id is not None:
            check_type("device_id", device_id, (int, list, tuple))
            ids = device_id if isinstance(device_id, (list, tuple)) else [device_id]
            check_ints("device_id", ids)
            require(len(ids) > 0, "device_id must name at least one device")
            require(all(device >= 0 for device in ids), f"device_id must be >= 0, got {device_id}")
            check_ints("device_id", ids, INT32)
        self._device_id = device_id

    @property
    def mem_utilization(self):
        return self._mem_utilization

    @mem_utilization.setter
    def mem_utilization(self, mem_utilization):
        check_type("mem_utilization", mem_utilization, float)
        require(0.0 <= mem_utilization <= 1.0, f"mem_utilization must be in [0, 1], got {mem_utilization}")
        self._mem_utilization = mem_utilization

    @property
    def cluster_info(self):
        return self._cluster_info

    @cluster_info.setter
    def cluster_info(self, cluster_info):
        """A JSON object; the addresses of its listen_ip_info entries are stored as CANN's
        integer form (the IPv4 bytes read little-endian)."""
        if cluster_info is None:
            self._cluster_info = None
            return
        import json  # only for this offline setting: keeps the drop-in's import light

        check_type("cluster_info", cluster_info, str)
        parsed = json.loads(cluster_info)
        require(isinstance(parsed, dict), "cluster_info must be a JSON object")
        for ip_info in parsed.get("listen_ip_info", ()):
            ip_info["ip"] = LLMClusterInfo.ip_as_int(ip_info["ip"])
        self._cluster_info = json.dumps(parsed)

    @property
    def sync_kv_timeout(self):
        return self._sync_kv_timeout

    @sync_kv_timeout.setter
    def sync_kv_timeout(self, sync_kv_timeout):
        """Milliseconds, an int or a string of digits, in [1, INT32_MAX]."""
        check_type("sync_kv_timeout", sync_kv_timeout, (int, str))
        if isinstance(sync_kv_timeout, str):
            require(sync_kv_timeout.isascii() and sync_kv_timeout.isdigit(),
                    f"sync_kv_timeout must be digits, got {sync_kv_timeout!r}")
        milliseconds = int(sync_kv_timeout)
        require(milliseconds > 0, f"sync_kv_timeout must be > 0, got {sync_kv_timeout!r}")
        check_int("sync_kv_timeout", milliseconds, INT32)
        self._sync_kv_timeout = sync_kv_timeout

    @property
    def options(self):
        """The options these settings give (generate_options())."""
        return self.generate_options()

    def generate_options(self):
        """The options dict for LLMDataDist.init: ge_options, then each setting that was given."""
        options = dict(self._ge_options)
        if self._device_id is not None:
            ids = self._device_id if isinstance(self._device_id, (list, tuple)) else [self._device_id]
            options[keys.DEVICE_ID_KEYS[1]] = ";".join(str(device) for device in ids)
            options[keys.SESSION_DEVICE_ID] = str(ids[0])
        if self._sync_kv_timeout is not None:
            options[keys.SYNC_KV_WAIT_TIME] = str(self._sync_kv_timeout)
        # Strings CANN emits only when non-empty.
        for key, value in ((keys.DEPLOY_RES_PATH, self._deploy_res_path), (keys.BUF_POOL_CFG, self._buf_pool_cfg),
                           (keys.MEM_POOL_CONFIG, self._mem_pool_cfg),
                           (keys.HOST_MEM_POOL_CONFIG, self._host_mem_pool_cfg),
                           (keys.PY_LISTEN_IP_INFO, self._listen_ip_info), (keys.CLUSTER_INFO, self._cluster_info)):
            if value:
                options[key] = value
        # Flags CANN emits as "1"/"0" once they were set, either way.
        if self._enable_cache_manager is not None:
            options[keys.ENABLE_CACHE_MANAGER] = _zero_or_one(self._enable_cache_manager)
        if self._enable_remote_cache_accessible is not None:
            options[keys.ENABLE_REMOTE_CACHE_ACCESSIBLE] = _zero_or_one(self._enable_remote_cache_accessible)
        # Settings CANN emits once they were set, an empty string included.
        for key, value in ((keys.LINK_TOTAL_TIME, self._link_total_time),
                           (keys.LINK_RETRY_COUNT, self._link_retry_count),
                           (keys.RDMA_TRAFFIC_CLASS, self._rdma_traffic_class),
                           (keys.RDMA_SERVICE_LEVEL, self._rdma_service_level),
                           (keys.LOCAL_COMM_RES, self._local_comm_res),
                           (keys.TRANSFER_BACKEND, self._transfer_backend),
                           (keys.GLOBAL_RESOURCE_CONFIG, self._global_resource_config),
                           (keys.OUTPUT_MAX_SIZE, self._output_max_size)):
            if value is not None:
                options[key] = str(value)
        if self._enable_switch_role:
            options[keys.ENABLE_SWITCH_ROLE] = "1"
        options[keys.MEMORY_UTILIZATION] = str(self._mem_utilization)
        return options

    gen_options = generate_options


LlmConfig = LLMConfig


class LLMClusterInfo:
    """A remote cluster to link: its id, role, and local and remote (ip, port) pairs, the ip in
    CANN's integer form."""

    __slots__ = ("_remote_cluster_id", "_remote_role_type", "_local_ip_info_list", "_remote_ip_info_list")

    def __init__(self):
        self._remote_cluster_id = None
        self._remote_role_type = None
        self._local_ip_info_list = []
        self._remote_ip_info_list = []

    remote_cluster_id = checked_property("remote_cluster_id", lambda name, value: check_int(name, value, UINT64))
    remote_role_type = checked_property("remote_role_type", _optional(check_type, (LLMRole, int)))

    @property
    def local_ip_info_list(self):
        return self._local_ip_info_list

    @property
    def remote_ip_info_list(self):
        return self._remote_ip_info_list

    @staticmethod
    def ip_as_int(ip):
        """A dotted IPv4 string as CANN's integer (its four bytes read little-endian); an int as is."""
        check_type("ip", ip, (str, int))
        if isinstance(ip, int):
            return ip
        parts = ip.split(".")
        require(len(parts) == 4 and all(part.isascii() and part.isdigit() and int(part) <= 255 for part in parts),
                f"ip {ip!r} is not a dotted IPv4 address")
        return int.from_bytes(bytes(int(part) for part in parts), "little")

    def append_local_ip_info(self, ip, port):
        self._local_ip_info_list.append((self.ip_as_int(ip), check_int("port", port, UINT16)))

    def append_remote_ip_info(self, ip, port):
        self._remote_ip_info_list.append((self.ip_as_int(ip), check_int("port", port, UINT16)))
